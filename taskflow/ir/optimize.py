"""Graph-to-graph passes. Each pass is a pure function: it returns a new :class:`Graph`.

Passes evaluate ops only through the registry (``taskflow.ops.get(op)(*inputs, **attrs)``), so
constant folding (:mod:`taskflow.ir.fold`, the first pass) agrees with the kernels by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from taskflow import ops
from taskflow.ir.fold import fold_constants
from taskflow.ir.fuse_attention import fuse_attention
from taskflow.ir.fuse_gelu import fuse_gelu
from taskflow.ir.fuse_layernorm import fuse_add_layernorm
from taskflow.ir.fuse_squeeze_excite import fuse_squeeze_excite
from taskflow.ir.graph import Graph, Node
from taskflow.ir.quantize import fuse_qdq

# --- helpers -------------------------------------------------------------------------------------


def _single_consumer(graph: Graph, value: str, consumers: dict[str, list[Node]]) -> Node | None:
    """The only node reading ``value``, if exactly one does and it is not a graph output."""
    users = consumers.get(value, [])
    if len(users) != 1 or value in graph.output_names:
        return None
    return users[0]


def _rename_input(graph: Graph, old: str, new: str) -> None:
    for n in graph.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]


def _const(graph: Graph, name: str) -> np.ndarray | None:
    return graph.initializers.get(name) if name else None


def _per_channel(v: np.ndarray | None, channels: int, rank: int) -> np.ndarray | None:
    """``v`` as a length-``channels`` vector if it broadcasts as a per-channel (axis 1) constant
    against a rank-``rank`` NC... tensor, else None."""
    if v is None or v.ndim > rank:
        return None
    full = (1,) * (rank - v.ndim) + v.shape
    if full[0] != 1 or any(d != 1 for d in full[2:]) or full[1] not in (1, channels):
        return None
    return np.broadcast_to(v.reshape(-1), (channels,)).astype(v.dtype, copy=True)


# --- passes --------------------------------------------------------------------------------------


def remove_identities(graph: Graph) -> Graph:
    """Drop ops of kind "identity" (Identity, inference Dropout) by rewiring their readers."""
    g = graph.copy()
    outputs = set(g.output_names)
    consumers = g.consumers()
    kept = []
    for n in g.nodes:
        spec = ops.lookup(n.op)
        extra_used = any(o and (o in outputs or consumers.get(o)) for o in n.outputs[1:])
        src, dst = (n.inputs[0] if n.inputs else ""), n.outputs[0]
        if spec is None or spec.kind != "identity" or extra_used or not src:
            kept.append(n)
            continue
        if dst in outputs:
            producer = next((p for p in g.nodes if src in p.outputs), None)
            if producer is None or src in outputs or len(consumers.get(src, [])) > 1:
                kept.append(n)  # input is a graph input/initializer or shared: keep the copy
                continue
            producer.outputs = [dst if o == src else o for o in producer.outputs]
            _rename_input(g, src, dst)
            continue
        _rename_input(g, dst, src)
    g.nodes = kept
    return g


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold an inference BatchNormalization into the Conv or Gemm that feeds it.

    ``BN(conv(x, W) + b) = conv(x, W * s) + (b - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)``, per output channel.
    """
    g = graph.copy()
    consumers = g.consumers()
    producers = g.producers()
    removed: set[int] = set()
    for bn in list(g.nodes):
        if bn.op != "BatchNormalization" or len([o for o in bn.outputs if o]) != 1:
            continue
        params = [_const(g, name) for name in bn.inputs[1:5]]
        if any(p is None for p in params):
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        prod = producers.get(bn.inputs[0])
        if prod is None or _single_consumer(g, bn.inputs[0], consumers) is not bn:
            continue
        w = _const(g, prod.inputs[1]) if len(prod.inputs) > 1 else None
        if w is None or prod.op not in ("Conv", "Gemm") or w.dtype != np.float32:
            continue
        if prod.op == "Gemm":
            if prod.attrs.get("transA", 0):
                continue
            out_axis = 0 if prod.attrs.get("transB", 0) else 1
        else:
            out_axis = 0
        channels = w.shape[out_axis]
        if gamma.shape != (channels,):
            continue
        eps = float(bn.attrs.get("epsilon", 1e-5))
        s = gamma / np.sqrt(var + eps)
        shape = [1] * w.ndim
        shape[out_axis] = channels
        new_w = (w.astype(np.float64) * s.reshape(shape)).astype(w.dtype)
        if prod.op == "Gemm":
            alpha = float(prod.attrs.get("alpha", 1.0))
            beta_g = float(prod.attrs.get("beta", 1.0))
            c = _const(g, prod.inputs[2]) if len(prod.inputs) > 2 and prod.inputs[2] else None
            if len(prod.inputs) > 2 and prod.inputs[2] and c is None:
                continue
            c_vec = np.zeros(channels) if c is None else np.broadcast_to(
                c.astype(np.float64), (channels,)) if c.size in (1, channels) else None
            if c_vec is None:
                continue
            bias = (beta_g * c_vec - mean) * s + beta
            new_w = (new_w.astype(np.float64) * alpha).astype(w.dtype)
            prod.attrs = {k: v for k, v in prod.attrs.items() if k not in ("alpha", "beta")}
        else:
            b = _const(g, prod.inputs[2]) if len(prod.inputs) > 2 and prod.inputs[2] else None
            if len(prod.inputs) > 2 and prod.inputs[2] and b is None:
                continue
            b64 = np.zeros(channels) if b is None else b.astype(np.float64)
            bias = (b64 - mean) * s + beta
        w_name = g.unique_name(f"{prod.inputs[1]}_bnfold")
        b_name = g.unique_name(f"{bn.name or 'bn'}_bias_bnfold")
        g.initializers[w_name] = new_w
        g.initializers[b_name] = bias.astype(w.dtype)
        prod.inputs = [prod.inputs[0], w_name, b_name]
        prod.outputs = [bn.outputs[0]]
        removed.add(id(bn))
    g.nodes = [n for n in g.nodes if id(n) not in removed]
    return eliminate_dead(g)


