"""Export each model and compare PyTorch, ONNX Runtime and taskflow on the same inputs.

    python -m benchmarks.models.check [NAME ...] [--small] [--no-predict] [-o DIR]

Per model: export time; ORT vs PyTorch max abs diff; taskflow ``Model.run`` vs ORT relative
error (:func:`rel_error`); the spread of the outputs across the batch (a collapsed random model
would give ~0); and whether ``Model.predict`` on a Dask array (chunks of 2, threaded
scheduler) runs and agrees (its warnings are printed). A failure is reported in the table,
not raised. Not a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.models import EXPORTS, build, export_timed, sample_inputs

BATCH = 4
SEQ = 12  # text models: long enough for padding at the ends of rows


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max|ours - ref| / max|ref|``: relative to the output's scale, not elementwise (an
    elementwise ratio explodes where ``ref`` crosses zero)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def batch_spread(y: np.ndarray) -> float:
    """Mean over features of the std across the batch, relative to the mean magnitude."""
    y = np.asarray(y, np.float64)
    return float(y.std(axis=0).mean() / max(np.abs(y).mean(), 1e-30))


def torch_outputs(name: str, feed: dict[str, np.ndarray], **size: Any) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        y = build(name, **size)(*(torch.from_numpy(v) for v in feed.values()))
    return [y.numpy()]


def ort_outputs(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def predict_outputs(model: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    import dask.array as da

    # chunks of 2 along the batch only: chunks=2 would split every axis, which taskflow
    # rechunks back (with a warning)
    arrays = {k: da.from_array(v, chunks=(2,) + (-1,) * (v.ndim - 1)) for k, v in feed.items()}
    lazy = model.predict(arrays if len(arrays) > 1 else next(iter(arrays.values())))
    return np.asarray(lazy.compute(scheduler="threads"))


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


def check(name: str, folder: Path, small: bool = True, predict: bool = True) -> dict[str, Any]:
    """Export ``name`` into ``folder`` and compare the runtimes; returns one table row."""
    import taskflow

    size = EXPORTS[name].test_size if small else {}
    row: dict[str, Any] = {"name": name}
    path, row["export_s"], row["export_cpu_s"] = export_timed(
        name, folder / f"{name}.onnx", **size)
    seq = SEQ if EXPORTS[name].family in ("minilm", "gpt") else None
    feed = sample_inputs(name, BATCH, seq, seed=1, **size)
    ref = torch_outputs(name, feed, **size)[0]
    ort_y = ort_outputs(path, feed)[0]
    row["ort_vs_torch"] = float(np.abs(ort_y - ref).max())
    row["spread"] = batch_spread(ref)
    try:
        start = time.perf_counter()
        model = taskflow.load(path)
        row["tf_load_s"] = time.perf_counter() - start
        row["run_rel"] = rel_error(model.run(None, feed)[0], ort_y)
    except Exception as exc:  # the failure is the result
        row["run_rel"] = f"FAIL {_short(exc)}"
        row["run_trace"] = traceback.format_exc()
        return row
    if predict:
        try:
            row["predict_rel"] = rel_error(predict_outputs(model, feed), ort_y)
        except Exception as exc:
            row["predict_rel"] = f"FAIL {_short(exc)}"
            row["predict_trace"] = traceback.format_exc()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="registry names (default: all)")
    parser.add_argument("--small", action="store_true", help="the test sizes")
    parser.add_argument("--no-predict", action="store_true")
    parser.add_argument("--traces", action="store_true", help="print failure tracebacks")
    parser.add_argument("-o", "--output", type=Path, help="keep the ONNX files here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.output or Path(tmp)
        for name in args.names or sorted(EXPORTS):
            row = check(name, folder, args.small, not args.no_predict)
            cells = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items() if not k.endswith("trace")]
            print("  ".join(cells), flush=True)
            if args.traces:
                for k in ("run_trace", "predict_trace"):
                    if k in row:
                        print(row[k])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
