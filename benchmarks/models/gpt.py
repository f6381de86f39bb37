"""A GPT-2-style causal decoder (nanoGPT's layout), random weights.

Two ways to split the packed ``c_attn`` projection, both common in exported LMs and both
computing the same function with the same weights:

- ``packed=False``: ``q, k, v = qkv.split(dim, -1)``, then ``view(B, S, H, D).transpose(1, 2)``
  each (GPT-2, nanoGPT);
- ``packed=True``: ``qkv.reshape(B, S, 3, H, D).permute(2, 0, 3, 1, 4)`` and index the leading 3
  (timm, many ViT/LLM ports): a rank-5 transpose in the graph.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from benchmarks.models._common import Signature, scale_linears

VOCAB = 1000
MAX_POSITIONS = 256


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, max_positions: int, packed: bool):
        super().__init__()
        self.heads, self.packed = heads, packed
        self.sqrt_d = math.sqrt(dim // heads)
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        # nanoGPT's mask buffer, sliced to the sequence: Slice + Equal + Where in the graph
        tril = torch.tril(torch.ones(max_positions, max_positions))
        self.register_buffer("bias", tril[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        qkv = self.c_attn(x)
        if self.packed:
            qkv = qkv.reshape(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            q, k, v = (t.view(batch, seq, self.heads, -1).transpose(1, 2)
                       for t in qkv.split(dim, dim=2))
        att = q @ k.transpose(-2, -1) / self.sqrt_d
        att = att.masked_fill(self.bias[:, :, :seq, :seq] == 0, float("-inf"))
        y = att.softmax(dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(batch, seq, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, max_positions: int, packed: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, max_positions, packed)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 128, heads: int = 4, layers: int = 4,
                 max_positions: int = MAX_POSITIONS, packed: bool = False):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(max_positions, dim)  # learned positions
        self.h = nn.ModuleList(Block(dim, heads, max_positions, packed) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(positions)[None]
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build(packed: bool = False, layers: int = 4, max_positions: int = MAX_POSITIONS) -> GPT:
    model = GPT(layers=layers, max_positions=max_positions, packed=packed)
    scale_linears(model)
    # N(0, 1) embeddings (nn.Embedding's default) would make the tied head's logits ~sqrt(dim);
    # 1/sqrt(dim) keeps them ~1. Positions get the same scale so they do not drown the tokens.
    for emb in (model.wte, model.wpe):
        nn.init.normal_(emb.weight, std=emb.embedding_dim ** -0.5)
    return model.eval()


def signature(max_positions: int = MAX_POSITIONS, **_: object) -> Signature:
    axes = {0: "batch", 1: "sequence"}
    return Signature(("input_ids",), ("logits",), {"input_ids": axes, "logits": axes},
                     max_dims={"sequence": max_positions})

