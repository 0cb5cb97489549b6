"""A user's own `nn.Module` class as a model spec: its layout stored, its code only referenced.

A model of no installed family is stored as family `module` (reserved: no plugin may
register it). Its spec holds what every reader needs without code, and a reference to
the code that rebuilds it, which a run never chooses to run:

    {"family": "module", "params": {<the factory's keyword arguments: JSON scalars>},
     "module": {"factory": "mypkg.models:ResNet20",
                "state": [[name, dtype, shape, is_parameter], ...],   # state-dict order
                "modules": [[name, class name], ...],                 # those holding tensors
                "outputs": [[name, per-sample shape], ...],           # every module's output
                "layers": [name, ...]},                               # the recorded layers
     "input": {...}, "num_classes": 10}

Checkpoints are checked, weights read (`ctx.parameters()`), dumps bounded from the layout
alone. Rebuilding the model imports `factory` and calls it, and happens only under a
`CodeTrust` the user's own command line or Python call sets (`probe analyze --trust-code
MODULE`, `probe.analyze(..., model=factory)`): the factory's module must be MODULE or
under it, or the user's callable is used. Without trust a rebuild raises `CodeNotTrusted`,
a `Skip` naming `--trust-code`. The built model's state must match the stored layout
exactly. This module imports no torch; `layout_of` and `build_module` do.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from probe.contract.records import InputSpec
from probe.errors import ProbeError, Skip, UsageError

MODULE_FAMILY = "module"
MAX_TENSORS = 20_000
MAX_MODULES = 20_000
MAX_DIMS = 8
MAX_NAME = 300
DTYPES = frozenset(
    {
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "bool",
        "complex64",
        "complex128",
    }
)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")
_FACTORY = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
_TENSOR_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,300}$")

__all__ = [
    "MODULE_FAMILY",
    "CodeNotTrusted",
    "CodeTrust",
    "ModuleLayout",
    "TRUST",
    "build_module",
    "call_factory",
    "check_factory_ref",
    "code_trust",
    "check_module_name",
    "factory_ref",
    "layout_of",
    "trusted",
]


class CodeNotTrusted(Skip):
    """A rebuild of a user's own class without the user's permission: the analysis skips."""


@dataclass(frozen=True)
class CodeTrust:
    """What the user's command line or call allows: factories under `modules`, or `factory`."""

    modules: tuple[str, ...] = ()
    factory: Callable[..., Any] | None = None


# Set by `probe analyze --trust-code` / `probe.analyze(model=...)` for the jobs they run.
TRUST: contextvars.ContextVar[CodeTrust | None] = contextvars.ContextVar(
    "probe_code_trust", default=None
)


@contextlib.contextmanager
def trusted(trust: CodeTrust | None) -> Iterator[None]:
    """`TRUST` set to `trust` for the block (and reset after it, whatever happens)."""
    token = TRUST.set(trust)
    try:
        yield
    finally:
        TRUST.reset(token)


def check_module_name(name: Any, option: str = "--trust-code") -> str:
    """A dotted module name (`mypkg`, `mypkg.models`), else a UsageError naming `option`."""
    if not isinstance(name, str) or len(name) > 200 or not _MODULE.match(name):
        raise UsageError(option, f"expected a dotted module name (mypkg.models), got {name!r}")
    return name


def code_trust(
    modules: tuple[str, ...] | list[str], option: str = "--trust-code"
) -> CodeTrust | None:
    """The trust `--trust-code MODULE ...` gives (None for none); each name checked."""
    names = tuple(check_module_name(m, option) for m in modules)
    return CodeTrust(modules=names) if names else None


def check_factory_ref(ref: Any, option: str = "model_factory") -> str:
    """`pkg.module:Name` or `pkg.module:Outer.fn`, else a UsageError naming `option`."""
    if not isinstance(ref, str) or len(ref) > 200 or not _FACTORY.match(ref):
        raise UsageError(
            option,
            f"expected a reference 'package.module:name' to a class or function, got {ref!r}",
        )
    return ref


def factory_ref(obj: Any, option: str = "model") -> str:
    """The `module:qualname` reference of a class or function (what rebuilds the model)."""
    ref = f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"
    if not _FACTORY.match(ref) or len(ref) > 200:
        raise UsageError(
            option,
            f"{ref!r} cannot be imported by name (a class defined inside a function?); define it "
            "at module level or pass model_factory='package.module:function'",
        )
    return ref


