"""Reduced precision in the graph: int8 QDQ models in and out, and bf16/int8 marks on layers.

Only three ops carry reduced precision: ``FusedConv``, ``FusedGemm`` and ``FusedMatMul`` (taskflow
domain), through their attributes ``precision`` (``""`` fp32, ``"bf16"``, ``"int8"``),
``x_scale`` and ``x_zero_point`` (u8 activations; ``x_scale`` 0.0 = dynamic, from each input).
Weights stay fp32 constants; kernels quantise them once, per output channel. Three entry points:

- :func:`fuse_qdq`, an optimisation pass: a contraction that reads
  ``DequantizeLinear(QuantizeLinear(x, s, zp), s, zp)`` (ONNX's QDQ form, as ONNX Runtime's
  quantiser and :func:`quantize_graph` write it) becomes the Fused op on ``x`` with
  ``precision="int8"``, ``x_scale=s``, ``x_zero_point=zp``. Its weight's ``DequantizeLinear`` of
  an int8 constant has already been folded to fp32 by constant folding.
- :func:`mark_precision`: set bf16 (or dynamic int8) on the contractions of an optimised graph.
- :func:`quantize_graph`: write a source graph in standard QDQ form, int8 weights and (static
  mode) calibrated u8 activations, for ONNX Runtime or for taskflow to load.

A layer is *eligible* when its weight is a constant fp32 tensor (2-D for Gemm and MatMul) and it
is not a depthwise convolution (one input channel per group: its GEMMs are too thin to gain).
Layers are named by ``Node.name``, or by their first output where that is empty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from taskflow.errors import InputError
from taskflow.ir.calibrate import RangeStats, qparams_u8
from taskflow.ir.graph import Graph, Node, Value
from taskflow.ops.quant import INT8_WEIGHT_MAX, quantize_weight_per_channel

#: The contractions that can run at reduced precision, and the fused op each becomes. This is
#: the one place that names ops: the weight's layout (output channel axis) differs per op.
CONTRACTIONS = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul"}
FUSED = frozenset(CONTRACTIONS.values())
PRECISIONS = ("", "bf16", "int8")
MODES = ("static", "dynamic")
#: ONNX TensorProto element types QDQ nodes may name in ``output_dtype`` (0: from the inputs).
_UINT8, _FLOAT = 2, 1
_PRECISION_ATTRS = ("precision", "x_scale", "x_zero_point")
#: Smallest embedding table (elements) :func:`quantize_graph` stores in int8: below it the
#: scales and the DequantizeLinear node cost about what int8 saves.
MIN_TABLE_ELEMENTS = 4096


def layer_name(node: Node) -> str:
    """The name :func:`precision_nodes` and :func:`mark_precision` know a node by.

    Examples
    --------
    >>> layer_name(Node("Conv", ["x", "w"], ["y"], name="conv1")), layer_name(
    ...     Node("MatMul", ["x", "w"], ["h"]))
    ('conv1', 'h')
    """
    return node.name or node.outputs[0]


def ineligible_reason(graph: Graph, node: Node) -> str | None:
    """Why ``node`` cannot run at reduced precision, or None if it can.

    Examples
    --------
    >>> g = Graph(initializers={"w": np.ones((4, 1, 3, 3), np.float32)})
    >>> ineligible_reason(g, Node("Conv", ["x", "w"], ["y"], {"group": 4}))
    'depthwise convolution (one input channel per group)'
    >>> ineligible_reason(g, Node("MatMul", ["x", "k"], ["y"]))
    "weight 'k' is not a constant (an activation x activation product)"
    """
    op = node.op
    if node.domain != ("taskflow" if op in FUSED else "") or \
            (op not in CONTRACTIONS and op not in FUSED):
        return f"{op} is not one of {sorted(CONTRACTIONS)} or their fused forms"
    w_name = node.inputs[1] if len(node.inputs) > 1 else ""
    w = graph.initializers.get(w_name) if w_name else None
    if w is None:
        return f"weight {w_name!r} is not a constant (an activation x activation product)"
    if w.dtype != np.float32:
        return f"weight {w_name!r} is {w.dtype}, not float32"
    if w.size == 0:
        return f"weight {w_name!r} is empty"
    x = _value_dtype(graph, node.inputs[0])
    if x is not None and x != np.float32:
        return f"input {node.inputs[0]!r} is {x}, not float32"
    if op not in ("Conv", "FusedConv"):
        return None if w.ndim == 2 else \
            f"weight {w_name!r} is {w.ndim}-D; reduced precision needs a 2-D weight"
    if int(node.attrs.get("group", 1)) > 1 and w.ndim > 1 and w.shape[1] == 1:
        return "depthwise convolution (one input channel per group)"
    return None


def precision_nodes(graph: Graph) -> list[str]:
    """Names (:func:`layer_name`) of the nodes :func:`mark_precision` can mark, in graph order.

    Examples
    --------
    >>> from taskflow.frontend import nn
    >>> g = nn.Sequential([nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4),
    ...                    nn.Flatten(), nn.Dense(4, 2)], input_shape=(3, 5, 5)).to_graph()
    >>> precision_nodes(g)
    ['0_Conv', '4_Gemm']
    """
    return [layer_name(n) for n in graph.nodes if ineligible_reason(graph, n) is None]


def mark_precision(graph: Graph, precision: str, nodes: Iterable[str] | None = None) -> Graph:
    """Run eligible contractions at ``precision``: plain Conv/Gemm/MatMul become their fused
    form (``activation=""``) carrying the attribute.

    Parameters
    ----------
    graph : Graph
        Optimised (fused) or not; not modified.
    precision : {"bf16", "int8", ""}
        ``"int8"`` is dynamic (``x_scale=0.0``), except on nodes already int8, which keep their
        static calibration (from :func:`fuse_qdq`); ``""`` takes nodes back to fp32.
    nodes : iterable of str, optional
        Only these (names from :func:`precision_nodes`); default: every eligible node.

    Raises
    ------
    InputError
        Unknown precision, or a name in ``nodes`` that is not an eligible node.

    Examples
    --------
    >>> g = Graph([Node("MatMul", ["x", "w"], ["y"], name="mm")], [Value("x", np.float32)],
    ...           [Value("y")], {"w": np.ones((3, 2), np.float32)})
    >>> n = mark_precision(g, "bf16").nodes[0]
    >>> n.op, n.attrs
    ('FusedMatMul', {'activation': '', 'precision': 'bf16'})
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is unknown; expected one of {PRECISIONS} "
                         "('' is fp32)")
    g = graph.copy()
    eligible = precision_nodes(g)
    chosen = set(eligible) if nodes is None else {nodes} if isinstance(nodes, str) \
        else set(nodes)
    unknown = sorted(chosen - set(eligible))
    if unknown:
        raise InputError(f"node(s) {unknown} cannot be marked {precision!r}: not an eligible "
                         f"Conv/Gemm/MatMul of graph {g.name!r}; eligible nodes: "
                         f"{_listing(eligible)}")
    for node in g.nodes:
        if layer_name(node) not in chosen:
            continue
        attrs = {k: v for k, v in node.attrs.items() if k not in _PRECISION_ATTRS}
        current = _text(node.attrs.get("precision", ""))
        if precision == "int8" and current == "int8":
            continue
        if precision:
            _to_fused(node)
            attrs = {"activation": "", **attrs, "precision": precision}
            if precision == "int8":
                attrs.update(x_scale=0.0, x_zero_point=0)
        node.attrs = attrs
    return g


