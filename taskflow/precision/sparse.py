"""Which pruned layers run a sparse kernel: each candidate's CSR product timed against its dense
GEMM on the layer's own inputs (:func:`choose_sparse_kernels`), for :meth:`taskflow.Model.prune`.

After unstructured pruning a Gemm, MatMul (2-D constant B) or 1x1 convolution (stride 1, no
padding, one group) may multiply by its weight's non-zeros only: the ``sparse=1`` attribute of
FusedGemm / FusedMatMul / FusedConv (:mod:`taskflow.ops.cpu.sparse`). Whether that pays depends
on the sparsity, the shape and the batch (on this machine, 2 kernel threads: 3.8x the dense
GEMM at 90% on 64 x 4096 x 4096, 0.9x at 50%; 1.0x at 90% on a 256 -> 64 1x1 convolution over
6272 pixels), so it is measured, never assumed; layers below :data:`MIN_SPARSITY` are not even
tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from taskflow import ops
from taskflow.executor import ExecutionPlan
from taskflow.ir.graph import Graph, Node
from taskflow.ir.prune import SparseChoice
from taskflow.ir.quantize import CONTRACTIONS, ineligible_reason, layer_name
from taskflow.ops.cpu.sparse import sparsity
from taskflow.precision.measure import MIN_SPEEDUP, _race, sample_feed
from taskflow.precision.report import as_feed

if TYPE_CHECKING:
    from taskflow.model import Model

#: Layers at least this sparse are timed; below it CSR's index traffic costs more than the zeros
#: save (already at 50% the sparse kernel ran at 0.55-1.0x the dense one), so they keep the
#: dense kernel unmeasured.
MIN_SPARSITY = 0.5


def sparse_ineligible(graph: Graph, node: Node) -> str | None:
    """Why ``node`` has no sparse kernel, or None if it has one.

    Examples
    --------
    >>> from taskflow import Node
    >>> g = Graph(initializers={"w": np.ones((8, 4, 3, 3), np.float32)})
    >>> sparse_ineligible(g, Node("Conv", ["x", "w"], ["y"]))
    'a 3x3 convolution (only 1x1, stride 1, no padding, one group)'
    """
    why = ineligible_reason(graph, node)
    if why is not None:
        return why
    if node.attrs.get("precision"):
        return "it runs at reduced precision"
    if node.op not in ("Conv", "FusedConv"):
        return None
    w = graph.initializers[node.inputs[1]]
    pads = node.attrs.get("pads") or [0]
    if w.ndim != 4 or w.shape[2:] != (1, 1) or int(node.attrs.get("group", 1)) != 1 or \
            any(int(s) != 1 for s in node.attrs.get("strides") or [1]) or any(pads) or \
            str(node.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        kind = "x".join(str(k) for k in w.shape[2:])
        return f"a {kind} convolution (only 1x1, stride 1, no padding, one group)"
    return None


def choose_sparse_kernels(model: Model, sample: Any = None, repeat: int = 3
                          ) -> tuple[Model, list[SparseChoice]]:
    """Time the sparse and dense kernels of each eligible layer of ``model`` (already pruned);
    return the model that runs the sparse one where it is faster, and every choice.

    The model runs once on ``sample`` with a trace that keeps the candidates' inputs; each
    candidate (weight sparsity >= :data:`MIN_SPARSITY`) then runs as its fused op with and
    without ``sparse=1``, interleaved, ``repeat`` timed samples each after a warm-up (which
    builds the CSR copy). ``sparse=1`` is kept only when more than
    :data:`~taskflow.precision.measure.MIN_SPEEDUP` times faster; plain Gemm/MatMul/Conv nodes
    that get it become their fused form (``activation=""``).

    Parameters
    ----------
    model : Model
        Runs on ``"cpu"`` (other devices have no sparse kernel: nothing is measured).
    sample : array or dict of str to array, optional
        The batch the layers are timed on (default: :func:`~taskflow.precision.sample_feed`,
        8 rows of random normal data).
    repeat : int
        Timed samples per kernel; the best counts.

    Returns
    -------
    (Model, list of SparseChoice)
        The model (same source graph) and one choice per contraction with a constant weight,
        in graph order.

    Examples
    --------
    >>> from taskflow.frontend import nn
    >>> from taskflow.ir.prune import prune
    >>> net = nn.Sequential([nn.Dense(256, 256), nn.ReLU(), nn.Dense(256, 4)],
    ...                     input_shape=(256,))
    >>> pruned, _ = prune(net.to_graph(), 0.9, structured=False)
    >>> from taskflow import Model
    >>> model, choices = choose_sparse_kernels(Model(pruned))
    >>> [(c.name, round(c.sparsity, 2), c.dense_ms is not None) for c in choices]
    [('0_Gemm', 0.9, True), ('2_Gemm', 0.9, True)]
    """
    graph = model.graph.copy()
    choices: dict[str, SparseChoice] = {}
    wanted: dict[str, Node] = {}
    for node in graph.nodes:
        w = graph.initializers.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if node.op not in CONTRACTIONS and node.op not in CONTRACTIONS.values() or w is None:
            continue
        name = layer_name(node)
        choice = SparseChoice(name, node.op, tuple(np.shape(w)), sparsity(w))
        choices[name] = choice
        choice.why = sparse_ineligible(graph, node) or ""
        if not choice.why and choice.sparsity < MIN_SPARSITY:
            choice.why = f"sparsity below {MIN_SPARSITY:g}"
        if not choice.why and model.device != "cpu":
            choice.why = f"device {model.device!r} has no sparse kernel"
        if not choice.why:
            wanted[name] = node
    if wanted:
        feed = sample_feed(model) if sample is None else as_feed(model, sample, what="sample")
        args = _inputs(model, set(wanted), feed)
        for name, node in wanted.items():
            op = CONTRACTIONS.get(node.op, node.op)
            dense = {"activation": "", **node.attrs} if op != node.op else dict(node.attrs)
            dense.pop("sparse", None)
            kernel = ops.get(op).kernel("cpu")
            dense_s, sparse_s = _race(kernel, (args[name], dense),
                                      (args[name], {**dense, "sparse": 1}), repeat)
            choice = choices[name]
            choice.dense_ms, choice.sparse_ms = dense_s * 1e3, sparse_s * 1e3
            if dense_s > sparse_s * MIN_SPEEDUP:
                choice.kernel = "sparse"
                node.op, node.domain, node.attrs = op, "taskflow", {**dense, "sparse": 1}
    return model._derived(graph), list(choices.values())


def _inputs(model: Model, names: set[str], feed: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The inputs of the nodes ``names`` when ``model`` runs on ``feed``."""
    captured: dict[str, list[Any]] = {}

    def keep(node: Node, args: list[Any], results: tuple) -> None:
        if layer_name(node) in names:
            captured[layer_name(node)] = list(args)

    ExecutionPlan(model.graph, device=model.device).run(model.check_feed(feed), trace=keep)
    return captured
