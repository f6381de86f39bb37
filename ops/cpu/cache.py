"""Keep Numba's on-disk kernel cache true to the kernel sources.

Numba's ``cache=True`` keys a cached kernel on its own file's timestamp only. Kernels here
inline helpers from other files (the epilogue's activations, the common row loops, the op
families' constants), so after an edit to ``epilogue.py`` a kernel in ``conv.py`` would load
its old machine code and compute the old function: wrong numbers, no error. Seen in a
checkout that kept its ``__pycache__`` across a change that added HardSwish.

:func:`invalidate_stale` hashes every source the kernels may inline and, when the hash differs
from the one stored beside the cache, deletes this package's cached kernels before any is
loaded. An installed wheel never changes in place, so this matters to checkouts and editable
installs; it costs one read of about twenty small files per process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Sources the cpu kernels compile from: this package and the op definitions they import.
_SOURCES = ("*.py", "../*.py")
_STAMP = "taskflow-kernel-sources.sha256"


def source_hash(package: Path) -> str:
    h = hashlib.sha256()
    for pattern in _SOURCES:
        for path in sorted(package.glob(pattern)):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def invalidate_stale(package: Path | None = None) -> bool:
    """Delete cached kernels compiled from other sources than the current ones.

    Returns True when it deleted (or found nothing to keep). A cache folder it cannot write
    is left alone: Numba then caches elsewhere, or not at all.

    Examples
    --------
    >>> from taskflow.ops.cpu.cache import invalidate_stale
    >>> invalidate_stale() in (True, False)
    True
    """
    package = package or Path(__file__).resolve().parent
    cache = package / "__pycache__"
    current = source_hash(package)
    stamp = cache / _STAMP
    try:
        if stamp.read_text() == current:
            return False
    except OSError:
        pass
    try:
        cache.mkdir(exist_ok=True)
        for entry in cache.iterdir():
            if entry.suffix in (".nbi", ".nbc"):
                entry.unlink(missing_ok=True)
        tmp = stamp.with_suffix(f".{os.getpid()}")
        tmp.write_text(current)
        tmp.replace(stamp)  # atomic: worker processes importing at once see one or the other
    except OSError:
        return False
    return True
