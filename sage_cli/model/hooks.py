"""Attention call sites, and the one hook mechanism that both captures Q/K/V and installs sage.

Inside ``hooked(loaded, handler)`` every attention call of the model goes through `handler` with an
`AttentionCall`: Q/K/V in HND layout exactly as the attention kernel would receive them (post-RoPE, K/V with
their own kv-head count, never repeated for GQA), the causal flag, the softmax scale and any mask that plain
causal cannot express. The handler returns the attention output in HND, or None to let full precision run.

How calls are intercepted
-------------------------
- transformers: an ``AttentionInterface`` function named "sage" (with SDPA's mask function registered under
  the same name, so causal and padding masks are built exactly as for SDPA) is switched on with
  ``set_attn_implementation("sage")`` and the previous implementation restored on exit.
- diffusers: ``torch.nn.functional.scaled_dot_product_attention`` is wrapped for the duration. Both the
  attention dispatcher's native backend and the older processors call it through the module attribute, so
  one wrapper sees them all. It acts only while an attention module of a hooked model is running (a context
  variable set by forward pre-hooks); any other caller gets the original function untouched.

Site names
----------
A site is ``"<module path>#<call index>"``: the call index counts the attention calls this module made since
the current top-level forward of the model began (0 for a normal layer; a module that attends twice in one
forward gets #0 and #1). Each decoding step and each diffusion step is a new top-level forward.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .loading import LoadedModel

SAGE_IMPL = "sage"  # the name under which the transformers attention function is registered


@dataclass
class AttentionCall:
    """One attention call, as the model was about to compute it.

    Attributes
    ----------
    site : ``"<module path>#<call index>"``.
    module_path, call_index : the two parts of `site`.
    q : ``[B, Hq, Nq, D]`` post-RoPE queries.
    k, v : ``[B, Hkv, Nk, D]`` keys and values with their own (kv) head count, never repeated for GQA.
    is_causal : True when the call is plain causal attention (and then `mask` is None).
    scale : the softmax scale, or None for ``1/sqrt(D)``.
    mask : a mask that plain causal cannot express (padding, sliding window, ...), boolean (True = attend)
        or additive, broadcastable to ``[B, Hq, Nq, Nk]``; None otherwise.
    unsupported : why this call cannot be served by a kernel that knows only causal/non-causal attention
        (dropout, softcap, sinks, a position bias, ...), or None. Handlers should return None for it.
    """

    site: str
    module_path: str
    call_index: int
    q: Tensor
    k: Tensor
    v: Tensor
    is_causal: bool
    scale: float | None
    mask: Tensor | None
    unsupported: str | None = None
    _reference: Callable[[], Tensor] | None = field(default=None, repr=False)
    _reference_out: Tensor | None = field(default=None, repr=False)

    @property
    def head_dim(self) -> int:
        return int(self.q.shape[-1])

    def full_precision(self) -> Tensor:
        """The model's own full-precision attention (torch SDPA, as the model would run it), ``[B, Hq, Nq, D]``.

        Computed once per call and cached, so a handler that compares against it and then returns None
        costs no second computation.
        """
        if self._reference_out is None:
            assert self._reference is not None, "AttentionCall built without its full-precision path"
            self._reference_out = self._reference()
        return self._reference_out


Handler = Callable[[AttentionCall], Tensor | None]


@dataclass(frozen=True)
class SiteInfo:
    """An attention module of the model.

    path : module path (as in ``model.named_modules()``); call sites are ``path#index``.
    heads_q, heads_kv, head_dim : the layout of its Q and K/V.
    kind : "self", "cross" (K/V from another sequence) or "joint" (text and image tokens attend together).
    causal : whether its self-attention is causal.
    """

    path: str
    heads_q: int
    heads_kv: int
    head_dim: int
    kind: str
    causal: bool


# ------------------------------------------------------------------------------------- site discovery


@functools.cache
def _forward_calls_interface(cls: type) -> bool:
    """Whether a transformers module class computes attention through ``ALL_ATTENTION_FUNCTIONS``: the
    classes whose calls the "sage" implementation receives."""
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source


def _diffusers_attention_classes() -> tuple[type, ...]:
    try:
        from diffusers.models.attention import AttentionModuleMixin
        from diffusers.models.attention_processor import Attention
    except ImportError:  # a diffusers older than the mixin: the classic Attention class only
        from diffusers.models.attention_processor import Attention

        return (Attention,)
    return (Attention, AttentionModuleMixin)


def attention_modules(loaded: LoadedModel) -> dict[str, nn.Module]:
    """Every attention module of the loaded model, by module path, in model order."""
    if loaded.is_diffusers:
        classes = _diffusers_attention_classes()
        found = {name: m for name, m in loaded.model.named_modules() if isinstance(m, classes)}
        # A diffusers attention module never nests another; keep the outermost if one ever does.
        return {n: m for n, m in found.items() if not any(n.startswith(o + ".") for o in found if o != n)}
    return {name: m for name, m in loaded.model.named_modules() if _forward_calls_interface(type(m))}


def _first_int(obj: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _hf_site(path: str, module: nn.Module, model_config: Any) -> SiteInfo:
    config = getattr(module, "config", None) or model_config
    config = getattr(config, "get_text_config", lambda: config)()
    heads_q = _first_int(module, "num_heads", "num_attention_heads") or _first_int(config, "num_attention_heads")
    if heads_q is None:
        raise ValueError(f"cannot tell the head count of attention module {path} ({type(module).__name__})")
    hidden = _first_int(config, "hidden_size") or 0
    head_dim = (_first_int(module, "head_dim", "attention_head_size") or _first_int(config, "head_dim")
                or hidden // heads_q)
    groups = _first_int(module, "num_key_value_groups")
    heads_kv = (heads_q // groups if groups else _first_int(module, "num_key_value_heads", "num_kv_heads")
                or _first_int(config, "num_key_value_heads") or heads_q)
    cross = bool(getattr(module, "is_cross_attention", False)) or "Cross" in type(module).__name__
    return SiteInfo(path, heads_q, heads_kv, head_dim, "cross" if cross else "self",
                    bool(getattr(module, "is_causal", False)) and not cross)


def _diffusers_site(path: str, module: nn.Module) -> SiteInfo:
    heads_q = _first_int(module, "heads")
    if heads_q is None:
        raise ValueError(f"cannot tell the head count of attention module {path} ({type(module).__name__})")
    inner = _first_int(module, "inner_dim") or 0
    head_dim = _first_int(module, "head_dim", "dim_head") or inner // heads_q
    inner_kv = _first_int(module, "inner_kv_dim")
    heads_kv = inner_kv // head_dim if inner_kv else heads_q
    if getattr(module, "added_kv_proj_dim", None) is not None:
        kind = "joint"  # MM-DiT: text tokens projected by add_*_proj join the image tokens' sequence
    elif getattr(module, "is_cross_attention", False):
        kind = "cross"
    else:
        kind = "self"
    return SiteInfo(path, heads_q, heads_kv, head_dim, kind, bool(getattr(module, "is_causal", False)))


def sites(loaded: LoadedModel) -> list[SiteInfo]:
    """Every attention module of the model with its head layout, in model order."""
    modules = attention_modules(loaded)
    if loaded.is_diffusers:
        return [_diffusers_site(p, m) for p, m in modules.items()]
    return [_hf_site(p, m, loaded.model.config) for p, m in modules.items()]


# ------------------------------------------------------------------------------- hook session plumbing


@dataclass
class _Frame:
    """The attention module currently running, for the calls it makes."""

    session: "_Session"
    path: str
    attention_calls: int = 0


_FRAME: ContextVar[_Frame | None] = ContextVar("sage_attention_frame", default=None)


class _Session:
    """One ``hooked`` context on one model: the handler, the per-forward call counters and the hooks."""

    def __init__(self, handler: Handler, modules: dict[str, nn.Module]) -> None:
        self.handler = handler
        self.path_of = {id(m): p for p, m in modules.items()}
        self.counts: Counter[str] = Counter()  # attention calls per module in the current top-level forward
        self.uncaptured: Counter[str] = Counter()  # module calls that made no intercepted attention call
        self.depth = 0
        self.handles: list[Any] = []
        self.tokens: list[Any] = []
        self.diffusers_root: nn.Module | None = None  # set on diffusers sessions: the SDPA wrapper serves only those

    def attach(self, root: nn.Module, modules: dict[str, nn.Module]) -> None:
        self.handles.append(root.register_forward_pre_hook(self._root_enter))
        self.handles.append(root.register_forward_hook(self._root_exit, always_call=True))
        for path, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(functools.partial(self._enter, path)))
            self.handles.append(module.register_forward_hook(self._exit, always_call=True))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _root_enter(self, module: nn.Module, args: Any) -> None:
        if self.depth == 0:
            self.counts.clear()
        self.depth += 1

    def _root_exit(self, module: nn.Module, args: Any, output: Any) -> None:
        self.depth -= 1

    def _enter(self, path: str, module: nn.Module, args: Any) -> None:
        self.tokens.append(_FRAME.set(_Frame(self, path)))

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        frame = _FRAME.get()
        if frame is not None and frame.session is self and frame.attention_calls == 0:
            self.uncaptured[frame.path] += 1
        _FRAME.reset(self.tokens.pop())

    def next_site(self, path: str) -> tuple[str, int]:
        index = self.counts[path]
        self.counts[path] += 1
        frame = _FRAME.get()
        if frame is not None and frame.session is self and frame.path == path:
            frame.attention_calls += 1
        return f"{path}#{index}", index

    def run(self, call: AttentionCall) -> Tensor | None:
        # The handler runs outside any attention frame: the attention it computes itself (full precision
        # through SDPA, say) must reach torch, not come back here.
        token = _FRAME.set(None)
        try:
            out = self.handler(call)
        finally:
            _FRAME.reset(token)
        if out is None:
            return None
        expected = (*call.q.shape[:-1], call.v.shape[-1])
        if tuple(out.shape) != expected:
            raise ValueError(f"attention handler returned shape {tuple(out.shape)} at {call.site}, expected {expected}")
        return out


# ---------------------------------------------------------------------------------------- transformers

# Sessions by id(attention module): the registered function is global, the model it serves is not.
_HF_SESSIONS: dict[int, _Session] = {}
_HF_LOCK = threading.Lock()


def _sdpa_forward() -> Callable[..., tuple[Tensor, Any]]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def _hf_unsupported(dropout: float, kwargs: dict) -> str | None:
    if dropout:
        return "dropout"
    if kwargs.get("softcap") is not None:
        return "softcap"
    if kwargs.get("position_bias") is not None:
        return "position bias"
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        return "attention sinks"
    return None


def _hf_sage_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """The "sage" AttentionInterface function: same signature and contract as transformers' SDPA one.

    query ``[B, Hq, Nq, D]``, key/value ``[B, Hkv, Nk, D]`` (transformers repeats K/V for GQA only inside
    the SDPA function, which is called here only for full precision); returns ``([B, Nq, Hq, D], None)``.
    """
    sdpa = _sdpa_forward()

    def reference() -> Tensor:
        return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)[0]

    session = _HF_SESSIONS.get(id(module))
    if session is None:  # called outside any hooked context (a model left switched): behave exactly as SDPA
        return reference(), None
    path = session.path_of[id(module)]
    site, index = session.next_site(path)
    # The causal rule SDPA itself applies: causal only for a multi-token query with no explicit mask.
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
    call = AttentionCall(
        site=site, module_path=path, call_index=index, q=query, k=key, v=value, is_causal=causal,
        scale=scaling, mask=attention_mask, unsupported=_hf_unsupported(dropout, kwargs),
        _reference=lambda: reference().transpose(1, 2),
    )
    out = session.run(call)
    if out is None:
        # Reuse the handler's full-precision result if it computed one: it is this very output.
        fp = call._reference_out
        return (fp.transpose(1, 2) if fp is not None else reference()), None
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _register_hf() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SAGE_IMPL, _hf_sage_attention)
    AttentionMaskInterface.register(SAGE_IMPL, sdpa_mask)


def _configs(model: nn.Module) -> list[Any]:
    """Every distinct config of the model and its sub-models, where the attention implementation lives."""
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and id(config) not in seen:
            seen[id(config)] = config
            for key in getattr(config, "sub_configs", {}) or {}:
                sub = getattr(config, key, None)
                if sub is not None and hasattr(sub, "_attn_implementation"):
                    seen.setdefault(id(sub), sub)
    return list(seen.values())


@contextlib.contextmanager
def _hooked_transformers(loaded: LoadedModel, handler: Handler) -> Iterator[_Session]:
    model = loaded.model
    modules = attention_modules(loaded)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention module that uses transformers' AttentionInterface")
    _register_hf()
    configs = _configs(model)
    saved = [(c, c._attn_implementation) for c in configs]
    session = _Session(handler, modules)
    with _HF_LOCK:
        busy = [p for p, m in modules.items() if id(m) in _HF_SESSIONS]
        if busy:
            raise RuntimeError(f"the model is already hooked (at {busy[0]}); hooked() contexts do not nest")
        for m in modules.values():
            _HF_SESSIONS[id(m)] = session
    try:
        model.set_attn_implementation(SAGE_IMPL)
        if model.config._attn_implementation != SAGE_IMPL:
            raise ValueError(f"{type(model).__name__} cannot switch its attention implementation at run time")
        session.attach(model, modules)
        yield session
    finally:
        session.detach()
        with _HF_LOCK:
            for m in modules.values():
                _HF_SESSIONS.pop(id(m), None)
        # Restore each config's own implementation (composite models may mix them).
        for config, impl in saved:
            config._attn_implementation_internal = impl


# -------------------------------------------------------------------------------------------- diffusers

_SDPA_LOCK = threading.Lock()
_SDPA_USERS = 0
_ORIGINAL_SDPA: Callable[..., Tensor] | None = None
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _sdpa_wrapper(*args: Any, **kwargs: Any) -> Tensor:
    """Stands in for torch.nn.functional.scaled_dot_product_attention while a diffusers model is hooked."""
    original = _ORIGINAL_SDPA
    assert original is not None
    frame = _FRAME.get()
    if frame is None or frame.session.diffusers_root is None:
        return original(*args, **kwargs)
    bound = dict(zip(_SDPA_ARGS, args))
    bound.update(kwargs)
    q, k, v = bound["query"], bound["key"], bound["value"]
    mask = bound.get("attn_mask")
    dropout = float(bound.get("dropout_p", 0.0) or 0.0)
    causal = bool(bound.get("is_causal", False))
    scale = bound.get("scale")
    session = frame.session
    site, index = session.next_site(frame.path)
    unsupported = "dropout" if dropout else None
    if q.dim() != 4:
        unsupported = f"{q.dim()}-D query"
    call = AttentionCall(
        site=site, module_path=frame.path, call_index=index, q=q, k=k, v=v,
        is_causal=causal and mask is None, scale=scale, mask=mask, unsupported=unsupported,
        _reference=lambda: original(*args, **kwargs),
    )
    out = session.run(call)
    if out is None:
        return call._reference_out if call._reference_out is not None else original(*args, **kwargs)
    return out.to(q.dtype)


def _patch_sdpa() -> None:
    global _SDPA_USERS, _ORIGINAL_SDPA
    with _SDPA_LOCK:
        if _SDPA_USERS == 0:
            _ORIGINAL_SDPA = torch.nn.functional.scaled_dot_product_attention
            torch.nn.functional.scaled_dot_product_attention = _sdpa_wrapper
        _SDPA_USERS += 1


def _unpatch_sdpa() -> None:
    global _SDPA_USERS, _ORIGINAL_SDPA
    with _SDPA_LOCK:
        _SDPA_USERS -= 1
        if _SDPA_USERS == 0:
            torch.nn.functional.scaled_dot_product_attention = _ORIGINAL_SDPA
            _ORIGINAL_SDPA = None


@contextlib.contextmanager
def _hooked_diffusers(loaded: LoadedModel, handler: Handler) -> Iterator[_Session]:
    modules = attention_modules(loaded)
    if not modules:
        raise ValueError(f"{type(loaded.model).__name__} has no diffusers attention module")
    session = _Session(handler, modules)
    session.diffusers_root = loaded.model
    _patch_sdpa()
    try:
        session.attach(loaded.model, modules)
        yield session
    finally:
        session.detach()
        _unpatch_sdpa()


# ----------------------------------------------------------------------------------------------- public


@contextlib.contextmanager
def hooked(loaded: LoadedModel, handler: Handler) -> Iterator[_Session]:
    """Route every attention call of `loaded` through `handler` while the context is open.

    The handler receives an `AttentionCall` and returns the output ``[B, Hq, Nq, D]`` (any float dtype; it
    is cast to the model's) or None for the model's own full precision. Everything is restored on exit,
    also when the body raises. The yielded session's ``uncaptured`` counter names attention modules that
    ran without an intercepted call (a diffusers processor on a non-native attention backend, say).
    """
    adapter = _hooked_diffusers if loaded.is_diffusers else _hooked_transformers
    with adapter(loaded, handler) as session:
        yield session
