"""Transformer-shaped ONNX graphs built with ``onnx.helper``, one per way exporters lay out the
batch: batch-first, sequence-first (``nn.MultiheadAttention``), heads merged into the batch
(sdpa exports), qkv packed and permuted, and the TorchScript exporter's shape arithmetic
(``Shape -> Gather -> Unsqueeze -> Concat`` feeding ``Reshape``, ``Flatten`` of the mask).

Sizes are tiny (E=8, H=2, S=5) so every case runs in milliseconds.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import taskflow as tf

S, E, H = 5, 8, 2
HD = E // H
OPSET = 17
_RNG = np.random.default_rng(7)
#: The ONNX model of every graph built so far, by name (for the ONNX Runtime comparison).
BUILT: dict[str, onnx.ModelProto] = {}


class _G:
    """A tiny graph builder: ``g.op("MatMul", a, b)`` returns the new value's name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.k = 0

    def op(self, op: str, *inputs: str, n_out: int = 1, **attrs) -> str | list[str]:
        self.k += 1
        outs = [f"{op.lower()}{self.k}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=f"{op}_{self.k}",
                                           **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=np.int64) -> str:
        self.k += 1
        name = f"c{self.k}"
        self.inits[name] = np.asarray(value, dtype)
        return name

    def weight(self, *shape: int, scale: float = 0.3) -> str:
        return self.const(_RNG.standard_normal(shape) * scale, np.float32)

    def model(self, inputs: list, out: str | list[str], name: str,
              out_shapes: list | None = None) -> tf.Model:
        outs = [out] if isinstance(out, str) else out
        outputs = [helper.make_empty_tensor_value_info(o) for o in outs]
        graph = helper.make_graph(self.nodes, name, inputs, outputs,
                                  initializer=[numpy_helper.from_array(v, k)
                                               for k, v in self.inits.items()])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        proto.ir_version = 8
        # shape inference types the outputs (declared untyped above), then the full check
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        onnx.checker.check_model(proto)
        BUILT[name] = proto
        return tf.load(proto)

    # --- pieces ---------------------------------------------------------------------------------
    def linear(self, x: str, n_in: int, n_out: int) -> str:
        return self.op("Add", self.op("MatMul", x, self.weight(n_in, n_out)),
                       self.weight(n_out, scale=0.1))

    def attention(self, q: str, k: str, v: str, mask: str | None = None) -> str:
        """softmax(q k^T / sqrt(d) + mask) v over the last two axes (any leading axes)."""
        kt = self.op("Transpose", k, perm=_swap_last(self.rank_of(k)))
        s = self.op("Mul", self.op("MatMul", q, kt), self.const(1 / np.sqrt(HD), np.float32))
        if mask is not None:
            s = self.op("Add", s, mask)
        return self.op("MatMul", self.op("Softmax", s, axis=-1), v)

    def layer_norm(self, x: str) -> str:
        return self.op("LayerNormalization", x, self.const(np.ones(E), np.float32),
                       self.const(np.zeros(E), np.float32), axis=-1)

    ranks: dict[str, int]

    def rank_of(self, name: str) -> int:
        return self.ranks[name]


def _swap_last(rank: int) -> list[int]:
    return list(range(rank - 2)) + [rank - 1, rank - 2]


