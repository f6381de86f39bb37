"""Which nodes can run per batch chunk, decided by tracing the graph at two batch sizes.

The Dask lowering runs a node on each batch chunk separately only where that gives the same
numbers as running it on the whole batch. That is decided generically, never by op name: the
graph is run in-process at two batch sizes (:data:`TRACE_BATCHES`) and every value is classed

- ``const``  depends on no graph input (initializers, folded Constant/ConstantOfShape chains);
- ``batch``  dim 0 is the batch at both sizes and every other dim is the same at both;
- ``meta``   derived from graph inputs only through their *shapes* (``Shape`` -> ``Gather`` ->
  ``Concat`` feeding a ``Reshape``); recomputed inside each task that needs it;
- ``global`` anything else (a reduction over the batch, a batch-dependent scalar).

A node is *batch-local* when all its used outputs are ``batch`` values and, for ops of kind
reduce, movement or norm whose first input carries the batch, its ``axis``/``axes`` operand
excludes 0. Other non-constant, non-meta nodes are *global*: they run once on the whole batch.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskflow import ops
from taskflow.executor import ExecutionPlan
from taskflow.ir.graph import Graph, Node

#: The two batch sizes the graph is traced at. Two sizes tell a batch dim from a dim that merely
#: equals the batch once (a Reshape to (2, -1)); 1 is avoided because size-1 dims broadcast.
TRACE_BATCHES = (2, 3)

CONST, BATCH, META, GLOBAL = "const", "batch", "meta", "global"
#: Kinds whose ``axis``/``axes`` operand names the axes the op works along.
AXIS_KINDS = ("reduce", "movement", "norm")


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
    reason: str = ""  #: why the node is global

    @property
    def outputs(self) -> list[str]:
        return [o for o in self.node.outputs if o]

    @property
    def inputs(self) -> list[str]:
        return [i for i in self.node.inputs if i]


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

    def nonbatch_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name][0][1:]

    def full_shape(self, name: str, batch: int) -> tuple[int, ...]:
        """The shape of ``name`` for a batch of ``batch`` (non-batch values: as traced)."""
        s = self.shapes[name][0]
        return (batch, *s[1:]) if self.value_class[name] == BATCH else s

    @property
    def compute_nodes(self) -> list[NodeInfo]:
        """Nodes that run per chunk or on the whole batch (neither constant nor meta)."""
        return [n for n in self.nodes if n.role in ("local", "global")]

    @property
    def global_nodes(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.role == "global"]


def trace_graph(plan: ExecutionPlan, nonbatch: Mapping[str, tuple[int, ...]],
                fixed: Mapping[str, tuple[int, ...]],
                dtypes: Mapping[str, np.dtype]) -> GraphTrace:
    """Run ``plan`` at both :data:`TRACE_BATCHES` and class every node and value.

    ``nonbatch`` maps each batch input to its shape without dim 0, ``fixed`` each input without
    a batch dim to its full shape, ``dtypes`` every input to its dtype.
    """
    graph = plan.graph
    order = [s.node for s in plan.steps]
    consumers = graph.consumers()
    outputs = set(graph.output_names)
    const = set(graph.initializers)
    for n in order:
        if all(not i or i in const for i in n.inputs):
            const.update(o for o in n.outputs if o)
    frontier = {i for n in order if not set(o for o in n.outputs if o) <= const
                for i in n.inputs if i in const} | (outputs & const)

    shapes: dict[str, list[tuple[int, ...]]] = {}
    types: dict[str, np.dtype] = {}
    flops: dict[int, list[int]] = {}
    axes_seen: dict[int, Any] = {}
    folded: dict[str, np.ndarray] = {}
    for run, b in enumerate(TRACE_BATCHES):
        rng = np.random.default_rng(run)
        feed = {name: _sample((b, *shape), dtypes[name], rng) for name, shape in nonbatch.items()}
        feed.update({name: _sample(shape, dtypes[name], rng) for name, shape in fixed.items()})
        for name, x in feed.items():
            shapes.setdefault(name, []).append(x.shape)
            types[name] = x.dtype
        for name, w in graph.initializers.items():
            shapes.setdefault(name, []).append(np.shape(w))
            types[name] = np.asarray(w).dtype

        def trace(node: Node, args: list[Any], results: tuple, run: int = run) -> None:
            k = id(node)
            for o, r in zip(node.outputs, results):
                if o and r is not None:
                    shapes.setdefault(o, []).append(tuple(np.shape(r)))
                    types[o] = np.asarray(r).dtype if not hasattr(r, "dtype") else r.dtype
                    if run == 0 and o in frontier:
                        folded[o] = np.asarray(r)
            spec = ops.get(node.op)
            in_shapes = [tuple(np.shape(a)) if a is not None else () for a in args]
            out_shapes = [tuple(np.shape(r)) for r in results if r is not None]
            try:
                f = int(spec.flops(in_shapes, out_shapes, **node.attrs))
            except Exception:  # a FLOP formula that cannot take these shapes counts as 0
                f = 0
            flops.setdefault(k, []).append(f)
            if run == 0 and spec.kind in AXIS_KINDS:
                axes_seen[k] = _axes_operand(spec, node, args)

        with np.errstate(all="ignore"):
            plan.run(feed, outputs=list(outputs), trace=trace)

    consts = {n: np.asarray(graph.initializers[n]) for n in frontier if n in graph.initializers}
    consts.update(folded)
    shapes2 = {k: (v[0], v[-1]) for k, v in shapes.items()}
    batch_inputs = tuple(nonbatch)
    fixed_inputs = tuple(fixed)

    infos, labels = [], set()
    for k, n in enumerate(order):
        label = sanitize(n.name or f"{n.op}_{k}")
        while label in labels:
            label += f"_{k}"
        labels.add(label)
        f = flops.get(id(n), [0, 0])
        per_sample = max(f[-1] - f[0], 0) if len(f) == 2 else 0
        if per_sample == 0 and f[0]:
            per_sample = f[0] // TRACE_BATCHES[0]
        infos.append(NodeInfo(n, k, label, ops.get(n.op).kind, "const", per_sample))

    forced: set[int] = set()
    while True:
        cls = _classify(infos, const, shapes2, batch_inputs, fixed_inputs, consumers, outputs,
                        axes_seen, forced)
        # a shape-derived value the user asked for is computed once, on the whole batch
        extra = {i.index for i in infos for o in i.outputs
                 if o in outputs and cls.get(o) == META}
        if extra <= forced:
            break
        forced |= extra
    result = GraphTrace(graph, batch_inputs, fixed_inputs, infos, cls, shapes2, types, consts)
    result.producer = {o: i for i in infos for o in i.outputs}
    return result


def _classify(infos: list[NodeInfo], const: set[str], shapes: dict, batch_inputs: tuple,
              fixed_inputs: tuple, consumers: dict, outputs: set[str], axes_seen: dict,
              forced: set[int]) -> dict[str, str]:
    cls = {name: CONST for name in const}
    cls.update({name: BATCH for name in batch_inputs})
    cls.update({name: GLOBAL for name in fixed_inputs})
    for info in infos:
        n = info.node
        outs = info.outputs
        if all(o in const for o in outs):
            info.role = "const"
            continue
        in_cls = [cls[i] for i in info.inputs]
        used = [o for o in outs if o in consumers or o in outputs] or outs[:1]
        batchy = {o: _is_batch(shapes.get(o)) for o in outs}
        shape_only = info.kind == "shape" or all(c in (CONST, META) for c in in_cls)
        why = ""
        if info.index in forced:
            why = "its output is a graph output derived only from input shapes"
        elif shape_only and not any(batchy[o] for o in used):
            info.role = "meta"
            cls.update({o: META for o in outs})
            continue
        elif not all(batchy[o] for o in used):
            bad = next(o for o in used if not batchy[o])
            s = shapes.get(bad)
            why = (f"output {bad!r} has shape {s[0] if s else '?'} at batch {TRACE_BATCHES[0]} "
                   f"and {s[1] if s else '?'} at batch {TRACE_BATCHES[1]}; dim 0 is not the batch")
        elif (info.inputs and cls.get(n.inputs[0]) == BATCH
              and _has_axis_zero(axes_seen.get(id(n)), len(shapes[n.inputs[0]][0]))):
            why = "it works along axis 0, the batch axis"
        if why:
            info.role, info.reason = "global", why
            cls.update({o: BATCH if batchy[o] else GLOBAL for o in outs})
        else:
            info.role = "local"
            cls.update({o: BATCH for o in outs})
    return cls


def _is_batch(s: tuple[tuple[int, ...], tuple[int, ...]] | None) -> bool:
    if s is None or len(s[0]) == 0 or len(s[0]) != len(s[1]):
        return False
    (a, b) = s
    return a[0] == TRACE_BATCHES[0] and b[0] == TRACE_BATCHES[1] and a[1:] == b[1:]


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


def _has_axis_zero(axes: Any, rank: int) -> bool:
    if axes is None or rank == 0:
        return False  # unknown or "all axes": dim 0 disappears, which the shape check catches
    values = [axes] if np.isscalar(axes) else list(np.ravel(axes))
    return any(int(a) % rank == 0 for a in values)


def _sample(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Random floats (so data-dependent values differ between traces), zeros otherwise
    (integer inputs are often indices, where 0 is always valid)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return rng.random(shape).astype(dtype)
    return np.zeros(shape, dtype)
