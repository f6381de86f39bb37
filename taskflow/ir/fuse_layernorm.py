"""Fuse a residual Add and the LayerNormalization reading it into one FusedAddLayerNorm node.

Post-LN blocks (BERT, MiniLM) write ``LayerNormalization(x + sublayer(x))``; pre-LN blocks (GPT,
ViT) ``h = x + sublayer(x)`` then ``LayerNormalization(h)`` with ``h`` also the next residual.
Both become one node (:mod:`taskflow.ops.skip_norm`), with the sum as its second output when
anything else reads it. Matched by ops, like the other fusions: the Add's operands must both
be computed (a constant operand is a bias, not a residual) and the LayerNormalization's mean
and inverse deviation outputs unused.
"""

from __future__ import annotations

from taskflow.ir.graph import Graph, Node


def fuse_add_layernorm(graph: Graph) -> Graph:
    """Replace ``LayerNormalization(Add(a, b))`` by ``FusedAddLayerNorm(a, b, ...)``.

    Examples
    --------
    >>> fused = fuse_add_layernorm(model.graph)                          # doctest: +SKIP
    >>> fused.op_counts()["FusedAddLayerNorm"]                           # doctest: +SKIP
    12
    """
    g = graph.copy()
    consumers = g.consumers()
    producers = g.producers()
    outputs = set(g.output_names)
    gone: set[int] = set()
    new: dict[int, Node] = {}
    for ln in g.nodes:
        if ln.op != "LayerNormalization" or not ln.inputs:
            continue
        if any(o and (o in outputs or consumers.get(o)) for o in ln.outputs[1:]):
            continue  # Mean / InvStdDev are read: the fused op does not make them
        add = producers.get(ln.inputs[0])
        if add is None or add.op != "Add" or id(add) in gone or len(add.inputs) != 2 \
                or len(set(add.inputs)) != 2 \
                or any(i in g.initializers or not i for i in add.inputs):
            continue
        total = add.outputs[0]
        keep = total in outputs or any(n is not ln for n in consumers.get(total, []))
        params = list(ln.inputs[1:3]) + [""] * (3 - len(ln.inputs))
        new[id(ln)] = Node("FusedAddLayerNorm", [*add.inputs, *params],
                           [ln.outputs[0], total if keep else ""], dict(ln.attrs),
                           name=ln.name, domain="taskflow")
        gone.add(id(add))
    g.rewrite(new, drop=gone)
    return g
