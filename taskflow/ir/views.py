"""Runs of Reshape and Transpose nodes computed as one view of their input.

torch's ``nn.MultiheadAttention`` (ViT, DETR, any ``nn.TransformerEncoderLayer``) exports the
head split of Q, K and V as ``Reshape (S, B, H*D) -> (S, B*H, D)``, ``Transpose (1, 0, 2)``,
``Reshape -> (B, H, S, D)``. Q is a slice of the fused QKV projection, so the first Reshape
cannot be a view: merging B and H needs B's stride to be H times H's. Node by node, numpy
copies Q, K and V there, every layer (ViT-tiny, batch 32: 12 copies of 4.8 MB, ~9 ms of
~140). Yet the run as a whole is a view: (B, H, S, D) with strides (3*H*D, D, B*3*H*D, 1) of
the projection's output. BERT's K, as dynamo exports it, is merged with the batch and split
again (five nodes): a view as a whole too.

:func:`view_runs` finds such runs in a plan; the executor then hands a :class:`Deferred`
down the run, and its last node computes the whole run at once (:func:`rearrange`): the
logical axes are kept as groups of axes of a view of the input; a Transpose permutes the
groups, a Reshape splits the view's axes into the finest pieces both shapes are made of
(always a view) and regroups them, and the last shape is one merge: a view where the strides
allow one, else one copy. The values are those of the nodes one by one, in every case.
Traced runs (calibration, per-node timings) see every node's value, so they run the nodes
one by one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskflow.errors import TaskflowError
from taskflow.ir.graph import Graph, Node
from taskflow.ops.movement import reshape, transpose


def view_runs(order: Sequence[Node], graph: Graph, skip: set[int]) -> dict[int, str]:
    """Step index -> "start" / "mid" / "end" for each run of Reshape and Transpose nodes (at
    least three, two of them Reshapes) where each node's one output is read by the next node
    alone as its data input (and maybe by Shape nodes: a :class:`Deferred` has the value's
    shape), and is not a graph output; none of its steps in ``skip`` (the shape-only steps,
    whose values the executor caches)."""
    readers = graph.consumers()
    outputs = set(graph.output_names)
    index = {id(n): k for k, n in enumerate(order)}

    def next_of(node: Node) -> Node | None:
        v = node.outputs[0] if len(node.outputs) == 1 else ""
        users = [u for u in readers.get(v, []) if u.op != "Shape"]
        if not v or v in outputs or len(users) != 1 or users[0].op not in _MOVES \
                or users[0].inputs[0] != v or v in users[0].inputs[1:]:
            return None
        return users[0]

    roles: dict[int, str] = {}
    for k, node in enumerate(order):
        if node.op not in _MOVES or k in roles:
            continue
        run = [node]
        while (nxt := next_of(run[-1])) is not None:
            run.append(nxt)
        steps = [index[id(n)] for n in run]
        if len(run) < 3 or sum(n.op == "Reshape" for n in run) < 2 or skip.intersection(steps):
            continue
        roles.update(zip(steps, ["start"] + ["mid"] * (len(run) - 2) + ["end"]))
    return roles


_MOVES = ("Reshape", "Transpose")


class Deferred:
    """A value's source and the Reshape / Transpose steps not yet applied to it;
    :attr:`shape` is the value's (what a Shape node reads: the torchscript export reads the
    transposed V's)."""

    __slots__ = ("x", "steps")

    def __init__(self, x: Any, steps: tuple = ()) -> None:
        self.x, self.steps = x, steps

    def add(self, node: Node, args: list[Any]) -> Deferred:
        """This value through one more node (a new Deferred: a Shape node may still read
        this one)."""
        step = ("Reshape", args[1], int(node.attrs.get("allowzero", 0))) \
            if node.op == "Reshape" else ("Transpose", node.attrs.get("perm"), 0)
        return Deferred(self.x, (*self.steps, step))

    @property
    def shape(self) -> tuple[int, ...]:
        resolved = _resolve(self.x.shape, self.steps)
        if resolved is None:  # an invalid step: its own error
            return _one_by_one(self.x, self.steps).shape
        return tuple(resolved[1])

    def compute(self) -> Any:
        """The value: one view of the source where the strides allow, else with copies
        only where the steps one by one would copy too (the ops' errors where invalid)."""
        resolved = _resolve(self.x.shape, self.steps)
        if resolved is None:
            return _one_by_one(self.x, self.steps)
        return rearrange(self.x, resolved[0])


