"""The one base class of the errors a user can cause.

The CLI turns any `SageUserError` into one line on stderr and exit code 2; anything else is a bug and keeps
its traceback. Each module raises its own subclass (ModelError, ArtifactError, ...) so the message can say
what went wrong in the user's words.
"""


class SageUserError(Exception):
    """A mistake in what the user asked for or gave us (a path, a file, an option), not a bug."""


class ArtifactError(SageUserError):
    """A calibration artifact (<model>/sage/) that is missing, unreadable or from another model."""


class CalibrationError(SageUserError):
    """Calibration could not run: empty prompt file, no attention site seen, and the like."""
