"""``taskflow bench`` over several models (:mod:`taskflow.bench.suite`): one table whose ratios,
GFLOP/s and geometric means come from the measured times, a row with its reason for a model that
cannot run, and the JSON record. Two tiny models, one timed run each; nothing asserts a speed.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from types import SimpleNamespace

import pytest

from taskflow import cli
from taskflow.bench import suite
from taskflow.bench.harness import feed_dims
from taskflow.bench.peak import SgemmPeak, cpu_isa, sgemm_peak
from taskflow.bench.report import TARGET_EACH, TARGET_GEOMEAN
from taskflow.frontend import nn

pytestmark = pytest.mark.timeout(120)

DIGITS = str(resources.files("taskflow.data").joinpath("digits_cnn.onnx"))


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime", reason="the table compares with ONNX Runtime")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    nn.Sequential(
        [nn.Dense(64, 256), nn.ReLU(), nn.Dense(256, 10)], input_shape=(64,)
    ).to_model().save(path)
    return str(path)


def test_suite_table_is_computed_from_the_measured_times(ort, mlp, monkeypatch):
    # an export this checkout cannot make: a row with the reason, and the suite goes on
    monkeypatch.setattr(suite, "export_registry", lambda: None)
    cases = [
        suite.case_for(DIGITS, batch=4),
        suite.case_for(mlp, batch=8),
        suite.Case("gpt-dynamo", 8, 64, export=True),
    ]
    lines = []
    result = suite.run_suite(
        cases, threads=1, repeat=1, peers=("onnxruntime",), peak_size=128, progress=lines.append
    )
    assert len(lines) == 3 and lines[0].startswith("[1/3] digits_cnn batch 4: taskflow")
    digits, dense, gpt = result.rows
    assert (digits.model, digits.batch, dense.model, dense.batch) == ("digits_cnn", 4, "mlp", 8)
    assert (
        gpt.result is None and "skipped: needs the repository's benchmarks/models" in gpt.problem
    )
    for row in (digits, dense):
        (t_tf,), (t_ort,) = row.result.times["taskflow"], row.result.times["onnxruntime"]
        assert row.ms() == pytest.approx(t_tf * 1e3)
        assert row.ratio("onnxruntime") == pytest.approx(t_ort / t_tf)
        flops = row.result.flops_per_image
        assert flops > 0
        assert row.gflops == pytest.approx(flops * row.batch / t_tf / 1e9)
    assert dense.result.flops_per_image == pytest.approx(2 * (64 * 256 + 256 * 10), rel=0.05)
    ratios = [digits.ratio("onnxruntime"), dense.ratio("onnxruntime")]
    assert result.geomean() == pytest.approx(math.sqrt(ratios[0] * ratios[1]))
    assert result.peak.gflops == max(result.peak_samples) > 0
    assert len(result.peak_samples) == 4  # before the models, and after each

    table = result.table().splitlines()
    head = next(line for line in table if line.startswith("model"))
    for column in ("batch", "taskflow ms", "ORT ms", "tf/ORT", "GFLOP/s", "% peak"):
        assert column in head
    (row_line,) = [line for line in table if line.startswith("mlp ")]
    share = dense.gflops / result.peak.gflops * 100
    assert f"{dense.ratio('onnxruntime'):.2f}x" in row_line and f"{share:.0f}%" in row_line
    assert any(line.startswith("gpt-dynamo") and "skipped" in line for line in table)
    assert f"geomean taskflow/ORT: {result.geomean():.2f}x over 2 models" in table
    met = [ok for ok, _ in result.targets()]
    assert met == [min(ratios) >= TARGET_EACH, result.geomean() >= TARGET_GEOMEAN]
    assert sum(line.startswith(("PASS", "FAIL")) for line in table) == 2

    record = json.loads(json.dumps(result.as_dict()))
    assert [r["model"] for r in record["rows"]] == ["digits_cnn", "mlp", "gpt-dynamo"]
    assert record["rows"][1]["ratio_vs"]["onnxruntime"] == pytest.approx(ratios[1])
    assert record["rows"][2]["problem"].startswith("skipped")
    assert record["geomean_vs"]["onnxruntime"] == pytest.approx(result.geomean())


def test_cli_prints_one_table_and_writes_json(ort, mlp, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite, "sgemm_peak", lambda *a, **k: SgemmPeak(50.0, "stub"))
    out = tmp_path / "bench.json"
    assert (
        cli.main(
            [
                "bench",
                DIGITS,
                mlp,
                "--batch-size",
                "4",
                "--threads",
                "1",
                "--repeat",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "measured sgemm peak 50.0 GFLOP/s (stub)" in text
    assert "geomean taskflow/ORT" in text and "Dask overhead" not in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [("digits_cnn", 4), ("mlp", 4)]
    assert all(r["median_ms"]["taskflow"] > 0 for r in rows)


def test_standard_sizes_and_unknown_names():
    assert suite.case_for("light_vgg19").batch == 8 and suite.case_for("resnet50").batch == 32
    assert [c.name for c in suite.suite_cases("light")][:2] == [
        "light_bvlc_alexnet",
        "light_densenet121",
    ]
    modern = {c.name: (c.batch, c.seq) for c in suite.suite_cases("modern")}
    assert modern["gpt-dynamo"] == (8, 64) and modern["minilm-torchscript-sdpa"] == (32, 128)
    assert modern["mobilenetv3-small-dynamo"] == (32, None) and len(modern) == 8
    with pytest.raises(FileNotFoundError, match="light_resnet50"):
        suite.case_for("no-such-model")
    assert cli.main(["bench"]) == 2  # nothing to time: an error naming the choices


def test_feed_dims_names_the_sequence_not_the_batch():
    graph = SimpleNamespace(
        inputs=[
            SimpleNamespace(name="ids", shape=["batch", "sequence"]),
            SimpleNamespace(name="pos", shape=["batch", None, 4]),
        ]
    )
    feed = {"ids": SimpleNamespace(shape=(8, 64)), "pos": SimpleNamespace(shape=(8, 3, 4))}
    assert feed_dims(graph, feed) == {"sequence": 64, "pos[1]": 3}


def test_sgemm_peak_and_isa():
    peak = sgemm_peak(threads=2, repeat=1, size=64)
    assert peak.gflops > 0 and ("sgemm" in peak.how or "matmul" in peak.how)
    assert cpu_isa({"avx", "avx2", "fma"}) == "AVX2+FMA"
    assert cpu_isa({"avx2", "fma", "avx512f"}) == "AVX-512"
