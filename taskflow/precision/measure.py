"""Which layers run reduced: each candidate's reduced kernel timed against its fp32 kernel on
the layer's own inputs (:func:`choose_by_measurement`), and :meth:`taskflow.Model.with_precision`.

Whether bf16 or int8 pays depends on the CPU's matrix units (AMX, VNNI, or none: AVX2 only)
and on each layer's shape, so it is measured, never assumed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from taskflow import ops
from taskflow.errors import InputError
from taskflow.executor import ExecutionPlan, sample_array
from taskflow.ir.graph import Graph, Node
from taskflow.ir.quantize import layer_name, mark_precision
from taskflow.precision.report import CompressionReport, LayerChoice, as_feed, weight_bytes

if TYPE_CHECKING:
    from taskflow.model import Model

PRECISIONS = ("fp32", "bf16", "int8")
CHOICES = ("measure", "all")
#: The attributes that make a FusedConv/FusedGemm/FusedMatMul run reduced (see
#: :mod:`taskflow.ir.quantize`); without them the node is the fp32 op.
PRECISION_ATTRS = ("precision", "x_scale", "x_zero_point")
#: A reduced kernel must beat fp32 by this factor to be kept: below it the difference is within
#: the run-to-run spread of a small layer on a shared machine, and fp32 is the exact one.
MIN_SPEEDUP = 1.03
#: Rows of the sample batch a layer is timed on when no sample is given.
SAMPLE_BATCH = 8
#: Each timing sample repeats the kernel until it lasts about this long: one call of a small
#: layer takes microseconds, below the clock's useful resolution.
SAMPLE_SECONDS = 2e-3


def reduced_layers(graph: Graph) -> list[str]:
    """The layers of ``graph`` (:func:`taskflow.ir.quantize.layer_name`) that carry a reduced
    ``precision`` attribute, in graph order.

    Examples
    --------
    >>> from taskflow import Graph, Node
    >>> g = Graph(nodes=[Node("FusedGemm", ["x", "w"], ["y"], {"precision": "bf16"}, "fc")])
    >>> reduced_layers(g)
    ['fc']
    """
    return [layer_name(n) for n in graph.nodes if n.attrs.get("precision")]


def drop_precision(graph: Graph, names: Sequence[str] | None = None) -> Graph:
    """A copy of ``graph`` whose layers ``names`` (all, if None) run fp32 again.

    Examples
    --------
    >>> from taskflow import Graph, Node
    >>> g = Graph(nodes=[Node("FusedGemm", ["x", "w"], ["y"], {"precision": "bf16"}, "fc")])
    >>> drop_precision(g).nodes[0].attrs
    {}
    """
    out = graph.copy()
    for node in out.nodes:
        if names is None or layer_name(node) in names:
            node.attrs = {k: v for k, v in node.attrs.items() if k not in PRECISION_ATTRS}
    return out


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else an :class:`InputError`.

    Examples
    --------
    >>> check_precision("bf16")
    'bf16'
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is unknown; expected one of {PRECISIONS}")
    return precision


# --- per-layer measurement ---------------------------------------------------------------------
def sample_feed(model: Model, batch: int = SAMPLE_BATCH, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of ``batch`` rows for every input, at the sizes :meth:`Model.info` traces other
    symbolic dims with (1 unless the model says otherwise); float inputs are standard normal,
    others zero.

    Examples
    --------
    >>> from taskflow.frontend import nn
    >>> model = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_model()
    >>> sample_feed(model)["input"].shape
    (8, 4)
    """
    sizes, _ = model._trace_dims({})
    rng = np.random.default_rng(seed)
    feed = {}
    for v in model.graph.inputs:
        if v.shape is None:
            raise InputError(f"input {v.name!r} has no known rank; pass sample= explicitly")
        shape = [d if isinstance(d, int) else batch if k == 0 else sizes[_dim_key(v.name, d, k)]
                 for k, d in enumerate(v.shape)]
        x = sample_array(v.name, shape, v.dtype)
        if x.dtype.kind == "f":
            x[...] = rng.standard_normal(x.shape)
        feed[v.name] = x
    return feed


def _dim_key(name: str, d: Any, axis: int) -> str:
    return d if isinstance(d, str) and d else f"{name}[{axis}]"


