"""Where the batch lives in every value, and which nodes keep its rows independent.

The Dask lowering runs a node on each batch chunk separately only where that gives the same
numbers as running it on the whole batch. That is decided generically, never by op name. The
graph is run in-process at two batch sizes (:data:`TRACE_BATCHES`) and every value is classed

- ``const``  depends on no graph input (initializers, folded Constant/ConstantOfShape chains);
- ``batch``  carries the batch: its *layout* ``(axis, factor, outer)`` says ``axis`` has length
  ``batch * factor`` and reads as ``(outer, batch, factor // outer)``: ``(B*H, S, D)`` is
  ``(0, H, 1)``, ``nn.MultiheadAttention``'s ``(S*B, E)`` is ``(0, S, S)``, the batch itself
  ``(0, 1, 1)``; every other dim is the same at both sizes. A chunk of rows ``r0:r1`` is those
  rows of the ``batch`` sub-axis (:mod:`taskflow.dask.layout`), a contiguous slice when
  ``outer`` is 1;
- ``meta``   derived from graph inputs only through their *shapes* (``Shape`` -> ``Gather`` ->
  ``Concat`` feeding a ``Reshape``); recomputed inside each task that needs it, from the
  shapes that task holds (a chunk's in a per-chunk task, the whole batch's in a whole one);
- ``global`` anything else (a reduction over the batch, a batch-dependent scalar).

A node is *local* (runs per chunk) when every output it hands on carries the batch, the
per-kind rule of the op registry (:data:`taskflow.ops.registry.ROW_RULES`) finds nothing
against it, and -- what makes the analysis sound -- running it on the rows ``1:3`` and ``2:3``
of its batch-3 inputs (meta inputs recomputed from those rows' shapes, whole-batch inputs
whole) reproduces those rows of its batch-3 outputs. Other non-constant nodes are *global*:
they run once on the whole batch, and the values they hand on are sliced by the same layouts.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskflow import ops
from taskflow.dask.layout import (
    ROWS,
    Layout,
    candidates,
    layout_of,
    matches,
    take_rows,
)
from taskflow.errors import ShapeError
from taskflow.executor import ExecutionPlan
from taskflow.ir.graph import Graph, Node
from taskflow.ops.registry import ROW_RULES, BatchView

#: The two batch sizes the graph is traced at. Two sizes tell a batch dim from a dim that merely
#: equals the batch once (a Reshape to (2, -1)); 1 is avoided because size-1 dims broadcast.
TRACE_BATCHES = (2, 3)
#: Row slices of the batch-3 trace each local candidate is re-run on: two rows (a chunk) and
#: one row (the size where Squeeze and broadcasting change meaning).
CHECK_ROWS = ((1, 3), (2, 3))
CONST, BATCH, META, GLOBAL = "const", "batch", "meta", "global"


def node_labels(order: Any) -> list[str]:
    """Each node's key-friendly, unique name (Dask keys ``tf-<label>-<token>``), for nodes in
    execution order: its name, else ``<op>_<k>``, sanitised, suffixed ``_<k>`` until unique.
    The streaming worker names its per-layer times with it too."""
    labels, taken = [], set()
    for k, n in enumerate(order):
        label = sanitize(n.name or f"{n.op}_{k}")
        while label in taken:
            label += f"_{k}"
        taken.add(label)
        labels.append(label)
    return labels


def sanitize(name: str) -> str:
    """A Dask-key-friendly form of a node or value name (``gpu_0/conv1`` -> ``gpu_0_conv1``)."""
    return re.sub(r"[^0-9A-Za-z_.]+", "_", name).strip("_") or "node"


@dataclass
class NodeInfo:
    """One node with what the trace learnt about it."""

    node: Node
    index: int  #: position in topological order
    label: str  #: key-friendly, unique name used in Dask keys ``tf-<label>-<token>``
    kind: str
    role: str  #: "const", "meta", "local" or "global"
    flops: int = 0  #: per sample
    reason: str = ""  #: why the node is global (empty: it never saw the batch's rows)

    @property
    def outputs(self) -> list[str]:
        return [o for o in self.node.outputs if o]

    @property
    def inputs(self) -> list[str]:
        return [i for i in self.node.inputs if i]

    @property
    def name(self) -> str:
        return self.node.name or self.label


@dataclass
class GraphTrace:
    """The classification of every node and value of a graph for given non-batch shapes."""

    graph: Graph
    batch_inputs: tuple[str, ...]
    fixed_inputs: tuple[str, ...]
    nodes: list[NodeInfo]
    value_class: dict[str, str]
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  #: at both trace sizes
    dtypes: dict[str, np.dtype]
    consts: dict[str, np.ndarray]  #: constants read by non-constant nodes or graph outputs
    producer: dict[str, NodeInfo] = field(default_factory=dict)
    layouts: dict[str, Layout] = field(default_factory=dict)  #: of every ``batch`` value

    def layout(self, name: str) -> Layout | None:
        """``(axis, factor, outer)`` of a value that carries the batch, else None."""
        return self.layouts.get(name)

    def full_shape(self, name: str, batch: int) -> tuple[float, ...]:
        """The shape of ``name`` for a batch of ``batch``: the batch axis scaled, other dims as
        traced; a dim that changes with the batch without being its axis is ``nan``."""
        s2, s3 = self.shapes[name]
        lay = self.layouts.get(name)
        out: list[float] = [a if a == b else float("nan") for a, b in zip(s2, s3)]
        if lay is not None:
            out[lay[0]] = batch * lay[1]
        return tuple(out)

    def row_bytes(self, name: str) -> int:
        """Bytes value ``name`` grows by per batch row (0 for a value without the batch)."""
        s2, s3 = self.shapes[name]
        grow = int(np.prod(s3, dtype=np.int64)) - int(np.prod(s2, dtype=np.int64))
        grow //= TRACE_BATCHES[1] - TRACE_BATCHES[0]
        return max(grow, 0) * self.dtypes[name].itemsize

    def batch_dependent(self, name: str) -> bool:
        s2, s3 = self.shapes[name]
        return s2 != s3

    @property
    def compute_nodes(self) -> list[NodeInfo]:
        """Nodes that run per chunk or on the whole batch (neither constant nor meta)."""
        return [n for n in self.nodes if n.role in ("local", "global")]

    @property
    def global_nodes(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.role == "global"]

    def whole_batch_message(self) -> str:
        """One line naming every node that makes the batch run whole, and why ("" if none)."""
        bad = [n for n in self.global_nodes if n.reason]
        if not bad:
            return ""
        if len(bad) == 1:
            n = bad[0]
            return (f"model {self.graph.name!r}: node {n.name!r} ({n.node.op}) is not "
                    f"batch-local: {n.reason}; it runs once on the whole batch (the rest of "
                    f"the graph stays per chunk)")
        parts = [f"node {n.name!r} ({n.node.op}): {n.reason}" for n in bad]
        return (f"model {self.graph.name!r}: {len(bad)} nodes are not batch-local and run once "
                f"on the whole batch (the rest of the graph stays per chunk): "
                + "; ".join(parts))


def trace_graph(plan: ExecutionPlan, nonbatch: Mapping[str, tuple[int, ...]],
                fixed: Mapping[str, tuple[int, ...]],
                dtypes: Mapping[str, np.dtype],
                values: Mapping[str, np.ndarray] | None = None) -> GraphTrace:
    """Run ``plan`` at both :data:`TRACE_BATCHES` and class every node and value.

    ``nonbatch`` maps each batch input to its shape without dim 0, ``fixed`` each input without
    a batch dim to its full shape, ``dtypes`` every input to its dtype; ``values`` the actual
    values of (small) fixed inputs, which may set shapes (a Reshape's shape, Slice's axes).

    Raises
    ------
    ShapeError
        The graph does not run at the trace batch sizes: its first axis is not a batch axis.
    """
    graph = plan.graph
    order = [s.node for s in plan.steps]
    kernels = {id(s.node): s.fn for s in plan.steps}
    outputs = set(graph.output_names)
    const = set(graph.initializers)
    for n in order:
        if all(not i or i in const for i in n.inputs):
            const.update(o for o in n.outputs if o)
    frontier = {i for n in order if not set(o for o in n.outputs if o) <= const
                for i in n.inputs if i in const} | (outputs & const)

    infos = [NodeInfo(n, k, label, ops.get(n.op).kind, "const")
             for k, (n, label) in enumerate(zip(order, node_labels(order)))]
    by_id = {id(i.node): i for i in infos}

    for attempt in ("random", "zeros"):
        ctx = _Context(graph, const, outputs, kernels)
        ctx.cls.update({name: CONST for name in const})
        ctx.cls.update({name: BATCH for name in nonbatch})
        ctx.layouts.update({name: ROWS for name in nonbatch})
        ctx.cls.update({name: GLOBAL for name in fixed})
        flops: dict[int, list[int]] = {}
        try:
            for run, b in enumerate(TRACE_BATCHES):
                _run_once(plan, ctx, run, b, attempt, nonbatch, fixed, dtypes, frontier,
                          flops, by_id, values or {})
            break
        except Exception as exc:
            # random 0/1 integers can be invalid indices for some graph; zeros always are
            if attempt == "zeros":
                raise ShapeError(
                    f"model {graph.name!r} does not run with {TRACE_BATCHES[0]} and "
                    f"{TRACE_BATCHES[1]} rows in dim 0 of input(s) {sorted(nonbatch)} "
                    f"({type(exc).__name__}: {exc}); Model.predict chunks dim 0 as the batch, "
                    f"so it must be one (give the inputs whose dim 0 is not a batch a static "
                    f"size in the model, or run it with Model.run)") from exc

    for info in infos:
        f = flops.get(info.index, [0, 0])
        per_sample = max(f[-1] - f[0], 0) if len(f) == 2 else 0
        if per_sample == 0 and f[0]:
            per_sample = f[0] // TRACE_BATCHES[0]
        info.flops = per_sample
    consts = {n: np.asarray(graph.initializers[n]) for n in frontier if n in graph.initializers}
    consts.update(ctx.folded)
    shapes = {k: (v[0], v[-1]) for k, v in ctx.shapes.items()}
    result = GraphTrace(graph, tuple(nonbatch), tuple(fixed), infos, ctx.cls, shapes,
                        ctx.types, consts, layouts=ctx.layouts)
    result.producer = {o: i for i in infos for o in i.outputs}
    return result


class _Context:
    """What the two trace runs accumulate."""

    def __init__(self, graph: Graph, const: set[str], outputs: set[str],
                 kernels: dict[int, Any]):
        self.graph = graph
        self.const = const
        self.outputs = outputs
        self.kernels = kernels
        self.consumers = graph.consumers()
        self.shapes: dict[str, list[tuple[int, ...]]] = {}
        self.types: dict[str, np.dtype] = {}
        self.folded: dict[str, np.ndarray] = {}
        self.cls: dict[str, str] = {}
        self.layouts: dict[str, Layout] = {}
        self.meta_nodes: dict[str, tuple[Node, NodeInfo]] = {}  #: meta value -> producer
        self.meta_values: dict[str, np.ndarray] = {}  #: at batch 3, whole batch

    def record(self, name: str, value: Any) -> None:
        self.shapes.setdefault(name, []).append(tuple(np.shape(value)))
        self.types[name] = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype


def _run_once(plan: ExecutionPlan, ctx: _Context, run: int, b: int, ints: str,
              nonbatch: Mapping, fixed: Mapping, dtypes: Mapping, frontier: set[str],
              flops: dict[int, list[int]], by_id: dict[int, NodeInfo],
              values: Mapping[str, np.ndarray]) -> None:
    rng = np.random.default_rng(run)
    feed = {name: _sample((b, *shape), dtypes[name], rng, ints)
            for name, shape in nonbatch.items()}
    feed.update({name: values[name] if name in values else _sample(shape, dtypes[name], rng,
                                                                    ints)
                 for name, shape in fixed.items()})
    for name, x in feed.items():
        ctx.record(name, x)
    for name, w in ctx.graph.initializers.items():
        ctx.record(name, np.asarray(w))

    def trace(node: Node, args: list[Any], results: tuple) -> None:
        info = by_id[id(node)]
        for o, r in zip(node.outputs, results):
            if o and r is not None:
                ctx.record(o, r)
                if run == 0 and o in frontier:
                    ctx.folded[o] = np.asarray(r)
        spec = ops.get(node.op)
        in_shapes = [tuple(np.shape(a)) if a is not None else () for a in args]
        out_shapes = [tuple(np.shape(r)) for r in results if r is not None]
        try:
            f = int(spec.flops(in_shapes, out_shapes, **node.attrs))
        except Exception:  # a FLOP formula that cannot take these shapes counts as 0
            f = 0
        flops.setdefault(info.index, []).append(f)
        if run == len(TRACE_BATCHES) - 1:
            _classify(ctx, info, args, results)

    with np.errstate(all="ignore"):
        plan.run(feed, outputs=list(ctx.outputs), trace=trace)


# --- classification -----------------------------------------------------------------------------
def _classify(ctx: _Context, info: NodeInfo, args: list[Any], results: tuple) -> None:
    """Class ``info`` from its batch-3 ``args``/``results`` (every upstream node is classed)."""
    node = info.node
    outs = info.outputs
    if all(o in ctx.const for o in outs):
        info.role = "const"
        return
    used = [o for o in outs if o in ctx.consumers or o in ctx.outputs] or outs[:1]
    lays = {o: layout_of(ctx.shapes.get(o), TRACE_BATCHES) for o in outs}
    in_cls = [ctx.cls.get(i, CONST) for i in info.inputs]
    shape_only = info.kind == "shape" or all(c in (CONST, META) for c in in_cls)
    if shape_only and not any(lays[o] for o in used):
        if any(o in ctx.outputs for o in outs):
            # a shape-derived graph output is computed once, from the whole batch's shapes;
            # no rows of data pass through it, so it is not worth a warning
            _set_global(ctx, info, lays, "")
            return
        if _reads_only_shapes(ctx, node, args, results):
            info.role = "meta"
            for o, r in zip(node.outputs, results):
                if o:
                    ctx.cls[o] = META
                    ctx.meta_nodes[o] = (node, info)
                    ctx.meta_values[o] = np.asarray(r)
            return
    batchy = any(c == BATCH for c in in_cls) or any(
        ctx.shapes[o][0] != ctx.shapes[o][-1] for o in used if o in ctx.shapes)
    missing = [o for o in used if lays[o] is None]
    if missing:
        o = missing[0]
        s = ctx.shapes.get(o)
        why = (_rule(ctx, info, args, None)
               or f"its output {o!r} has shape {s[0]} at batch {TRACE_BATCHES[0]} and {s[-1]} "
               f"at batch {TRACE_BATCHES[1]}: no one axis carries the batch") if batchy else ""
        _set_global(ctx, info, lays, why)
        return
    why = _rule(ctx, info, args, lays[used[0]])
    if not why:
        why, chosen = _check_rows(ctx, info, args, results, lays)
    if why:
        _set_global(ctx, info, lays, why)
        return
    info.role = "local"
    for o in outs:
        _set_batch(ctx, o, chosen.get(o, lays[o]))


def _set_batch(ctx: _Context, name: str, lay: Layout | None) -> None:
    if lay is None:
        ctx.cls[name] = GLOBAL
    else:
        ctx.cls[name] = BATCH
        ctx.layouts[name] = lay


def _set_global(ctx: _Context, info: NodeInfo, lays: dict, why: str) -> None:
    info.role, info.reason = "global", why
    for o in info.outputs:
        _set_batch(ctx, o, lays[o])


def _rule(ctx: _Context, info: NodeInfo, args: list[Any], out: Layout | None) -> str:
    """The op kind's rule (:data:`ROW_RULES`), on what the trace saw."""
    node = info.node
    spec = ops.get(node.op)
    in_lays = tuple(ctx.layouts.get(i) if i and ctx.cls.get(i) == BATCH else None
                    for i in node.inputs)
    ranks = tuple(np.ndim(a) if a is not None else 0 for a in args)
    out_rank = len(ctx.shapes[info.outputs[0]][-1])
    axes = _axes_operand(spec, node, args)
    rank0 = ranks[0] if ranks else 0
    if axes is not None and rank0:
        axes = tuple(sorted({int(a) % rank0 for a in np.ravel(axes)}))
    view = BatchView(in_lays, ranks, out, out_rank, axes if axes != () else None)
    why = ROW_RULES.get(info.kind, lambda v: "")(view)
    if why and any(in_lays):
        carrier = next(i for i, lay in zip(node.inputs, in_lays) if lay)
        why += f" (value {carrier!r}, layout {ctx.layouts[carrier]})"
    return why


