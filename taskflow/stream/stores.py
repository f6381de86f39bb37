"""Storage options of :func:`taskflow.infer_zarr`: fsspec options (credentials, endpoint, ...)
that go with a URL to every place its store is opened: the client's checks
(:mod:`taskflow.stream.sources`), the target and its manifest (:mod:`taskflow.stream.manifest`),
and each worker, inside the job (:mod:`taskflow.stream.worker`). Zarr and fsspec open the
stores; this module only decides which options go where.

The options may hold secrets, so they are never part of a job's identity (``resume`` compares
it), a message, a summary or a repr. They do travel, pickled, to the scheduler and the workers
inside the job's plugin, as with Dask's own ``to_zarr(storage_options=...)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from taskflow.errors import InputError, TaskflowError

Options = Mapping[str, Any]


class StoreNotFoundError(TaskflowError, FileNotFoundError):
    """A store, or the bucket of its URL, does not exist."""


def is_url(loc: str) -> bool:
    return "://" in loc


def open_options(loc: str, options: Options | None) -> dict[str, Any]:
    """Keyword arguments of ``zarr.open*`` for ``loc``: its storage options if it is a URL;
    none for a local path (Zarr refuses options its ``LocalStore`` would not use)."""
    return {"storage_options": dict(options)} if options and is_url(loc) else {}


def filesystem(loc: str, options: Options | None) -> tuple[Any, str]:
    """``(fsspec file system, path)`` of ``loc``, opened with its storage options."""
    from fsspec.core import url_to_fs

    return url_to_fs(loc, **(dict(options) if options and is_url(loc) else {}))


def side_options(storage_options: Any, source_options: Any, target_options: Any
                 ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The storage options of the sources and of the target: each side's own where given,
    else ``storage_options``. A side's own options replace the shared ones, never merge with
    them: ``{"anon": True}`` for a public source must not inherit the target's keys.

    Examples
    --------
    >>> side_options({"anon": False}, {"anon": True}, None)
    ({'anon': True}, {'anon': False})
    """
    given = {"storage_options": storage_options, "source_options": source_options,
             "target_options": target_options}
    for name, value in given.items():
        if value is not None and not isinstance(value, Mapping):  # never shown: secrets
            raise TaskflowError(f"{name} is a {type(value).__name__}; expected a dict of fsspec "
                                "options, e.g. {'key': ..., 'secret': ..., 'client_kwargs': "
                                "{'endpoint_url': ...}} for s3://")
    source = storage_options if source_options is None else source_options
    target = storage_options if target_options is None else target_options
    return (dict(source) if source else None), (dict(target) if target else None)


def storage_options_from_text(text: str, flag: str = "--storage-options") -> dict[str, Any]:
    """A CLI storage-options value: a JSON object, or ``@FILE`` holding one (which keeps
    credentials out of the process list). Errors never echo the text: it may hold secrets.

    Examples
    --------
    >>> storage_options_from_text('{"anon": true}')
    {'anon': True}
    """
    what = "its JSON"
    if text.startswith("@"):
        path, what = os.path.expanduser(text[1:]), f"the file {text[1:]!r}"
        try:
            with open(path) as f:
                text = f.read()
        except OSError as exc:
            raise InputError(f"{flag} @FILE: cannot read {path!r} ({exc.strerror})") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:  # its message shows a position, never the text
        raise InputError(f"{flag}: {what} is not valid JSON ({exc}); expected an object such "
                         "as '{\"anon\": true}', or @FILE") from exc
    if not isinstance(value, dict):
        raise InputError(f"{flag}: {what} is a JSON {type(value).__name__}; expected an object "
                         "such as '{\"anon\": true}'")
    return value


def missing_bucket(loc: str, options: Options | None) -> str | None:
    """The bucket of an object-store URL (``s3://bucket/...``: a file system whose paths start
    with one has fsspec's ``split_path``) when it does not exist; else None."""
    if not is_url(loc):
        return None
    fs, path = filesystem(loc, options)
    split = getattr(fs, "split_path", None)
    if split is None:
        return None
    bucket = split(path)[0]
    return None if not bucket or fs.exists(bucket) else bucket


def denied(what: str, loc: str, exc: BaseException) -> TaskflowError:
    """The error for a store that refused access: the store's message, never the options."""
    return TaskflowError(f"{what} {loc!r}: access denied ({type(exc).__name__}: {exc}); check "
                         "the credentials in storage_options (--storage-options) or the "
                         "store's permissions")
