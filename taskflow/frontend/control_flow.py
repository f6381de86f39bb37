"""Control flow at import: an ``If`` whose condition is a constant becomes the branch it takes.

Exporters emit ``If`` for Python control flow on shapes or flags that are fixed once the model
is traced; taskflow's graphs carry no control flow, so :func:`inline_ifs` inlines such an
``If`` (before canonicalisation: its branch's nodes have the model's opset) and reports every
other one as unsupported, with the reason.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx

from taskflow.frontend.opsets import canonicalize
from taskflow.frontend.protos import BadAttribute, attrs_of, constant, tensor_array
from taskflow.ir.fold import fold_constants
from taskflow.ir.graph import Graph, Node, Value


def inline_ifs(graph: Graph, opset: int, unsupported: list[tuple[str, str, str]], *,
               max_fold_elements: int) -> None:
    """Replace every ``If`` whose condition constant-folds by the nodes of the branch it takes.

    Exporters emit ``If`` for Python control flow on shapes or flags that are fixed once the
    model is traced; taskflow's graphs carry no control flow, so such an ``If`` is inlined here,
    before canonicalisation (its branch's nodes have the model's opset). Branches may nest: an
    inlined branch's own ``If`` nodes are decided in the next round. An ``If`` whose condition
    depends on graph inputs is listed in ``unsupported`` with the reason.
    """
    refused: set[str] = set()
    while True:
        ifs = [n for n in graph.nodes if n.op == "If" and not n.domain and n.name not in refused]
        if not ifs:
            return
        consts = _condition_values(graph, opset, [n.inputs[0] for n in ifs if n.inputs],
                                  max_fold_elements)
        for node in ifs:
            cond = consts.get(node.inputs[0]) if node.inputs else None
            branches = [node.attrs.get(b) for b in ("then_branch", "else_branch")]
            why = ""
            if any(not isinstance(b, onnx.GraphProto) for b in branches):
                why = "it needs both then_branch and else_branch graphs"
            elif cond is None:
                why = (f"its condition {node.inputs[0] if node.inputs else ''!r} is not a "
                       "constant at import time (it depends on graph inputs); taskflow runs If "
                       "only by inlining the branch a constant condition selects (re-export "
                       "with the condition fixed, e.g. without data-dependent control flow)")
            elif cond.size != 1:
                why = f"its condition has shape {cond.shape}; expected a single boolean"
            else:
                branch = branches[0] if bool(cond.ravel()[0]) else branches[1]
                if len(branch.output) != len(node.outputs):
                    why = (f"its taken branch {branch.name!r} has {len(branch.output)} outputs; "
                           f"the If node has {len(node.outputs)}")
            if why:
                unsupported.append(("If", node.name, why))
                refused.add(node.name)
                continue
            _inline_branch(graph, node, branch, unsupported)


def _condition_values(graph: Graph, opset: int, conds: list[str],
                      max_fold_elements: int) -> dict[str, np.ndarray]:
    """The constant values of ``conds`` (those that fold), folding only what they depend on."""
    producers = graph.producers()
    needed, todo = set(), [c for c in conds if c]
    while todo:
        name = todo.pop()
        node = producers.get(name)
        if node is None or id(node) in needed or node.op == "If":
            continue
        needed.add(id(node))
        todo.extend(i for i in node.inputs if i)
    available = set(graph.input_names) | set(graph.initializers)
    nodes = []
    for n in graph.toposort():
        if id(n) in needed and all(not i or i in available for i in n.inputs):
            nodes.append(copy.deepcopy(n))
            available.update(o for o in n.outputs if o)
    probe = Graph(nodes, list(graph.inputs), [Value(c) for c in conds if c],
                  dict(graph.initializers), dict(graph.values))
    canonicalize(probe, opset)
    folded = fold_constants(probe, max_input_elements=max_fold_elements)
    return {c: np.asarray(folded.initializers[c]) for c in conds if c in folded.initializers}


def _inline_branch(graph: Graph, node: Node, branch: onnx.GraphProto,
                   unsupported: list[tuple[str, str, str]]) -> None:
    """Put ``branch``'s nodes (names made unique under the If's name) where ``node`` was; its
    outputs reach the If's outputs through Identity nodes (the optimiser drops them)."""
    rename: dict[str, str] = {}
    taken: set[str] = set()

    def fresh(base: str) -> str:  # a node name unique in the graph and this branch
        name, k = graph.unique_name(base), 0
        while name in taken:
            k += 1
            name = graph.unique_name(f"{base}_{k}")
        taken.add(name)
        return name

    def local(name: str) -> str:
        rename[name] = new = graph.unique_name(f"{node.name}/{name}")
        graph.values[new] = Value(new)  # reserves the name
        return new

    for t in branch.initializer:
        graph.initializers[local(t.name)] = tensor_array(t, f"If {node.name!r}")
    for proto in branch.node:
        for o in proto.output:
            if o:
                local(o)
    nodes: list[Node] = []
    for proto in branch.node:
        domain = "" if proto.domain == "ai.onnx" else proto.domain
        name = fresh(f"{node.name}/{proto.name or proto.op_type}")
        try:
            attrs = attrs_of(proto, domain)
        except BadAttribute as exc:
            unsupported.append((proto.op_type, name, str(exc)))
            attrs = {}
        for value in attrs.values():
            if isinstance(value, onnx.GraphProto):
                _rename_outer(value, rename)
        outs = [rename.get(o, o) for o in proto.output]
        if proto.op_type == "Constant" and not domain and len(attrs) == 1 and outs:
            graph.initializers[outs[0]] = constant(attrs)
            del graph.values[outs[0]]
            continue
        nodes.append(Node(proto.op_type, [rename.get(i, i) for i in proto.input], outs, attrs,
                          name, domain))
    for out, target in zip(branch.output, node.outputs):
        if target:
            nodes.append(Node("Identity", [rename.get(out.name, out.name)], [target], {},
                              fresh(f"{node.name}/{target}")))
    at = next(k for k, n in enumerate(graph.nodes) if n is node)
    graph.nodes[at:at + 1] = nodes


def _rename_outer(g: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Rename, in a nested branch, its reads of values the enclosing branch defines (ONNX names
    are unique across scopes, so no inner name shadows them)."""
    for n in g.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename_outer(a.g, rename)
    for v in g.output:
        if v.name in rename:
            v.name = rename[v.name]