def _check_rows(ctx: _Context, info: NodeInfo, args: list[Any], results: tuple,
                lays: dict[str, Layout | None]) -> tuple[str, dict[str, Layout]]:
    """Run the node on row slices of its inputs: ("", the outputs' layouts) when some layout of
    each output reproduces those rows of the whole batch's output, else (why not, {})."""
    node = info.node
    fn = ctx.kernels[id(node)]
    runs = []
    for lo, hi in CHECK_ROWS:
        sub = []
        for name, a in zip(node.inputs, args):
            c = ctx.cls.get(name, CONST) if name else CONST
            if c == BATCH:
                sub.append(take_rows(a, ctx.layouts[name], lo, hi))
            elif c == META:
                sub.append(_meta_at(ctx, name, lo, hi, {}))
            else:
                sub.append(a)
        try:
            with np.errstate(all="ignore"):
                got = ops.as_outputs(fn(*sub, **node.attrs))
        except Exception as exc:
            return (f"it fails on rows {lo}:{hi} of the batch alone "
                    f"({type(exc).__name__}: {exc})"), {}
        runs.append((lo, hi, got))
    chosen: dict[str, Layout] = {}
    for k, (o, whole) in enumerate(zip(node.outputs, results)):
        if not o or lays.get(o) is None:
            continue
        for lay in candidates(lays[o]):
            if all(matches(got[k] if k < len(got) else None, whole, lay, lo, hi) == ""
                   for lo, hi, got in runs):
                chosen[o] = lay
                break
        else:
            for lo, hi, got in runs:  # why the plain layout fails, on the first slice it does
                why = matches(got[k] if k < len(got) else None, whole, lays[o], lo, hi)
                if why:
                    return f"on rows {lo}:{hi} of the batch its output {o!r} {why}", {}
            return f"no layout of its output {o!r} matches the rows it computes", {}
    return "", chosen


