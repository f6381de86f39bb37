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

from .device import kernel_device, on_host

#: Op kinds. Passes and the Dask lowering branch on these, never on op names.
#:   elementwise  out[i] depends on in[i] only (with ONNX broadcasting): math, activations, Cast
#:   reduce       reduces or normalises along attribute-given axes (ReduceMean, Softmax, ArgMax)
#:   movement     rearranges elements without arithmetic (Reshape, Transpose, Slice, Concat...)
#:   indexing     moves values to or from positions given by another input's values
#:                (ScatterND, ScatterElements, NonZero): chunks would renumber the positions
#:   contraction  multiply-accumulate over weights (Conv, ConvTranspose, Gemm, MatMul, Einsum)
#:   window       sliding-window reductions (MaxPool, AveragePool, LRN, global pools)
#:   norm         normalisation with learned parameters (BatchNorm, LayerNorm, InstanceNorm)
#:   shape        output depends only on input shapes or attributes (Shape, Range, Constant...)
#:   identity     passes its input through unchanged at inference (Identity, Dropout)
KINDS = (
    "elementwise",
    "reduce",
    "movement",
    "indexing",
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
    domain : str
        ONNX domain; ``""`` for the standard one.

    Attributes
    ----------
    attributes : frozenset of str
        The attribute names the op takes (the reference's keyword-only parameters).
    min_inputs, max_inputs : int
        How many inputs a node may pass (``max_inputs`` is ``math.inf`` for variadic ops).

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow import ops
    >>> spec = ops.get("LeakyRelu")
    >>> spec.kind, sorted(spec.attributes)
    ('elementwise', ['alpha'])
    >>> spec(np.array([-2.0, 3.0], np.float32), alpha=0.5)       # the reference, as a tuple
    (array([-1.,  3.], dtype=float32),)
    >>> ops.get("Conv").flops([(1, 3, 8, 8), (4, 3, 3, 3)], [(1, 4, 6, 6)])
    7776
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
            self.flops = zero_flops if self.kind in ("movement", "indexing", "shape",
                                                     "identity") \
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
        """Return why a node with these inputs/attributes is unsupported, or None if it is fine.

        Examples
        --------
        >>> from taskflow import ops
        >>> ops.get("Relu").check(1, {}) is None
        True
        >>> ops.get("Relu").check(1, {"alpha": 0.1})
        "attribute(s) ['alpha'] not supported (known: [])"
        """
        unknown = sorted(set(attrs) - self.attributes) if not self.takes_var_attrs else []
        if unknown:
            return f"attribute(s) {unknown} not supported (known: {sorted(self.attributes)})"
        if n_inputs < self.min_inputs or n_inputs > self.max_inputs:
            hi = "any" if self.max_inputs == math.inf else self.max_inputs
            return f"takes {self.min_inputs}..{hi} inputs, got {n_inputs}"
        return None

    def kernel(self, device: str = "cpu", strict: bool = False,
               warn: bool = True) -> Callable[..., Any]:
        """The kernel for ``device``, falling back to the reference (warning once).

        ``"reference"`` is the numpy definition; ``"cpu"`` the Numba/BLAS kernel where one is
        registered; ``"gpu"`` (and ``"gpu:N"``) the CuPy kernel (imported on this first
        request). With ``strict=True`` a missing GPU kernel raises
        :class:`~taskflow.UnsupportedOpError`; otherwise the gpu fallback is the reference run
        on the host (:func:`taskflow.ops.device.on_host`), with one warning per op unless
        ``warn=False`` (the executor warns once per model instead).

        Examples
        --------
        >>> from taskflow import ops
        >>> ops.get("Relu").kernel("cpu").__name__
        'relu_cpu'
        >>> ops.get("Relu").kernel("reference").__name__
        'relu'
        >>> ops.get("Relu").kernel("gpu:1").__name__
        'relu_gpu'
        """
        device = kernel_device(device)
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
        if warn and key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"op {self.name!r} has no {device!r} kernel; using the numpy reference",
                RuntimeWarning,
                stacklevel=2,
            )
        return on_host(self.reference) if device == "gpu" else self.reference

    def has_kernel(self, device: str) -> bool:
        """Whether ``device`` runs this op with a kernel of its own (``"cpu"`` and
        ``"reference"`` always do: the cpu fallback is the reference itself).

        Examples
        --------
        >>> from taskflow import ops
        >>> ops.get("Conv").has_kernel("gpu"), ops.get("NonZero").has_kernel("gpu")
        (True, False)
        """
        device = kernel_device(device)
        _load_lazy(device)
        return device in ("cpu", "reference") or device in self.kernels

    def __call__(self, *inputs: Any, device: str = "reference", **attrs: Any) -> tuple:
        """Run the op and always return a tuple of outputs."""
        fn = self.reference if device == "reference" else self.kernel(device)
        return as_outputs(fn(*inputs, **attrs))


_REGISTRY: dict[str, OpSpec] = {}
_LAZY: dict[str, list[str]] = {}
_warned: set[tuple[str, str]] = set()


def as_outputs(result: Any) -> tuple:
    """Normalise a kernel's result to a tuple of arrays (0-d numpy scalars become arrays).

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow import ops
    >>> ops.as_outputs(np.float32(2.5))
    (array(2.5, dtype=float32),)
    >>> len(ops.as_outputs([np.zeros(3), None]))
    2
    """
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

    Parameters
    ----------
    name : str
        The ONNX op type; registering a name twice raises ``ValueError``.
    kind : str
        One of :data:`KINDS`: what compiler passes and the Dask lowering go by.
    flops : callable, optional
        ``flops(in_shapes, out_shapes, **attrs) -> int``; default: one per output element,
        zero for movement, shape and identity ops.
    domain : str
        ONNX domain of the op; ``""`` for the standard one.

    Examples
    --------
    The reference is the definition: inputs positional, attributes keyword-only with ONNX's
    defaults.

    >>> import numpy as np
    >>> from taskflow import ops
    >>> @ops.register("ScaledTanh", "elementwise", domain="example.ops")
    ... def scaled_tanh(x, *, alpha=1.0, beta=1.0):
    ...     "alpha * tanh(beta * x)"
    ...     return (alpha * np.tanh(beta * x)).astype(x.dtype)
    >>> ops.get("ScaledTanh").attributes == {"alpha", "beta"}
    True
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"op {name!r} is registered twice")
        _REGISTRY[name] = OpSpec(name=name, kind=kind, reference=fn, flops=flops, domain=domain)
        return fn

    return deco