def fuse_qdq(graph: Graph) -> Graph:
    """Fuse ``DequantizeLinear(QuantizeLinear(x))`` on a contraction's input into an int8 node.

    Matches Conv/Gemm/MatMul (or their fused forms) eligible for reduced precision whose
    input is ``DequantizeLinear(QuantizeLinear(x, s, zp), s, zp)`` with u8, scalar, equal
    constants: the node reads ``x`` and gets ``precision="int8"``, ``x_scale=s``,
    ``x_zero_point=zp``, exactly the fake quantisation the pair computed. The pair goes when
    nothing else reads it (its constants are left to dead-code elimination). The Q/DQ pairs
    ONNX Runtime writes after each output (``Conv -> Q -> DQ -> Relu``) stay as ordinary
    elementwise nodes.

    Examples
    --------
    >>> g = Graph([Node("QuantizeLinear", ["x", "s", "z"], ["q"]),
    ...            Node("DequantizeLinear", ["q", "s", "z"], ["d"]),
    ...            Node("MatMul", ["d", "w"], ["y"], name="mm")],
    ...           [Value("x", np.float32)], [Value("y")],
    ...           {"s": np.float32(0.5), "z": np.uint8(128), "w": np.ones((3, 2), np.float32)})
    >>> n = fuse_qdq(g).nodes[-1]
    >>> n.op, n.inputs, n.attrs["precision"], n.attrs["x_scale"], n.attrs["x_zero_point"]
    ('FusedMatMul', ['x', 'w'], 'int8', 0.5, 128)
    """
    g = graph.copy()
    producers = g.producers()
    pairs: list[Node] = []  # the DQ and Q nodes of fused pairs, readers first
    for node in g.nodes:
        if _text(node.attrs.get("precision", "")) or ineligible_reason(g, node) is not None:
            continue
        found = _quantized_source(g, node.inputs[0], producers)
        if found is None:
            continue
        x, scale, zero_point = found
        dq = producers[node.inputs[0]]
        pairs += [dq, producers[dq.inputs[0]]]
        _to_fused(node)
        node.inputs = [x, *node.inputs[1:]]
        node.attrs = {"activation": "", **node.attrs, "precision": "int8", "x_scale": scale,
                      "x_zero_point": zero_point}
    # drop the pairs no one reads any more here, so the optimiser's report credits this pass
    readers = Counter(i for n in g.nodes for i in n.inputs if i)
    readers.update(g.output_names)
    dropped: set[int] = set()
    for n in pairs:
        if id(n) not in dropped and not readers[n.outputs[0]]:
            dropped.add(id(n))
            readers.subtract(i for i in n.inputs if i)
    g.rewrite({}, drop=dropped)
    return g