def choose_by_measurement(model: Model, candidates: Sequence[str], precision: str,
                          sample_feed: Mapping[str, Any], repeat: int = 3
                          ) -> dict[str, LayerChoice]:
    """Time each candidate layer's reduced kernel against its fp32 kernel; keep the faster.

    The model runs once on ``sample_feed`` with a trace that keeps the inputs of the
    candidates (only theirs); then each candidate's kernel runs on those inputs with its
    reduced attributes and with them removed, interleaved, ``repeat`` timed samples each after
    a warm-up (which packs the weights). The reduced kernel is kept only when it is more than
    :data:`MIN_SPEEDUP` times faster (merely faster where it hands narrow values to or from
    its neighbours, below).

    The reduced kernel is timed as it runs among reduced neighbours: where the executor would
    hand this layer its input narrow, or have it hand its output on narrow
    (:func:`taskflow.executor.narrow_handoffs` with every candidate reduced), it is timed on
    the narrow input and writing the narrow output: the conversions the hand-offs save are
    part of what the reduced layer gains.

    Parameters
    ----------
    model : Model
        Its graph's candidate nodes carry the reduced attributes (a node without any gets
        ``precision=precision``, dynamic int8 for ``"int8"``).
    candidates : list of str
        Node names of the executed graph (``model.graph``).
    precision : {"bf16", "int8"}
        The reduced precision the candidates were marked with.
    sample_feed : dict of str to array
        A batch like the ones the model will see (its shapes set the GEMM sizes).
    repeat : int
        Timed samples per kernel; the best counts.

    Returns
    -------
    dict of str to LayerChoice
        By node name, in graph order.

    Examples
    --------
    >>> from taskflow.demo import load_digits_model
    >>> from taskflow.ir.quantize import mark_precision
    >>> model = load_digits_model()
    >>> marked = model._derived(mark_precision(model.graph, "bf16"))
    >>> names = reduced_layers(marked.graph)
    >>> choices = choose_by_measurement(marked, names, "bf16", sample_feed(model))
    >>> sorted(choices) == sorted(names), all(c.fp32_ms for c in choices.values())
    (True, True)
    """
    wanted = set(candidates)
    missing = sorted(wanted - {layer_name(n) for n in model.graph.nodes})
    if missing:
        raise InputError(f"candidate layer(s) {missing} are not nodes of the model's graph")
    captured: dict[str, list[Any]] = {}

    def keep_inputs(node: Node, args: list[Any], results: tuple) -> None:
        if layer_name(node) in wanted:
            captured[layer_name(node)] = list(args)

    plan = ExecutionPlan(model.graph, device=model.device)
    plan.run(model.check_feed(sample_feed), trace=keep_inputs)
    handoffs = {layer_name(plan.steps[k].node): attrs for k, attrs in plan.handoffs.items()}
    narrow = {plan.steps[k].node.outputs[0] for k in plan.handoffs}
    choices = {}
    for node in model.graph.nodes:  # graph order
        name = layer_name(node)
        if name not in wanted:
            continue
        args = captured[name]
        reduced = dict(node.attrs) if node.attrs.get("precision") else \
            {**node.attrs, "precision": precision}
        reduced = handoffs.get(name, reduced)
        plain = {k: v for k, v in node.attrs.items() if k not in PRECISION_ATTRS}
        kernel = ops.get(node.op).kernel(model.device)
        given = [_narrow_input(args[0], reduced), *args[1:]] if node.inputs[0] in narrow \
            else args
        fp32_s, reduced_s = _race(kernel, (args, plain), (given, reduced), repeat)
        # a layer handed its input narrow, or handing its output on narrow, keeps its
        # reduced kernel unless fp32 is faster: in fp32 it would also cost its neighbours
        # their narrow hand-offs (ResNet-50's first 1x1, 2.6% faster in int8 alone, made
        # the stem and MaxPool write float32: int8 0.96x the time of keeping it int8)
        linked = node.inputs[0] in narrow or name in handoffs
        faster = fp32_s > reduced_s * (1.0 if linked else MIN_SPEEDUP)
        choices[name] = LayerChoice(
            name, node.op, tuple(tuple(a.shape) for a in args[:2] if a is not None),
            reduced["precision"], reduced["precision"] if faster else "fp32",
            fp32_s * 1e3, reduced_s * 1e3)
    return choices


