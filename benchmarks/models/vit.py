"""ViT-tiny (DeiT-tiny shape, 4 layers) on ``torch.nn.MultiheadAttention``, random weights.

``nn.MultiheadAttention`` with its default ``batch_first=False`` takes ``(sequence, batch,
dim)``: the exported graph has the sequence-first layout (packed in-projection, reshape to
``(S, B*H, D)``, transposes) that users' exports of older PyTorch vision transformers show.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.models._common import Signature, scale_linears


class Block(nn.Module):
    """Pre-norm encoder block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads)  # batch_first=False: (S, B, D)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, image: int = 224, patch: int = 16, dim: int = 192, heads: int = 3,
                 layers: int = 4, classes: int = 1000):
        super().__init__()
        if image % patch:
            raise ValueError(f"image={image!r} is not a multiple of patch={patch!r}")
        tokens = (image // patch) ** 2 + 1  # patches and the class token
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = (torch.cat([cls, x], dim=1) + self.pos_embed).transpose(0, 1)  # (S, B, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[0]))  # the class token


def build(image: int = 224, patch: int = 16, layers: int = 4) -> ViT:
    model = ViT(image=image, patch=patch, layers=layers)
    scale_linears(model)
    for block in model.blocks:  # the packed in-projection is a bare Parameter, not a Linear
        nn.init.normal_(block.attn.in_proj_weight, std=block.attn.embed_dim ** -0.5)
    return model.eval()


def signature(**_: object) -> Signature:
    return Signature(("pixel_values",), ("logits",),
                     {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
