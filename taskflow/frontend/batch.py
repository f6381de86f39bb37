"""Make the batch dimension of a model exported with batch 1 symbolic, when provably sound.

Many exported models fix the batch at 1 and bake it into Reshape targets (``[1, 2048]``,
ShuffleNet's ``[1, g, c/g, h, w]``). :func:`make_batch_symbolic` propagates *batch-ness* from
the inputs through the graph: a value is ``BATCH`` when its dim 0 is the batch and its rows
depend only on the matching input rows. Each rule below says when an op keeps that true; any
other use of a batch value makes its result ``MIXED``. Reshape targets whose first entry is 1
and whose data is ``BATCH`` become 0 (copy the dim). The change is made only if every graph
output ends up ``BATCH``.

Rules ask an op's *kind* first; movement and contraction ops need their own (axis, perm, target).
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from taskflow.ir.graph import BATCH, Graph, Node

NONE, ROWS, MIXED = "none", "batch", "mixed"

#: A Slice end at or past this reaches the end of any real batch (exporters write INT64_MAX).
_SLICE_TO_END = 2**31 - 1


class _Facts:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.state: dict[str, str] = {v.name: ROWS for v in graph.inputs}
        self.rewrites: dict[int, str] = {}  # id(Reshape node) -> target to rewrite

    def const(self, name: str) -> np.ndarray | None:
        return self.graph.initializers.get(name) if name else None

    def shape(self, name: str):
        if name in self.graph.initializers:
            return self.graph.initializers[name].shape
        for v in self.graph.inputs:
            if v.name == name:
                return v.shape
        v = self.graph.values.get(name)
        return v.shape if v is not None else None

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)


def _attr(node: Node, spec, name: str):
    if name in node.attrs:
        return node.attrs[name]
    p = inspect.signature(spec.reference).parameters.get(name)
    return None if p is None or p.default is p.empty else p.default


def _norm(axes, rank: int | None) -> list[int] | None:
    axes = [int(a) for a in np.ravel(axes)]
    if any(a < 0 for a in axes):
        if rank is None:
            return None
        axes = [a + rank if a < 0 else a for a in axes]
    return axes


def _broadcast(node: Node, f: _Facts) -> bool:
    """Elementwise: batch inputs have the output's rank; the others broadcast over dim 0."""
    names = [i for i in node.inputs if i]
    shapes = [f.shape(i) for i in names]
    if any(s is None for s in shapes):
        return False
    rank = max(len(s) for s in shapes)
    for name, s in zip(names, shapes):
        if f.state.get(name, NONE) == ROWS:
            if len(s) != rank:
                return False
        elif len(s) == rank and s[0] != 1:
            return False
    return True


def _data_only(node: Node, f: _Facts) -> bool:
    """Input 0 carries the batch; every other input is a constant (weights, params)."""
    return f.state.get(node.inputs[0], NONE) == ROWS and all(
        f.state.get(i, NONE) == NONE for i in node.inputs[1:] if i)


def _axis_not_batch(node: Node, spec, f: _Facts) -> bool:
    rank = f.rank(node.inputs[0])
    for name in ("axis", "axes"):
        if name in spec.attributes:
            value = _attr(node, spec, name)
            if value is None:  # all axes
                return False
            axes = _norm(value, rank)
            return axes is not None and 0 not in axes
    return True


def _reduce_axes(node: Node, spec, f: _Facts) -> bool:
    if "axis" in spec.attributes or "axes" in spec.attributes:
        return _axis_not_batch(node, spec, f)
    name = node.inputs[1] if len(node.inputs) > 1 else ""
    axes = f.const(name)
    if not name or axes is not None and axes.size == 0:  # all axes, unless a no-op
        return bool(_attr(node, spec, "noop_with_empty_axes"))
    axes = None if axes is None else _norm(axes, f.rank(node.inputs[0]))
    return axes is not None and 0 not in axes


