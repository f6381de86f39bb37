"""``benchmarks/bench_lowp_gemm.py --quick``: every variant ran on every shape (no timing
asserts), MKL's and the dot kernels' int8 sums are the same integers, their bf16 products
agree to float32 summation order, and the machine's choice is reported."""

from __future__ import annotations

import json

from taskflow.ops.cpu import lowp

from benchmarks import bench_lowp_gemm as bench


def test_quick_run_measures_every_path(tmp_path, capsys):
    out = tmp_path / "figures.json"
    bench.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["rows"] and len(result["rows"]) == len(bench.QUICK_SHAPES)
    mkl = lowp._bindings() is not None
    for row in result["rows"]:
        want = set(bench.VARIANTS) if mkl else {"mkl-sgemm", "dot-int8", "dot-bf16"}
        assert set(row["gops"]) == want and all(g > 0 for g in row["gops"].values())
        assert row["vs_sgemm"]["mkl-sgemm"] == 1.0
        if mkl:
            assert row["int8_paths_equal"] is True
            assert row["bf16_paths_max_rel_diff"] < 1e-5
    chosen = result["machine"]["chosen"]
    assert chosen == {p: lowp.lowp_backend(p) for p in ("int8", "bf16")}
    assert "GOP/s" in capsys.readouterr().out