def register_kernel(name: str, device: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a device kernel for an already registered op.

    The kernel takes exactly the reference's arguments and must agree with it.

    Parameters
    ----------
    name : str
        An op already registered with :func:`register`.
    device : str
        ``"cpu"`` (Numba/BLAS) or ``"gpu"`` (CuPy).

    Examples
    --------
    >>> import numpy as np
    >>> from numba import njit
    >>> from taskflow import ops
    >>> @njit(cache=True)                                        # doctest: +SKIP
    ... def _softsign(x):
    ...     return x / (1 + np.abs(x))
    >>> @ops.register_kernel("Softsign", "cpu")                  # doctest: +SKIP
    ... def softsign_cpu(x):
    ...     return _softsign(x)
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        get(name).kernels[device] = fn
        return fn

    return deco


def register_lazy(device: str, module: str) -> None:
    """Import ``module`` (which registers ``device`` kernels) only when a kernel is first asked.

    Keeps CuPy out of ``import taskflow`` on machines without a GPU.

    Parameters
    ----------
    device : str
        The device whose first :meth:`OpSpec.kernel` request imports ``module``.
    module : str
        Absolute module name; importing it runs its :func:`register_kernel` decorators.

    Examples
    --------
    >>> from taskflow import ops
    >>> ops.register_lazy("gpu", "my_package.cupy_kernels")     # doctest: +SKIP
    """
    _LAZY.setdefault(device, []).append(module)


def _load_lazy(device: str) -> None:
    for module in _LAZY.pop(device, []):
        importlib.import_module(module)


def get(name: str) -> OpSpec:
    """The spec of op ``name``; ``KeyError`` if it is not registered.

    Examples
    --------
    >>> from taskflow import ops
    >>> ops.get("Conv").kind
    'contraction'
    >>> ops.get("Convolution")
    Traceback (most recent call last):
    ...
    KeyError: "no op 'Convolution' in the registry"
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no op {name!r} in the registry") from None


def lookup(name: str) -> OpSpec | None:
    """The spec of op ``name``, or None if it is not registered.

    Examples
    --------
    >>> from taskflow import ops
    >>> ops.lookup("Relu").kind, ops.lookup("Convolution")
    ('elementwise', None)
    """
    return _REGISTRY.get(name)


def names() -> list[str]:
    """All registered op types, sorted.

    Examples
    --------
    >>> from taskflow import ops
    >>> "Conv" in ops.names(), ops.names()[:3]
    (True, ['Abs', 'Add', 'And'])
    """
    return sorted(_REGISTRY)


def specs() -> list[OpSpec]:
    """Every registered :class:`OpSpec`, sorted by name.

    Examples
    --------
    >>> from collections import Counter
    >>> from taskflow import ops
    >>> Counter(spec.kind for spec in ops.specs())["contraction"] > 0
    True
    """
    return [_REGISTRY[n] for n in names()]


# --- batch rows ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchView:
    """Where the batch lives around one node, as the Dask lowering's trace saw it.

    A layout is ``(axis, factor, outer)``: ``axis`` has length ``batch * factor`` and reads as
    ``(outer, batch, factor // outer)`` (the batch itself: ``(0, 1, 1)``; ``(B*H, S, D)``:
    ``(0, H, 1)``). ``None``: the value does not carry the batch. The output's ``outer`` is not
    known yet when a rule runs (the row check finds it): rules compare axis and factor.
    """

    inputs: tuple[tuple[int, int, int] | None, ...]  #: per input (None also for omitted ones)
    in_ranks: tuple[int, ...]
    output: tuple[int, int, int] | None  #: layout of the first output
    out_rank: int
    #: The node's ``axis``/``axes`` operand (given, else the op's default), normalised against
    #: input 0's rank; None where the op has none, or where it means "every axis".
    axes: tuple[int, ...] | None = None


def _same_rows(view: BatchView) -> str:
    """Elementwise and identity: with ONNX's right-aligned broadcasting, every input's batch
    axis must land on the output's batch axis (with the same factor), or rows would meet."""
    for k, (lay, rank) in enumerate(zip(view.inputs, view.in_ranks)):
        if lay is None or view.output is None:
            continue
        aligned = (lay[0] + view.out_rank - rank, lay[1])
        if aligned != view.output[:2]:
            return (f"input {k} carries the batch on axis {lay[0]}, which broadcasts onto output "
                    f"axis {aligned[0]}, but the output carries it on axis {view.output[0]}")
    return ""


def _not_along_batch(view: BatchView) -> str:
    """Reduce: the reduced axes must exclude input 0's batch axis."""
    lay = view.inputs[0] if view.inputs else None
    if lay is None:
        return ""
    if view.axes is None:
        return f"it reduces along every axis, batch axis {lay[0]} included"
    if lay[0] in view.axes:
        return f"it works along axis {lay[0]}, where its input carries the batch"
    return ""


def _norm_rows(view: BatchView) -> str:
    """Norm: learned parameters index the channel axis 1 and statistics run over the axes from
    ``axis`` (LayerNormalization) or 2 (Batch/InstanceNormalization) on: the batch must lie
    before them (and, without ``axis``, on axis 0)."""
    lay = view.inputs[0] if view.inputs else None
    if lay is None:
        return ""
    if view.axes:
        first = min(view.axes)
        return "" if lay[0] < first else (
            f"it normalises over axes {first}.., which include batch axis {lay[0]}")
    return "" if lay[0] == 0 else f"its per-channel parameters meet batch axis {lay[0]}"


def _window_rows(view: BatchView) -> str:
    """Window: windows slide along axes 2.. (N, C, spatial...)."""
    lay = view.inputs[0] if view.inputs else None
    if lay is None or lay[0] < 2:
        return ""
    return f"its windows slide along axis {lay[0]}, where its input carries the batch"


def _traced(view: BatchView) -> str:
    """Movement, contraction, shape: where the batch goes is what the trace shows."""
    return ""


def _positions_not_batched(view: BatchView) -> str:
    """Indexing ops (scatter, NonZero) address positions of their data input by *value*: a
    chunk's row 0 is not the batch's row 0, and whether the trace's random values happen to
    hide that is luck, so the data must not carry the batch along an indexed axis."""
    data = view.inputs[0] if view.inputs else None
    if data is None:
        return _traced(view)
    axis = data[0]
    if view.axes is None or axis in view.axes:
        return (f"it addresses positions of its input along axis {axis}, which carries the "
                "batch, by value: chunks would renumber them")
    return ""


#: Per kind, a first rule for whether a node keeps batch rows independent: returns why not, or
#: "". The Dask lowering applies it, then confirms every candidate by running the node on a
#: slice of rows (:mod:`taskflow.dask.trace`), so a rule may be permissive, never wrong.
ROW_RULES: dict[str, Callable[[BatchView], str]] = {
    "elementwise": _same_rows,
    "identity": _same_rows,
    "reduce": _not_along_batch,
    "norm": _norm_rows,
    "window": _window_rows,
    "movement": _traced,
    "indexing": _positions_not_batched,
    "contraction": _traced,
    "shape": _traced,
}