def fold_channel_affine(graph: Graph) -> Graph:
    """Fold a per-channel constant Mul or Add into the Conv or BatchNormalization before it.

    ``conv(x, W, B) * s = conv(x, W * s, B * s)`` and ``conv(x, W, B) + c = conv(x, W, B + c)``
    per output channel (ONNX Runtime's ConvMulFusion / ConvAddFusion); likewise a
    BatchNormalization's scale and bias absorb them. DenseNet-121 and Inception-style exports
    write BatchNorm as such Mul/Add pairs after a Conv (or after another BatchNorm); folded,
    the Conv is left with a bias and an activation that :func:`fuse_epilogues` then fuses.
    Weights are rescaled in float64 and rounded once, as in :func:`fold_batchnorm`.
    """
    g = graph.copy()
    while True:
        consumers = g.consumers()
        producers = g.producers()
        done = next((n for n in g.nodes if _fold_affine_one(g, n, consumers, producers)), None)
        if done is None:
            return eliminate_dead(g)
        g.nodes = [n for n in g.nodes if n is not done]


def _fold_affine_one(g: Graph, node: Node, consumers: dict, producers: dict) -> bool:
    if node.op not in ("Mul", "Add") or len(node.inputs) != 2 or len(node.outputs) != 1:
        return False
    for k in (0, 1):
        src, c = node.inputs[k], _const(g, node.inputs[1 - k])
        prod = producers.get(src)
        if c is None or prod is None or _single_consumer(g, src, consumers) is not node \
                or len([o for o in prod.outputs if o]) != 1:
            continue
        folded = _fold_into(g, prod, node.op, c)
        if folded is None:
            continue
        names = [g.unique_name(f"{prod.inputs[i]}_{node.op.lower()}fold") for i in folded]
        for i, name in zip(folded, names):
            g.initializers[name] = folded[i]
        prod.inputs = list(prod.inputs) + [""] * (max(folded) + 1 - len(prod.inputs))
        for i, name in zip(folded, names):
            prod.inputs[i] = name
        prod.outputs = [node.outputs[0]]
        return True
    return False


