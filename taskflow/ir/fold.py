"""Constant folding: evaluate every node whose inputs are all constants, at import time.

Split from :mod:`taskflow.ir.optimize` (which runs it as its first pass) because the ONNX
importer folds too, before any other pass. Ops are evaluated through the registry, so folding
agrees with the kernels by construction.
"""

from __future__ import annotations

import numpy as np

from taskflow import ops
from taskflow.ir.graph import Graph, Node

#: Ops never folded: each evaluation draws new random numbers.
NONDETERMINISTIC = frozenset({
    "Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform",
    "RandomUniformLike",
})

#: Ops whose result depends only on their inputs' *shapes*; they fold when those are static.
SHAPE_ONLY = frozenset({"Shape", "Size"})


def fold_constants(graph: Graph, *, max_input_elements: int | None = None) -> Graph:
    """Evaluate nodes whose inputs are all constants and store their outputs as initializers.

    A node folds when it is deterministic, registered, and either

    - every input is an initializer and the op's kind is ``"shape"`` (``ConstantOfShape``,
      ``Range``: weights built from a constant shape fold whatever their size), or
    - every input is an initializer with at most ``max_input_elements`` elements
      (``None``: no limit), or
    - it is ``Shape``/``Size`` of a value whose shape is fully static.

    Folded nodes are removed, then every initializer no node reads and no output names.
    A node whose evaluation raises is kept and the error noted in ``graph.notes``.

    Parameters
    ----------
    graph : Graph
        Not modified.
    max_input_elements : int, optional
        Largest input (in elements) a non-shape node may have and still fold.

    Returns
    -------
    Graph

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.ir.graph import Graph, Node, Value
    >>> g = Graph([Node("ConstantOfShape", ["s"], ["w"], {"value": np.ones(1, "f4")}),
    ...            Node("Add", ["x", "w"], ["y"])], [Value("x")], [Value("y")],
    ...           {"s": np.array([2], "i8")})
    >>> folded = fold_constants(g)
    >>> [n.op for n in folded.nodes], sorted(folded.initializers)
    (['Add'], ['w'])
    """
    g = graph.copy()
    consts = dict(g.initializers)
    static = {k: v.shape for k, v in g.values.items()}
    static.update((v.name, v.shape) for v in g.inputs)
    kept: list[Node] = []
    for node in g.toposort():
        args = _constant_args(node, consts, static, max_input_elements)
        if args is None:
            kept.append(node)
            continue
        try:
            outs = ops.get(node.op)(*args, **node.attrs)
        except Exception as exc:  # keep the node: it runs (and reports) at inference time
            g.notes.append(f"constant folding skipped {node.op} {node.name!r}: {exc}")
            kept.append(node)
            continue
        for name, value in zip(node.outputs, outs):
            if name and value is not None:
                consts[name] = np.asarray(value)
    g.nodes = kept
    used = {i for n in kept for i in n.inputs if i} | set(g.output_names)
    g.initializers = {k: v for k, v in consts.items() if k in used}
    return g


def _constant_args(node: Node, consts: dict[str, np.ndarray], static: dict,
                   limit: int | None) -> list | None:
    """The op's positional arguments if ``node`` folds, else None."""
    spec = ops.lookup(node.op)
    if spec is None or spec.domain != node.domain or node.op in NONDETERMINISTIC:
        return None
    names = [i for i in node.inputs if i]
    if node.op in SHAPE_ONLY and names and names[0] not in consts:
        shape = static.get(names[0])
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        # A zero-strided stand-in: the op reads only .shape/.size, so no memory is touched.
        return [np.broadcast_to(np.zeros((), np.float32), shape)]
    if not all(i in consts for i in names):
        return None
    small = limit is None or all(consts[i].size <= limit for i in names)
    if spec.kind != "shape" and not small:
        return None
    return [consts[i] if i else None for i in node.inputs]
