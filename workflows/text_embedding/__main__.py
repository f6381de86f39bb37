"""``python -m workflows.text_embedding {make-data,export-model,embed,query,demo}``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from workflows import text_embedding as te
from workflows._common import job_args, job_options


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workflows.text_embedding",
                                 description=te.__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-data", help="write texts to a Zarr string column 'text'")
    p.add_argument("-o", "--output", required=True, help="Zarr group to create")
    p.add_argument("--parquet", help="read the texts from this Parquet file (needs pyarrow)")
    p.add_argument("--column", default="text", help="its text column (default 'text')")
    p.add_argument("--text-file", help="or one text per line of this file "
                                       "(default: a small built-in corpus)")
    p.add_argument("--chunk", type=int, default=te.CHUNK)
    p = sub.add_parser("export-model", help="export all-MiniLM-L6-v2 to ONNX in the cache")
    p.add_argument("--cache", help="folder (default $TASKFLOW_CACHE_DIR or ~/.cache/taskflow)")
    p = sub.add_parser("embed", help="stream the texts into L2-normalised embeddings")
    p.add_argument("-i", "--input", required=True, help="Zarr group with a 'text' array")
    p.add_argument("-o", "--output", required=True, help="Zarr group to write ('embedding')")
    p.add_argument("--max-length", type=int, default=te.MAX_LENGTH, help="tokens per row")
    p.add_argument("--cache", help="where the exported model is")
    p.add_argument("--engine", choices=("stream", "dask"), default="stream",
                   help="infer_zarr (resumable; default) or Pipeline.predict (one graph)")
    job_args(p)
    p = sub.add_parser("query", help="the stored texts nearest to a sentence")
    p.add_argument("text")
    p.add_argument("--embeddings", required=True, help="the output of embed")
    p.add_argument("--texts", required=True, help="the input of embed")
    p.add_argument("-k", type=int, default=3)
    p.add_argument("--cache", help="where the exported model is")
    p = sub.add_parser("demo", help="make-data, embed and a query, in a temporary folder")
    p.add_argument("--query", default="Where can I get something to eat?")
    p.add_argument("--cache", help="where the exported model is")
    p.add_argument("--engine", choices=("stream", "dask"), default="stream")
    job_args(p)
    args = ap.parse_args(argv)

    if args.command == "make-data":
        if args.parquet:
            texts = te.read_parquet_column(args.parquet, args.column)
        elif args.text_file:
            texts = [t for t in Path(args.text_file).read_text().splitlines() if t.strip()]
        else:
            texts = list(te.CORPUS)
        te.write_texts(texts, args.output, chunk=args.chunk)
        print(f"wrote {len(texts)} texts to {args.output} ('text')")
    elif args.command == "export-model":
        print(te.model_file(args.cache))
    elif args.command == "embed":
        pipe = te.build_pipeline(max_length=args.max_length, cache=args.cache)
        print(te.embed(args.input, args.output, pipe=pipe, engine=args.engine,
                       **job_options(args)))
    elif args.command == "query":
        _query(args.text, args.embeddings, args.texts, args.k, te.build_pipeline(
            cache=args.cache))
    else:
        pipe = te.build_pipeline(cache=args.cache)
        with tempfile.TemporaryDirectory(prefix="taskflow-text-") as tmp:
            src = te.write_texts(te.CORPUS, Path(tmp) / "texts.zarr", chunk=4)
            dst = str(Path(tmp) / "embeddings.zarr")
            print(te.embed(src, dst, pipe=pipe, engine=args.engine, **job_options(args)))
            _query(args.query, dst, src, 3, pipe)
    return 0


def _query(text: str, embeddings: str, texts: str, k: int, pipe) -> None:
    print(f"nearest to {text!r}:")
    for score, row, found in te.query(text, embeddings, texts, k, pipe=pipe):
        print(f"  {score:.3f}  #{row}  {found}")


if __name__ == "__main__":
    raise SystemExit(main())