def view_step(node: Node, args: list[Any], role: str, kernel: Any) -> tuple[Any]:
    """The step's output in a run: a :class:`Deferred` until the run's last node, which
    computes the run; a source that is not a numpy array runs the node (``kernel``)."""
    d = args[0]
    if role == "start":
        if not isinstance(d, np.ndarray):
            return (kernel(*args, **node.attrs),)
        d = Deferred(d)
    elif not isinstance(d, Deferred):
        return (kernel(*args, **node.attrs),)
    d = d.add(node, args)
    return (d.compute() if role == "end" else d,)


def _one_by_one(x: np.ndarray, steps: Sequence[tuple]) -> np.ndarray:
    for kind, arg, allowzero in steps:
        x = reshape(x, arg, allowzero=allowzero) if kind == "Reshape" else transpose(x, perm=arg)
    return x


def _resolve(shape: tuple[int, ...], steps: Sequence[tuple]
             ) -> tuple[list[tuple[str, list[int]]], list[int]] | None:
    """The steps with their Reshape targets and Transpose permutations spelled out, and the
    final shape; None where a step is invalid or the value is empty."""
    dims, out = list(shape), []
    for kind, arg, allowzero in steps:
        if kind == "Reshape":
            dims = _target(tuple(dims), arg, allowzero)
            if dims is None:
                return None
            out.append((kind, dims))
        else:
            perm = list(range(len(dims)))[::-1] if arg is None else [int(p) for p in arg]
            if sorted(perm) != list(range(len(dims))):
                return None
            dims = [dims[p] for p in perm]
            out.append((kind, perm))
    return out, dims


def _target(shape: tuple[int, ...], spec: Any, allowzero: int) -> list[int] | None:
    """Reshape's output shape for an input of ``shape``, as the Reshape reference resolves
    it (on a zero-stride stand-in: no memory, always a view), or None where it is invalid
    or empty."""
    if math.prod(shape) == 0:
        return None
    try:
        return list(reshape(np.broadcast_to(np.float32(0), shape), spec,
                            allowzero=allowzero).shape)
    except TaskflowError:
        return None


def _refine(a: Sequence[int], b: Sequence[int]) -> list[int] | None:
    """The coarsest shape both ``a`` and ``b`` are merges of consecutive axes of (size-1 axes
    dropped), or None where there is none (3 x 2 against 2 x 3)."""
    cuts = sorted(set(np.cumprod(a, dtype=np.int64).tolist())
                  | set(np.cumprod(b, dtype=np.int64).tolist()))
    dims, prev = [], 1
    for c in cuts:
        if c % prev:
            return None
        if c != prev:
            dims.append(c // prev)
        prev = c
    return dims


def _take(sizes: Sequence[int], fine: Sequence[int], items: Sequence[Any]) -> list[list[Any]]:
    """For each of ``sizes``, the consecutive ``items`` (one per axis of ``fine``) whose
    axes multiply to it (none for a size-1 axis)."""
    out, j = [], 0
    for d in sizes:
        g, size = [], 1
        while size < d:
            size *= fine[j]
            g.append(items[j])
            j += 1
        out.append(g)
    return out


def rearrange(x: np.ndarray, steps: Sequence[tuple[str, list[int]]]) -> np.ndarray:
    """``x`` through the resolved Reshape / Transpose ``steps``: a view where the strides
    allow one. The logical axes are kept as groups of axes of a view of ``x``: a Transpose
    permutes the groups; a Reshape splits the view's axes into the finest pieces the old and
    the new shape are both made of (a split is always a view) and regroups them. Only where
    two shapes have no such pieces (3 x 2 against 2 x 3) is the value formed there."""
    xv = x
    groups = [[a] for a in range(x.ndim)]
    dims = list(x.shape)
    for kind, arg in steps:
        if kind == "Transpose":
            groups, dims = [groups[p] for p in arg], [dims[p] for p in arg]
            continue
        seq = [a for g in groups for a in g]  # the view's axes, in the value's order
        fine = _refine([xv.shape[a] for a in seq], arg)
        if fine is None:
            xv = np.reshape(np.reshape(np.transpose(xv, seq), dims), arg)
            groups, dims = [[a] for a in range(xv.ndim)], list(arg)
            continue
        pieces = dict(zip(seq, _take([xv.shape[a] for a in seq], fine, fine)))
        first, k = {}, 0
        for a in range(xv.ndim):  # where each axis' pieces start in the split view
            first[a], k = k, k + len(pieces[a])
        xv = np.reshape(xv, [p for a in range(xv.ndim) for p in pieces[a]])
        axes = [first[a] + i for a in seq for i in range(len(pieces[a]))]
        groups, dims = _take(arg, fine, axes), list(arg)
    return np.reshape(np.transpose(xv, [a for g in groups for a in g]), dims)
