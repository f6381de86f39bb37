"""Plumbing shared by the model families: seeding, both ONNX exporters, weight scaling."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

SEED = 0
# The opsets the issues' users export with: the dynamo exporter needs >= 18 (its onnxscript
# functions are written against it); the TorchScript exporter's most used one is 17.
OPSETS = {"dynamo": 18, "torchscript": 17}


@dataclass(frozen=True)
class Signature:
    """Names of a model's graph inputs and outputs, and their dynamic axes.

    ``dynamic`` maps a value name to ``{axis: dim name}``; ``max_dims`` bounds a dim where the
    model cannot take more (learned positions), which ``torch.export`` needs to know.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]
    max_dims: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def seeded(seed: int = SEED) -> Iterator[None]:
    """Build with a fixed seed without disturbing the caller's torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def scale_linears(module: nn.Module, gain: float = 1.0) -> None:
    """Re-draw every Linear weight as N(0, gain / fan_in) and its bias as N(0, 0.02^2).

    PyTorch's default init keeps activations ~1/sqrt(3) smaller per layer; with LayerNorm
    in between that is harmless, but the attention scores then stay near zero and softmax is
    near uniform, so the outputs hardly depend on the input. Unit-variance projections give
    peaked attention, like a trained model.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.02)


def export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], path: str | Path,
                signature: Signature, exporter: str) -> Path:
    """Export ``module`` (in eval mode) to one self-contained ONNX file at ``path``."""
    if exporter not in OPSETS:
        raise ValueError(f"exporter {exporter!r} is unknown; use one of {sorted(OPSETS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    common = dict(input_names=list(signature.inputs), output_names=list(signature.outputs),
                  opset_version=OPSETS[exporter])
    with torch.no_grad():
        if exporter == "dynamo":
            dims: dict[str, torch.export.Dim] = {}
            for axes in signature.dynamic.values():
                for name in axes.values():
                    # min=1: the example inputs have batch 2, so torch.export would otherwise
                    # assume >= 2 (it specialises 0 and 1)
                    dims.setdefault(name, torch.export.Dim(
                        name, min=1, max=signature.max_dims.get(name, 2**31 - 2)))
            shapes = tuple({a: dims[n] for a, n in signature.dynamic.get(i, {}).items()} or None
                           for i in signature.inputs)
            # external_data=False: one file, as the tests and `taskflow.load` callers expect
            torch.onnx.export(module, args, path, dynamo=True, dynamic_shapes=shapes,
                              external_data=False, verbose=False, **common)
        else:
            torch.onnx.export(module, args, path, dynamo=False,
                              dynamic_axes=signature.dynamic, **common)
    return path