def _fold_into(g: Graph, prod: Node, op: str, c: np.ndarray) -> dict[int, np.ndarray] | None:
    """New constants (by input slot) of ``prod`` absorbing ``* c`` or ``+ c``, or None."""
    if prod.op == "Conv":
        w = _const(g, prod.inputs[1]) if len(prod.inputs) > 1 else None
        if w is None or w.dtype != np.float32 or c.dtype != w.dtype:
            return None
        has_b = len(prod.inputs) > 2 and bool(prod.inputs[2])
        b = _const(g, prod.inputs[2]) if has_b else np.zeros(w.shape[0], w.dtype)
        vec = _per_channel(c, w.shape[0], w.ndim)
        if b is None or vec is None:
            return None
        b64, v64 = b.astype(np.float64), vec.astype(np.float64)
        if op == "Add":
            return {2: (b64 + v64).astype(w.dtype)}
        scaled = w.astype(np.float64) * v64.reshape(-1, *(1,) * (w.ndim - 1))
        return {1: scaled.astype(w.dtype), 2: (b64 * v64).astype(w.dtype)}
    if prod.op == "BatchNormalization" and not prod.attrs.get("training_mode", 0):
        params = [_const(g, name) for name in prod.inputs[1:5]]
        value = g.values.get(prod.outputs[0])
        if any(p is None for p in params) or value is None or value.shape is None:
            return None
        scale, bias = params[0], params[1]
        vec = _per_channel(c, scale.shape[0], len(value.shape))
        if vec is None or c.dtype != scale.dtype or bias.dtype != scale.dtype:
            return None
        v64 = vec.astype(np.float64)
        if op == "Add":
            return {2: (bias.astype(np.float64) + v64).astype(bias.dtype)}
        return {1: (scale.astype(np.float64) * v64).astype(scale.dtype),
                2: (bias.astype(np.float64) * v64).astype(bias.dtype)}
    return None


#: Ops a fused Conv/Gemm/MatMul kernel can apply as its epilogue, with how to read their
#: parameters into ``activation_params`` (ONNX Runtime's FusedConv convention).
FUSABLE_ACTIVATIONS: dict[str, Callable[[Node, Graph], list[float] | None]] = {
    "Relu": lambda n, g: [],
    "Sigmoid": lambda n, g: [],
    "Tanh": lambda n, g: [],
    "LeakyRelu": lambda n, g: [float(n.attrs.get("alpha", 0.01))],
    "HardSigmoid": lambda n, g: [float(n.attrs.get("alpha", 0.2)),
                                 float(n.attrs.get("beta", 0.5))],
    "Clip": lambda n, g: _clip_params(n, g),
    "HardSwish": lambda n, g: [],
    # the erf form takes no parameter; the tanh form one parameter, 1
    "Gelu": lambda n, g: {"none": [], "tanh": [1.0]}.get(
        n.attrs.get("approximate", "none").decode()
        if isinstance(n.attrs.get("approximate", "none"), bytes)
        else n.attrs.get("approximate", "none")),
}

_FUSED = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul",
          "BatchNormalization": "FusedBatchNormalization"}


def _clip_params(n: Node, g: Graph) -> list[float] | None:
    bounds = []
    for k, default in ((1, -np.inf), (2, np.inf)):
        name = n.inputs[k] if len(n.inputs) > k else ""
        if not name:
            bounds.append(float(default))
            continue
        v = _const(g, name)
        if v is None or v.size != 1:
            return None
        bounds.append(float(v.reshape(())))
    return bounds


