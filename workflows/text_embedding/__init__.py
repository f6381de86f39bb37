"""Text embedding: raw text in Zarr -> tokenizer -> all-MiniLM-L6-v2 -> mean pooling -> L2
normalisation -> embeddings in Zarr, and a nearest-neighbour query over them.

The tokenizer is MiniLM's own ``tokenizer.json`` run by the ``tokenizers`` package, and the
encoder is all-MiniLM-L6-v2 with its real weights, exported to ONNX once by
``benchmarks.models`` (PyTorch, ``pip install -e '.[export]'``) and cached. Pooling and
normalisation are the ready steps ``mean_pool`` and ``l2_normalize``: sentence-transformers'
``encode`` to ~1e-6. Every row is padded to ``max_length`` tokens, so chunks agree in shape.

Examples
--------
>>> from workflows import text_embedding as te                          # doctest: +SKIP
>>> te.write_texts(["A man is eating food.", "It is raining."], "texts.zarr")  # doctest: +SKIP
>>> te.embed("texts.zarr", "embeddings.zarr")                           # doctest: +SKIP
>>> te.query("Someone has lunch.", "embeddings.zarr", "texts.zarr", k=1)  # doctest: +SKIP
[(0.62..., 0, 'A man is eating food.')]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from workflows._common import cache_dir, cached, stream
from workflows.text_embedding.steps import MAX_LENGTH, tokenizer, tokenizer_file

HERE = Path(__file__).resolve().parent
PIPELINE_FILE = HERE / "pipeline.yaml"
#: The ``benchmarks.models`` export: TorchScript exporter (opset 17; no onnxscript needed),
#: SDPA attention with a boolean mask as transformers runs it, last hidden state out.
EXPORT = "minilm-torchscript-sdpa"
MODEL_FILE = "all-MiniLM-L6-v2.onnx"
#: Sentences per chunk of the text column ``make-data`` writes: a task of 64 rows x 128 tokens
#: is ~0.2 s of encoder on one core, Dask's per-task cost is then a few per cent.
CHUNK = 64
#: A small corpus in five topics, two sentences each; ``query`` finds within topics.
CORPUS = (
    "A man is eating a plate of pasta.", "Someone is having spaghetti for dinner.",
    "It will rain heavily this afternoon.", "The forecast says storms are coming later today.",
    "The striker scored twice in the final.", "Our football team won the championship match.",
    "Appending items to a Python list makes it longer.",
    "The list in my Python program keeps growing.",
    "A cat is sleeping on the sofa.", "The kitten naps on the couch.",
)


def model_file(cache: str | os.PathLike | None = None, layers: int | None = None) -> Path:
    """all-MiniLM-L6-v2 as ONNX in the cache folder (``~/.cache/taskflow`` or
    ``$TASKFLOW_CACHE_DIR``), exported on first use (~10 s; needs torch); ``layers`` keeps the
    first few encoder layers (a smaller model for quick runs)."""
    name = MODEL_FILE if layers is None else MODEL_FILE.replace(".onnx", f"-{layers}l.onnx")

    def export(tmp: Path) -> None:
        try:
            from benchmarks.models import export as export_model
        except ImportError as exc:
            raise ImportError("exporting MiniLM needs the repository root on sys.path "
                              "(run from it) and torch: pip install -e '.[export]'") from exc
        size = {} if layers is None else {"layers": layers}
        export_model(EXPORT, tmp, **size)

    return cached(cache_dir(cache) / name, export)


def build_pipeline(model: Any = None, *, max_length: int = MAX_LENGTH,
                   cache: str | os.PathLike | None = None) -> Any:
    """The pipeline ``text -> embedding`` (``model``: a Model or ONNX path; default the
    cached export).

    Examples
    --------
    >>> pipe = build_pipeline()                                           # doctest: +SKIP
    >>> pipe(({"text": np.array(["Hello world."])}))["embedding"].shape   # doctest: +SKIP
    (1, 384)
    """
    import taskflow as tf
    from taskflow.pipeline.steps import L2Normalize, MeanPool

    tok = tokenizer(max_length)
    encoder = model if model is not None else model_file(cache)
    return tf.Pipeline([
        tf.Stage("tokenize", tok, inputs=["text"], outputs=list(tok.output_names)),
        tf.Stage("encoder", encoder),
        tf.Stage("pool", MeanPool(), inputs=["encoder", "attention_mask"]),
        tf.Stage("embedding", L2Normalize()),
    ], name="text_embedding")


def write_texts(texts: Any, path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Write ``texts`` as the string array ``text`` of a new Zarr group at ``path``."""
    import zarr

    values = np.asarray([str(t) for t in texts], dtype=np.dtypes.StringDType())
    group = zarr.open_group(str(path), mode="w")
    group.create_array("text", data=values, chunks=(min(chunk, max(len(values), 1)),))
    return str(path)


def read_parquet_column(path: str | os.PathLike, column: str) -> list[str]:
    """One string column of a Parquet file (needs ``pyarrow``)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    table = pq.read_table(str(path), columns=[column])
    return [str(t) for t in table.column(column).to_pylist()]


def embed(source: str | os.PathLike, target: str | os.PathLike, *, pipe: Any = None,
          **options: Any) -> Any:
    """Stream the ``text`` column of ``source`` into ``target``/``embedding`` (N, 384).

    ``options`` go to :func:`workflows._common.stream` (``client``, ``workers``, ``engine``:
    ``"stream"`` for ``infer_zarr`` or ``"dask"`` for ``Pipeline.predict``, ``batch_size``,
    ``overwrite``, ``quiet``). Returns the job summary.
    """
    return stream(pipe if pipe is not None else build_pipeline(), source, target, **options)


def nearest(query_embeddings: np.ndarray, embeddings: Any, k: int = 5,
            block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-``k`` of each query row over ``embeddings`` (a Zarr array or numpy; rows
    read ``block`` at a time, so memory stays flat): ``(scores, indices)``, best first."""
    q = np.atleast_2d(np.asarray(query_embeddings, np.float32))
    n = embeddings.shape[0]
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, block):
        sims = q @ np.asarray(embeddings[start:start + block], np.float32).T
        idx = np.arange(start, start + sims.shape[1])[None].repeat(len(q), 0)
        s, i = np.concatenate([best_s, sims], 1), np.concatenate([best_i, idx], 1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return best_s, best_i


def query(text: str, embeddings: str | os.PathLike, texts: str | os.PathLike, k: int = 5,
          pipe: Any = None) -> list[tuple[float, int, str]]:
    """The ``k`` stored texts nearest to ``text``: ``(cosine, row, text)``, best first. The
    query is embedded in this process with the same pipeline."""
    import zarr

    pipe = pipe if pipe is not None else build_pipeline()
    q = pipe({"text": np.array([text], dtype=np.dtypes.StringDType())})["embedding"]
    stored = zarr.open_group(str(embeddings), mode="r")["embedding"]
    scores, rows = nearest(q, stored, k)
    column = zarr.open_group(str(texts), mode="r")["text"]
    return [(float(s), int(r), str(column[int(r)])) for s, r in zip(scores[0], rows[0])]


__all__ = ["CORPUS", "EXPORT", "MAX_LENGTH", "PIPELINE_FILE", "build_pipeline", "embed",
           "model_file", "nearest", "query", "read_parquet_column", "tokenizer_file",
           "write_texts"]
