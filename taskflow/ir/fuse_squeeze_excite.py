"""Fuse a squeeze-and-excitation block into one FusedSqueezeExcite node.

``Mul(x, gate(conv1x1(act(conv1x1(pool(x))))))``, where ``pool`` is ``GlobalAveragePool``
(TorchScript) or ``ReduceMean`` over the spatial axes with ``keepdims`` (dynamo), and the two
1x1 convolutions are plain Conv or FusedConv nodes (after :func:`~taskflow.ir.optimize.
fuse_epilogues` has folded in their bias and activation) with constant weights. Every
intermediate value must have the one reader the pattern gives it, and the Mul's other operand
must be the very tensor that was pooled: a Mul by anything else is a different computation
and stays as it is. The fused op (:mod:`taskflow.ops.squeeze_excite`) records which pool the
graph used, so its reference is exactly the unfused computation.
"""

from __future__ import annotations

from typing import Any

from taskflow.ir.graph import Graph, Node
from taskflow.ops.conv import ACTIVATIONS

#: Spatial axes of a rank-4 NCHW tensor, in both spellings ReduceMean may use.
_SPATIAL_AXES = ({2, 3}, {-2, -1})


def fuse_squeeze_excite(graph: Graph) -> Graph:
    """Replace each squeeze-and-excitation block by one ``FusedSqueezeExcite`` node.

    Examples
    --------
    >>> fused = fuse_squeeze_excite(model.graph)                         # doctest: +SKIP
    >>> fused.op_counts()["FusedSqueezeExcite"]                          # doctest: +SKIP
    9
    """
    g = graph.copy()
    consumers = g.consumers()
    producers = g.producers()
    outputs = set(g.output_names)
    gone: set[int] = set()
    new: dict[int, Node] = {}

    def only_reader(value: str, reader: Node) -> bool:
        users = consumers.get(value, [])
        return value not in outputs and len(users) == 1 and users[0] is reader

    for mul in g.nodes:
        if mul.op != "Mul" or len(mul.inputs) != 2 or mul.inputs[0] == mul.inputs[1]:
            continue
        for x, gated in (mul.inputs, mul.inputs[::-1]):
            chain = _match(g, producers, x, gated, mul, only_reader)
            if chain is None or any(id(n) in gone for n in chain):
                continue
            pool, squeeze, excite = chain
            attrs: dict[str, Any] = {
                "pool": pool.op,
                "activation": _text(squeeze.attrs.get("activation", "")),
                "activation_params": list(squeeze.attrs.get("activation_params") or []),
                "gate": _text(excite.attrs.get("activation", "")),
                "gate_params": list(excite.attrs.get("activation_params") or []),
            }
            inputs = [x, squeeze.inputs[1], _bias(squeeze), excite.inputs[1], _bias(excite)]
            new[id(mul)] = Node("FusedSqueezeExcite", inputs, list(mul.outputs), attrs,
                                name=mul.name, domain="taskflow")
            gone.update(id(n) for n in chain)
            break
    g.rewrite(new, drop=gone)
    return g


def _match(g: Graph, producers: dict[str, Node], x: str, gated: str, mul: Node,
           only_reader) -> tuple[Node, Node, Node] | None:
    """(pool, squeeze conv, excite conv) when ``gated`` is the SE gate of ``x``, else None."""
    excite = producers.get(gated)
    if excite is None or not only_reader(gated, mul) or not _pointwise(g, excite):
        return None
    squeeze = producers.get(excite.inputs[0])
    if squeeze is None or not only_reader(excite.inputs[0], excite) \
            or not _pointwise(g, squeeze):
        return None
    pool = producers.get(squeeze.inputs[0])
    if pool is None or not only_reader(squeeze.inputs[0], squeeze) or not pool.inputs \
            or pool.inputs[0] != x or not _spatial_mean(g, pool):
        return None
    w1, w2 = g.initializers[squeeze.inputs[1]], g.initializers[excite.inputs[1]]
    if w2.shape != (w1.shape[1], w1.shape[0], 1, 1):
        return None
    return pool, squeeze, excite


def _pointwise(g: Graph, node: Node) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped Conv/FusedConv with constant weights and bias,
    no residual, no channel shuffle and an activation the fused op knows."""
    if node.op not in ("Conv", "FusedConv") or len(node.inputs) < 2 or len(node.inputs) > 3:
        return False
    a = node.attrs
    w = g.initializers.get(node.inputs[1])
    if w is None or w.ndim != 4 or w.shape[2:] != (1, 1):
        return False
    if (len(node.inputs) == 3 and node.inputs[2] and node.inputs[2] not in g.initializers) \
            or int(a.get("group", 1)) != 1 or int(a.get("channel_shuffle", 0)) > 1 \
            or _text(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        return False
    if any(int(p) for p in a.get("pads") or ()) \
            or any(int(s) != 1 for s in a.get("strides") or ()):
        return False
    return _text(a.get("activation", "")) in ACTIVATIONS


def _spatial_mean(g: Graph, pool: Node) -> bool:
    """GlobalAveragePool, or ReduceMean over the two spatial axes keeping them."""
    if pool.op == "GlobalAveragePool":
        return True
    if pool.op != "ReduceMean" or not int(pool.attrs.get("keepdims", 1)):
        return False
    # the importer gives every opset's ReduceMean its axes as an input
    axes = g.initializers.get(pool.inputs[1]) if len(pool.inputs) > 1 and pool.inputs[1] \
        else None
    return axes is not None and axes.size == 2 \
        and set(axes.reshape(-1).tolist()) in _SPATIAL_AXES


def _bias(node: Node) -> str:
    return node.inputs[2] if len(node.inputs) > 2 else ""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
