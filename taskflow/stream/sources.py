"""Sources of :func:`taskflow.infer_zarr`: find the Zarr array feeding each model input, and
check the job against the model from metadata alone, before any task runs."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskflow.errors import DTypeError, InputError, ShapeError, TaskflowError
from taskflow.stream.preprocess import Preprocess, parse_preprocess
from taskflow.stream.stores import (
    StoreNotFoundError,
    denied,
    filesystem,
    is_url,
    missing_bucket,
    open_options,
)

#: Input bytes of one task (one output chunk's rows) past which a source's own chunking is too
#: coarse to be the batch: the largest input chunk the Dask lowering makes itself
#: (:data:`taskflow.dask.lower.MAX_CHUNK_BYTES`), since activations are often several times it.
LARGE_TASK_BYTES = 512 << 20


def location(x: Any) -> str:
    """A store location workers can open too: URLs as given, local paths made absolute.

    A plain ``file://`` URL becomes its local path: Zarr's ``LocalStore`` then creates missing
    parent folders and writes each key atomically (fsspec's local file system does neither),
    and a job resumed with the path instead of the URL keeps its identity.
    """
    if hasattr(x, "store") and not isinstance(x, (str, os.PathLike)):
        raise TaskflowError(f"{x!r} is an opened Zarr object; pass its path or URL instead, so "
                            "that workers can open it themselves")
    text = os.fspath(x)
    if text.startswith("file://") and "::" not in text:
        from fsspec.core import url_to_fs

        return url_to_fs(text)[1]
    return text if is_url(text) else os.path.abspath(os.path.expanduser(text))


@dataclass(frozen=True)
class SourceArray:
    """One input array: where it is and its metadata (what ``resume`` compares)."""

    location: str
    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    zarr_format: int
    #: fsspec options to open ``location`` with: not in the identity, nor in the repr (secrets)
    options: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    def identity(self) -> dict[str, Any]:
        return {"location": self.location, "path": self.path, "shape": list(self.shape),
                "dtype": self.dtype, "chunks": list(self.chunks), "zarr_format": self.zarr_format,
                "content": content_fingerprint(self.location, self.path, self.options)}

    def where(self) -> str:
        return f"{self.location}/{self.path}" if self.path else self.location


#: What a store's listing says about an object's content, most trustworthy first: object
#: stores' ETag/checksum change with the bytes; a file system's mtime changes with every write.
_VERSION_KEYS = ("ETag", "etag", "checksum", "md5", "crc32c", "mtime", "LastModified",
                 "last_modified", "created")


def content_fingerprint(loc: str, path: str = "",
                        options: Mapping[str, Any] | None = None) -> str:
    """A digest of the array's stored objects as its store lists them (name, size, and the
    version the store keeps: ETag, checksum or modification time).

    Data replaced at the same path, with the same shape, dtype and chunks, changes it, so a
    ``resume`` against other data is refused instead of mixing old and new results. It reads
    no chunk: one listing of the array's folder (a few seconds for a million local files; one
    request per thousand objects on S3).
    """
    import hashlib

    fs, root = filesystem(loc, options)
    folder = f"{root.rstrip('/')}/{path}" if path else root
    h = hashlib.blake2b(digest_size=16)
    try:
        fs.invalidate_cache(folder)  # object stores' listings are cached per process
        listing = fs.find(folder, detail=True)
    except (OSError, NotImplementedError):
        return "unlisted"
    for name in sorted(listing):
        info = listing[name]
        version = next((info[k] for k in _VERSION_KEYS if info.get(k) is not None), "")
        h.update(f"{name[len(folder):]}\0{info.get('size')}\0{version}\n".encode())
    return h.hexdigest()


def dtype_text(dtype: Any) -> str:
    """A dtype as text ``np.dtype`` reads back: the name of a number type (``float32``), the
    code of a string type (``<U64``; ``T`` for variable-length text, numpy's StringDType),
    whose names (``str2048``, ``StringDType128``) it does not read."""
    dt = np.dtype(dtype)
    if dt.kind == "T":
        return "T"
    return dt.str if dt.kind in "USV" else dt.name


def _source_array(loc: str, path: str, arr: Any,
                  options: Mapping[str, Any] | None = None) -> SourceArray:
    return SourceArray(loc, path, tuple(arr.shape), dtype_text(arr.dtype), tuple(arr.chunks),
                       int(arr.metadata.zarr_format), options)


def _open(loc: str, options: Mapping[str, Any] | None = None) -> Any:
    import zarr

    try:
        return zarr.open(store=loc, mode="r", **open_options(loc, options))
    except PermissionError as exc:
        raise denied("source", loc, exc) from exc
    except FileNotFoundError as exc:
        if not is_url(loc) and os.path.isfile(loc):
            raise InputError(f"source {loc!r} is a file; expected a Zarr store (a folder with "
                             "zarr.json or .zarray/.zgroup, or an fsspec URL to one)") from exc
        raise _not_found(loc, options) from exc
    except zarr.errors.NodeNotFoundError as exc:
        if is_url(loc):
            fs, path = filesystem(loc, options)
            if not fs.exists(path):
                raise _not_found(loc, options) from exc
        raise InputError(f"source {loc!r} is neither a Zarr array nor a Zarr group") from exc


def _not_found(loc: str, options: Mapping[str, Any] | None) -> StoreNotFoundError:
    bucket = missing_bucket(loc, options)
    if bucket:
        return StoreNotFoundError(f"source {loc!r}: its bucket {bucket!r} does not exist (or "
                                  "these credentials cannot see it)")
    return StoreNotFoundError(f"source {loc!r} does not exist")


def open_sources(source: Any, input_names: list[str],
                 options: Mapping[str, Any] | None = None) -> dict[str, SourceArray]:
    """Model input name -> :class:`SourceArray`, refusing unknown or missing names; every
    source is opened with the fsspec ``options``."""
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
            node = _open(location(loc), options)
            if not isinstance(node, zarr.Array):
                raise InputError(f"source for input {name!r} ({location(loc)!r}) is a group; "
                                 "give the path of an array inside it")
            out[name] = _source_array(location(loc), "", node, options)
        return out
    loc = location(source)
    node = _open(loc, options)
    if isinstance(node, zarr.Array):
        if len(input_names) != 1:
            raise InputError(f"source {loc!r} is one array but the model has inputs "
                             f"{input_names}; give a group with one array per input, or "
                             "{input name: array path}")
        return {input_names[0]: _source_array(loc, "", node, options)}
    arrays = sorted(name for name, _ in node.arrays())
    out = {}
    for name in input_names:
        try:
            arr = node[name]
        except KeyError:
            arr = None
        if isinstance(arr, zarr.Array):
            out[name] = _source_array(loc, name, arr, options)
        elif len(input_names) == 1 and len(arrays) == 1:
            out[name] = _source_array(loc, arrays[0], node[arrays[0]], options)
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


def validate_feed(model: Any, source: Any, preprocess: Any, target: str,
                  options: Mapping[str, Any] | None = None
                  ) -> tuple[dict[str, SourceArray], Preprocess | None, int]:
    """Open the sources (with the fsspec ``options``) and check them, preprocessed, against
    the model: from metadata and one zero sample, so bad input is refused before any task
    runs. Returns (sources, preprocess, rows)."""
    names = input_names(model)
    sources = open_sources(source, names, options)
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
    Returns that trace (it also sizes a chunk's memory: :mod:`taskflow.dask.memory`); for a
    pipeline, each model stage is checked and ``(model, trace)`` of the first is returned."""
    from taskflow.dask.lower import get_trace

    probe = _zeros(sources, pre)
    if is_pipeline(model):  # each model stage, on the inputs it gets from the sample
        found, models = None, model.stage_models()
        for stage, specs in model.trace(probe).items():
            m = models[stage]
            names = [v.name for v in m.get_inputs()]
            t = get_trace(m, {n: tuple(shape[1:]) for n, (shape, _) in zip(names, specs)}, {},
                          {n: np.dtype(dt) for n, (_, dt) in zip(names, specs)})
            why = t.whole_batch_message()
            if why:
                raise ShapeError(f"pipeline {model.name!r}, stage {stage!r}: {why}. "
                                 f"infer_zarr runs each chunk of {batch} rows alone, which "
                                 "would change those results: use Pipeline.predict or run")
            found = found or (m, t)
        return found
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
    if is_pipeline(model):  # functions declare nothing: run one zero sample through it all
        wanted = list(outputs) if outputs else list(model.output_names)
        try:
            results = model.run(wanted, _zeros(sources, pre, rows=1))
        except TaskflowError:
            raise
        except Exception as exc:
            raise InputError(f"pipeline {model.name!r} failed on one zero sample shaped like "
                             f"the source: {type(exc).__name__}: {exc}") from exc
        return {n: _row_spec(n, y) for n, y in zip(wanted, results)}
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
            specs[n] = _row_spec(n, y)
    return {n: specs[n] for n in wanted}


def _row_spec(name: str, y: Any) -> tuple[tuple[int, ...], str]:
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != 1:
        raise ShapeError(f"output {name!r} has shape {y.shape} for a batch of 1; "
                         "infer_zarr needs outputs with the batch on axis 0")
    if y.dtype.kind == "O":
        raise ShapeError(f"output {name!r} has dtype object; infer_zarr writes numeric or "
                         "fixed-width string arrays")
    return tuple(y.shape[1:]), y.dtype.name


def is_pipeline(model: Any) -> bool:
    """Whether ``model`` is a :class:`taskflow.Pipeline` (the stream takes both)."""
    from taskflow.pipeline import Pipeline

    return isinstance(model, Pipeline)


def input_names(model: Any) -> list[str]:
    """The inputs a source feeds: a model's graph inputs, or a pipeline's."""
    if is_pipeline(model):
        return list(model.input_names)
    return [v.name for v in model.graph.inputs]


def model_name(model: Any) -> str:
    """A model's graph name, or a pipeline's name."""
    return model.name if is_pipeline(model) else model.graph.name


def zeros_feed(sources: Mapping[str, SourceArray], pre: Preprocess | None) -> dict[str, Any]:
    """One preprocessed row of zeros shaped like the sources: a sample to learn outputs from."""
    return _zeros(sources, pre)