def _fin(name: str, *shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _iin(name: str, *shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, list(shape))


def _mask_bias(g: _G, mask: str, via_flatten: bool = False) -> str:
    """(B, S) 0/1 mask -> additive (B, 1, 1, S) bias, as exporters write it. ``via_flatten``:
    the TorchScript way, Flatten the mask and Reshape it with a shape computed from Shape."""
    if via_flatten:
        flat = g.op("Flatten", mask, axis=0)  # (1, B*S): the batch merged into axis 1
        shp = g.op("Shape", mask)
        b = g.op("Unsqueeze", g.op("Gather", shp, g.const(0), axis=0), g.const([0]))
        s = g.op("Unsqueeze", g.op("Gather", shp, g.const(1), axis=0), g.const([0]))
        new = g.op("Concat", b, g.const([1]), g.const([1]), s, axis=0)
        m4 = g.op("Reshape", flat, new)
    else:
        m4 = g.op("Unsqueeze", mask, g.const([1, 2]))
    m4 = g.op("Cast", m4, to=TensorProto.FLOAT)
    inv = g.op("Sub", g.const(1.0, np.float32), m4)
    return g.op("Mul", inv, g.const(-1e4, np.float32))


def _heads_shape(g: _G, x: str, torchscript: bool) -> str:
    """The shape (B, S, H, HD) of a Reshape splitting heads: constants [0, 0, H, HD] (dynamo),
    or B and S gathered from Shape(x) (TorchScript)."""
    if not torchscript:
        return g.const([0, 0, H, HD])
    shp = g.op("Shape", x)
    b = g.op("Unsqueeze", g.op("Gather", shp, g.const(0), axis=0), g.const([0]))
    s = g.op("Unsqueeze", g.op("Gather", shp, g.const(1), axis=0), g.const([0]))
    return g.op("Concat", b, s, g.const([H]), g.const([HD]), axis=0)


def bert_layer(torchscript: bool = False, sdpa: bool = False) -> tf.Model:
    """A BERT-style encoder layer on token ids, token types and an attention mask.

    ``sdpa``: heads merged into the batch for the attention product, (B*H, S, HD).
    ``torchscript``: head shapes computed with Shape/Gather/Unsqueeze/Concat, mask via Flatten.
    """
    g = _G()
    g.ranks = {}
    emb = g.op("Gather", g.weight(11, E), "input_ids", axis=0)
    typ = g.op("Gather", g.weight(2, E), "token_type_ids", axis=0)
    pos_ids = g.op("Range", g.const(0), g.op("Gather", g.op("Shape", "input_ids"), g.const(1),
                                              axis=0), g.const(1))
    pos = g.op("Gather", g.weight(S, E), pos_ids, axis=0)
    x = g.layer_norm(g.op("Add", g.op("Add", emb, typ), pos))
    bias = _mask_bias(g, "attention_mask", via_flatten=torchscript)

    def heads(t: str) -> str:  # (B, S, E) -> (B, H, S, HD)
        r = g.op("Reshape", t, _heads_shape(g, t, torchscript))
        return g.op("Transpose", r, perm=[0, 2, 1, 3])

    q, k, v = (heads(g.linear(x, E, E)) for _ in range(3))
    if sdpa:
        merge = g.const([-1, S, HD])
        q3, k3, v3 = (g.op("Reshape", t, merge) for t in (q, k, v))
        g.ranks.update({q3: 3, k3: 3, v3: 3})
        # the mask bias broadcast per head: (B, 1, 1, S) -> (B, H, 1, S) -> (B*H, 1, S)
        b4 = g.op("Expand", bias, g.const([1, H, 1, 1]))
        b3 = g.op("Reshape", b4, g.const([-1, 1, S]))
        ctx3 = g.attention(q3, k3, v3, b3)
        ctx = g.op("Reshape", ctx3, g.const([-1, H, S, HD]))
    else:
        g.ranks.update({q: 4, k: 4, v: 4})
        ctx = g.attention(q, k, v, bias)
    merged = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), g.const([0, 0, E]))
    h = g.layer_norm(g.op("Add", x, g.linear(merged, E, E)))
    ff = g.linear(g.op("Relu", g.linear(h, E, 2 * E)), 2 * E, E)
    out = g.layer_norm(g.op("Add", h, ff))
    name = f"bert_{'ts' if torchscript else 'dynamo'}_{'sdpa' if sdpa else 'eager'}"
    return g.model([_iin("input_ids", "N", S), _iin("token_type_ids", "N", S),
                    _iin("attention_mask", "N", S)], out, name)