def _reshape(node: Node, spec, f: _Facts) -> bool:
    target = f.const(node.inputs[1])
    if target is None or target.ndim != 1 or target.size == 0 or node.attrs.get("allowzero"):
        return False
    first = int(target[0])
    if first in (0, 1):
        if first == 1:
            f.rewrites[id(node)] = node.inputs[1]
        return True
    data = f.shape(node.inputs[0])
    rest = [int(t) for t in target[1:]]
    if first != -1 or data is None or not all(isinstance(d, int) for d in data[1:]):
        return False
    return all(t > 0 for t in rest) and math.prod(rest) == math.prod(data[1:])


def _flatten(node: Node, spec, f: _Facts) -> bool:
    shape = f.shape(node.inputs[0])
    axis = int(_attr(node, spec, "axis"))
    if axis < 0:
        if shape is None:
            return False
        axis += len(shape)
    return axis == 1 or axis > 1 and shape is not None and all(d == 1 for d in shape[1:axis])


def _transpose(node: Node, spec, f: _Facts) -> bool:
    perm = node.attrs.get("perm")
    return (perm[0] == 0) if perm is not None else f.rank(node.inputs[0]) == 1


def _concat(node: Node, spec, f: _Facts) -> bool:
    axes = _norm(node.attrs.get("axis", 0), f.rank(node.inputs[0]))
    return axes is not None and axes != [0] and all(
        f.state.get(i, NONE) == ROWS for i in node.inputs if i)


def _axes_input(index: int, out_rank: bool = False):
    def rule(node: Node, spec, f: _Facts) -> bool:
        axes = f.const(node.inputs[index]) if len(node.inputs) > index else None
        if axes is None:
            return False
        rank = f.rank(node.inputs[0])
        if out_rank and rank is not None:
            rank += axes.size
        axes = _norm(axes, rank)
        return axes is not None and 0 not in axes
    return rule


def _slice(node: Node, spec, f: _Facts) -> bool:
    starts, ends = f.const(node.inputs[1]), f.const(node.inputs[2])
    ins = node.inputs + [""] * 5
    axes = f.const(ins[3]) if ins[3] else np.arange(0 if starts is None else starts.size)
    steps = f.const(ins[4]) if ins[4] else None
    if starts is None or ends is None or axes is None or (ins[4] and steps is None):
        return False
    axes = _norm(axes, f.rank(node.inputs[0]))
    if axes is None:
        return False
    for k, a in enumerate(axes):
        if a == 0 and not (starts[k] == 0 and ends[k] >= _SLICE_TO_END
                           and (steps is None or steps[k] == 1)):
            return False
    return True


def _pad(node: Node, spec, f: _Facts) -> bool:
    pads = f.const(node.inputs[1])
    ins = node.inputs + [""] * 4
    rank = f.rank(node.inputs[0])
    axes = f.const(ins[3]) if ins[3] else (np.arange(rank) if rank else None)
    if pads is None or axes is None:
        return False
    axes = _norm(axes, rank)
    return axes is not None and all(
        pads[k] == 0 and pads[k + len(axes)] == 0 for k, a in enumerate(axes) if a == 0)


def _resize(node: Node, spec, f: _Facts) -> bool:
    ins = node.inputs + [""] * 4
    scales = f.const(ins[2])
    if ins[3] or scales is None:
        return False
    axes = node.attrs.get("axes")
    axes = list(range(scales.size)) if axes is None else _norm(axes, f.rank(node.inputs[0]))
    return axes is not None and all(s == 1 for a, s in zip(axes, scales) if a == 0)


def _first_const(check):
    def rule(node: Node, spec, f: _Facts) -> bool:
        value = f.const(node.inputs[1])
        return value is not None and check(node, value, f)
    return rule


def _gemm(node: Node, spec, f: _Facts) -> bool:
    return not _attr(node, spec, "transA")


def _matmul(node: Node, spec, f: _Facts) -> bool:
    a, b = f.shape(node.inputs[0]), f.shape(node.inputs[1])
    if a is None or b is None or len(a) < 2:
        return False
    return len(a) == 2 or len(b) < len(a) or b[0] == 1


