"""In-process execution of a graph: the plan is built once, then run per feed.

The plan resolves each node's kernel once (device kernel, or the numpy reference) and records
after which step each intermediate value is dead, so peak memory is the live set of the
network, not the sum of all activations.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from taskflow import ops
from taskflow.errors import ShapeError, TaskflowError, UnsupportedOpError
from taskflow.ir.graph import Graph, Node
from taskflow.ir.placement import Slot, concat_slots
from taskflow.ir.views import view_runs, view_step
from taskflow.ops.cpu.common import mark_constant
from taskflow.ops.device import DEVICE_DTYPE_KINDS, is_gpu, to_device, use_device

#: Largest input a sample run (FLOP count, trace, warm-up) builds: a declared shape past this
#: is a broken model, not a workload.
MAX_SAMPLE_BYTES = 2**31
#: Ops whose output depends on an input's shape only: where the shape-only subgraphs start.
SHAPE_SOURCES = frozenset({"Shape", "Size"})
#: Ops never served from the shape cache: their output is not a function of their inputs.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform",
                              "RandomUniformLike", "Multinomial", "Bernoulli"})
#: Largest value (elements) the shape cache keeps: shape vectors, scalars, position ids.
SHAPE_CACHE_MAX_ELEMENTS = 4096
#: Input signatures (shapes and dtypes) a plan keeps shape-only values for.
SHAPE_CACHE_KEYS = 16
#: The list :func:`node_timer` fills, for runs in this thread; None: nobody is timing.
_NODE_TIMES: ContextVar[list[tuple[Node, float]] | None] = ContextVar("taskflow_node_times",
                                                                      default=None)


@dataclass
class Step:
    node: Node
    fn: Callable[..., Any]
    #: Values no later step (nor the graph outputs) reads: dropped after this step.
    release: tuple[str, ...]


class ExecutionPlan:
    """A graph resolved into an ordered list of kernel calls.

    Parameters
    ----------
    graph : Graph
        A validated graph in canonical form.
    device : {"cpu", "gpu", "gpu:N", "reference"}
        Which kernels to use (a canonical name: :func:`taskflow.ops.device.parse_device`).
    strict : bool
        With a gpu device, raise :class:`UnsupportedOpError` naming every op without a gpu
        kernel; otherwise they run their numpy reference on the host, named in one warning.
        (cpu ops without a cpu kernel always run their reference: it is the cpu kernel.)

    With a gpu device the float (and bool) initializers are uploaded here, once; the integer
    ones (shapes, axes, indices) stay on the host, where kernels read them.
    """

    def __init__(self, graph: Graph, device: str = "cpu", strict: bool = False):
        self.graph = graph
        self.device = device
        order = graph.toposort()
        unsupported = unsupported_nodes(graph)
        if unsupported:
            raise unsupported_error(unsupported)
        missing = [n for n in order if not ops.get(n.op).has_kernel(device)]
        if missing:
            if strict:
                raise missing_kernel_error(missing, device)
            names = sorted({n.op for n in missing})
            warnings.warn(f"device {device!r} has no kernel for op(s) {', '.join(names)}; "
                          "they run their numpy reference on the host, with a copy to and from "
                          "the device each (strict=False)", RuntimeWarning, stacklevel=3)
        releases = release_schedule([(n.inputs, n.outputs) for n in order],
                                    set(graph.output_names) | set(graph.initializers))
        self.steps = [
            Step(node, ops.get(node.op).kernel(device, warn=False), releases[k])
            for k, node in enumerate(order)
        ]
        #: The weights as the kernels get them: uploaded once for a gpu device.
        self.constants: dict[str, Any] = graph.initializers
        # weights the cpu kernels may pack once where an operand could also be an activation
        mark_constant(self.constants.values())
        if is_gpu(device):
            with use_device(device):
                self.constants = {k: to_device(v) if v.dtype.kind in DEVICE_DTYPE_KINDS else v
                                  for k, v in graph.initializers.items()}
        #: Steps whose outputs depend on the inputs' shapes and constants only (the
        #: Shape -> Gather -> Unsqueeze -> Concat chains of dynamic-axis exports): computed on
        #: the first run with given input shapes, then served from :attr:`shape_cache`.
        self.shape_steps = shape_only_steps([(n.op, n.inputs, n.outputs) for n in order],
                                            set(graph.initializers))
        #: input signature -> (the shape-only values, the steps they stand for)
        self.shape_cache: dict[tuple, tuple[dict[str, Any], frozenset[int]]] = {}
        #: Convolutions that write into the Concat they feed (see :mod:`taskflow.ir.placement`).
        self.slots = {} if device != "cpu" else concat_slots(
            [(n.op, n.inputs, n.outputs, n.attrs) for n in order],
            lambda v: _channels(graph, v), graph.output_names)
        #: Step k -> (kernel, count): the kernel runs steps k to k + count - 1 as one pass in
        #: untraced runs (:func:`step_chains`).
        self.chains = {} if device != "cpu" else step_chains(order, graph, set(self.slots))
        chained = {j for k, (_, count) in self.chains.items() for j in range(k, k + count)}
        #: Step k -> its role ("start", "mid", "end") in a run of Reshape and Transpose nodes
        #: computed as one view in untraced runs (:func:`taskflow.ir.views.view_runs`).
        self.views = {} if device != "cpu" else view_runs(order, graph, set(self.shape_steps))
        #: Step k -> its attributes with ``y_precision``: reduced layers that hand their output
        #: to the next reduced layers narrow, in untraced runs (:func:`narrow_handoffs`).
        self.handoffs = {} if device != "cpu" else narrow_handoffs(
            [(n.op, n.inputs, n.outputs, n.attrs) for n in order], set(graph.output_names),
            set(self.slots) | chained)

    def run(self, feed: Mapping[str, Any], outputs: list[str] | None = None,
            trace: Callable[[Node, list[Any], tuple], None] | None = None) -> dict[str, Any]:
        """Evaluate the graph on ``feed``; return the requested values by name.

        ``trace(node, inputs, outputs)`` is called after each step when given (for shape and
        FLOP accounting); it must not keep references to large arrays. Inside a
        :func:`node_timer` block each node is also timed.
        """
        # a traced run sees every node's value, in float32
        chains = self.chains if trace is None else {}
        handoffs = self.handoffs if trace is None else {}
        views = self.views if trace is None else {}
        times = _NODE_TIMES.get()
        if times is not None:  # checked once per run: an untimed run pays nothing per node
            trace = _timing(times, trace)
        env: dict[str, Any] = dict(self.constants)
        env.update(feed)
        key = self._signature(feed) if self.shape_steps and trace is None else None
        cached = self.shape_cache.get(key) if key is not None else None
        skip: frozenset[int] = frozenset()
        record: dict[str, Any] | None = None
        if cached is not None:
            env.update(cached[0])
            skip = cached[1]
        elif key is not None and len(self.shape_cache) < SHAPE_CACHE_KEYS:
            record = {}  # kept at the end of the run
        buffers: dict[int, Any] = {}  # this run's Concat buffers, by Concat step
        done = -1  # the last step run as part of a chain
        for k, step in enumerate(self.steps):
            node = step.node
            if k in skip or k <= done:  # its outputs came from the shape cache, or with the
                for name in step.release:  # chain it ends
                    env.pop(name, None)
                continue
            args = [env[i] if i else None for i in node.inputs]
            try:
                slot = self.slots.get(k)
                chain = chains.get(k)
                results = None if chain is None else self._chained(chain, k, args, env)
                if results is not None:  # steps k.. as one, with the chain's last outputs
                    done = k + chains[k][1] - 1
                    node = self.steps[done].node
                elif k in views:
                    results = view_step(node, args, views[k], step.fn)
                elif slot is None:
                    results = ops.as_outputs(step.fn(*args, **handoffs.get(k, node.attrs)))
                else:
                    results = ops.as_outputs(placed_call(step.fn, args, node.attrs, slot,
                                                         buffers))
            except TaskflowError:
                raise
            except Exception as exc:
                shapes = [None if a is None else getattr(a, "shape", None) for a in args]
                raise TaskflowError(
                    f"node {node.name or node.op!r} ({node.op}) failed on inputs of shapes "
                    f"{shapes}: {type(exc).__name__}: {exc}"
                ) from exc
            if len(results) < sum(1 for o in node.outputs if o):
                raise TaskflowError(
                    f"node {node.name or node.op!r} ({node.op}) returned {len(results)} "
                    f"outputs; the graph expects {len(node.outputs)}"
                )
            for name, value in zip(node.outputs, results):
                if name:
                    env[name] = value
            if record is not None and k in self.shape_steps:
                _record_shape_values(node, results, record, self.constants)
            if trace is not None:
                trace(node, args, results)
            for name in step.release:
                env.pop(name, None)
            buffers.pop(k, None)  # a Concat's buffer lives on in its output only
        if record is not None:
            done = frozenset(k for k in self.shape_steps
                             if all(o in record for o in self.steps[k].node.outputs if o))
            self.shape_cache[key] = (record, done)
        wanted = outputs if outputs is not None else self.graph.output_names
        return {name: env[name] for name in wanted}

    def _chained(self, chain: tuple[Callable, int], k: int, args: list[Any],
                 env: dict[str, Any]) -> tuple | None:
        """The outputs of a chain's last step computed with steps k.. by its kernel (step k's
        inputs and each later step's other inputs), or None where its kernel declines at run
        time (then the steps run one by one)."""
        run, count = chain
        later = [[env[i] if i else None for i in self.steps[j].node.inputs[1:]]
                 for j in range(k + 1, k + count)]
        out = run(args, later)
        return None if out is None else (out,)

    def _signature(self, feed: Mapping[str, Any]) -> tuple | None:
        """The shapes and dtypes of the graph's inputs in ``feed``; None if one is not an
        array (the shape cache then stays out of the way)."""
        sig = []
        for v in self.graph.inputs:
            x = feed.get(v.name)
            if x is None or not hasattr(x, "shape") or not hasattr(x, "dtype"):
                return None
            sig.append((v.name, tuple(x.shape), str(x.dtype)))
        return tuple(sig)


@contextmanager
def node_timer() -> Iterator[list[tuple[Node, float]]]:
    """Time each node that :meth:`ExecutionPlan.run` runs in this thread inside the block.

    Yields a list that fills with ``(node, seconds)`` in execution order, one entry per node
    per run. A node's time runs from the end of the node before it (or the start of the run)
    to the end of its kernel: gathering its inputs and freeing the values the node before left
    dead count too. The cost is two clock reads and a Python call per node, paid only inside
    the block.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.frontend import nn
    >>> model = nn.Sequential([nn.Dense(4, 3), nn.ReLU()], input_shape=(4,)).to_model()
    >>> with node_timer() as times:
    ...     _ = model.run(None, {"input": np.ones((2, 4), np.float32)})
    >>> [node.op for node, _ in times], all(s >= 0 for _, s in times)
    (['FusedGemm'], True)
    """
    times: list[tuple[Node, float]] = []
    token = _NODE_TIMES.set(times)
    try:
        yield times
    finally:
        _NODE_TIMES.reset(token)


def _timing(times: list[tuple[Node, float]],
            trace: Callable[[Node, list[Any], tuple], None] | None
            ) -> Callable[[Node, list[Any], tuple], None]:
    """A trace that appends each node's time to ``times``, then calls ``trace`` (whose own
    time is not counted)."""
    clock = time.perf_counter
    last = clock()

    def timed(node: Node, args: list[Any], results: tuple) -> None:
        nonlocal last
        now = clock()
        times.append((node, now - last))
        if trace is not None:
            trace(node, args, results)
            now = clock()
        last = now

    return timed


def step_chains(order: Sequence[Node], graph: Graph,
                placed: set[int]) -> dict[int, tuple[Callable, int]]:
    """Step k -> (kernel, count) running nodes k to k + count - 1 as one pass, where each
    later node is the only reader of the one output of the node before it, no such output is
    a graph output, none of them writes into a Concat's buffer (``placed``), and the cpu
    kernels take the chain: a convolution (a 1x1 expansion, a few-channel first layer...),
    the depthwise convolution or MaxPool it feeds, the squeeze-excite after a depthwise one if
    any, and the 1x1 projection after them if any (:mod:`taskflow.ops.cpu.chains`)."""
    from taskflow.ops.cpu import chains as kernels

    readers = graph.consumers()
    outputs = set(graph.output_names)

    def feeds(k: int) -> bool:  # node k's one output goes to node k + 1 alone
        a, b = order[k], order[k + 1]
        v = a.outputs[0] if len(a.outputs) == 1 else ""
        return bool(v) and v not in outputs and len(readers.get(v, ())) == 1 \
            and bool(b.inputs) and b.inputs[0] == v and k not in placed and k + 1 not in placed

    chains: dict[int, tuple[Callable, int]] = {}
    k = 0
    while k < len(order) - 1:
        run = kernels.chain(order[k], order[k + 1], graph.initializers) if feeds(k) else None
        if run is None:
            k += 1
            continue
        count, se = 2, None
        if k + 2 < len(order) and feeds(k + 1):
            gated = kernels.chain(order[k], order[k + 1], graph.initializers, se=order[k + 2])
            if gated is not None:
                run, count, se = gated, 3, order[k + 2]
        if k + count < len(order) and feeds(k + count - 1):
            projected = kernels.chain(order[k], order[k + 1], graph.initializers, se=se,
                                      project=order[k + count])
            if projected is not None:
                run, count = projected, count + 1
        chains[k] = (run, count)
        k += count
    return chains


def narrow_handoffs(nodes: Sequence[tuple[str, Sequence[str], Sequence[str], Mapping]],
                    keep: set[str], skip: set[int]) -> dict[int, dict]:
    """Node k -> its attributes with ``y_precision`` for each bf16 / int8 FusedConv whose
    output only feeds, as their input X, FusedConvs of the same precision (and for int8, of
    one static input scale and zero point): it hands them its output narrow (bf16 bits, or
    uint8 at their scale), as they would have converted it themselves. That halves (bf16) or
    quarters (int8) the bytes between the layers, and saves the next layer's pass over its
    float32 input.

    A MaxPool between them passes the narrow values through: the encodings keep the values'
    order, so the maximum of the codes is the code of the maximum (ResNet's stem ->
    MaxPool -> first block). It gets the same ``y_precision`` attributes.

    ``nodes`` are ``(op, inputs, outputs, attrs)`` in execution order. One-group
    convolutions only; none in ``skip`` (Concat writers, chained steps), and no value in
    ``keep`` (graph outputs; a Dask task's exports), which stay float32."""
    readers: dict[str, list[int]] = {}
    for j, (_, ins, _, _) in enumerate(nodes):
        for v in set(ins):
            if v:
                readers.setdefault(v, []).append(j)

    def reduced(j: int) -> str:
        op, _, _, attrs = nodes[j]
        if op != "FusedConv" or j in skip or int(attrs.get("group", 1)) != 1:
            return ""
        p = attrs.get("precision", "")
        return p.decode() if isinstance(p, bytes) else p

    def output(j: int) -> str:  # node j's one output, if it may travel narrow
        outs = [o for o in nodes[j][2] if o]
        return outs[0] if len(outs) == 1 and outs[0] not in keep else ""

    def takers(v: str, precision: str, through: bool) -> tuple[list[int], list[int]] | None:
        """(the reduced layers that take ``v`` narrow, the MaxPools it passes through on
        the way), or None where some reader of ``v`` needs it float32."""
        convs: list[int] = []
        pools: list[int] = []
        for j in readers.get(v, []):
            op, ins, _, attrs = nodes[j]
            if reduced(j) == precision and ins[0] == v and v not in ins[1:]:
                convs.append(j)
                continue
            w = output(j) if through and op == "MaxPool" and j not in skip else ""
            after = takers(w, precision, False) if w and ins[0] == v else None
            if after is None or not after[0]:
                return None
            convs += after[0]
            pools.append(j)
        return convs, pools

    found: dict[int, dict] = {}
    for k in range(len(nodes)):
        precision = reduced(k)
        v = output(k) if precision else ""
        if not v or int(nodes[k][3].get("channel_shuffle", 0)) > 1:
            continue
        taken = takers(v, precision, True)
        if taken is None or not taken[0]:
            continue
        qparams = {(float(nodes[j][3].get("x_scale", 0.0)),
                    int(nodes[j][3].get("x_zero_point", 0))) for j in taken[0]}
        if precision == "int8" and (len(qparams) != 1 or not min(qparams)[0] > 0):
            continue
        scale, zp = min(qparams)
        narrow = {"y_precision": precision, "y_scale": scale, "y_zero_point": zp}
        for j in (k, *taken[1]):
            found[j] = {**nodes[j][3], **narrow}
    return found


def shape_only_steps(nodes: Sequence[tuple[str, Sequence[str], Sequence[str]]],
                     constants: set[str]) -> frozenset[int]:
    """Indices of the nodes (``(op, inputs, outputs)`` in execution order) whose outputs are
    functions of the graph inputs' shapes and of constants only: Shape and Size, and every
    deterministic node whose inputs are all constants or outputs of such nodes.

    Examples
    --------
    >>> sorted(shape_only_steps([("Shape", ["x"], ["s"]), ("Gather", ["s", "i"], ["n"]),
    ...                          ("Reshape", ["x", "n"], ["y"])], {"i"}))
    [0, 1]
    """
    derived: set[str] = set()
    steps = []
    for k, (op, ins, outs) in enumerate(nodes):
        if op in NONDETERMINISTIC:
            continue
        if op in SHAPE_SOURCES or (ins and any(i in derived for i in ins if i)
                                   and all(not i or i in derived or i in constants
                                           for i in ins)):
            steps.append(k)
            derived.update(o for o in outs if o)
    return frozenset(steps)


def _record_shape_values(node: Node, results: tuple, record: dict[str, Any],
                         constants: Mapping[str, Any]) -> None:
    """Keep a shape-only step's outputs for the shape cache when they are small numpy
    arrays computed from recorded values; a missing input (a value too large to keep)
    leaves the node and everything after it out."""
    if node.op not in SHAPE_SOURCES and any(i and i not in record and i not in constants
                                            for i in node.inputs):
        return
    for name, value in zip(node.outputs, results):
        if not name:
            continue
        if not isinstance(value, np.ndarray) or value.size > SHAPE_CACHE_MAX_ELEMENTS:
            return
    for name, value in zip(node.outputs, results):
        if name:
            record[name] = value


def release_schedule(nodes: Sequence[tuple[Sequence[str], Sequence[str]]],
                     keep: set[str]) -> list[tuple[str, ...]]:
    """Per node (``(inputs, outputs)`` in execution order), the values to drop after it: those
    no later node reads, so peak memory is the live set; an output nobody reads (Dropout's
    mask) dies right away. Values in ``keep`` (outputs, weights) are never dropped."""
    last: dict[str, int] = {}
    for k, (ins, outs) in enumerate(nodes):
        for name in (*outs, *ins):
            if name:
                last[name] = k
    release: list[list[str]] = [[] for _ in nodes]
    for name, k in last.items():
        if name not in keep:
            release[k].append(name)
    return [tuple(r) for r in release]


def _channels(graph: Graph, name: str) -> int | None:
    """The static channel count of a 4-D value, else None."""
    v = graph.values.get(name)
    if v is None or v.shape is None or len(v.shape) != 4 or not isinstance(v.shape[1], int):
        return None
    return v.shape[1]


def placed_call(fn: Callable[..., Any], args: list[Any], attrs: dict, slot: Slot,
                buffers: dict[int, Any]) -> Any:
    """``fn(*args, **attrs)`` offered its slot of the Concat buffer ``buffers[slot.concat]``
    (made on first use; one dict per run)."""
    from taskflow.ops.cpu.common import ConcatBuffer, output_slot

    buffer = buffers.get(slot.concat)
    if buffer is None:
        buffer = buffers[slot.concat] = ConcatBuffer(slot.total)
    with output_slot(buffer, slot.offset):
        return fn(*args, **attrs)


def unsupported_nodes(graph: Graph) -> list[tuple[Node, str]]:
    """Every node taskflow cannot run, with the reason (unknown op, attribute, arity)."""
    bad = []
    for node in graph.nodes:
        spec = ops.lookup(node.op)
        if node.domain not in ("", "ai.onnx") and (spec is None or spec.domain != node.domain):
            bad.append((node, f"domain {node.domain!r} is not supported"))
            continue
        if spec is None:
            bad.append((node, "no such op in the registry"))
            continue
        n_inputs = max((k + 1 for k, i in enumerate(node.inputs) if i), default=0)
        why = spec.check(n_inputs, node.attrs)
        if why:
            bad.append((node, why))
    return bad


def unsupported_error(bad: list[tuple[Node, str]]) -> UnsupportedOpError:
    lines = [f"  {n.op} (node {n.name or '<unnamed>'!r}): {why}" for n, why in bad]
    kinds = sorted({n.op for n, _ in bad})
    return UnsupportedOpError(
        f"the model uses {len(bad)} node(s) taskflow cannot run (ops: {', '.join(kinds)}):\n"
        + "\n".join(lines)
        + f"\nSupported ops: {', '.join(ops.names())}",
        [(n.op, n.name) for n, _ in bad],
    )


def missing_kernel_error(missing: list[Node], device: str) -> UnsupportedOpError:
    """Every node whose op has no ``device`` kernel, in one error (``strict=True``)."""
    names = sorted({n.op for n in missing})
    return UnsupportedOpError(
        f"device {device!r} has no kernel for op(s) {', '.join(names)} ({len(missing)} "
        f"node(s): {', '.join(repr(n.name or n.op) for n in missing[:8])}"
        f"{', ...' if len(missing) > 8 else ''}); pass strict=False to run them with their "
        "numpy reference on the host (a copy to and from the device each), or use "
        "device='cpu'",
        [(n.op, n.name) for n in missing],
    )


def dummy_feed(graph: Graph, batch: int = 1) -> dict[str, np.ndarray]:
    """Zero-filled inputs with every symbolic or unknown dimension set to ``batch``."""
    feed = {}
    for v in graph.inputs:
        if v.shape is None:
            raise TaskflowError(f"input {v.name!r} has no known rank; cannot build a sample")
        feed[v.name] = sample_array(v.name, [d if isinstance(d, int) else batch
                                             for d in v.shape], v.dtype)
    return feed


def sample_array(name: str, shape: Sequence[int], dtype: Any = None) -> np.ndarray:
    """Zeros of ``shape`` for a sample run, or a :class:`ShapeError` naming input ``name``
    when the declared shape is impossible (a negative dim) or absurd (past
    :data:`MAX_SAMPLE_BYTES`)."""
    dtype = np.dtype(dtype or np.float32)
    if any(d < 0 for d in shape):
        raise ShapeError(f"input {name!r} declares shape {list(shape)}; dimensions must be "
                         ">= 0 (or symbolic)")
    size = math.prod(shape) * dtype.itemsize
    if size > MAX_SAMPLE_BYTES:
        raise ShapeError(f"input {name!r} declares shape {list(shape)}: one sample input would "
                         f"take {size / 2**30:.3g} GiB (limit {MAX_SAMPLE_BYTES / 2**30:g} GiB); "
                         "is the model's declared shape right?")
    return np.zeros(shape, dtype=dtype)