def fuse_epilogues(graph: Graph) -> Graph:
    """Fuse Conv/Gemm/MatMul with a following bias Add, residual Add and activation, and an
    inference BatchNormalization with a following activation.

    ``act(conv(x) + b + z)`` becomes one FusedConv node (likewise FusedGemm, FusedMatMul), so
    the kernel writes its output once instead of three elementwise passes over it.
    ``act(BatchNormalization(x))`` (DenseNet's pre-activation, where the BatchNorm cannot fold
    into a convolution) becomes one FusedBatchNormalization node.
    """
    g = graph.copy()
    removed: set[int] = set()
    progress = True
    while progress:
        progress = False
        consumers = g.consumers()
        for node in g.nodes:
            if id(node) in removed or node.op not in _FUSED:
                continue
            fused = _fuse_one(g, node, consumers, removed)
            if fused:
                progress = True
                break
    g.nodes = [n for n in g.nodes if id(n) not in removed]
    return g


def _fuse_one(g: Graph, node: Node, consumers: dict[str, list[Node]], removed: set[int]) -> bool:
    is_bn = node.op == "BatchNormalization"
    if is_bn and (node.attrs.get("training_mode", 0) or len([o for o in node.outputs if o]) != 1):
        return False
    inputs = list(node.inputs)
    attrs = dict(node.attrs)
    out = node.outputs[0]
    chain: list[Node] = []
    residual = ""
    bias_slot = 2  # Conv's B, Gemm's C and FusedMatMul's bias are all the third input
    has_bias = len(inputs) > bias_slot and bool(inputs[bias_slot])
    while True:
        nxt = _single_consumer(g, out, consumers)
        if nxt is None or id(nxt) in removed:
            break
        if nxt.op in ("Add", "Sum") and len(nxt.inputs) == 2 and "activation" not in attrs \
                and not is_bn:
            other = nxt.inputs[1] if nxt.inputs[0] == out else nxt.inputs[0]
            if other == out:
                break
            c = _const(g, other)
            bias = _as_bias(node, c, g) if c is not None and not has_bias else None
            if bias is not None:
                while len(inputs) < bias_slot:
                    inputs.append("")
                inputs = inputs[:bias_slot] + [bias]
                has_bias = True
            elif c is None and not residual and node.op == "Conv" and _same_shape(g, other, out):
                residual = other
            else:
                break
            chain.append(nxt)
            out = nxt.outputs[0]
            continue
        params = FUSABLE_ACTIVATIONS.get(nxt.op)
        if params is not None and "activation" not in attrs:
            p = params(nxt, g)
            if p is None:
                break
            attrs["activation"] = nxt.op
            attrs["activation_params"] = p
            chain.append(nxt)
            out = nxt.outputs[0]
        break
    if not chain or (node.op != "Conv" and not has_bias and "activation" not in attrs):
        return False
    if residual:
        while len(inputs) < 3:
            inputs.append("")
        inputs = inputs[:3] + [residual]
    attrs.setdefault("activation", "")
    if is_bn:
        for name in ("momentum", "training_mode"):  # training attributes: the fused op has none
            attrs.pop(name, None)
    node.op = _FUSED[node.op]
    node.domain = "taskflow"
    node.inputs = inputs
    node.attrs = attrs
    node.outputs = [out]
    removed.update(id(n) for n in chain)
    return True