def _meta_at(ctx: _Context, name: str, lo: int, hi: int, memo: dict) -> Any:
    """Meta value ``name`` as a task holding rows ``lo:hi`` recomputes it: from the shapes of
    that chunk's batch values, whole values' shapes, and constants."""
    if name in memo:
        return memo[name]
    node, _ = ctx.meta_nodes[name]
    sub = [None if not i else _stand_in(ctx, i, lo, hi, memo) for i in node.inputs]
    results = ops.as_outputs(ctx.kernels[id(node)](*sub, **node.attrs))
    for o, r in zip(node.outputs, results):
        if o:
            memo[o] = np.asarray(r)
    return memo[name]


def _stand_in(ctx: _Context, name: str, lo: int, hi: int | None, memo: dict) -> Any:
    """What a meta node reads of value ``name``: its value if constant or meta, else zeros
    of its shape (rows ``lo:hi`` of a batch value; ``hi`` None: the whole batch)."""
    c = ctx.cls.get(name, CONST)
    if c == CONST:
        return ctx.folded.get(name, ctx.graph.initializers.get(name))
    if c == META:
        return _meta_at(ctx, name, lo, hi, memo) if hi is not None else ctx.meta_values[name]
    shape = list(ctx.shapes[name][-1])
    if c == BATCH and hi is not None:
        axis, k, _ = ctx.layouts[name]
        shape[axis] = (hi - lo) * k
    return np.broadcast_to(np.zeros((), ctx.types[name]), shape)


