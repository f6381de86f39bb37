"""Content hashes of what a job computes: a graph with its weights, or a Python function.

A streamed job's identity (:mod:`taskflow.stream.manifest`) holds these, so ``resume`` refuses a
target written by another model, and a pipeline's (:mod:`taskflow.pipeline`) combines those of
its stages. Equal hashes mean the same bytes out; a hash never depends on object ids, memory
addresses or the process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types
import weakref
from typing import Any

import numpy as np

_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def update(h: Any, obj: Any) -> None:
    """Feed ``obj`` into the hash object ``h``: arrays by bytes, containers and dataclasses by
    their items, functions by their code, defaults and closure; anything else by ``repr``."""
    if isinstance(obj, np.ndarray):
        h.update(f"nd{obj.dtype.str}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for o in obj:
            update(h, o)
        h.update(b"]")
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            update(h, k)
            update(h, obj[k])
        h.update(b"}")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(type(obj).__name__.encode())
        update(h, [getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "notes"])
    elif isinstance(obj, types.CodeType):
        h.update(b"code")
        update(h, [obj.co_code, obj.co_names, obj.co_varnames,
                   [c for c in obj.co_consts]])
    elif isinstance(obj, (types.FunctionType, types.MethodType)):
        function_update(h, obj)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def function_update(h: Any, fn: Any) -> None:
    """A function's identity: its qualified name, code, defaults and the values it closes over
    (a changed threshold in a closure is another job); a callable object by its class and
    attributes."""
    if isinstance(fn, functools.partial):  # a step with arguments: the function and them
        update(h, ["partial", fn.args, fn.keywords])
        function_update(h, fn.func)
        return
    if isinstance(fn, types.MethodType):
        update(h, [fn.__func__, vars(fn.__self__) if hasattr(fn.__self__, "__dict__") else ""])
        return
    if isinstance(fn, types.FunctionType):
        cells = [c.cell_contents for c in fn.__closure__ or () if _filled(c)]
        update(h, [f"{fn.__module__}.{fn.__qualname__}", fn.__code__, fn.__defaults__ or (),
                   fn.__kwdefaults__ or {}, cells])
        return
    state = getattr(fn, "__dict__", None)
    update(h, [f"{type(fn).__module__}.{type(fn).__qualname__}",
               type(fn).__call__, state if state is not None else repr(fn)])


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - raises ValueError for an empty cell
        return True
    except ValueError:
        return False


def model_hash(model: Any) -> str:
    """SHA-256 of the graph the model executes (nodes, attributes, interface, weights) and its
    device: two models with the same hash produce the same bytes. A pipeline gives its own
    (``model.fingerprint()``). Cached per object."""
    if model not in _HASHES:
        own = getattr(model, "fingerprint", None)
        if callable(own):
            _HASHES[model] = own()
        else:
            h = hashlib.sha256()
            update(h, [model.graph, str(getattr(model, "device", ""))])
            _HASHES[model] = h.hexdigest()
    return _HASHES[model]