def quantize_graph(source_graph: Graph, ranges: Mapping[str, Any] | None = None, *,
                   per_channel: bool = True, mode: str = "static",
                   weight_max: int = INT8_WEIGHT_MAX,
                   ) -> tuple[Graph, dict[str, dict[str, Any]]]:
    """Write ``source_graph`` in ONNX's QDQ form: int8 weights, u8 activations (static mode).

    Each eligible Conv/Gemm/MatMul's fp32 weight becomes an int8 initializer read through a
    ``DequantizeLinear`` (symmetric, zero point 0, values in [-127, 127]; per output channel
    with the ``axis`` attribute, or per tensor). In static mode its input also goes through
    ``QuantizeLinear`` -> ``DequantizeLinear`` (u8) with the scale and zero point of
    ``ranges[input]`` (:func:`~taskflow.ir.calibrate.qparams_u8`). ONNX Runtime runs the
    result as is; taskflow folds the weights back to fp32 and :func:`fuse_qdq` turns each
    layer into an int8 node. Biases stay fp32 and outputs are not quantised, so no layer
    computes anything but fake-quantised fp32.

    Embedding tables are stored in int8 too, in both modes: a ``Gather`` (axis 0) of a constant
    2-D fp32 table of at least :data:`MIN_TABLE_ELEMENTS` elements reads it through a
    ``DequantizeLinear`` (per row, ``axis=0``, unless ``per_channel=False``). Its indices are
    not quantised: on load the table folds back to fp32, exactly the dequantised values, and
    the Gather runs as before.

    Parameters
    ----------
    source_graph : Graph
        Unoptimised, standard ONNX ops (as loaded); not modified.
    ranges : mapping of str to (lo, hi) or RangeStats, optional
        Calibrated range of each activation (:func:`~taskflow.ir.calibrate.choose_ranges`);
        needed in static mode, where a layer whose input has none is skipped.
    per_channel : bool
        Weight scales per output channel (Conv W axis 0, Gemm B axis 1 or 0 with transB,
        MatMul B axis 1) if True, one per tensor if False.
    mode : {"static", "dynamic"}
        ``"dynamic"``: weights only (kernels quantise activations per call, see
        :func:`mark_precision`).
    weight_max : int
        The layers' weights' largest integer: 127, or 63 for 7-bit weights (``reduce_range``:
        what MKL's int8 GEMM sums exactly on CPUs without VNNI).

    Returns
    -------
    (Graph, dict)
        The new graph, and per layer (by :func:`layer_name`, every Conv/Gemm/MatMul, and every
        axis-0 Gather of a constant 2-D fp32 table, ``op`` ``"Gather"``): ``op``,
        ``quantized`` (bool) and either ``reason`` (skipped) or ``weight`` (its name),
        ``axis`` (None: per tensor), ``parameters`` (weight elements) and ``x_scale`` /
        ``x_zero_point`` (None in dynamic mode, and for a Gather).

    Raises
    ------
    InputError
        Unknown mode, static mode without ranges, or a range that is not a finite lo <= hi.

    Examples
    --------
    >>> from taskflow.frontend import nn
    >>> g = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_graph()
    >>> q, report = quantize_graph(g, {"input": (-1.0, 1.0)})
    >>> [n.op for n in q.nodes]
    ['DequantizeLinear', 'QuantizeLinear', 'DequantizeLinear', 'Gemm']
    >>> report["0_Gemm"]["axis"], q.initializers["0.weight_quantized"].dtype
    (0, dtype('int8'))
    """
    if mode not in MODES:
        raise InputError(f"quantisation mode {mode!r} is unknown; expected one of {MODES}")
    if mode == "static" and ranges is None:
        raise InputError("static quantisation needs the calibrated ranges of the activations "
                         "(calibrate.choose_ranges); pass ranges=, or use mode='dynamic'")
    g = source_graph.copy()
    report: dict[str, dict[str, Any]] = {}
    before: dict[int, list[Node]] = {}
    weights: dict[tuple[str, int | None], str] = {}
    activations: dict[str, tuple[str, float, int]] = {}
    order = g.toposort()
    for node in order:
        if node.op == "Gather" and not node.domain:
            table = _embedding_table(g, node)
            if table is None:
                continue
            name, why = layer_name(node), _table_skip_reason(g, node)
            if why is not None:
                report[name] = {"op": "Gather", "quantized": False, "reason": why}
                continue
            axis = 0 if per_channel else None
            if (table, axis) not in weights:
                weights[table, axis] = _dequantized_weight(g, table, axis,
                                                           before.setdefault(id(node), []))
            node.inputs = [weights[table, axis], *node.inputs[1:]]
            report[name] = {"op": "Gather", "quantized": True, "weight": table, "axis": axis,
                            "parameters": int(g.initializers[table].size),
                            "x_scale": None, "x_zero_point": None}
            continue
        if node.op not in CONTRACTIONS or node.domain:
            continue
        name, x = layer_name(node), node.inputs[0]
        why = ineligible_reason(g, node)
        if why is None and mode == "static" and x not in ranges:
            why = f"no calibration range for its input {x!r}"
        if why is not None:
            report[name] = {"op": node.op, "quantized": False, "reason": why}
            continue
        added = before.setdefault(id(node), [])
        w_name = node.inputs[1]
        axis = _out_axis(node, g.initializers[w_name].ndim) if per_channel else None
        if (w_name, axis) not in weights:
            weights[w_name, axis] = _dequantized_weight(g, w_name, axis, added, weight_max)
        node.inputs = [x, weights[w_name, axis], *node.inputs[2:]]
        x_scale = x_zero_point = None
        if mode == "static":
            if x not in activations:
                activations[x] = _fake_quantized(g, x, _range(ranges[x], x), added)
            node.inputs[0], x_scale, x_zero_point = activations[x]
        report[name] = {"op": node.op, "quantized": True, "weight": w_name, "axis": axis,
                        "parameters": int(g.initializers[w_name].size),
                        "x_scale": x_scale, "x_zero_point": x_zero_point}
    g.nodes = [m for n in order for m in (*before.get(id(n), ()), n)]
    read = {i for n in g.nodes for i in n.inputs if i} | set(g.output_names)
    g.initializers = {k: v for k, v in g.initializers.items() if k in read}
    return g, report