def _reads_only_shapes(ctx: _Context, node: Node, args: list[Any], results: tuple) -> bool:
    """Whether the node's results follow from its inputs' shapes alone (a ``Range`` over a
    data value does not): re-run on zeros in place of every non-constant, non-meta input."""
    sub = []
    for name, a in zip(node.inputs, args):
        c = ctx.cls.get(name, CONST) if name else CONST
        sub.append(a if c in (CONST, META) else np.broadcast_to(np.zeros((), a.dtype), a.shape))
    try:
        with np.errstate(all="ignore"):
            again = ops.as_outputs(ctx.kernels[id(node)](*sub, **node.attrs))
    except Exception:
        return False
    return all(r is None or (np.shape(g) == np.shape(r) and np.array_equal(g, r, equal_nan=True))
               for g, r in zip(again, results))


def _axes_operand(spec: ops.OpSpec, node: Node, args: list[Any]) -> Any:
    """The op's ``axis``/``axes`` operand: attribute, else the ``axes`` input, else default."""
    params = inspect.signature(spec.reference).parameters
    for name in ("axis", "axes"):
        if name in node.attrs:
            return node.attrs[name]
    positional = [p for p in params.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for k, p in enumerate(positional):
        if p.name in ("axis", "axes") and k < len(args) and args[k] is not None:
            return np.asarray(args[k]).tolist()
    for name in ("axis", "axes"):
        if name in params and params[name].default is not inspect.Parameter.empty:
            return params[name].default
    return None


def _sample(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator,
            ints: str = "random") -> np.ndarray:
    """Random floats, and random 0/1 integers and booleans (0 and 1 are valid indices almost
    everywhere, and rows must differ for the row check to see rows mix); ``ints="zeros"``
    for graphs where 1 is not a valid index."""
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return rng.random(shape).astype(dtype)
    if ints == "zeros":
        return np.zeros(shape, dtype)
    return rng.integers(0, 2, shape).astype(dtype)
