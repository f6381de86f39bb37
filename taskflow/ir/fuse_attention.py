"""Fuse exported scaled dot-product attention into one FusedAttention node.

Exporters write attention as

    MatMul(Q, K) -> [Mul | Div by a scalar constant] -> [Add(mask) | Where(cond, -inf, .)]
        -> Softmax(last axis) -> [Where(IsNaN(.), 0, .)] -> MatMul(., V)

(``K`` already transposed, as the first MatMul's right operand; the NaN guard is
``torch.nn.functional.scaled_dot_product_attention``'s, for fully masked rows). A Mul of Q or
of K by one element, read by the first MatMul alone (sdpa's sqrt(scale) on each), joins the
fused node too: a constant (dynamo's export) its scale, a value computed at run time
(TorchScript's) its ``q_scale`` / ``k_scale`` input. Spelled
out, every step writes a (batch, heads, S, T) tensor to memory; :func:`fuse_attention`
replaces the chain by one ``FusedAttention`` node whose cpu kernel keeps the scores of a
group of heads in cache (:mod:`taskflow.ops.cpu.attention`). Like the fusions in
:mod:`taskflow.ir.optimize`, this pass matches one subgraph by its ops; the kernel then
judges shapes, so any match runs (the numpy reference is the unfused chain itself).
"""

from __future__ import annotations

import math

import numpy as np

from taskflow.ir.graph import Graph, Node

#: What the fused scale step may be: a Mul by a constant (either side) or a Div by one.
_SCALE_OPS = ("Mul", "Div")


def _only_reader(g: Graph, value: str, consumers: dict[str, list[Node]]) -> Node | None:
    """The one node reading ``value``, if exactly one does and it is not a graph output."""
    users = consumers.get(value, [])
    if len(users) != 1 or value in g.output_names:
        return None
    return users[0]


def _scalar(g: Graph, name: str) -> float | None:
    """The value of a one-element float32 constant ``name`` of rank <= 1, else None."""
    c = g.initializers.get(name) if name else None
    if c is None or c.size != 1 or c.ndim > 1 or c.dtype != np.float32:
        return None
    return float(c.reshape(()))


def _last_axis(g: Graph, softmax: Node) -> bool:
    axis = int(softmax.attrs.get("axis", -1))
    if axis == -1:
        return True
    v = g.values.get(softmax.inputs[0])
    return v is not None and v.shape is not None and axis == len(v.shape) - 1


def _mask_step(g: Graph, node: Node) -> tuple[str, str, Node | None] | None:
    """(scores input, mask, extra node) of an Add(scores, mask) or Where(cond, -inf, scores)
    step; the extra node turns Where's condition into the additive mask ``Where(cond, -inf,
    0)`` (the same scores wherever they are finite)."""
    if node.op == "Add" and len(node.inputs) == 2 and node.inputs[0] != node.inputs[1]:
        return node.inputs[0], node.inputs[1], None
    if node.op == "Where" and len(node.inputs) == 3:
        fill = _scalar(g, node.inputs[1])
        if fill is None or fill != -np.inf:
            return None
        zero = g.unique_name(f"{node.name or 'attention'}_mask_zero")
        g.initializers[zero] = np.zeros((), np.float32)
        mask = g.unique_name(f"{node.name or 'attention'}_additive_mask")
        extra = Node("Where", [node.inputs[0], node.inputs[1], zero], [mask],
                     name=f"{node.name}_additive")
        return node.inputs[2], mask, extra
    return None


def _nan_guard(g: Graph, probs: str, consumers: dict[str, list[Node]]) -> list[Node] | None:
    """[IsNaN, Where] if ``probs`` is read only by ``Where(IsNaN(probs), 0, probs)``."""
    users = consumers.get(probs, [])
    isnan = next((n for n in users if n.op == "IsNaN"), None)
    if len(users) != 2 or isnan is None or probs in g.output_names:
        return None
    where = _only_reader(g, isnan.outputs[0], consumers)
    if where is None or where.op != "Where" or where not in users \
            or where.inputs[0] != isnan.outputs[0] or where.inputs[2] != probs \
            or _scalar(g, where.inputs[1]) != 0.0:
        return None
    return [isnan, where]


