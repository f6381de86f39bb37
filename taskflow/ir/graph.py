"""The graph IR: values, nodes, initializers, in ONNX's vocabulary.

A :class:`Graph` is a list of :class:`Node` (op type, input and output value names, attributes)
plus the graph's inputs and outputs (:class:`Value`: name, dtype, shape) and its initializers
(constant numpy arrays by name). Nodes use the *canonical* form of each op: the semantics of the
newest ONNX opset taskflow knows, with every operand that newer opsets pass as an input (Reduce
axes, Split sizes, Pad pads, Clip bounds, Slice starts, ...) passed as an input. The ONNX importer
upgrades older forms, so op kernels implement one form only.

Shapes are tuples whose entries are an ``int`` (static), a ``str`` (a symbolic dimension such as
the batch ``"N"``) or ``None`` (unknown).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskflow.errors import GraphError

Dim = int | str | None
Shape = tuple[Dim, ...]

#: Name given to a batch dimension the importer or builder made symbolic.
BATCH = "N"


@dataclass
class Value:
    """A named tensor: graph input, graph output or intermediate.

    Parameters
    ----------
    name : str
        Unique within the graph.
    dtype : numpy.dtype, optional
        Converted with ``numpy.dtype``; None where unknown.
    shape : tuple, optional
        Entries are ``int`` (static), ``str`` (symbolic, e.g. the batch ``"N"``) or None.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow import Value
    >>> Value("images", np.float32, ("N", 3, 224, 224))
    Value('images', float32, (N, 3, 224, 224))
    """

    name: str
    dtype: np.dtype | None = None
    shape: Shape | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None:
            self.dtype = np.dtype(self.dtype)
        if self.shape is not None:
            self.shape = tuple(self.shape)

    def __repr__(self) -> str:
        dt = self.dtype.name if self.dtype is not None else "?"
        shape = "?" if self.shape is None else "(" + ", ".join(map(_dim_str, self.shape)) + ")"
        return f"Value({self.name!r}, {dt}, {shape})"


def _dim_str(d: Dim) -> str:
    return "?" if d is None else str(d)


@dataclass
class Node:
    """One op application. ``""`` in ``inputs`` marks an omitted optional input.

    Parameters
    ----------
    op : str
        The op type, a name in the op registry (:func:`taskflow.ops.names`).
    inputs, outputs : list of str
        Value names read and written.
    attrs : dict
        The op's attributes, as keyword arguments of its reference function.
    name : str
        The node's name (ONNX's ``node.name``).
    domain : str
        ONNX domain; ``""`` for the standard one.

    Examples
    --------
    >>> from taskflow import Node
    >>> Node("Conv", ["x", "w", ""], ["y"], {"pads": [1, 1, 1, 1]}, name="conv1")
    Node(Conv, 'conv1', ['x', 'w', ''] -> ['y'])
    """

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""

    def __repr__(self) -> str:
        return f"Node({self.op}, {self.name!r}, {self.inputs} -> {self.outputs})"


@dataclass
class Graph:
    """A dataflow graph in canonical ONNX form.

    Parameters
    ----------
    nodes : list of Node
        In any order; :meth:`toposort` orders them.
    inputs, outputs : list of Value
        The graph's interface. Inputs exclude initializers.
    initializers : dict of str to numpy.ndarray
        Constant tensors (weights) by value name.
    values : dict of str to Value
        Known dtype/shape of intermediate values (may be partial).
    name : str
        The graph's (and model's) name.
    notes : list of str
        Notes the importer or passes leave for ``info`` (e.g. batch made symbolic).

    Attributes
    ----------
    input_names, output_names : list of str
        Names of ``inputs`` and ``outputs``.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow import Graph, Model, Node, Value
    >>> g = Graph(
    ...     nodes=[Node("MatMul", ["x", "w"], ["xw"]), Node("Relu", ["xw"], ["y"])],
    ...     inputs=[Value("x", np.float32, ("N", 2))],
    ...     outputs=[Value("y", np.float32, ("N", 2))],
    ...     initializers={"w": np.eye(2, dtype=np.float32)}, name="tiny")
    >>> g.validate()
    >>> Model(g).run(None, {"x": np.array([[1, -1]], np.float32)})
    [array([[1., 0.]], dtype=float32)]
    """

    nodes: list[Node] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, Value] = field(default_factory=dict)
    name: str = "graph"
    #: Free-form notes the importer or passes leave for ``info`` (e.g. batch made symbolic).
    notes: list[str] = field(default_factory=list)

    # --- queries -------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def producers(self) -> dict[str, Node]:
        """Map each value name to the node that produces it.

        Examples
        --------
        >>> from taskflow import Graph, Node
        >>> g = Graph(nodes=[Node("Relu", ["x"], ["y"], name="relu")])
        >>> g.producers()
        {'y': Node(Relu, 'relu', ['x'] -> ['y'])}
        """
        return {out: n for n in self.nodes for out in n.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        """Map each value name to the nodes that read it (graph outputs are not nodes).

        Examples
        --------
        >>> from taskflow import Graph, Node
        >>> g = Graph(nodes=[Node("Relu", ["x"], ["y"]), Node("Add", ["x", "y"], ["z"])])
        >>> {name: [n.op for n in nodes] for name, nodes in g.consumers().items()}
        {'x': ['Relu', 'Add'], 'y': ['Add']}
        """
        result: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    result.setdefault(i, []).append(n)
        return result

    def rewrite(self, replace: Mapping[int, Node | list[Node]], drop: set[int]) -> None:
        """Splice a fusion into the node list, in place: the node with ``id`` ``k`` in
        ``replace`` becomes ``replace[k]`` (one node or several, at its position); nodes whose
        ``id`` is in ``drop`` go. A node in both is replaced. Order is otherwise kept.

        Examples
        --------
        >>> from taskflow import Graph, Node
        >>> a, b = Node("Relu", ["x"], ["y"]), Node("Neg", ["y"], ["z"])
        >>> g = Graph(nodes=[a, b])
        >>> g.rewrite({id(b): Node("Abs", ["x"], ["z"])}, drop={id(a)})
        >>> [n.op for n in g.nodes]
        ['Abs']
        """
        nodes: list[Node] = []
        for n in self.nodes:
            new = replace.get(id(n))
            if new is not None:
                nodes.extend(new if isinstance(new, list) else [new])
            elif id(n) not in drop:
                nodes.append(n)
        self.nodes = nodes

    def op_counts(self) -> dict[str, int]:
        """Nodes per op type, sorted by op type.

        Examples
        --------
        >>> from taskflow import Graph, Node
        >>> g = Graph(nodes=[Node("Relu", ["x"], ["y"]), Node("Relu", ["y"], ["z"])])
        >>> g.op_counts()
        {'Relu': 2}
        """
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items()))

    def parameter_count(self) -> int:
        """Elements in all initializers (the model's weights and constants).

        Examples
        --------
        >>> import numpy as np
        >>> from taskflow import Graph
        >>> Graph(initializers={"w": np.zeros((3, 4)), "b": np.zeros(3)}).parameter_count()
        15
        """
        return int(sum(a.size for a in self.initializers.values()))

    # --- structure -----------------------------------------------------------------------------
    def toposort(self) -> list[Node]:
        """Return the nodes in a dependency order (stable: keeps the given order where free).

        Raises
        ------
        GraphError
            If a node reads a value nothing produces, or the graph has a cycle.

        Examples
        --------
        >>> from taskflow import Graph, Node, Value
        >>> g = Graph(nodes=[Node("Relu", ["h"], ["y"]), Node("Neg", ["x"], ["h"])],
        ...           inputs=[Value("x")])
        >>> [n.op for n in g.toposort()]
        ['Neg', 'Relu']
        """
        available = set(self.input_names) | set(self.initializers)
        producers = self.producers()
        for n in self.nodes:
            for i in n.inputs:
                if i and i not in available and i not in producers:
                    raise GraphError(
                        f"node {n.name or n.op!r} ({n.op}) reads value {i!r}, which is neither a "
                        f"graph input, an initializer, nor produced by any node"
                    )
        order: list[Node] = []
        pending = list(self.nodes)
        while pending:
            still: list[Node] = []
            progressed = False
            for n in pending:
                if all(not i or i in available for i in n.inputs):
                    order.append(n)
                    available.update(o for o in n.outputs if o)
                    progressed = True
                else:
                    still.append(n)
            if not progressed:
                names = ", ".join(repr(n.name or n.op) for n in still[:5])
                raise GraphError(f"graph {self.name!r} has a cycle through nodes {names}")
            pending = still
        return order

    def validate(self) -> None:
        """Check names are unique, outputs are produced and the graph is acyclic.

        Raises
        ------
        GraphError
            Naming the offending value or node.

        Examples
        --------
        >>> from taskflow import Graph, Node, Value
        >>> g = Graph(nodes=[Node("Relu", ["x"], ["y"]), Node("Neg", ["x"], ["y"])],
        ...           inputs=[Value("x")], outputs=[Value("y")])
        >>> g.validate()                                             # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        taskflow.errors.GraphError: value 'y' is produced by node 'Neg' but is already a ...
        """
        seen: dict[str, str] = {}
        for v in self.inputs:
            if v.name in seen:
                raise GraphError(f"graph input {v.name!r} is declared twice")
            seen[v.name] = "graph input"
        for name in self.initializers:
            if name in seen:
                raise GraphError(f"value {name!r} is both a graph input and an initializer")
            seen[name] = "initializer"
        for n in self.nodes:
            for o in n.outputs:
                if not o:
                    continue
                if o in seen:
                    raise GraphError(
                        f"value {o!r} is produced by node {n.name or n.op!r} but is already "
                        f"a {seen[o]}"
                    )
                seen[o] = f"output of node {n.name or n.op!r}"
        for v in self.outputs:
            if v.name not in seen:
                raise GraphError(f"graph output {v.name!r} is never produced")
        self.toposort()

    def copy(self) -> Graph:
        """A structural copy; initializer arrays are shared (they are never mutated in place).

        Examples
        --------
        >>> from taskflow import Graph, Node
        >>> g = Graph(nodes=[Node("Relu", ["x"], ["y"])])
        >>> h = g.copy()
        >>> h.nodes[0].op = "Sigmoid"
        >>> g.nodes[0].op
        'Relu'
        """
        return Graph(
            nodes=[copy.deepcopy(n) for n in self.nodes],
            inputs=[copy.copy(v) for v in self.inputs],
            outputs=[copy.copy(v) for v in self.outputs],
            initializers=dict(self.initializers),
            values={k: copy.copy(v) for k, v in self.values.items()},
            name=self.name,
            notes=list(self.notes),
        )

    def unique_name(self, base: str) -> str:
        """A value/node name not used anywhere in the graph yet.

        ``base`` itself if free, else ``base_1``, ``base_2``, ...: what passes use to add nodes.

        Examples
        --------
        >>> from taskflow import Graph, Node, Value
        >>> g = Graph(nodes=[Node("Relu", ["x"], ["y"], name="relu")], inputs=[Value("x")])
        >>> g.unique_name("y"), g.unique_name("z")
        ('y_1', 'z')
        """
        used = self._all_names()
        if base not in used:
            return base
        for k in itertools.count(1):
            cand = f"{base}_{k}"
            if cand not in used:
                return cand
        raise AssertionError("unreachable")

    def _all_names(self) -> set[str]:
        names = set(self.input_names) | set(self.initializers) | set(self.values)
        for n in self.nodes:
            names.update(n.outputs)
            names.add(n.name)
        return names

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __repr__(self) -> str:
        return (
            f"Graph({self.name!r}, {len(self.nodes)} nodes, inputs={self.inputs}, "
            f"outputs={self.outputs}, {len(self.initializers)} initializers)"
        )


def shapes_compatible(expected: Shape | None, found: Iterable[int]) -> bool:
    """Whether a concrete shape fits a declared one (symbolic and unknown dims match anything)."""
    found = tuple(found)
    if expected is None:
        return True
    if len(expected) != len(found):
        return False
    return all(not isinstance(e, int) or e == f for e, f in zip(expected, found))
