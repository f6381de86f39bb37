"""Fuse GELU written out in elementary ops into one ``Gelu`` node.

Exporters at opsets before 20 spell GELU as five to nine elementwise nodes, each one pass over
a transformer's widest activation (4x the model width):

- erf form (BERT, ViT):  ``x * (erf(x / sqrt 2) + 1) * 0.5`` (``/ sqrt 2`` or ``* 1/sqrt 2``;
  the ``* 0.5`` on x, on the product, or, from the dynamo exporter, on ``erf + 1``),
- tanh form (GPT-2):  ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` with ``x^3``
  as ``x * (x * x)`` or ``Pow(x, 3)``.

:func:`fuse_gelu` matches both by their ops and constants and writes one ``Gelu`` node (with
``approximate="tanh"`` for the second), which :func:`taskflow.ir.optimize.fuse_epilogues` then
folds into the MatMul before it as its activation.
"""

from __future__ import annotations

import math

from taskflow.ir.graph import Graph, Node

#: Relative tolerance on the matched constants: they are float32 roundings of the formula's.
_RTOL = 1e-6


def _const(g: Graph, name: str, want: float) -> bool:
    c = g.initializers.get(name) if name else None
    return c is not None and c.size == 1 and c.dtype.kind == "f" \
        and math.isclose(float(c.reshape(-1)[0]), want, rel_tol=_RTOL)


def _other(node: Node, value: str) -> str | None:
    """The input of binary ``node`` that is not ``value`` (None if ``value`` is not one)."""
    if len(node.inputs) != 2 or value not in node.inputs:
        return None
    return node.inputs[1] if node.inputs[0] == value else node.inputs[0]


class _Walk:
    """Single-reader steps through a graph, collecting the nodes passed."""

    def __init__(self, g: Graph):
        self.g = g
        self.consumers = g.consumers()
        self.producers = g.producers()
        self.nodes: list[Node] = []

    def next(self, value: str, op: str) -> Node | None:
        users = self.consumers.get(value, [])
        if len(users) != 1 or value in self.g.output_names or users[0].op != op:
            return None
        self.nodes.append(users[0])
        return users[0]

    def prev(self, value: str, op: str) -> Node | None:
        node = self.producers.get(value)
        if node is None or node.op != op or len(self.consumers.get(value, [])) != 1 \
                or value in self.g.output_names:
            return None
        self.nodes.append(node)
        return node

    def const_step(self, value: str, op: str, want: float) -> Node | None:
        node = self.next(value, op)
        return node if node is not None and _const(self.g, _other(node, value), want) else None


def _tail(w: _Walk, x: str, one_plus: Node) -> Node | None:
    """``(x * t) * 0.5``, ``0.5 * (x * t)``, ``(x * 0.5) * t`` or ``x * (0.5 * t)`` after
    ``t = 1 + f``: the last node, or None."""
    t = one_plus.outputs[0]
    prod = w.next(t, "Mul")
    if prod is None:
        return None
    other = _other(prod, t)
    if other == x:
        return w.const_step(prod.outputs[0], "Mul", 0.5)
    if _const(w.g, other, 0.5):  # the dynamo exporter's x * (0.5 * t)
        last = w.next(prod.outputs[0], "Mul")
        return last if last is not None and _other(last, prod.outputs[0]) == x else None
    half = w.prev(other, "Mul")
    return prod if half is not None and x in half.inputs and _const(
        w.g, _other(half, x), 0.5) else None


def _erf_form(g: Graph, erf: Node) -> tuple[str, Node, list[Node]] | None:
    w = _Walk(g)
    w.nodes.append(erf)
    scaled = w.producers.get(erf.inputs[0])
    if scaled is None or len(w.consumers.get(erf.inputs[0], [])) != 1:
        return None
    w.nodes.append(scaled)
    if scaled.op == "Div" and _const(g, scaled.inputs[1], math.sqrt(2)):
        x = scaled.inputs[0]
    elif scaled.op == "Mul" and len(scaled.inputs) == 2:
        x = next((scaled.inputs[k] for k in (0, 1)
                  if _const(g, scaled.inputs[1 - k], 1 / math.sqrt(2))), None)
    else:
        return None
    one_plus = w.const_step(erf.outputs[0], "Add", 1.0) if x else None
    last = _tail(w, x, one_plus) if one_plus is not None else None
    return None if last is None else (x, last, w.nodes)


def _tanh_form(g: Graph, tanh: Node) -> tuple[str, Node, list[Node]] | None:
    w = _Walk(g)
    w.nodes.append(tanh)
    k = w.prev(tanh.inputs[0], "Mul")
    inner = next((i for i in k.inputs if _const(g, _other(k, i), math.sqrt(2 / math.pi))),
                 None) if k is not None and len(k.inputs) == 2 else None
    add = w.prev(inner, "Add") if inner else None
    if add is None or len(add.inputs) != 2:
        return None
    for x, cubic in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        mark = len(w.nodes)
        scaled = w.prev(cubic, "Mul")
        cube = _other(scaled, next((i for i in scaled.inputs if _const(g, i, 0.044715)), ""))\
            if scaled is not None else None
        if cube and _is_cube(w, cube, x):
            break
        del w.nodes[mark:]
    else:
        return None
    one_plus = w.const_step(tanh.outputs[0], "Add", 1.0)
    last = _tail(w, x, one_plus) if one_plus is not None else None
    return None if last is None else (x, last, w.nodes)


def _is_cube(w: _Walk, value: str, x: str) -> bool:
    """``value`` is ``x * (x * x)``, ``(x * x) * x`` or ``Pow(x, 3)``, read only here."""
    node = w.producers.get(value)
    if node is None or len(w.consumers.get(value, [])) != 1:
        return False
    if node.op == "Pow" and node.inputs[0] == x and _const(w.g, node.inputs[1], 3.0):
        w.nodes.append(node)
        return True
    if node.op != "Mul" or x not in node.inputs:
        return False
    square = w.producers.get(_other(node, x) or "")
    if square is None or square.op != "Mul" or square.inputs != [x, x] \
            or len(w.consumers.get(square.outputs[0], [])) != 1:
        return False
    w.nodes += [node, square]
    return True


def fuse_gelu(graph: Graph) -> Graph:
    """Replace GELU spelled out in Erf or Tanh and arithmetic by one ``Gelu`` node (see the
    module docstring); the value it reads and every other node are left as they were.

    Examples
    --------
    >>> fused = fuse_gelu(model.graph)                                   # doctest: +SKIP
    >>> fused.op_counts()["Gelu"]                                        # doctest: +SKIP
    6
    """
    g = graph.copy()
    gone: set[int] = set()
    new: dict[int, Node] = {}
    for node in list(g.nodes):
        if node.op not in ("Erf", "Tanh") or id(node) in gone:
            continue
        found = (_erf_form if node.op == "Erf" else _tanh_form)(g, node)
        if found is None or any(id(n) in gone for n in found[2]):
            continue
        x, last, chain = found
        if x in (o for n in chain for o in n.outputs):
            continue  # x itself computed inside the chain: not GELU of anything outside
        attrs = {"approximate": "tanh"} if node.op == "Tanh" else {}
        new[id(last)] = Node("Gelu", [x], list(last.outputs), attrs, name=last.name)
        gone.update(id(n) for n in chain)
    g.rewrite(new, drop=gone)
    return g
