"""The target of :func:`taskflow.infer_zarr` and its manifest: what is done, and for what job.

Layout of a target (a Zarr v3 group)::

    logits.zarr/
      zarr.json                 attributes["taskflow"]: version, model hash, inputs, preprocessing
      <output>/                 one array per model output, chunked like the job's tasks
      .taskflow/                the manifest: a group whose attributes hold the job's identity
        zarr.json                 and the quarantined chunks (written by the client)
        done/                   uint8 array, one element per chunk and one chunk per element:
          c/<k>                   written by the worker right after chunk k's output landed
                                  (a block of consecutive chunks: one Zarr call, key per chunk)

Why per-chunk markers, stored as a Zarr array: a single JSON list rewritten after every chunk
costs O(chunks) per update (O(n^2) for a job) and funnels every completion through one writer.
A marker is one small key instead, written by the worker that wrote the data, so a chunk counts
as done only after its write succeeded, even when the client dies in between. Zarr's stores
write each key atomically (``LocalStore`` writes a temporary file and ``os.replace``-s it; object
stores PUT whole objects), which makes each marker and the identity record atomic on local
disks and fsspec URLs alike, with no code here that knows which. A reader sees ``.taskflow`` as a
sub-group of the target, never as a foreign file.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import weakref
from typing import Any

import numpy as np

from taskflow.errors import TaskflowError

MANIFEST = ".taskflow"
DONE = f"{MANIFEST}/done"
FORMAT = 1


class TargetExistsError(TaskflowError, FileExistsError):
    """The target store exists and neither resume nor overwrite was asked for."""


class ResumeError(TaskflowError, ValueError):
    """The target cannot be resumed: no manifest, or it was written by a different job."""


# --- model identity ------------------------------------------------------------------------------
_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, np.ndarray):
        h.update(f"nd{obj.dtype.str}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for o in obj:
            _feed(h, o)
        h.update(b"]")
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            _feed(h, k)
            _feed(h, obj[k])
        h.update(b"}")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(type(obj).__name__.encode())
        _feed(h, [getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "notes"])
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def model_hash(model: Any) -> str:
    """SHA-256 of the graph the model executes (nodes, attributes, interface, weights) and its
    device: two models with the same hash produce the same bytes. Cached per model object."""
    if model not in _HASHES:
        h = hashlib.sha256()
        _feed(h, [model.graph, str(getattr(model, "device", ""))])
        _HASHES[model] = h.hexdigest()
    return _HASHES[model]


# --- the target ----------------------------------------------------------------------------------
def target_exists(location: str) -> bool:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(location)
    return fs.exists(path)


def check_replaceable(location: str) -> None:
    """Refuse to replace ``location`` unless it is a taskflow output (it carries the
    manifest): ``overwrite`` must never delete a user's folder, a foreign Zarr group or a file.
    """
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(location)
    if fs.isfile(path):
        raise TargetExistsError(f"target {location!r} is a file, not a Zarr group: overwrite "
                                "only replaces a taskflow output; choose another output path")
    if not fs.exists(f"{path.rstrip('/')}/{MANIFEST}/zarr.json"):
        raise TargetExistsError(
            f"target {location!r} exists but was not written by taskflow (it has no "
            f"{MANIFEST}/ manifest): overwrite only replaces taskflow's own outputs, so nothing "
            "was deleted; choose another output path, or remove it yourself")


def create_target(location: str, outputs: dict[str, tuple[tuple[int, ...], str]], rows: int,
                  batch: int, identity: dict[str, Any], *, overwrite: bool) -> None:
    """Create the group, one array per output (``name -> (per-sample shape, dtype)``) and the
    manifest. Float outputs are filled with NaN, so rows of chunks not (yet) written read NaN."""
    try:
        _create(location, outputs, rows, batch, identity, overwrite)
    except OSError as exc:
        raise TaskflowError(f"cannot create the output {location!r}: {type(exc).__name__}: "
                            f"{exc}") from exc


def _create(location: str, outputs: dict[str, tuple[tuple[int, ...], str]], rows: int,
            batch: int, identity: dict[str, Any], overwrite: bool) -> None:
    import zarr

    from taskflow._version import __version__

    n_chunks = -(-rows // batch)
    group = zarr.open_group(store=location, mode="w" if overwrite else "w-", zarr_format=3,
                            attributes={"taskflow": {"version": __version__, **identity}})
    for name, (shape, dtype) in outputs.items():
        dt = np.dtype(dtype)
        group.create_array(name, shape=(rows, *shape), chunks=(batch, *shape), dtype=dt,
                           fill_value=np.nan if dt.kind in "fc" else 0)
    manifest = group.create_group(MANIFEST, attributes={
        "format": FORMAT, "identity": identity, "rows": rows, "chunks": n_chunks,
        "failed": {}, "created": _now(), "updated": _now()})
    manifest.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="u1", fill_value=0,
                          compressors=None)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_manifest(location: str) -> dict[str, Any]:
    import zarr

    try:
        return dict(zarr.open_group(store=location, path=MANIFEST, mode="r").attrs)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
        raise ResumeError(f"{location!r} has no taskflow manifest ({MANIFEST}/): it was not "
                          "written by infer_zarr, so there is nothing to resume; pass "
                          "overwrite=True (--overwrite) to replace it") from exc


def done_chunks(location: str, n_chunks: int) -> np.ndarray:
    """Boolean per chunk: its output was written (and the marker after it).

    Lists the marker keys (``.taskflow/done/c/<k>``: Zarr v3's default chunk key encoding of
    the array this module creates) instead of reading the array: reading would try every key,
    present or not (16 s for 100,000 chunks here; a listing takes milliseconds).
    """
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(location)
    folder = f"{path.rstrip('/')}/{DONE}/c"
    done = np.zeros(n_chunks, bool)
    if fs.exists(folder):
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
        ks = [int(n) for n in names if n.isdigit() and int(n) < n_chunks]
        done[ks] = True
    return done


def record(location: str, *, failed: dict[int, str]) -> None:
    """Replace the quarantined chunks (index -> error) in the manifest, atomically."""
    import zarr

    group = zarr.open_group(store=location, path=MANIFEST, mode="r+")
    group.attrs.update({"failed": {str(k): v for k, v in sorted(failed.items())},
                        "updated": _now()})


def check_identity(old: dict[str, Any], new: dict[str, Any], location: str) -> None:
    """Raise :class:`ResumeError` naming every difference between two job identities."""
    diffs: list[str] = []
    _diff(old, new, [], diffs)
    if diffs:
        raise ResumeError(
            f"cannot resume {location!r}: this job differs from the one that wrote it: "
            + "; ".join(diffs) + ". Pass overwrite=True (--overwrite) to start over, or write "
            "to another target")


def _diff(old: Any, new: Any, path: list[str], out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            _diff(old.get(k), new.get(k), [*path, str(k)], out)
        return
    if _plain(old) != _plain(new):
        where = ".".join(path) or "identity"
        out.append(f"{where}: {_show(where, old)} in the manifest, {_show(where, new)} now")


def _plain(x: Any) -> Any:
    """JSON round trip, so tuples and lists compare equal (the manifest stores lists)."""
    return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x


def _show(where: str, v: Any) -> str:
    if where.endswith("sha256") and isinstance(v, str):
        return f"sha256 {v[:12]}"
    return repr(v)