def quantize_weight(w: np.ndarray, axis: int | None, wmax: int = INT8_WEIGHT_MAX
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 ``q`` in [-wmax, wmax] (127, or 63: 7-bit) and float32 ``scale`` with
    ``w ~ q * scale``: ``scale = max|w| / wmax`` per slice along ``axis`` (a vector), or of
    the whole tensor (``axis=None``, a scalar); 1.0 where ``w`` is all zero. The kernels' own
    quantisation (:func:`taskflow.ops.quant.quantize_weight_per_channel`), so they recover
    exactly these int8 values from the folded weights (7-bit ones too: the smallest exact
    grid).

    Examples
    --------
    >>> q, s = quantize_weight(np.array([[0.7, -0.123], [0.0, 0.0]], np.float32), axis=0)
    >>> q.tolist(), s.tolist()
    ([[127, -22], [0, 0]], [0.005511811003088951, 1.0])
    """
    if axis is None:
        q, scale = quantize_weight_per_channel(np.reshape(w, (1, -1)), 0, wmax)
        return q.reshape(np.shape(w)), scale.reshape(())
    return quantize_weight_per_channel(w, axis, wmax)


# --- helpers -------------------------------------------------------------------------------------


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return (shown + f", ... ({len(names)} in all)") if len(names) > limit else (shown or "none")


def _value_dtype(g: Graph, name: str) -> np.dtype | None:
    v = g.values.get(name) or next((i for i in g.inputs if i.name == name), None)
    if v is not None:
        return v.dtype
    return g.initializers[name].dtype if name in g.initializers else None


def _to_fused(node: Node) -> None:
    if node.op in CONTRACTIONS:
        node.op, node.domain = CONTRACTIONS[node.op], "taskflow"
        node.attrs = {"activation": "", **node.attrs}


def _out_axis(node: Node, ndim: int) -> int:
    """The output channel axis of the weight: Conv's W 0, Gemm's B 1 (0 when transposed),
    MatMul's B 1."""
    if node.op in ("Gemm", "FusedGemm"):
        return 0 if int(node.attrs.get("transB", 0)) else 1
    return 0 if node.op in ("Conv", "FusedConv") else ndim - 1


def _quantized_source(g: Graph, value: str, producers: dict[str, Node],
                      ) -> tuple[str, float, int] | None:
    """``(x, scale, zero_point)`` if ``value`` is ``DQ(Q(x, s, zp), s, zp)`` in u8 with
    scalar, equal constants, else None."""
    dq = producers.get(value)
    if dq is None or dq.op != "DequantizeLinear" or dq.domain or \
            int(dq.attrs.get("block_size", 0)) or \
            int(dq.attrs.get("output_dtype", 0)) not in (0, _FLOAT):
        return None
    q = producers.get(dq.inputs[0])
    if q is None or q.op != "QuantizeLinear" or q.domain or \
            int(q.attrs.get("block_size", 0)) or int(q.attrs.get("precision", 0)) or \
            int(q.attrs.get("output_dtype", 0)) not in (0, _UINT8):
        return None
    params = _u8_qparams(g, q.inputs[1:3]), _u8_qparams(g, dq.inputs[1:3])
    x = q.inputs[0]
    if params[0] is None or params[0] != params[1] or _value_dtype(g, x) not in (None,
                                                                                np.float32):
        return None
    return (x, *params[0])


def _u8_qparams(g: Graph, names: list[str]) -> tuple[float, int] | None:
    """A positive finite float32 scalar scale and a u8 scalar zero point (0 if omitted)."""
    s = g.initializers.get(names[0]) if names and names[0] else None
    z_name = names[1] if len(names) > 1 else ""
    z = g.initializers.get(z_name) if z_name else np.zeros((), np.uint8)
    if s is None or z is None or s.size != 1 or z.size != 1 or s.dtype != np.float32 \
            or z.dtype != np.uint8:
        return None
    scale = float(s.reshape(()))
    return (scale, int(z.reshape(()))) if np.isfinite(scale) and scale > 0 else None


def _embedding_table(g: Graph, node: Node) -> str | None:
    """The name of the Gather's data input if it is a constant 2-D fp32 table, else None."""
    table = node.inputs[0] if node.inputs else ""
    w = g.initializers.get(table) if table else None
    return table if w is not None and w.dtype == np.float32 and w.ndim == 2 else None


def _table_skip_reason(g: Graph, node: Node) -> str | None:
    """Why the Gather's constant table stays fp32, or None if it is stored in int8."""
    w = g.initializers[node.inputs[0]]
    if int(node.attrs.get("axis", 0)) not in (0, -2):
        return f"gathers along axis {node.attrs['axis']}; only axis 0 (rows) is quantised"
    if w.size < MIN_TABLE_ELEMENTS:
        return f"table {node.inputs[0]!r} has {w.size} elements (< {MIN_TABLE_ELEMENTS})"
    return None


def _range(r: Any, name: str) -> tuple[float, float]:
    if isinstance(r, RangeStats):
        r = (0.0, 0.0) if r.empty else (r.lo, r.hi)
    try:
        lo, hi = (float(v) for v in r)
    except (TypeError, ValueError) as exc:
        raise InputError(f"range of value {name!r} is {r!r}; expected (lo, hi)") from exc
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise InputError(f"range of value {name!r} is {r!r}; expected finite lo <= hi")
    return lo, hi


def _dequantized_weight(g: Graph, w_name: str, axis: int | None, added: list[Node],
                        wmax: int = INT8_WEIGHT_MAX) -> str:
    """Add ``DequantizeLinear(int8 weight)`` for initializer ``w_name`` (values in [-wmax,
    wmax]); return its output."""
    w = g.initializers[w_name]
    q, scale = quantize_weight(w, axis, wmax)
    q_name = g.unique_name(f"{w_name}_quantized")
    g.initializers[q_name] = q
    s_name = g.unique_name(f"{w_name}_scale")
    g.initializers[s_name] = scale
    z_name = g.unique_name(f"{w_name}_zero_point")
    g.initializers[z_name] = np.zeros(scale.shape, np.int8)
    out = g.unique_name(f"{w_name}_DequantizeLinear")
    g.values[out] = Value(out, np.float32, w.shape)
    added.append(Node("DequantizeLinear", [q_name, s_name, z_name], [out],
                      {} if axis is None else {"axis": axis}, name=out))
    return out


def _fake_quantized(g: Graph, x: str, bounds: tuple[float, float],
                    added: list[Node]) -> tuple[str, float, int]:
    """Add ``DequantizeLinear(QuantizeLinear(x))`` in u8 over ``bounds``; return its output,
    scale and zero point."""
    scale, zero_point = qparams_u8(*bounds)
    s_name = g.unique_name(f"{x}_scale")
    g.initializers[s_name] = np.asarray(scale, np.float32)
    z_name = g.unique_name(f"{x}_zero_point")
    g.initializers[z_name] = np.asarray(zero_point, np.uint8)
    known = g.values.get(x) or next((v for v in g.inputs if v.name == x), None)
    shape = known.shape if known is not None else None
    q_out = g.unique_name(f"{x}_QuantizeLinear")
    g.values[q_out] = Value(q_out, np.uint8, shape)
    dq_out = g.unique_name(f"{x}_DequantizeLinear")
    g.values[dq_out] = Value(dq_out, np.float32, shape)
    added.append(Node("QuantizeLinear", [x, s_name, z_name], [q_out], name=q_out))
    added.append(Node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=dq_out))
    return dq_out, float(scale), int(zero_point)
