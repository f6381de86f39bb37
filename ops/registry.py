"""The op registry: one :class:`OpSpec` per ONNX op type.

An op is defined by its numpy **reference** function, written in one uniform signature:
inputs are positional (``None`` for an omitted optional input), attributes are keyword-only with
the ONNX defaults as Python defaults, and the result is one array or a tuple of arrays::

    def leaky_relu(x, *, alpha=0.01):
        return np.where(x >= 0, x, x * np.asarray(alpha, x.dtype))

Kernels for a device (``"cpu"`` = Numba, ``"gpu"`` = CuPy) take exactly the same arguments and
must agree with the reference. The registry checks the contract (arity, known attributes) so
op code stays small, and compiler passes ask an op's ``kind`` rather than its name.
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Op kinds. Passes and the Dask lowering branch on these, never on op names.
#:   elementwise  out[i] depends on in[i] only (with ONNX broadcasting): math, activations, Cast
#:   reduce       reduces or normalises along attribute-given axes (ReduceMean, Softmax, ArgMax)
#:   movement     rearranges elements without arithmetic (Reshape, Transpose, Slice, Concat...)
#:   contraction  multiply-accumulate over weights (Conv, ConvTranspose, Gemm, MatMul, Einsum)
#:   window       sliding-window reductions (MaxPool, AveragePool, LRN, global pools)
#:   norm         normalisation with learned parameters (BatchNorm, LayerNorm, InstanceNorm)
#:   shape        output depends only on input shapes or attributes (Shape, Range, Constant...)
#:   identity     passes its input through unchanged at inference (Identity, Dropout)
KINDS = (
    "elementwise",
    "reduce",
    "movement",
    "contraction",
    "window",
    "norm",
    "shape",
    "identity",
)

FlopFn = Callable[..., int]


def elementwise_flops(in_shapes: Sequence[tuple[int, ...]], out_shapes: Sequence[tuple[int, ...]],
                      **attrs: Any) -> int:
    """One operation per output element: the default FLOP count."""
    return int(sum(math.prod(s) for s in out_shapes))


def zero_flops(in_shapes: Sequence[tuple[int, ...]], out_shapes: Sequence[tuple[int, ...]],
               **attrs: Any) -> int:
    return 0


@dataclass
class OpSpec:
    """Everything taskflow knows about one op type.

    Parameters
    ----------
    name : str
        The ONNX op type, e.g. ``"Conv"``.
    kind : str
        One of :data:`KINDS`.
    reference : callable
        The numpy definition, ``reference(*inputs, **attrs) -> array | tuple``.
    flops : callable
        ``flops(in_shapes, out_shapes, **attrs) -> int``; defaults by kind.
    kernels : dict of str to callable
        Device kernels (``"cpu"``, ``"gpu"``) with the reference's signature.
    """

    name: str
    kind: str
    reference: Callable[..., Any]
    flops: FlopFn | None = None
    kernels: dict[str, Callable[..., Any]] = field(default_factory=dict)
    domain: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"op {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.flops is None:
            self.flops = zero_flops if self.kind in ("movement", "shape", "identity") \
                else elementwise_flops
        sig = inspect.signature(self.reference)
        params = list(sig.parameters.values())
        self.attributes: frozenset[str] = frozenset(
            p.name for p in params if p.kind is p.KEYWORD_ONLY
        )
        self.takes_var_attrs = any(p.kind is p.VAR_KEYWORD for p in params)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.variadic = any(p.kind is p.VAR_POSITIONAL for p in params)
        self.max_inputs = math.inf if self.variadic else len(positional)
        self.min_inputs = sum(1 for p in positional if p.default is inspect.Parameter.empty)

    def check(self, n_inputs: int, attrs: dict[str, Any]) -> str | None:
        """Return why a node with these inputs/attributes is unsupported, or None if it is fine."""
        unknown = sorted(set(attrs) - self.attributes) if not self.takes_var_attrs else []
        if unknown:
            return f"attribute(s) {unknown} not supported (known: {sorted(self.attributes)})"
        if n_inputs < self.min_inputs or n_inputs > self.max_inputs:
            hi = "any" if self.max_inputs == math.inf else self.max_inputs
            return f"takes {self.min_inputs}..{hi} inputs, got {n_inputs}"
        return None

    def kernel(self, device: str = "cpu", strict: bool = False) -> Callable[..., Any]:
        """The kernel for ``device``, falling back to the reference (warning once)."""
        _load_lazy(device)
        fn = self.kernels.get(device)
        if fn is not None:
            return fn
        if device == "cpu" or device == "reference":
            return self.reference
        if strict:
            from taskflow.errors import UnsupportedOpError

            raise UnsupportedOpError(
                f"op {self.name!r} has no {device!r} kernel (has: {sorted(self.kernels)})",
                [(self.name, "")],
            )
        key = (self.name, device)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"op {self.name!r} has no {device!r} kernel; using the numpy reference",
                RuntimeWarning,
                stacklevel=2,
            )
        return self.reference

    def __call__(self, *inputs: Any, device: str = "reference", **attrs: Any) -> tuple:
        """Run the op and always return a tuple of outputs."""
        fn = self.reference if device == "reference" else self.kernel(device)
        return as_outputs(fn(*inputs, **attrs))


_REGISTRY: dict[str, OpSpec] = {}
_LAZY: dict[str, list[str]] = {}
_warned: set[tuple[str, str]] = set()


def as_outputs(result: Any) -> tuple:
    """Normalise a kernel's result to a tuple of arrays (0-d numpy scalars become arrays)."""
    if isinstance(result, tuple):
        return tuple(_as_array(r) for r in result)
    if isinstance(result, list):
        return tuple(_as_array(r) for r in result)
    return (_as_array(result),)


def _as_array(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


def register(name: str, kind: str, *, flops: FlopFn | None = None,
             domain: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a numpy reference as op ``name``.

    Examples
    --------
    >>> @register("Relu", "elementwise")            # doctest: +SKIP
    ... def relu(x):
    ...     "max(x, 0)"
    ...     return np.maximum(x, 0)
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"op {name!r} is registered twice")
        _REGISTRY[name] = OpSpec(name=name, kind=kind, reference=fn, flops=flops, domain=domain)
        return fn

    return deco


def register_kernel(name: str, device: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a device kernel for an already registered op."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        get(name).kernels[device] = fn
        return fn

    return deco


def register_lazy(device: str, module: str) -> None:
    """Import ``module`` (which registers ``device`` kernels) only when a kernel is first asked.

    Keeps CuPy out of ``import taskflow`` on machines without a GPU.
    """
    _LAZY.setdefault(device, []).append(module)


def _load_lazy(device: str) -> None:
    for module in _LAZY.pop(device, []):
        importlib.import_module(module)


def get(name: str) -> OpSpec:
    """The spec of op ``name``; ``KeyError`` listing what exists if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no op {name!r} in the registry") from None


def lookup(name: str) -> OpSpec | None:
    return _REGISTRY.get(name)


def names() -> list[str]:
    """All registered op types, sorted."""
    return sorted(_REGISTRY)


def specs() -> list[OpSpec]:
    return [_REGISTRY[n] for n in names()]