def _match(g: Graph, softmax: Node, consumers: dict[str, list[Node]],
           producers: dict[str, Node]) -> tuple[Node, list[Node], Node | None] | None:
    """(the fused node, nodes it replaces, extra mask node) for the attention ending in
    ``softmax``, or None."""
    if len(softmax.inputs) != 1 or not _last_axis(g, softmax):
        return None
    chain, value = [softmax], softmax.inputs[0]
    probs, nan_to_zero = softmax.outputs[0], 0
    guard = _nan_guard(g, probs, consumers)
    if guard is not None:
        chain += guard
        probs, nan_to_zero = guard[1].outputs[0], 1
    out = _only_reader(g, probs, consumers)
    if out is None or out.op != "MatMul" or out.inputs[0] != probs or out.inputs[1] == probs:
        return None
    mask, extra, scale, divide = "", None, 1.0, 0
    node = producers.get(value)
    if node is not None and node.op in ("Add", "Where") \
            and _only_reader(g, value, consumers) is softmax:
        step = _mask_step(g, node)
        if step is not None and node.op == "Add":  # the scores are the side computed here
            a, m = step[:2]
            p = producers.get(a)
            if p is None or p.op not in ("MatMul", *_SCALE_OPS):
                step = (m, a, None)
        if step is None:
            return None
        value, mask, extra = step
        chain.append(node)
    node = producers.get(value)
    if node is not None and node.op in _SCALE_OPS and len(node.inputs) == 2 \
            and _only_reader(g, value, consumers) is chain[-1]:
        sides = ((0, 1), (1, 0)) if node.op == "Mul" else ((0, 1),)
        hit = next(((k, _scalar(g, node.inputs[c])) for k, c in sides
                    if _scalar(g, node.inputs[c]) is not None), None)
        if hit is not None:
            value, scale, divide = node.inputs[hit[0]], hit[1], int(node.op == "Div")
            chain.append(node)
    node = producers.get(value)
    if node is None or node.op != "MatMul" or len(node.inputs) != 2 \
            or _only_reader(g, value, consumers) is not chain[-1]:
        return None
    chain.append(node)
    q, k = node.inputs
    factors = ["", ""]
    if q != k:  # a scalar Mul on Q or on Kᵀ (sdpa's sqrt(scale) on each) joins the scale
        q, scale, factors[0] = _operand_scale(g, q, k, node, consumers, producers, chain, scale,
                                              divide)
        k, scale, factors[1] = _operand_scale(g, k, q, node, consumers, producers, chain, scale,
                                              divide)
    attrs = {"scale": scale, "divide": divide, "nan_to_zero": nan_to_zero}
    inputs = [q, k, out.inputs[1], mask] + (factors if any(factors) else [])
    fused = Node("FusedAttention", inputs, list(out.outputs), attrs,
                 name=out.name or node.name, domain="taskflow")
    return fused, [*chain, out], extra


def _operand_scale(g: Graph, value: str, other: str, scores: Node,
                   consumers: dict[str, list[Node]], producers: dict[str, Node],
                   chain: list[Node], scale: float, divide: int) -> tuple[str, float, str]:
    """(operand, scale, factor) with a ``Mul`` of ``value`` by one element folded into the
    fused node (the Mul appended to ``chain``), where ``value`` is read by the scores'
    MatMul alone: a float32 constant joins ``scale``; a value computed at run time whose
    shape is known to hold one element becomes ``factor``, an input of the fused node. Else
    unchanged, with no factor. torch's sdpa multiplies Q and Kᵀ each by sqrt(scale): two
    passes over (batch, heads, S, D) tensors that the scores' scale then does for free.
    dynamo exports the factor as a constant, TorchScript computes it from Q's shape. The
    products round once instead of twice (a float32 ulp of difference)."""
    node = producers.get(value)
    if node is None or node.op != "Mul" or len(node.inputs) != 2 \
            or _only_reader(g, value, consumers) is not scores:
        return value, scale, ""
    for data, factor in ((0, 1), (1, 0)):
        name = node.inputs[factor]
        v = g.values.get(node.inputs[data])
        if (v is not None and v.shape is not None and len(v.shape) == 0) \
                or node.inputs[data] in (other, name):
            continue  # a scalar times a one-element tensor has the tensor's rank
        c = _scalar(g, name)
        if c is not None and math.isfinite(c) and c != 0:
            chain.append(node)
            return node.inputs[data], scale / c if divide else scale * c, ""
        f = g.values.get(name)
        if c is None and name not in g.initializers and f is not None \
                and f.shape is not None and len(f.shape) <= 1 \
                and all(d == 1 for d in f.shape) and np.dtype(f.dtype) == np.float32:
            chain.append(node)
            return node.inputs[data], scale, name
    return value, scale, ""


def fuse_attention(graph: Graph) -> Graph:
    """Replace ``MatMul -> [scale] -> [mask] -> Softmax(last axis) -> MatMul`` chains by
    FusedAttention nodes (see the module docstring); everything else is left as it was.

    Examples
    --------
    >>> fused = fuse_attention(model.graph)                               # doctest: +SKIP
    >>> fused.op_counts()["FusedAttention"]                              # doctest: +SKIP
    6
    """
    g = graph.copy()
    consumers = g.consumers()
    producers = g.producers()
    replaced: dict[int, list[Node]] = {}
    gone: set[int] = set()
    for softmax in list(g.nodes):
        if softmax.op != "Softmax" or id(softmax) in gone:
            continue
        found = _match(g, softmax, consumers, producers)
        if found is None:
            continue
        fused, chain, extra = found
        gone.update(id(n) for n in chain)
        replaced[id(chain[-1])] = ([extra] if extra is not None else []) + [fused]
    g.rewrite(replaced, drop=gone)
    return g
