"""The CLI through typer's runner: commands exist, and what a user gets wrong is one line and exit 2."""
import pytest
from typer.testing import CliRunner

from sage_cli.cli import app

runner = CliRunner()


def one_line_error(result) -> str:
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, result.output
    return err


def test_help_lists_every_command():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("inspect", "calibrate", "verify", "accelerate", "bench", "build"):
        assert cmd in r.stdout


def test_missing_path(tmp_path):
    err = one_line_error(runner.invoke(app, ["inspect", str(tmp_path / "nope")]))
    assert "does not exist" in err


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(runner.invoke(app, ["calibrate", str(tmp_path)]))


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "definitely-not-a-model", "architectures": ["Nope"]}')
    err = one_line_error(runner.invoke(app, ["inspect", str(tmp_path)]))
    assert "definitely-not-a-model" in err or "Nope" in err


def test_corrupt_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,'
        ' "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": 100}'
    )
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not really}")
    err = one_line_error(runner.invoke(app, ["inspect", str(tmp_path)]))
    assert "model.safetensors" in err


def test_empty_prompts_file_is_reported_before_loading(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("\n\n")
    err = one_line_error(runner.invoke(app, ["calibrate", "--prompts", str(p)]))
    assert "empty" in err


def test_verify_without_calibration(tmp_path, demo_model_dir):
    err = one_line_error(runner.invoke(app, ["verify", "--out", str(tmp_path / "none")]))
    assert "sage calibrate" in err


def test_bad_bench_sizes_are_usage_errors():
    r = runner.invoke(app, ["bench", "--seq", "lots"])
    assert r.exit_code == 2 and "not a size" in r.output


def test_build_without_gpu_needs_arch(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = runner.invoke(app, ["build"])
    assert r.exit_code == 2 and "--arch" in r.output