@dataclass(frozen=True)
class ModuleLayout:
    """The stored layout of a user's module: state tensors, modules, outputs, recorded layers."""

    factory: str
    state: tuple[tuple[str, str, tuple[int, ...], bool], ...]
    modules: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, tuple[int, ...]], ...]
    layers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "factory": self.factory,
            "state": [[n, d, list(s), p] for n, d, s, p in self.state],
            "modules": [list(m) for m in self.modules],
            "outputs": [[n, list(s)] for n, s in self.outputs],
            "layers": list(self.layers),
        }

    @property
    def top_module(self) -> str:
        return self.factory.partition(":")[0].split(".")[0]

    def num_params(self) -> int:
        return sum(math.prod(s) for _, _, s, p in self.state if p)

    @classmethod
    def from_dict(cls, d: Any) -> ModuleLayout:
        """Parse a stored layout, every field bounded; a bad one raises ValueError."""
        if not isinstance(d, dict) or set(d) != {
            "factory",
            "state",
            "modules",
            "outputs",
            "layers",
        }:
            raise ValueError("module must be an object of factory, state, modules, outputs, layers")
        factory = d["factory"]
        if not isinstance(factory, str) or len(factory) > 200 or not _FACTORY.match(factory):
            raise ValueError(
                f"module.factory must be 'package.module:name', got {str(factory)[:60]!r}"
            )
        state = tuple(_slot(e) for e in _bounded(d["state"], "module.state", MAX_TENSORS))
        if len({n for n, *_ in state}) != len(state):
            raise ValueError("module.state names a tensor twice")
        total = sum(math.prod(s) for _, _, s, _ in state)
        if total > 3 * 2**31:
            raise ValueError(f"module.state holds {total:,} elements, more than probe allows")
        modules = tuple(
            _pair(e, "module.modules")
            for e in _bounded(d["modules"], "module.modules", MAX_MODULES)
        )
        outputs = tuple(
            (_name(e[0], "module.outputs"), _shape(e[1], "module.outputs"))
            if isinstance(e, list) and len(e) == 2
            else _bad("module.outputs entries are [name, shape]")
            for e in _bounded(d["outputs"], "module.outputs", MAX_MODULES)
        )
        layers = tuple(
            _name(n, "module.layers") for n in _bounded(d["layers"], "module.layers", 256)
        )
        known = {n for n, _ in outputs}
        if not layers or any(n not in known for n in layers):
            raise ValueError("module.layers must name modules of module.outputs")
        return cls(factory, state, modules, outputs, layers)


def _bad(msg: str) -> Any:
    raise ValueError(msg)


def _bounded(v: Any, what: str, most: int) -> list[Any]:
    if not isinstance(v, list) or len(v) > most:
        raise ValueError(f"{what} must be a list of at most {most} entries")
    return v