def _as_bias(node: Node, c: np.ndarray, g: Graph) -> str | None:
    """Name of a bias initializer equivalent to adding constant ``c`` after ``node``, or None.

    Conv needs a 1-D per-output-channel vector; Gemm takes anything that broadcasts to
    (1, N); MatMul a vector over the last output axis.
    """
    w = _const(g, node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or c.dtype != w.dtype:
        return None
    if node.op == "Conv":
        vec = _per_channel(c, w.shape[0], w.ndim)
    elif node.op == "Gemm":
        n_out = w.shape[0] if node.attrs.get("transB", 0) else w.shape[1]
        vec = c.reshape(-1) if c.size in (1, n_out) and (c.ndim <= 1 or c.shape[0] == 1) \
            else None
        if vec is not None and float(node.attrs.get("beta", 1.0)) != 1.0:
            return None
    else:
        vec = c.reshape(-1) if c.ndim >= 1 and c.size == w.shape[-1] and \
            all(d == 1 for d in c.shape[:-1]) else None
    if vec is None:
        return None
    name = g.unique_name(f"{node.name or node.op}_bias")
    g.initializers[name] = np.ascontiguousarray(vec)
    return name


def _same_shape(g: Graph, a: str, b: str) -> bool:
    va, vb = g.values.get(a), g.values.get(b)
    return bool(va and vb and va.shape is not None and va.shape == vb.shape
                and all(d is not None for d in va.shape))


def fuse_channel_shuffle(graph: Graph) -> Graph:
    """Replace ShuffleNet's channel shuffle, Reshape (N, g, C/g, H, W) -> Transpose
    (0, 2, 1, 3, 4) -> Reshape (N, C, H, W), by one ChannelShuffle node.

    Spelled out, the last Reshape copies a transposed view into a fresh C-ordered array (and a
    channels-last kernel after it converts that back); ChannelShuffle is one gather per pixel
    that keeps channels-last data channels-last. Matched on static shapes only: the input's
    channel and spatial sizes must be known and the result must have the input's shape.
    """
    g = graph.copy()
    consumers = g.consumers()
    removed: set[int] = set()
    for node in g.nodes:
        if node.op != "Reshape" or id(node) in removed:
            continue
        group = _shuffle_group(g, node, consumers)
        if group is None:
            continue
        transpose = consumers[node.outputs[0]][0]
        last = consumers[transpose.outputs[0]][0]
        removed.update((id(transpose), id(last)))
        node.op, node.domain = "ChannelShuffle", "taskflow"
        node.inputs = [node.inputs[0]]
        node.attrs = {"group": group}
        node.outputs = [last.outputs[0]]
    g.nodes = [n for n in g.nodes if id(n) not in removed]
    return eliminate_dead(g)


def fold_shuffle_into_conv(graph: Graph) -> Graph:
    """Fold a ChannelShuffle into the convolution before it (``channel_shuffle`` attribute of
    FusedConv) when nothing else reads the convolution's output.

    In ShuffleNet every shuffle follows a grouped 1x1 convolution; folded, the cpu kernel
    permutes each output row right after its epilogue, while the row is in cache, instead of
    a separate pass over the whole tensor.
    """
    g = graph.copy()
    consumers = g.consumers()
    producers = g.producers()
    removed: set[int] = set()
    for node in g.nodes:
        if node.op != "ChannelShuffle" or len(node.inputs) != 1:
            continue
        prod = producers.get(node.inputs[0])
        if prod is None or prod.op not in ("Conv", "FusedConv") \
                or _single_consumer(g, node.inputs[0], consumers) is not node \
                or int(prod.attrs.get("channel_shuffle", 0)) > 1 \
                or len([o for o in prod.outputs if o]) != 1:
            continue
        if prod.op == "Conv":
            prod.op, prod.domain = "FusedConv", "taskflow"
            prod.attrs = {**prod.attrs, "activation": ""}
        prod.attrs = {**prod.attrs, "channel_shuffle": int(node.attrs["group"])}
        prod.outputs = list(node.outputs)
        removed.add(id(node))
    g.nodes = [n for n in g.nodes if id(n) not in removed]
    return g


def _shuffle_group(g: Graph, first: Node, consumers: dict[str, list[Node]]) -> int | None:
    """The group count if ``first`` starts a channel-shuffle Reshape-Transpose-Reshape."""
    if len(first.inputs) != 2 or first.attrs.get("allowzero", 0):
        return None
    x, split = g.values.get(first.inputs[0]), _const(g, first.inputs[1])
    if x is None or x.shape is None or len(x.shape) < 3 or split is None:
        return None
    c, spatial = x.shape[1], list(x.shape[2:])
    if not isinstance(c, int) or not all(isinstance(d, int) for d in spatial):
        return None
    split = [int(v) for v in split.reshape(-1)]
    batch = x.shape[0]
    if len(split) != len(x.shape) + 1 or split[3:] != spatial or split[1] * split[2] != c \
            or not (split[0] in (0, -1) or split[0] == batch) or split[1] < 1:
        return None
    transpose = _single_consumer(g, first.outputs[0], consumers)
    perm = [0, 2, 1, *range(3, len(split))]
    if transpose is None or transpose.op != "Transpose" or \
            [int(p) for p in transpose.attrs.get("perm", [])] != perm:
        return None
    last = _single_consumer(g, transpose.outputs[0], consumers)
    if last is None or last.op != "Reshape" or last.inputs[0] != transpose.outputs[0]:
        return None
    out = g.values.get(last.outputs[0])
    if out is None or out.shape is None or tuple(out.shape) != tuple(x.shape):
        return None
    return split[1]


def eliminate_dead(graph: Graph) -> Graph:
    """Remove nodes none of whose outputs is read or is a graph output, and unused constants."""
    g = graph.copy()
    live = set(g.output_names)
    kept: list[Node] = []
    for n in reversed(g.toposort()):
        if any(o in live for o in n.outputs if o):
            kept.append(n)
            live.update(i for i in n.inputs if i)
    g.nodes = list(reversed(kept))
    g.initializers = {k: v for k, v in g.initializers.items() if k in live}
    return g


# --- driver --------------------------------------------------------------------------------------

#: The passes ``optimize`` runs, in order. Folding first exposes constant weights to the
#: BatchNorm and Mul/Add folds; fusion runs last so it sees the folded Conv biases.
PASSES: dict[str, Callable[[Graph], Graph]] = {
    "fold_constants": fold_constants,
    "remove_identities": remove_identities,
    "fold_batchnorm": fold_batchnorm,
    "fold_channel_affine": fold_channel_affine,
    "fuse_gelu": fuse_gelu,
    "fuse_attention": fuse_attention,
    "fuse_add_layernorm": fuse_add_layernorm,
    "fuse_epilogues": fuse_epilogues,
    "fuse_squeeze_excite": fuse_squeeze_excite,  # after fuse_epilogues: matches FusedConv
    # after fuse_epilogues (a QDQ conv fuses its bias and activation first) and
    # fuse_squeeze_excite (which would drop an int8 conv's precision into its fp32 op)
    "fuse_qdq": fuse_qdq,
    "fuse_channel_shuffle": fuse_channel_shuffle,
    "fold_shuffle_into_conv": fold_shuffle_into_conv,
    "eliminate_dead": eliminate_dead,
}


@dataclass
class OptimizeReport:
    """Node counts before and after, and per pass."""

    before: int
    after: int = 0
    by_pass: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        steps = ", ".join(f"{k} -{v}" for k, v in self.by_pass.items() if v)
        return f"{self.before} -> {self.after} nodes" + (f" ({steps})" if steps else "")


def optimize(graph: Graph, passes: list[str] | None = None) -> tuple[Graph, OptimizeReport]:
    """Run the optimisation passes (all of :data:`PASSES` by default) on a copy of ``graph``.

    Examples
    --------
    >>> optimized, report = optimize(model.graph)             # doctest: +SKIP
    >>> print(report)                                          # doctest: +SKIP
    314 -> 122 nodes (fold_batchnorm -53, fuse_epilogues -139)
    """
    names = list(PASSES) if passes is None else passes
    unknown = [p for p in names if p not in PASSES]
    if unknown:
        raise ValueError(f"unknown optimisation pass(es) {unknown}; known: {list(PASSES)}")
    report = OptimizeReport(before=len(graph.nodes))
    for name in names:
        n = len(graph.nodes)
        graph = PASSES[name](graph)
        report.by_pass[name] = n - len(graph.nodes)
    report.after = len(graph.nodes)
    return graph, report