def mha_sequence_first() -> tf.Model:
    """``nn.MultiheadAttention`` in a ViT block: (B, S, E) -> (S, B, E), heads merged as
    (S, B*H, HD) with shapes from Shape, then (B*H, S, HD) for the product, and back through
    (S*B, E) for the output projection, as PyTorch writes it."""
    g = _G()
    g.ranks = {}
    xs = g.op("Transpose", "x", perm=[1, 0, 2])  # (S, B, E)
    qkv = g.linear(xs, E, 3 * E)
    q, k, v = g.op("Split", qkv, g.const([E, E, E]), axis=-1, n_out=3)
    shp = g.op("Shape", q)
    s_ = g.op("Unsqueeze", g.op("Gather", shp, g.const(0), axis=0), g.const([0]))
    bh = g.op("Mul", g.op("Unsqueeze", g.op("Gather", shp, g.const(1), axis=0), g.const([0])),
              g.const([H]))
    new = g.op("Concat", s_, bh, g.const([HD]), axis=0)

    def heads(t: str) -> str:  # (S, B, E) -> (S, B*H, HD) -> (B*H, S, HD)
        return g.op("Transpose", g.op("Reshape", t, new), perm=[1, 0, 2])

    qh, kh, vh = heads(q), heads(k), heads(v)
    g.ranks.update({qh: 3, kh: 3, vh: 3})
    ctx = g.op("Transpose", g.attention(qh, kh, vh), perm=[1, 0, 2])  # (S, B*H, HD)
    # out_proj on (S*B, E): the batch is the *inner* factor of axis 0
    flat = g.linear(g.op("Reshape", ctx, g.const([-1, E])), E, E)
    back = g.op("Reshape", flat, g.op("Concat", s_, g.const([-1]), g.const([E]), axis=0))
    attn = g.op("Transpose", back, perm=[1, 0, 2])  # (B, S, E)
    out = g.layer_norm(g.op("Add", "x", attn))
    return g.model([_fin("x", "N", S, E)], out, "mha_sequence_first")


def qkv_packed() -> tf.Model:
    """timm's ViT attention: qkv (B, S, 3, H, HD) permuted (2, 0, 3, 1, 4), q/k/v gathered
    from axis 0; plus a class token expanded to the batch and a class-token readout."""
    g = _G()
    g.ranks = {}
    b = g.op("Unsqueeze", g.op("Gather", g.op("Shape", "x"), g.const(0), axis=0),
             g.const([0]))
    cls = g.op("Expand", g.weight(1, 1, E), g.op("Concat", b, g.const([1, E]), axis=0))
    x = g.op("Concat", cls, "x", axis=1)  # (B, S+1, E)
    x = g.op("Add", x, g.weight(1, S + 1, E))
    qkv = g.op("Reshape", g.linear(x, E, 3 * E), g.const([0, 0, 3, H, HD]))
    qkv = g.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])  # (3, B, H, S+1, HD)
    q, k, v = (g.op("Gather", qkv, g.const(i), axis=0) for i in range(3))
    g.ranks.update({q: 4, k: 4, v: 4})
    ctx = g.op("Transpose", g.attention(q, k, v), perm=[0, 2, 1, 3])
    h = g.op("Add", x, g.linear(g.op("Reshape", ctx, g.const([0, 0, E])), E, E))
    first = g.op("Gather", g.layer_norm(h), g.const(0), axis=1)  # (B, E)
    return g.model([_fin("x", "N", S, E)], g.linear(first, E, 3), "qkv_packed")


def batch_into_axis0() -> tf.Model:
    """(B, S, H, HD) -> (B*H, S, HD) with -1 in the shape, a per-(batch, head) reduction, and
    back: the merge the issue reports failing."""
    g = _G()
    r = g.op("Transpose", g.op("Reshape", "x", g.const([0, 0, H, HD])), perm=[0, 2, 1, 3])
    m = g.op("Reshape", r, g.const([-1, S, HD]))  # (B*H, S, HD)
    c = g.op("Sub", m, g.op("ReduceMean", m, axes=[1], keepdims=1))
    back = g.op("Reshape", g.op("Transpose", g.op("Reshape", c, g.const([-1, H, S, HD])),
                                perm=[0, 2, 1, 3]), g.const([0, 0, E]))
    return g.model([_fin("x", "N", S, E)], g.op("Relu", back), "batch_into_axis0")


