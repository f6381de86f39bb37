"""Sources of :func:`taskflow.infer_zarr`: find the Zarr array feeding each model input, and
check the job against the model from metadata alone, before any task runs."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from taskflow.errors import DTypeError, InputError, ShapeError, TaskflowError
from taskflow.stream.preprocess import Preprocess, parse_preprocess

#: Input bytes of one task (one output chunk's rows) past which a source's own chunking is too
#: coarse to be the batch: the largest input chunk the Dask lowering makes itself
#: (:data:`taskflow.dask.lower.MAX_CHUNK_BYTES`), since activations are often several times it.
LARGE_TASK_BYTES = 512 << 20


def location(x: Any) -> str:
    """A store location workers can open too: URLs as given, local paths made absolute."""
    if hasattr(x, "store") and not isinstance(x, (str, os.PathLike)):
        raise TaskflowError(f"{x!r} is an opened Zarr object; pass its path or URL instead, so "
                            "that workers can open it themselves")
    text = os.fspath(x)
    return text if "://" in text else os.path.abspath(os.path.expanduser(text))


@dataclass(frozen=True)
class SourceArray:
    """One input array: where it is and its metadata (what ``resume`` compares)."""

    location: str
    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    zarr_format: int

    def identity(self) -> dict[str, Any]:
        return {"location": self.location, "path": self.path, "shape": list(self.shape),
                "dtype": self.dtype, "chunks": list(self.chunks), "zarr_format": self.zarr_format,
                "content": content_fingerprint(self.location, self.path)}

    def where(self) -> str:
        return f"{self.location}/{self.path}" if self.path else self.location


#: What a store's listing says about an object's content, most trustworthy first: object
#: stores' ETag/checksum change with the bytes; a file system's mtime changes with every write.
_VERSION_KEYS = ("ETag", "etag", "checksum", "md5", "crc32c", "mtime", "LastModified",
                 "last_modified", "created")


def content_fingerprint(loc: str, path: str = "") -> str:
    """A digest of the array's stored objects as its store lists them (name, size, and the
    version the store keeps: ETag, checksum or modification time).

    Data replaced at the same path, with the same shape, dtype and chunks, changes it, so a
    ``resume`` against other data is refused instead of mixing old and new results. It reads
    no chunk: one listing of the array's folder (a few seconds for a million local files; one
    request per thousand objects on S3).
    """
    import hashlib

    from fsspec.core import url_to_fs

    fs, root = url_to_fs(loc)
    folder = f"{root.rstrip('/')}/{path}" if path else root
    h = hashlib.blake2b(digest_size=16)
    try:
        listing = fs.find(folder, detail=True)
    except (OSError, NotImplementedError):
        return "unlisted"
    for name in sorted(listing):
        info = listing[name]
        version = next((info[k] for k in _VERSION_KEYS if info.get(k) is not None), "")
        h.update(f"{name[len(folder):]}\0{info.get('size')}\0{version}\n".encode())
    return h.hexdigest()


def _source_array(loc: str, path: str, arr: Any) -> SourceArray:
    return SourceArray(loc, path, tuple(arr.shape), np.dtype(arr.dtype).name, tuple(arr.chunks),
                       int(arr.metadata.zarr_format))


def _open(loc: str) -> Any:
    import zarr

    try:
        return zarr.open(store=loc, mode="r")
    except FileNotFoundError as exc:
        if "://" not in loc and os.path.isfile(loc):
            raise InputError(f"source {loc!r} is a file; expected a Zarr store (a folder with "
                             "zarr.json or .zarray/.zgroup, or an fsspec URL to one)") from exc
        raise FileNotFoundError(f"source {loc!r} does not exist") from exc
    except zarr.errors.NodeNotFoundError as exc:
        raise InputError(f"source {loc!r} is neither a Zarr array nor a Zarr group") from exc


def open_sources(source: Any, input_names: list[str]) -> dict[str, SourceArray]:
    """Model input name -> :class:`SourceArray`, refusing unknown or missing names."""
    import zarr

    if isinstance(source, Mapping):
        unknown = [k for k in source if k not in input_names]
        missing = [k for k in input_names if k not in source]
        if unknown or missing:
            parts = ([f"unknown input name(s) {unknown}"] if unknown else []) + \
                    ([f"no source for input(s) {missing}"] if missing else [])
            raise InputError("; ".join(parts) + f"; the model's inputs are {input_names}")
        out = {}
        for name, loc in source.items():
            node = _open(location(loc))
            if not isinstance(node, zarr.Array):
                raise InputError(f"source for input {name!r} ({location(loc)!r}) is a group; "
                                 "give the path of an array inside it")
            out[name] = _source_array(location(loc), "", node)
        return out
    loc = location(source)
    node = _open(loc)
    if isinstance(node, zarr.Array):
        if len(input_names) != 1:
            raise InputError(f"source {loc!r} is one array but the model has inputs "
                             f"{input_names}; give a group with one array per input, or "
                             "{input name: array path}")
        return {input_names[0]: _source_array(loc, "", node)}
    arrays = sorted(name for name, _ in node.arrays())
    out = {}
    for name in input_names:
        try:
            arr = node[name]
        except KeyError:
            arr = None
        if isinstance(arr, zarr.Array):
            out[name] = _source_array(loc, name, arr)
        elif len(input_names) == 1 and len(arrays) == 1:
            out[name] = _source_array(loc, arrays[0], node[arrays[0]])
        else:
            raise InputError(f"source group {loc!r} has no array named {name!r} (the model's "
                             f"inputs are {input_names}); its arrays are {arrays}. Name the "
                             f"array in the path ({loc}/ARRAY) or map inputs: "
                             f"{{{name!r}: '{loc}/ARRAY'}}")
    return out


class _Meta:
    """Shape and dtype only: what :meth:`Model.check_feed` reads, without any data."""

    def __init__(self, shape: tuple[int, ...], dtype: Any):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)


def _zeros(sources: Mapping[str, SourceArray], pre: Preprocess | None,
           rows: int = 1) -> dict[str, np.ndarray]:
    feed = {n: np.zeros((rows, *s.shape[1:]), s.dtype) for n, s in sources.items()}
    if pre is None:
        return feed
    try:
        return pre.apply(feed)
    except Exception as exc:
        raise InputError(f"preprocessing failed on a sample of zeros shaped like the source: "
                         f"{type(exc).__name__}: {exc}") from exc


def validate_feed(model: Any, source: Any, preprocess: Any, target: str
                  ) -> tuple[dict[str, SourceArray], Preprocess | None, int]:
    """Open the sources and check them, preprocessed, against the model: from metadata and one
    zero sample, so bad input is refused before any task runs. Returns (sources, preprocess,
    rows)."""
    names = [v.name for v in model.graph.inputs]
    sources = open_sources(source, names)
    lengths = {n: s.shape[0] if s.shape else None for n, s in sources.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise ShapeError(f"source arrays must share their first (batch) axis; lengths {lengths}")
    for s in sources.values():
        here = s.location.rstrip("/")
        if target == here or here.startswith(target + "/") or target.startswith(here + "/"):
            raise TaskflowError(f"target {target!r} overlaps source {s.where()!r}; write the "
                                "outputs somewhere else")
    pre = parse_preprocess(preprocess, names)
    if pre is not None:
        pre.check({n: s.shape for n, s in sources.items()})
    probe = _zeros(sources, pre)
    rows = next(iter(lengths.values()))
    metas = {n: _Meta((rows, *np.shape(x)[1:]), x.dtype) for n, x in probe.items()}
    try:
        model.check_feed(metas)
    except DTypeError as exc:
        hint = "" if pre is not None else (
            "; or declare preprocessing, e.g. preprocess={'scale': 'uint8'} "
            "(--preprocess '{\"scale\": \"uint8\"}')")
        raise DTypeError(f"source {_where(sources)}: {exc}{hint}") from exc
    except InputError as exc:
        raise InputError(f"source {_where(sources)}: {exc}") from exc
    return sources, pre, rows


def _where(sources: Mapping[str, SourceArray]) -> str:
    return ", ".join(f"{s.where()!r} (input {n!r}, shape {s.shape}, {s.dtype})"
                     for n, s in sources.items())


def check_rows_independent(model: Any, sources: Mapping[str, SourceArray],
                           pre: Preprocess | None, batch: int) -> Any:
    """Refuse a model whose nodes mix the rows of a batch: streaming runs each chunk alone, so
    its results would silently depend on the chunking. The batch analysis of the Dask lowering
    (:mod:`taskflow.dask.trace`) decides, on the preprocessed inputs' shapes and dtypes.
    Returns that trace (it also sizes a chunk's memory: :mod:`taskflow.dask.memory`)."""
    from taskflow.dask.lower import get_trace

    probe = _zeros(sources, pre)
    trace = get_trace(model, {n: tuple(x.shape[1:]) for n, x in probe.items()}, {},
                      {n: np.dtype(x.dtype) for n, x in probe.items()})
    why = trace.whole_batch_message()
    if why:
        raise ShapeError(f"{why}. infer_zarr runs each chunk of {batch} rows alone, which "
                         f"would change those results: use Model.predict (it runs such nodes "
                         f"once on the whole batch) or Model.run")
    return trace


def chunking_warnings(sources: Mapping[str, SourceArray], batch_size: int | None) -> list[str]:
    """Warnings about sources chunked so that the job's tasks go badly, one per source.

    Without ``batch_size`` a task covers the source's chunk along axis 0: one whose first chunk
    holds every row while another axis is chunked (``(N, 1, 28, 28)`` chunked
    ``(N, 1, 14, 28)``), or whose rows of one chunk pass :data:`LARGE_TASK_BYTES`, makes a task
    the size of the dataset. With ``batch_size``, a source chunked along a non-batch axis makes
    every task read whole rows from several chunks.

    Examples
    --------
    >>> src = SourceArray("/data/x.zarr", "", (64, 1, 28, 28), "float32", (64, 1, 14, 28), 3)
    >>> print(chunking_warnings({"x": src}, None)[0])             # doctest: +ELLIPSIS
    source '/data/x.zarr' has shape (64, 1, 28, 28) and chunks (64, 1, 14, 28): ...
    """
    out = []
    for s in sources.values():
        if not s.shape or not s.chunks:
            continue
        split = [i for i in range(1, len(s.shape)) if s.chunks[i] < s.shape[i]]
        row_bytes = np.dtype(s.dtype).itemsize * math.prod(s.shape[1:])
        head = f"source {s.where()!r} has shape {s.shape} and chunks {s.chunks}"
        axes = f"axis {split[0]}" if len(split) == 1 else f"axes {split}"
        if batch_size is None:
            rows = min(s.chunks[0], s.shape[0])
            whole = rows >= s.shape[0] > 1 and bool(split)
            if whole or rows * row_bytes > LARGE_TASK_BYTES:
                why = (f"its first chunk holds all {s.shape[0]} rows while {axes} "
                       "is chunked" if whole else f"its chunks hold {rows} rows each")
                out.append(f"{head}: {why}, so without batch_size each task reads and runs "
                           f"{rows} rows at once ({_bytes(rows * row_bytes)} of input per task"
                           f"{', one task for the whole job' if rows >= s.shape[0] else ''}); "
                           "pass batch_size (--batch-size), or rechunk the source along axis 0")
                continue
        if split:
            reads = math.prod(-(-s.shape[i] // s.chunks[i]) for i in split)
            rows = batch_size or s.chunks[0]
            out.append(f"{head}: it is chunked along {axes} as well as the batch, so every "
                       f"task reads its rows as {reads} pieces side by side (more, smaller "
                       f"reads); rechunk it along axis 0 only, e.g. chunks ({rows}, "
                       f"{', '.join(map(str, s.shape[1:]))})")
    return out


def _bytes(n: int) -> str:
    from dask.utils import format_bytes

    return format_bytes(n)


def output_specs(model: Any, sources: Mapping[str, SourceArray], pre: Preprocess | None,
                 outputs: list[str] | None) -> dict[str, tuple[tuple[int, ...], str]]:
    """Output name -> (per-sample shape, dtype): from the graph where fully declared with the
    inputs' batch dimension, else by running the model on one zero sample."""
    values = {v.name: v for v in model.graph.outputs}
    wanted = list(outputs) if outputs else list(values)
    bad = [n for n in wanted if n not in values]
    if bad:
        raise InputError(f"unknown output name(s) {bad}; the model's outputs are {list(values)}")
    batch_dims = {v.shape[0] for v in model.graph.inputs if v.shape and isinstance(v.shape[0],
                                                                                    str)}
    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    for n in wanted:
        v = values[n]
        if v.dtype is not None and v.shape and v.shape[0] in batch_dims and \
                all(isinstance(d, int) for d in v.shape[1:]):
            specs[n] = (tuple(v.shape[1:]), np.dtype(v.dtype).name)
    missing = [n for n in wanted if n not in specs]
    if missing:
        results = model.run(missing, _zeros(sources, pre, rows=1))
        for n, y in zip(missing, results):
            if y.ndim == 0 or y.shape[0] != 1:
                raise ShapeError(f"output {n!r} has shape {y.shape} for a batch of 1; "
                                 "infer_zarr needs outputs with the batch on axis 0")
            specs[n] = (tuple(y.shape[1:]), y.dtype.name)
    return {n: specs[n] for n in wanted}
