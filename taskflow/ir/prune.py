"""Magnitude pruning: a graph-to-graph transformation with a report.

Structured pruning removes whole output channels of a Conv/Gemm/MatMul (smallest L1 norm first)
together with everything that depends on them: the bias, the per-channel constants of the
channel-wise ops in between (BatchNormalization, bias Add, activations, pooling, ...) and the
matching input channels of the one contraction that reads them. The dense model shrinks, so it
runs faster with the ordinary kernels. Unstructured pruning zeroes the smallest weights in place;
the graph stays dense (standard ONNX). Which layers then multiply by their non-zeros only (CSR,
:mod:`taskflow.ops.cpu.sparse`) is measured per layer by :meth:`taskflow.Model.prune`
(:mod:`taskflow.precision.sparse`), which records each choice here as a :class:`SparseChoice`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from taskflow import ops
from taskflow.errors import InputError
from taskflow.ir.graph import Graph, Node
from taskflow.ir.optimize import eliminate_dead

#: Contractions whose weight layout this module knows (the output/input channel axes differ per
#: op, so this is the one place that names ops rather than kinds).
PRUNABLE = ("Conv", "Gemm", "MatMul")
#: Window ops that mix channels (LRN sums over neighbouring channels); the rest pool per channel.
_MIXING_WINDOWS = ("LRN",)

UNSTRUCTURED_NOTE = ("weights zeroed in dense tensors; Model.prune times a sparse (CSR) kernel "
                     "against the dense one per layer and runs it where it is faster")


@dataclass
class LayerPrune:
    """One pruned layer: ``kept`` of ``total`` output channels (or non-zero weights);
    ``channels``: the indices of the output channels kept (structured pruning only).

    Examples
    --------
    >>> LayerPrune("conv1", "Conv", kept=8, total=16).kept
    8
    """

    name: str
    op: str
    kept: int
    total: int
    channels: tuple[int, ...] = ()


@dataclass
class SparseChoice:
    """One layer's measured choice between the sparse (CSR) and the dense kernel after
    unstructured pruning: ``kernel`` is ``"sparse"`` or ``"dense"``; ``dense_ms`` and
    ``sparse_ms`` are the best time of one call of each (None: not measured, ``why`` says why).

    Examples
    --------
    >>> c = SparseChoice("fc1", "FusedGemm", (64, 256), 0.9, 1.5, 0.5, "sparse")
    >>> print(c)
    fc1 (FusedGemm, weight (64, 256)): sparsity 0.90, dense 1.500 ms, sparse 0.500 ms: sparse
    """

    name: str
    op: str
    shape: tuple[int, ...]
    sparsity: float
    dense_ms: float | None = None
    sparse_ms: float | None = None
    kernel: str = "dense"
    why: str = ""

    def __str__(self) -> str:
        head = (f"{self.name} ({self.op}, weight {tuple(self.shape)}): "
                f"sparsity {self.sparsity:.2f}")
        if self.dense_ms is None or self.sparse_ms is None:
            return f"{head}: {self.kernel} ({self.why})" if self.why else f"{head}: {self.kernel}"
        return (f"{head}, dense {self.dense_ms:.3f} ms, sparse {self.sparse_ms:.3f} ms: "
                f"{self.kernel}")


@dataclass
class PruneReport:
    """What :func:`prune` did: per-layer channels kept, layers skipped and why, parameters;
    after unstructured pruning by :meth:`taskflow.Model.prune`, ``kernels``: each eligible
    layer's :class:`SparseChoice`.

    Examples
    --------
    >>> r = PruneReport(sparsity=0.5, structured=True, params_before=10, params_after=6)
    >>> print(r)
    structured pruning, sparsity 0.5: parameters 10 -> 6 (0.60x)
    """

    sparsity: float
    structured: bool
    params_before: int = 0
    params_after: int = 0
    layers: list[LayerPrune] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kernels: list[SparseChoice] = field(default_factory=list)

    def __str__(self) -> str:
        kind = "structured" if self.structured else "unstructured"
        ratio = self.params_after / self.params_before if self.params_before else 1.0
        unit = "channels" if self.structured else "non-zero weights"
        lines = [f"{kind} pruning, sparsity {self.sparsity:g}: parameters "
                 f"{self.params_before} -> {self.params_after} ({ratio:.2f}x)"]
        lines += [f"  {lay.name} ({lay.op}): kept {lay.kept}/{lay.total} {unit}"
                  for lay in self.layers]
        lines += [f"  {name}: skipped, {why}" for name, why in self.skipped]
        if self.kernels:
            lines.append("  kernels (executed graph):")
            lines += [f"    {c}" for c in self.kernels]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def prune(graph: Graph, sparsity: float, *, structured: bool = True) -> tuple[Graph, PruneReport]:
    """Magnitude-prune the Conv/Gemm/MatMul weights of a copy of ``graph``.

    Parameters
    ----------
    graph : Graph
        Not modified.
    sparsity : float
        In [0, 1): the fraction of each layer's output channels (structured, at least one kept)
        or of each weight tensor's elements (unstructured) to remove.
    structured : bool
        Remove whole output channels (and the next layer's matching inputs) if True; zero the
        smallest weights per tensor, in dense tensors, if False (the kernel choice is
        :meth:`taskflow.Model.prune`'s).

    Returns
    -------
    (Graph, PruneReport)

    Raises
    ------
    InputError
        ``sparsity`` outside [0, 1).

    Examples
    --------
    >>> from taskflow.frontend import nn
    >>> g = nn.Sequential([nn.Dense(8, 6), nn.ReLU(), nn.Dense(6, 2)], input_shape=(8,)).to_graph()
    >>> pruned, report = prune(g, 0.5)
    >>> [(lay.kept, lay.total) for lay in report.layers]
    [(3, 6)]
    """
    try:
        value = float(sparsity)
    except (TypeError, ValueError) as exc:
        raise InputError(f"sparsity {sparsity!r} is not a number; give a fraction in [0, 1), "
                         f"e.g. 0.5") from exc
    if not 0.0 <= value < 1.0:
        raise InputError(f"sparsity {sparsity!r} is outside [0, 1); give the fraction of "
                         f"channels or weights to remove, e.g. 0.5")
    report = PruneReport(value, structured, params_before=graph.parameter_count())
    g = graph.copy()
    if structured:
        _prune_channels(g, value, report)
    else:
        _prune_weights(g, value, report)
        report.notes.append(UNSTRUCTURED_NOTE)
    g = eliminate_dead(g)
    report.params_after = g.parameter_count()
    return g, report


# --- structured ----------------------------------------------------------------------------------


@dataclass
class _Plan:
    producer: Node
    out_axis: int  # of the producer's weight
    chain: list[tuple[Node, int, int, int]]  # channel-wise node, channel axis, rank, group size
    consumer: Node
    in_axis: int  # of the consumer's weight
    group: int  # consumer input columns per producer channel (a Flatten of H*W makes it H*W)
    outputs: list[tuple[str, int, int]]  # values whose shape changes: name, axis, group


def _layer_name(n: Node) -> str:
    return n.name or n.outputs[0]


def _weight_axes(g: Graph, n: Node) -> tuple[int, int] | str:
    """(output-channel axis, input-channel axis) of ``n``'s constant weight, or why not."""
    w = g.initializers.get(n.inputs[1]) if len(n.inputs) > 1 else None
    if w is None or w.dtype.kind != "f":
        return "its weight is not a float constant"
    if n.op == "Conv":
        return (0, 1) if int(n.attrs.get("group", 1)) == 1 else "grouped convolution"
    if w.ndim != 2:
        return f"{w.ndim}-d weight"
    if n.op == "Gemm":
        if n.attrs.get("transA", 0):
            return "Gemm with transA=1"
        return (0, 1) if n.attrs.get("transB", 0) else (1, 0)
    return (1, 0)  # MatMul x @ W, W (in, out)


def _plan(g: Graph, prod: Node, consumers: dict[str, list[Node]]) -> _Plan | str:
    axes = _weight_axes(g, prod)
    if isinstance(axes, str):
        return axes
    w = g.initializers[prod.inputs[1]]
    value = prod.outputs[0]
    shape = g.values[value].shape if value in g.values else None
    rank = w.ndim if prod.op == "Conv" else (len(shape) if shape else 2)
    axis = 1 if prod.op == "Conv" else rank - 1
    group, chain, outputs = 1, [], [(value, axis, 1)]
    while True:
        if value in g.output_names:
            return f"{value!r} is a graph output"
        users = consumers.get(value, [])
        if len(users) != 1:
            return f"{value!r} has {len(users)} readers ({', '.join(u.op for u in users)})"
        n = users[0]
        kind = ops.lookup(n.op).kind if ops.lookup(n.op) is not None else None
        others = [i for i in n.inputs if i and i != value]
        if n.op in PRUNABLE and n.inputs[0] == value:
            c_axes = _weight_axes(g, n)
            if isinstance(c_axes, str):
                return f"its reader {n.op} {_layer_name(n)!r} has {c_axes}"
            if n.op != "Conv" and axis != rank - 1:
                return f"its channels are not the last axis of {n.op} {_layer_name(n)!r}'s input"
            return _Plan(prod, axes[0], chain, n, c_axes[1], group, outputs)
        if kind == "elementwise" or (kind in ("identity", "norm", "window")
                                     and n.inputs[0] == value):
            if kind == "elementwise" and any(i not in g.initializers for i in others):
                return f"{n.op} {_layer_name(n)!r} mixes it with another branch"
            if kind == "norm" and n.op != "BatchNormalization":
                return f"{n.op} {_layer_name(n)!r} normalises across channels"
            if kind == "window" and (n.op in _MIXING_WINDOWS or axis != 1):
                return f"{n.op} {_layer_name(n)!r} mixes channels"
        elif n.op == "Flatten" and int(n.attrs.get("axis", 1)) == 1 and axis == 1:
            dims = g.values[value].shape if value in g.values else None
            if not dims or not all(isinstance(d, int) for d in dims[2:]):
                return f"Flatten {_layer_name(n)!r} has unknown spatial dims"
            group *= int(np.prod(dims[2:], dtype=np.int64))
            rank = 2
        else:
            return f"{n.op} {_layer_name(n)!r} mixes channels"
        chain.append((n, axis, rank, group))
        value = n.outputs[0]
        outputs.append((value, axis, group))


def _slice(g: Graph, node: Node, index: int, keep: np.ndarray, axis: int) -> None:
    """Replace ``node.inputs[index]`` with a new constant taking ``keep`` along ``axis``."""
    old = node.inputs[index]
    name = g.unique_name(f"{old}_pruned")
    g.initializers[name] = np.ascontiguousarray(np.take(g.initializers[old], keep, axis=axis))
    node.inputs[index] = name


def _slice_channelwise(g: Graph, n: Node, keep: np.ndarray, axis: int, rank: int,
                       channels: int) -> None:
    if n.op == "BatchNormalization":
        for i in range(1, 5):
            _slice(g, n, i, keep, 0)
        return
    for i, name in enumerate(n.inputs):
        c = g.initializers.get(name)  # the pruned value itself is never a constant
        if c is None or c.ndim == 0 or c.ndim > rank:
            continue
        c_axis = axis - (rank - c.ndim)
        if c_axis >= 0 and c.shape[c_axis] == channels:
            _slice(g, n, i, keep, c_axis)


def _prune_channels(g: Graph, sparsity: float, report: PruneReport) -> None:
    consumers = g.consumers()
    plans: list[_Plan] = []
    for n in g.nodes:
        if n.op in PRUNABLE:
            plan = _plan(g, n, consumers)
            if isinstance(plan, str):
                report.skipped.append((_layer_name(n), plan))
            else:
                plans.append(plan)
    # Choose every layer's channels from the original weights, then rewrite: a layer both loses
    # output channels (its own plan) and input channels (its producer's plan), in either order.
    choices = []
    for p in plans:
        w = g.initializers[p.producer.inputs[1]]
        total = w.shape[p.out_axis]
        norms = np.abs(w).sum(axis=tuple(a for a in range(w.ndim) if a != p.out_axis))
        kept = max(1, total - int(np.floor(sparsity * total + 1e-9)))
        keep = np.sort(np.argsort(-norms, kind="stable")[:kept])
        choices.append((p, keep, total))
    for p, keep, total in choices:
        prod = p.producer
        _slice(g, prod, 1, keep, p.out_axis)
        if len(prod.inputs) > 2 and prod.inputs[2]:
            b = g.initializers.get(prod.inputs[2])
            if b is not None and b.ndim >= 1 and b.shape[-1] == total:
                _slice(g, prod, 2, keep, b.ndim - 1)
        for n, axis, rank, _ in p.chain:
            _slice_channelwise(g, n, keep, axis, rank, total)
        cols = (keep[:, None] * p.group + np.arange(p.group)).reshape(-1)
        _slice(g, p.consumer, 1, cols, p.in_axis)
        for name, axis, group in p.outputs:
            v = g.values.get(name)
            if v is not None and v.shape and isinstance(v.shape[axis], int):
                v.shape = (*v.shape[:axis], len(keep) * group, *v.shape[axis + 1:])
        report.layers.append(LayerPrune(_layer_name(prod), prod.op, len(keep), total,
                                        tuple(int(c) for c in keep)))


# --- unstructured --------------------------------------------------------------------------------


def _prune_weights(g: Graph, sparsity: float, report: PruneReport) -> None:
    done: dict[str, str] = {}
    for n in g.nodes:
        if n.op not in PRUNABLE or len(n.inputs) < 2 or n.inputs[1] not in g.initializers:
            continue
        old = n.inputs[1]
        w = g.initializers[old]
        if w.dtype.kind != "f":
            report.skipped.append((_layer_name(n), "its weight is not a float constant"))
            continue
        if old not in done:
            k = int(np.floor(sparsity * w.size + 1e-9))
            flat = w.reshape(-1).copy()
            if k:
                flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0
            done[old] = g.unique_name(f"{old}_pruned")
            g.initializers[done[old]] = flat.reshape(w.shape)
            report.layers.append(LayerPrune(_layer_name(n), n.op,
                                            int(np.count_nonzero(flat)), w.size))
        n.inputs[1] = done[old]