def transpose_residual() -> tf.Model:
    """The batch transposed away and back before a residual Add (the silent wrong shape of
    the issue with chunks of one row)."""
    g = _G()
    t = g.op("Transpose", "x", perm=[1, 0, 2])  # (S, B, E)
    h = g.op("Relu", g.linear(t, E, E))
    back = g.op("Transpose", h, perm=[1, 0, 2])
    return g.model([_fin("x", "N", S, E)], g.op("Add", "x", back), "transpose_residual")


def causal_decoder() -> tf.Model:
    """A GPT-style block: causal mask from Range over the sequence length (shape-derived),
    heads split with constants, the last position's logits."""
    g = _G()
    g.ranks = {}
    x = g.op("Gather", g.weight(11, E), "input_ids", axis=0)
    n = g.op("Gather", g.op("Shape", "input_ids"), g.const(1), axis=0)
    idx = g.op("Range", g.const(0), n, g.const(1))
    causal = g.op("LessOrEqual", g.op("Unsqueeze", idx, g.const([0])),
                  g.op("Unsqueeze", idx, g.const([1])))  # (S, S): key <= query

    def heads(t: str) -> str:
        return g.op("Transpose", g.op("Reshape", t, g.const([0, 0, H, HD])), perm=[0, 2, 1, 3])

    q, k, v = (heads(g.linear(x, E, E)) for _ in range(3))
    kt = g.op("Transpose", k, perm=[0, 1, 3, 2])
    s = g.op("Mul", g.op("MatMul", q, kt), g.const(1 / np.sqrt(HD), np.float32))
    s = g.op("Where", causal, s, g.const(-1e9, np.float32))
    ctx = g.op("MatMul", g.op("Softmax", s, axis=-1), v)
    h = g.op("Add", x, g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]),
                             g.const([0, 0, E])))
    last = g.op("Gather", g.layer_norm(h), g.const(-1), axis=1)
    return g.model([_iin("input_ids", "N", S)], g.linear(last, E, 11), "causal_decoder")


def softmax_over_batch() -> tf.Model:
    """Rows really mix: after moving the batch to axis 1, a Softmax along it. Must run whole,
    warn once naming the node, and stay right."""
    g = _G()
    t = g.op("Transpose", g.linear("x", E, E), perm=[1, 0, 2])  # (S, B, E)
    mixed = g.op("Softmax", t, axis=1)
    g.nodes[-1].name = "softmax_over_batch"
    out = g.op("Transpose", g.op("Relu", g.linear(mixed, E, E)), perm=[1, 0, 2])
    return g.model([_fin("x", "N", S, E)], out, "softmax_over_batch")


#: Every graph above whose rows never mix: each must run fully per chunk.
BATCH_LOCAL = {
    "bert_dynamo_eager": lambda: bert_layer(),
    "bert_dynamo_sdpa": lambda: bert_layer(sdpa=True),
    "bert_ts_eager": lambda: bert_layer(torchscript=True),
    "bert_ts_sdpa": lambda: bert_layer(torchscript=True, sdpa=True),
    "mha_sequence_first": mha_sequence_first,
    "qkv_packed": qkv_packed,
    "batch_into_axis0": batch_into_axis0,
    "transpose_residual": transpose_residual,
    "causal_decoder": causal_decoder,
}


def sample(model: tf.Model, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Random inputs: floats, token ids < 11, 0/1 types and masks (each row keeps a 1)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for v in model.graph.inputs:
        shape = [d if isinstance(d, int) else batch for d in v.shape]
        if np.dtype(v.dtype).kind == "f":
            feed[v.name] = rng.standard_normal(shape).astype(v.dtype)
        elif v.name == "input_ids":
            feed[v.name] = rng.integers(0, 11, shape).astype(v.dtype)
        else:
            m = rng.integers(0, 2, shape)
            m[..., 0] = 1
            feed[v.name] = m.astype(v.dtype)
    return feed
