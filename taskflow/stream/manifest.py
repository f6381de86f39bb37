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

import datetime
from typing import Any

import numpy as np

from taskflow.errors import TaskflowError
from taskflow.ir.fingerprint import model_hash as model_hash  # a job's model identity
from taskflow.stream.stores import (
    Options,
    StoreNotFoundError,
    denied,
    filesystem,
    missing_bucket,
    open_options,
)

MANIFEST = ".taskflow"
DONE = f"{MANIFEST}/done"
FORMAT = 1


class TargetExistsError(TaskflowError, FileExistsError):
    """The target store exists and neither resume nor overwrite was asked for."""


class ResumeError(TaskflowError, ValueError):
    """The target cannot be resumed: no manifest, or it was written by a different job."""


# --- the target ----------------------------------------------------------------------------------
def target_exists(location: str, options: Options | None = None) -> bool:
    """Whether the target exists; refuses one whose store denies these storage ``options``
    or whose bucket does not exist (before any work: the job has not started)."""
    fs, path = filesystem(location, options)
    try:
        fs.invalidate_cache(path)  # object stores' listings are cached per process
        if fs.exists(path):
            return True
        bucket = missing_bucket(location, options)
    except PermissionError as exc:
        raise denied("target", location, exc) from exc
    if bucket:
        raise StoreNotFoundError(f"target {location!r}: its bucket {bucket!r} does not exist (or "
                                 "these credentials cannot see it); create the bucket first: "
                                 "taskflow creates an output's folders and prefixes, not buckets")
    return False


def check_replaceable(location: str, options: Options | None = None) -> None:
    """Refuse to replace ``location`` unless it is a taskflow output (it carries the
    manifest): ``overwrite`` must never delete a user's folder, a foreign Zarr group or a file.
    """
    fs, path = filesystem(location, options)
    if fs.isfile(path):
        raise TargetExistsError(f"target {location!r} is a file, not a Zarr group: overwrite "
                                "only replaces a taskflow output; choose another output path")
    if not fs.exists(f"{path.rstrip('/')}/{MANIFEST}/zarr.json"):
        raise TargetExistsError(
            f"target {location!r} exists but was not written by taskflow (it has no "
            f"{MANIFEST}/ manifest): overwrite only replaces taskflow's own outputs, so nothing "
            "was deleted; choose another output path, or remove it yourself")


def create_target(location: str, outputs: dict[str, tuple[tuple[int, ...], str]], rows: int,
                  batch: int, identity: dict[str, Any], *, overwrite: bool,
                  options: Options | None = None) -> None:
    """Create the group, one array per output (``name -> (per-sample shape, dtype)``) and the
    manifest, opened with the storage ``options``; missing parent folders are created. Float
    outputs are filled with NaN, so rows of chunks not (yet) written read NaN."""
    try:
        _create(location, outputs, rows, batch, identity, overwrite, options)
    except PermissionError as exc:
        raise denied("cannot create the output", location, exc) from exc
    except OSError as exc:
        raise TaskflowError(f"cannot create the output {location!r}: {type(exc).__name__}: "
                            f"{exc}") from exc


def _create(location: str, outputs: dict[str, tuple[tuple[int, ...], str]], rows: int,
            batch: int, identity: dict[str, Any], overwrite: bool,
            options: Options | None = None) -> None:
    import zarr

    from taskflow._version import __version__

    n_chunks = -(-rows // batch)
    group = zarr.open_group(store=location, mode="w" if overwrite else "w-", zarr_format=3,
                            attributes={"taskflow": {"version": __version__, **identity}},
                            **open_options(location, options))
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


def read_manifest(location: str, options: Options | None = None) -> dict[str, Any]:
    import zarr

    try:
        return dict(zarr.open_group(store=location, path=MANIFEST, mode="r",
                                    **open_options(location, options)).attrs)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
        raise ResumeError(f"{location!r} has no taskflow manifest ({MANIFEST}/): it was not "
                          "written by infer_zarr, so there is nothing to resume; pass "
                          "overwrite=True (--overwrite) to replace it") from exc


def done_chunks(location: str, n_chunks: int, options: Options | None = None) -> np.ndarray:
    """Boolean per chunk: its output was written (and the marker after it).

    Lists the marker keys (``.taskflow/done/c/<k>``: Zarr v3's default chunk key encoding of
    the array this module creates) instead of reading the array: reading would try every key,
    present or not (16 s for 100,000 chunks here; a listing takes milliseconds).
    """
    fs, path = filesystem(location, options)
    folder = f"{path.rstrip('/')}/{DONE}/c"
    done = np.zeros(n_chunks, bool)
    fs.invalidate_cache(folder)  # workers wrote the markers: never trust a cached listing
    if fs.exists(folder):
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
        ks = [int(n) for n in names if n.isdigit() and int(n) < n_chunks]
        done[ks] = True
    return done


def record(location: str, *, failed: dict[int, str], options: Options | None = None) -> None:
    """Replace the quarantined chunks (index -> error) in the manifest, atomically."""
    import zarr

    group = zarr.open_group(store=location, path=MANIFEST, mode="r+",
                            **open_options(location, options))
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