def _narrow_input(x: Any, attrs: dict) -> Any:
    """``x`` (logical NCHW) as the layer before would hand it over narrow, in ``x``'s memory
    order (channels-last stays channels-last)."""
    from taskflow.ops.quant import to_handoff

    return to_handoff(x.transpose(0, 2, 3, 1), attrs["precision"], attrs.get("x_scale", 0.0),
                      attrs.get("x_zero_point", 0)).transpose(0, 3, 1, 2)


def _race(kernel: Callable[..., Any], a: tuple[list[Any], dict], b: tuple[list[Any], dict],
          repeat: int) -> tuple[float, float]:
    """Best seconds per call of ``kernel(*args, **attrs)`` for ``a`` and ``b`` (each
    ``(args, attrs)``), sampled alternately ``repeat`` times each after a warm-up call of
    both."""
    calls = {}
    for key, (args, attrs) in (("a", a), ("b", b)):
        kernel(*args, **attrs)  # warm-up: compiles, packs the weights
        t0 = time.perf_counter()
        kernel(*args, **attrs)
        one = max(time.perf_counter() - t0, 1e-7)
        calls[key] = max(1, min(1000, math.ceil(SAMPLE_SECONDS / one)))
    best = {"a": math.inf, "b": math.inf}
    for _ in range(max(1, repeat)):
        for key, (args, attrs) in (("a", a), ("b", b)):
            n = calls[key]
            t0 = time.perf_counter()
            for _ in range(n):
                kernel(*args, **attrs)
            best[key] = min(best[key], (time.perf_counter() - t0) / n)
    return best["a"], best["b"]


# --- Model.with_precision ----------------------------------------------------------------------
def with_precision(model: Model, precision: str = "bf16", *, choose: str = "measure",
                   sample: Any = None) -> Model:
    """What :meth:`taskflow.Model.with_precision` does (see there).

    Examples
    --------
    >>> from taskflow.demo import load_digits_model
    >>> bf16 = with_precision(load_digits_model(), "bf16", choose="all")
    >>> bf16.precision_report.precision, len(bf16.precision_report.layers)
    ('bf16', 4)
    """
    check_precision(precision)
    if choose not in CHOICES:
        raise InputError(f"choose={choose!r} is unknown; expected one of {CHOICES}")
    size = weight_bytes(model.source_graph)
    if precision == "fp32":
        out = model._derived(drop_precision(model.graph))
        out.precision_report = CompressionReport("fp32", bytes_before=size, bytes_after=size)
        return out
    marked = model._derived(mark_precision(model.graph, precision))
    names = reduced_layers(marked.graph)
    choices = _choose(marked, names, precision, choose, sample)
    slower = [name for name, c in choices.items() if c.precision == "fp32"]
    out = model._derived(drop_precision(marked.graph, slower)) if slower else marked
    static = any(n.attrs.get("x_scale") for n in marked.graph.nodes)  # a QDQ file's layers
    mode = ("static" if static else "dynamic") if precision == "int8" else ""
    out.precision_report = CompressionReport(
        precision, mode=mode, bytes_before=size, bytes_after=size,
        layers=list(choices.values()), backend=lowp_backend(precision),
        notes=["save() writes the model as it was given (fp32, or a QDQ file's int8): the "
               "precision chosen here is how this process runs it"])
    return out


def _choose(marked: Model, names: list[str], precision: str, choose: str,
            sample: Any) -> dict[str, LayerChoice]:
    if choose == "all":
        nodes = {layer_name(n): n for n in marked.graph.nodes}
        shapes = _weight_shapes(marked.graph)
        return {name: LayerChoice(name, nodes[name].op, shapes.get(name, ()),
                                  nodes[name].attrs.get("precision", precision),
                                  nodes[name].attrs.get("precision", precision))
                for name in names}
    feed = sample_feed(marked) if sample is None else as_feed(marked, sample, what="sample")
    return choose_by_measurement(marked, names, precision, feed)


def _weight_shapes(graph: Graph) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Per layer: the shape of its constant weight (input 1), where known."""
    out = {}
    for n in graph.nodes:
        if len(n.inputs) > 1 and n.inputs[1] in graph.initializers:
            out[layer_name(n)] = (tuple(np.shape(graph.initializers[n.inputs[1]])),)
    return out


def lowp_backend(precision: str) -> str:
    """What runs a ``precision`` GEMM here (:func:`taskflow.ops.cpu.lowp.lowp_backend`)."""
    if precision == "fp32":
        return ""
    from taskflow.ops.cpu.lowp import lowp_backend as backend

    return backend(precision)
