"""Reshape -> Transpose -> Reshape runs computed as one view of their input.

torch's ``nn.MultiheadAttention`` (ViT, DETR, any ``nn.TransformerEncoderLayer``) exports the
head split of Q, K and V as ``Reshape (S, B, H*D) -> (S, B*H, D)``, ``Transpose (1, 0, 2)``,
``Reshape -> (B, H, S, D)``. Q is a slice of the fused QKV projection, so the first Reshape
cannot be a view: merging B and H needs B's stride to be H times H's. Node by node, numpy
copies Q, K and V there, every layer (ViT-tiny, batch 32: 12 copies of 4.8 MB, ~9 ms of
~140). Yet the run as a whole is a view: (B, H, S, D) with strides (3*H*D, D, B*3*H*D, 1) of
the projection's output.

:func:`view_runs` finds such runs in a plan; the executor then hands a :class:`Deferred` from
the first Reshape to the Transpose and on to the last Reshape, which computes the whole run
at once (:func:`rearrange`): the input split into the finest axes both shapes are made of
(always a view), those axes permuted (a view), split again for the last shape (a view) and
merged into it, by a view where the strides allow one and by one copy where not. The values
are those of the three ops, in every case. Traced runs (calibration, per-node timings) see
every node's value, so they run the nodes one by one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskflow.ir.graph import Graph, Node


def view_runs(order: Sequence[Node], graph: Graph, skip: set[int]) -> dict[int, str]:
    """Step index -> "start" / "mid" / "end" for each Reshape -> Transpose -> Reshape run in
    ``order`` where each node's one output is read by the next node alone, as its data input,
    and is not a graph output; none of its steps in ``skip`` (the shape-only steps, whose
    values the executor caches)."""
    readers = graph.consumers()
    outputs = set(graph.output_names)
    index = {id(n): k for k, n in enumerate(order)}

    def next_of(node: Node, op: str) -> Node | None:
        """The one ``op`` node reading ``node``'s output, as its data input; other readers
        may only be Shape nodes (a :class:`Deferred` has the value's shape)."""
        v = node.outputs[0] if len(node.outputs) == 1 else ""
        users = [u for u in readers.get(v, []) if u.op != "Shape"]
        if not v or v in outputs or len(users) != 1 or users[0].op != op \
                or users[0].inputs[0] != v or v in users[0].inputs[1:]:
            return None
        return users[0]

    roles: dict[int, str] = {}
    for k, node in enumerate(order):
        if node.op != "Reshape" or k in roles:
            continue
        mid = next_of(node, "Transpose")
        end = None if mid is None else next_of(mid, "Reshape")
        if end is None or id(mid) not in index or id(end) not in index:
            continue
        run = (k, index[id(mid)], index[id(end)])
        if not skip.intersection(run):
            roles.update(zip(run, ("start", "mid", "end")))
    return roles


class Deferred:
    """A Reshape's input and target, then the Transpose's permutation, not yet applied;
    :attr:`shape` is the value's (what a Shape node reads: the torchscript export reads the
    transposed V's)."""

    __slots__ = ("x", "spec", "allowzero", "perm", "transposed")

    def __init__(self, x: Any, spec: Any, allowzero: int) -> None:
        self.x, self.spec, self.allowzero = x, spec, allowzero
        self.perm, self.transposed = None, False

    @property
    def shape(self) -> tuple[int, ...]:
        s1 = _target(self.x.shape, self.spec, self.allowzero)
        if s1 is None:  # an invalid target: the Reshape's own error
            return np.reshape(self.x, np.asarray(self.spec)).shape
        if not self.transposed:
            return tuple(s1)
        perm = range(len(s1) - 1, -1, -1) if self.perm is None else self.perm
        return tuple(s1[int(p)] for p in perm)


def view_step(role: str, node: Node, args: list[Any], kernel: Any) -> tuple[Any]:
    """The step's output in a run: a :class:`Deferred` until the run's last Reshape, which
    computes the run (``kernel``: its Reshape kernel, for anything else)."""
    if role == "start":
        if not isinstance(args[0], np.ndarray):
            return (kernel(*args, **node.attrs),)
        return (Deferred(args[0], args[1], int(node.attrs.get("allowzero", 0))),)
    d = args[0]
    if role == "mid":
        if not isinstance(d, Deferred):
            return (np.transpose(d, node.attrs.get("perm")),)
        d.perm, d.transposed = node.attrs.get("perm"), True
        return (d,)
    if not isinstance(d, Deferred):
        return (kernel(*args, **node.attrs),)
    allowzero = int(node.attrs.get("allowzero", 0))
    s1 = _target(d.x.shape, d.spec, d.allowzero)
    perm = None if s1 is None else (list(range(len(s1)))[::-1] if d.perm is None
                                    else [int(p) for p in d.perm])
    s2 = None if s1 is None or sorted(perm) != list(range(len(s1))) else \
        _target(tuple(s1[p] for p in perm), args[1], allowzero)
    if s2 is None:  # not a valid run: the ops one by one, which raise the right errors
        y = np.transpose(kernel(d.x, d.spec, allowzero=d.allowzero), d.perm)
        return (kernel(y, args[1], **node.attrs),)
    return (rearrange(d.x, s1, perm, s2),)


def _target(shape: tuple[int, ...], spec: Any, allowzero: int) -> list[int] | None:
    """Reshape's output shape for an input of ``shape`` (0 copies the input's dimension
    unless ``allowzero``, -1 is inferred), or None where it is invalid or empty."""
    dims = [int(v) for v in np.asarray(spec).ravel()]
    for i, v in enumerate(dims):
        if v == 0 and not allowzero:
            if i >= len(shape):
                return None
            dims[i] = shape[i]
    total = math.prod(shape)
    if dims.count(-1) > 1 or any(v < -1 for v in dims) or total == 0:
        return None
    if -1 in dims:
        known = math.prod(v for v in dims if v != -1)
        if known == 0 or total % known:
            return None
        dims[dims.index(-1)] = total // known
    return dims if math.prod(dims) == total else None


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


def _groups(shape: Sequence[int], fine: Sequence[int]) -> list[list[int]]:
    """For each axis of ``shape``, the consecutive axes of ``fine`` it merges."""
    groups, j = [], 0
    for d in shape:
        g, size = [], 1
        while size < d:
            size *= fine[j]
            g.append(j)
            j += 1
        groups.append(g)
    return groups


def rearrange(x: np.ndarray, s1: Sequence[int], perm: Sequence[int],
              s2: Sequence[int]) -> np.ndarray:
    """``x.reshape(s1).transpose(perm).reshape(s2)``: a view of ``x`` where one exists, else
    one copy (valid shapes; ``perm`` a permutation of s1's axes)."""
    fine = _refine(x.shape, s1)
    if fine is None:
        return np.reshape(np.transpose(np.reshape(x, s1), perm), s2)
    xf = np.reshape(x, fine)  # a split of x's axes: a view
    order = [a for i in perm for a in _groups(s1, fine)[i]]
    xt = np.transpose(xf, order)
    fine2 = _refine(xt.shape, s2)
    if fine2 is None:
        return np.reshape(xt, s2)
    return np.reshape(np.reshape(xt, fine2), s2)  # a split (a view), then the merge