def _name(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_NAME or not _TENSOR_NAME.match(v):
        raise ValueError(f"{what}: {str(v)[:60]!r} is not a module or tensor name")
    return v


def _shape(v: Any, what: str) -> tuple[int, ...]:
    if (
        not isinstance(v, list)
        or len(v) > MAX_DIMS
        or not all(type(x) is int and 0 <= x <= 2**31 for x in v)
    ):
        raise ValueError(f"{what}: a shape is a list of at most {MAX_DIMS} sizes")
    return tuple(v)


def _slot(e: Any) -> tuple[str, str, tuple[int, ...], bool]:
    if not isinstance(e, list) or len(e) != 4 or not isinstance(e[3], bool):
        raise ValueError("module.state entries are [name, dtype, shape, is_parameter]")
    if e[1] not in DTYPES:
        raise ValueError(f"module.state: dtype {str(e[1])[:20]!r} is not one probe stores")
    return _name(e[0], "module.state"), e[1], _shape(e[2], "module.state"), e[3]


def _pair(e: Any, what: str) -> tuple[str, str]:
    if (
        not isinstance(e, list)
        or len(e) != 2
        or not isinstance(e[1], str)
        or not re.fullmatch(_IDENT, e[1])
    ):
        raise ValueError(f"{what} entries are [module name, class name]")
    return _name(e[0], what) if e[0] else "", e[1]


# --- with torch: the layout of an instance, and a rebuild -----------------------------------------


def meta_copy(model: Any) -> Any:
    """A copy of `model` whose parameters and buffers live on the meta device: no memory, and the
    user's model untouched."""
    import copy

    import torch

    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def layout_of(
    model: Any, factory: str, inp: InputSpec, layers_fn: Callable[[Any, InputSpec], list[str]]
) -> tuple[ModuleLayout, Any]:
    """(the layout of `model`, its meta copy), from one forward pass of one image on the meta
    device (`layers_fn`: the recorded layers of the copy); a failing forward is a UsageError."""
    import torch

    channels, size = inp.channels, inp.size
    skel = meta_copy(model)
    params = {n for n, _ in skel.named_parameters()}
    state = tuple(
        (n, dtype_name(t), tuple(t.shape), n in params) for n, t in skel.state_dict().items()
    )
    modules = tuple(
        (n, type(m).__name__)
        for n, m in skel.named_modules()
        if next(m.parameters(recurse=False), None) is not None
        or next(m.buffers(recurse=False), None) is not None
    )
    outputs: dict[str, tuple[int, ...]] = {}

    def note(name: str, out: Any) -> None:  # returns None: the output is left as it is
        if torch.is_tensor(out):
            outputs.setdefault(name, tuple(out.shape[1:]))

    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: note(name, out))
        for name, m in skel.named_modules()
        if name
    ]
    try:
        with torch.device("meta"), torch.no_grad():
            skel.eval()(torch.empty(1, channels, *size))
    except Exception as exc:  # the user's forward: the images do not fit it
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(
            "model",
            f"{type(model).__name__} cannot take {channels}x{size[0]}x{size[1]} images ({first})",
        ) from None
    finally:
        for h in hooks:
            h.remove()
    try:
        layers = tuple(layers_fn(skel, inp))
    except ValueError as exc:
        raise UsageError("model", f"{type(model).__name__}: {exc}") from None
    layout = ModuleLayout(factory, state, modules, tuple(outputs.items()), layers)
    try:  # what a reader accepts, or one line now
        return ModuleLayout.from_dict(layout.to_dict()), skel
    except ValueError as exc:
        raise UsageError("model", f"{type(model).__name__} cannot be stored: {exc}") from None


def layout_mismatch(layout: ModuleLayout, state: Mapping[str, Any]) -> str | None:
    """None when `state` has the layout's tensor names, dtypes and shapes; else the first."""
    want = {n: (d, s) for n, d, s, _ in layout.state}
    got = {n: (dtype_name(t), tuple(t.shape)) for n, t in state.items()}
    for k in sorted(want.keys() | got.keys()):
        if want.get(k) != got.get(k):
            return f"{k}: stored {want.get(k, 'none')}, built {got.get(k, 'none')}"
    return None


def call_factory(
    ref: str, kwargs: Mapping[str, Any], modules: tuple[str, ...], what: str = "--model-factory"
) -> Any:
    """Import `ref` ("pkg.mod:name") and call it with `kwargs`, only if its module is one of
    `modules` (the user's --trust-code) or under one; the result must be an nn.Module."""
    import torch

    mod_name, _, qual = ref.partition(":")
    if not any(mod_name == m or mod_name.startswith(m + ".") for m in modules):
        raise ProbeError(
            f"{what} {ref} is outside --trust-code {', '.join(modules) or '(none given)'}; "
            "nothing was imported"
        )
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ProbeError(f"cannot import the model factory {ref} ({exc})") from None
    model = obj(**dict(kwargs))
    if not isinstance(model, torch.nn.Module):
        raise ProbeError(f"{ref} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def build_module(layout: ModuleLayout, kwargs: Mapping[str, Any]) -> Any:
    """The user's model, built by the trusted factory (a fresh module: the caller loads weights).

    Without a `CodeTrust` nothing is imported (`CodeNotTrusted`, a Skip); a reference outside the
    trusted modules is refused before anything is imported; the built model must match the layout.
    """
    import torch

    trust = TRUST.get()
    if trust is None or (trust.factory is None and not trust.modules):
        raise CodeNotTrusted(
            f"the model is the user's own class {layout.factory}; rebuilding it runs that code: "
            f"analyse with --trust-code {layout.top_module} (Python: model=<factory>)"
        )
    if trust.factory is not None:
        model = trust.factory()
        where = "the model factory given"
        if not isinstance(model, torch.nn.Module):
            raise ProbeError(f"{where} returned a {type(model).__name__}, not a torch.nn.Module")
    else:
        model = call_factory(layout.factory, kwargs, trust.modules, "the run's model factory")
        where = layout.factory
    why = layout_mismatch(layout, model.state_dict())
    if why:
        raise ProbeError(f"{where} builds a model that does not fit the stored weights ({why})")
    return model
