"""What the workflows share: the cache folder for exported models, atomic file writes, and the
streamed job with its summary line."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Exported models live here unless ``TASKFLOW_CACHE_DIR`` names another folder; the
#: pipeline files name the default (``~/.cache/taskflow``) since YAML cannot read the variable.
DEFAULT_CACHE = Path("~/.cache/taskflow")


def cache_dir(folder: str | os.PathLike | None = None) -> Path:
    """``folder``, else ``$TASKFLOW_CACHE_DIR``, else ``~/.cache/taskflow``; created."""
    path = Path(folder or os.environ.get("TASKFLOW_CACHE_DIR") or DEFAULT_CACHE).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached(path: Path, make: Callable[[Path], Any]) -> Path:
    """``path``, made by ``make(tmp)`` and renamed into place if missing: two processes that
    make it at once never leave a half-written file."""
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            make(Path(tmp))
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from others
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def stream(pipe: Any, source: str | os.PathLike, target: str | os.PathLike, *,
           client: Any = None, workers: int | None = None, quiet: bool = False,
           engine: str = "stream", **options: Any) -> Any:
    """Run ``pipe`` over the Zarr group ``source`` into the group ``target``, on ``client``
    (a Client, a :class:`taskflow.Cluster` or a scheduler address) or on an embedded cluster
    of ``workers``.

    ``engine="stream"`` is :func:`taskflow.infer_zarr` (resume, quarantine, exactly-once
    writes; ``options`` are its keywords); it raises when chunks failed and returns the job
    summary. ``engine="dask"`` is :meth:`taskflow.Pipeline.predict` over the source's arrays,
    stored with one ``dask.compute`` (every stage once, no resume; ``options``:
    ``batch_size``, ``overwrite``); it returns ``{output: shape}``.
    """
    import taskflow as tf

    if engine not in ("stream", "dask"):
        raise ValueError(f"engine={engine!r}; expected 'stream' (infer_zarr) or 'dask' "
                         "(Pipeline.predict)")
    if client is None:
        with tf.Cluster(n_workers=workers, quiet=True) as cluster:
            return stream(pipe, source, target, client=cluster, quiet=quiet, engine=engine,
                          **options)
    if engine == "dask":
        return _predict_to_zarr(pipe, source, target, client, **options)
    summary = tf.infer_zarr(pipe, str(source), str(target), client=client,
                            progress="none" if quiet else "bar", **options)
    if not summary.ok:
        raise RuntimeError(f"the job did not finish:\n{summary}")
    return summary


def _predict_to_zarr(pipe: Any, source: str | os.PathLike, target: str | os.PathLike,
                     client: Any, batch_size: int | None = None,
                     overwrite: bool = False) -> dict[str, tuple[int, ...]]:
    import dask
    import dask.array as da
    import zarr

    if isinstance(client, str):
        from distributed import Client

        with Client(client) as own:
            return _predict_to_zarr(pipe, source, target, own, batch_size, overwrite)
    client = getattr(client, "client", client)  # a taskflow.Cluster's own
    group = zarr.open_group(str(source), mode="r")
    feed = {n: da.from_zarr(group[n]) for n in pipe.input_names}
    lazy = pipe.predict(feed, client=client, chunk_size=batch_size)
    out = zarr.open_group(str(target), mode="w" if overwrite else "w-")
    stores = [out.create_array(n, shape=a.shape, dtype=a.dtype,
                               chunks=(a.chunks[0][0], *a.shape[1:]))
              for n, a in lazy.items()]
    dask.compute(da.store(list(lazy.values()), stores, lock=False, compute=False),
                 scheduler=client)
    return {n: a.shape for n, a in lazy.items()}


def job_args(p: argparse.ArgumentParser) -> None:
    """The options every workflow's streamed job takes."""
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask "
                   "scheduler (default: an embedded local cluster)")
    p.add_argument("--workers", type=int, help="worker processes of the embedded cluster "
                                               "(default: taskflow's thread plan)")
    p.add_argument("--batch-size", type=int, help="rows per task and output chunk (default: "
                                                  "the input's chunking)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def job_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"client": args.scheduler, "workers": args.workers, "batch_size": args.batch_size,
            "overwrite": args.overwrite, "quiet": args.quiet}


def write_labelled(path: str | os.PathLike, images: Any, truth: Any, chunk: int) -> str:
    """A Zarr group at ``path``: ``images`` (chunks of ``chunk`` rows) and their ``truth``."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.create_array("images", data=images, chunks=(chunk, *images.shape[1:]))
    group.create_array("truth", data=truth, chunks=(chunk,))
    return str(path)


def top1_accuracy(target: str | os.PathLike, source: str | os.PathLike) -> float:
    """Share of the top-1 ``labels`` in ``target`` equal to the ``truth`` in ``source``."""
    import zarr

    labels = zarr.open_group(str(target), mode="r")["labels"][:, 0]
    truth = zarr.open_group(str(source), mode="r")["truth"][:]
    return float((labels == truth).mean())