#: Op-specific rules (on top of "input 0 carries the batch, the rest are constants").
_MOVEMENT = {
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _axes_input(1),
    "Unsqueeze": _axes_input(1, out_rank=True),
    "Slice": _slice,
    "Pad": _pad,
    "Resize": _resize,
    "Split": _axis_not_batch,
    "Gather": _axis_not_batch,
    "DepthToSpace": lambda node, spec, f: True,
    "SpaceToDepth": lambda node, spec, f: True,
    "Tile": _first_const(lambda node, reps, f: reps.size > 0 and reps[0] == 1),
    "Expand": _first_const(lambda node, shape, f: (f.rank(node.inputs[0]) or 0) > shape.size
                           or shape.size == f.rank(node.inputs[0]) and shape[0] == 1),
}
_CONTRACTION = {"Gemm": _gemm, "FusedGemm": _gemm, "MatMul": _matmul, "FusedMatMul": _matmul,
                "Einsum": lambda node, spec, f: False}


def _keeps_batch(node: Node, f: _Facts) -> bool:
    from taskflow import ops

    spec = ops.lookup(node.op)
    if spec is None:
        return False
    if spec.kind in ("elementwise", "identity"):
        return _broadcast(node, f)
    if node.op == "Concat":
        return _concat(node, spec, f)
    if not _data_only(node, f):
        return False
    if spec.kind == "window":
        return True
    if spec.kind == "norm":
        return _axis_not_batch(node, spec, f)
    if spec.kind == "reduce":
        return _reduce_axes(node, spec, f)
    if spec.kind == "contraction":
        return _CONTRACTION.get(node.op, lambda *a: True)(node, spec, f)
    if spec.kind == "movement" and node.op in _MOVEMENT:
        return _MOVEMENT[node.op](node, spec, f)
    return False


def make_batch_symbolic(graph: Graph) -> tuple[Graph | None, str]:
    """Return ``(new graph, note)`` with dim 0 of the interface named ``N``, or ``(None, why)``.

    Precondition: every graph input has a static dim 0 of 1 (the caller checks).
    """
    f = _Facts(graph)
    culprit: dict[str, str] = {}
    for node in graph.toposort():
        states = [f.state.get(i, NONE) for i in node.inputs if i]
        if all(s == NONE for s in states):
            continue
        if MIXED in states:
            state = MIXED
            why = next(culprit[i] for i in node.inputs if i and f.state.get(i) == MIXED)
        elif _keeps_batch(node, f):
            state, why = ROWS, ""
        else:
            state, why = MIXED, f"{node.op} {node.name!r} does not keep the batch in dim 0"
        for o in node.outputs:
            if o:
                f.state[o] = state
                culprit[o] = why
    for v in graph.outputs:
        state = f.state.get(v.name, NONE)
        if state != ROWS:
            why = culprit.get(v.name) or "it does not depend on the inputs' batch"
            return None, f"output {v.name!r} does not carry the batch in dim 0 ({why})"
    k = len(f.rewrites)
    return _apply(graph, f), (
        f"batch dimension made symbolic (model was exported with batch 1; {k} Reshape "
        f"target{'' if k == 1 else 's'} rewritten)")


def _apply(graph: Graph, f: _Facts) -> Graph:
    g = graph.copy()
    new_targets: dict[str, str] = {}
    for original, node in zip(graph.nodes, g.nodes):
        old = f.rewrites.get(id(original))
        if old is None:
            continue
        if old not in new_targets:
            target = np.array(g.initializers[old], copy=True)
            target[0] = 0
            new_targets[old] = g.unique_name(f"{old}_batch")
            g.initializers[new_targets[old]] = target
        node.inputs[1] = new_targets[old]
    used = {i for n in g.nodes for i in n.inputs}
    for old in new_targets:
        if old not in used and old not in g.output_names:
            del g.initializers[old]
    for v in [*g.inputs, *g.outputs, *g.values.values()]:
        if f.state.get(v.name) == ROWS and v.shape:
            v.shape = (BATCH, *v.shape[1:])
    return g
