"""Streaming Zarr -> Zarr inference: :func:`~taskflow.stream.infer.infer_zarr` (the client side),
the worker side (:mod:`~taskflow.stream.worker`), the manifest of finished chunks
(:mod:`~taskflow.stream.manifest`), sources (:mod:`~taskflow.stream.sources`), preprocessing
(:mod:`~taskflow.stream.preprocess`) and the job summary (:mod:`~taskflow.stream.report`).
"""

from __future__ import annotations

from typing import Any

_LAZY = {"infer_zarr": "infer", "EXIT_QUARANTINED": "infer", "JobSummary": "report"}


def __getattr__(name: str) -> Any:
    # distributed and zarr load on first use, not when a worker imports a submodule
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
