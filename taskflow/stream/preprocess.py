"""Declared preprocessing for :func:`taskflow.infer_zarr`: what workers do to a chunk before the
model sees it.

Image datasets are stored as uint8, often channels-last; models want float32, normalised,
channels-first. Declaring those steps (instead of coding them) lets the target record exactly
what was done, and lets ``resume`` refuse a job whose preprocessing changed. Steps, in order:

1. ``layout``: ``"NHWC->NCHW"`` (any permutation of the same letters) transposes axes;
2. cast to ``dtype`` (``"float32"`` unless told) when any numeric step is declared;
3. ``scale``: multiply by a number; ``"uint8"`` means ``1/255``;
4. ``mean`` / ``std``: ``(x - mean) / std`` per channel, on the ``C`` axis of the layout's
   result (axis 1 when no layout is given: ONNX's NCHW).

Custom steps are callables (Python API, or ``module:function`` on the command line): per input,
``fn(array) -> array``; for the whole feed, ``fn(feed: dict) -> dict``. A callable is recorded
by its qualified name only, so ``resume`` cannot see a change made inside it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from taskflow.errors import InputError

STEP_KEYS = ("layout", "dtype", "scale", "mean", "std")


@dataclass(frozen=True)
class Steps:
    """Declared steps for one input (see the module docstring for their order)."""

    layout: tuple[str, str] | None = None
    dtype: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any], where: str) -> Steps:
        unknown = sorted(set(spec) - set(STEP_KEYS))
        if unknown:
            raise InputError(f"unknown preprocessing step(s) {unknown} for {where}; the "
                             f"declared steps are {list(STEP_KEYS)}")
        layout = spec.get("layout")
        if layout is not None:
            src, sep, dst = str(layout).replace(" ", "").partition("->")
            if not sep or sorted(src) != sorted(dst) or len(set(src)) != len(src):
                raise InputError(f"layout {layout!r} for {where}; expected a permutation such "
                                 "as 'NHWC->NCHW'")
            layout = (src, dst)
        scale = spec.get("scale")
        if scale == "uint8":
            scale = 1 / 255
        elif scale is not None and not isinstance(scale, (int, float)):
            raise InputError(f"scale {scale!r} for {where}; expected a number or 'uint8'")
        mean, std = (None if spec.get(k) is None else tuple(float(v) for v in
                     np.atleast_1d(spec[k])) for k in ("mean", "std"))
        if std is not None and any(s == 0 for s in std):
            raise InputError(f"std {list(std)!r} for {where} contains 0")
        numeric = scale is not None or mean is not None or std is not None
        dtype = spec.get("dtype") or ("float32" if numeric else None)
        return cls(layout, None if dtype is None else np.dtype(dtype).name,
                   None if scale is None else float(scale), mean, std)

    def channel_axis(self, ndim: int) -> int:
        return self.layout[1].index("C") if self.layout and "C" in self.layout[1] else 1

    def check(self, shape: tuple[int, ...], where: str) -> None:
        """Refuse steps that cannot apply to arrays of ``shape`` (before any task runs)."""
        if self.layout and len(self.layout[0]) != len(shape):
            raise InputError(f"layout {'->'.join(self.layout)!r} for {where} has "
                             f"{len(self.layout[0])} axes; the source has shape {shape}")
        out = self._permute(shape)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) > 1:
                axis = self.channel_axis(len(out))
                if axis >= len(out) or out[axis] != len(values):
                    raise InputError(
                        f"{name} has {len(values)} values for {where}, but axis {axis} (C) of "
                        f"the preprocessed shape {out} has "
                        f"{out[axis] if axis < len(out) else 'no'} entries")

    def _permute(self, shape: tuple) -> tuple:
        if not self.layout:
            return tuple(shape)
        src, dst = self.layout
        return tuple(shape[src.index(c)] for c in dst)

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.layout:
            src, dst = self.layout
            x = x.transpose([src.index(c) for c in dst])
        if self.dtype is not None:
            x = x.astype(self.dtype)
            dt = x.dtype.type
            if self.scale is not None:
                x *= dt(self.scale)
            shape = [1] * x.ndim
            if x.ndim > 1:
                shape[self.channel_axis(x.ndim)] = -1
            if self.mean is not None:
                x -= np.asarray(self.mean, x.dtype).reshape(shape if len(self.mean) > 1 else 1)
            if self.std is not None:
                x /= np.asarray(self.std, x.dtype).reshape(shape if len(self.std) > 1 else 1)
        return np.ascontiguousarray(x)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.layout:
            out["layout"] = "->".join(self.layout)
        for k in ("dtype", "scale", "mean", "std"):
            v = getattr(self, k)
            if v is not None:
                out[k] = list(v) if isinstance(v, tuple) else v
        return out


def _callable_name(fn: Callable) -> str:
    return f"callable:{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


class Preprocess:
    """Per-input steps (declared :class:`Steps` or callables) and an optional feed callable.

    Build it with :func:`parse_preprocess`; ``apply(feed)`` runs on the workers.
    """

    def __init__(self, per_input: Mapping[str, Steps | Callable], feed_fn: Callable | None):
        self.per_input = dict(per_input)
        self.feed_fn = feed_fn

    def apply(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = dict(feed)
        for name, step in self.per_input.items():
            feed[name] = step.apply(feed[name]) if isinstance(step, Steps) else step(feed[name])
        if self.feed_fn is not None:
            feed = dict(self.feed_fn(feed))
        return feed

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        for name, step in self.per_input.items():
            if isinstance(step, Steps):
                step.check(tuple(shapes[name]), f"input {name!r}")

    def describe(self) -> dict[str, Any]:
        """JSON-able record (stored in the target and compared on resume)."""
        out: dict[str, Any] = {name: step.describe() if isinstance(step, Steps)
                               else _callable_name(step) for name, step in self.per_input.items()}
        if self.feed_fn is not None:
            out["*feed"] = _callable_name(self.feed_fn)
        return out


def parse_preprocess(spec: Any, input_names: list[str]) -> Preprocess | None:
    """``spec`` -> :class:`Preprocess` (None: no preprocessing).

    ``spec`` is one of: a dict of declared steps (applied to every input); a dict of input name
    to declared steps or ``fn(array)``; a callable ``fn(feed) -> feed``; a ``Preprocess``.

    Examples
    --------
    >>> p = parse_preprocess({"scale": "uint8", "layout": "NHWC->NCHW"}, ["images"])
    >>> p.describe()
    {'images': {'layout': 'NHWC->NCHW', 'dtype': 'float32', 'scale': 0.00392156862745098}}
    """
    if spec is None or isinstance(spec, Preprocess):
        return spec
    if callable(spec):
        return Preprocess({}, spec)
    if not isinstance(spec, Mapping):
        raise InputError(f"preprocess={spec!r}; expected a dict of steps {list(STEP_KEYS)}, "
                         "a dict of input name to steps or callable, or a callable")
    if not spec:
        return None
    if set(spec) <= set(STEP_KEYS):
        steps = Steps.parse(spec, "every input")
        return Preprocess(dict.fromkeys(input_names, steps), None)
    unknown = [k for k in spec if k not in input_names]
    if unknown:
        raise InputError(f"preprocess names unknown input(s) {unknown}; the model's inputs are "
                         f"{input_names} (or give the steps {list(STEP_KEYS)} for every input)")
    per_input = {}
    for name, step in spec.items():
        if callable(step):
            per_input[name] = step
        elif isinstance(step, Mapping):
            per_input[name] = Steps.parse(step, f"input {name!r}")
        else:
            raise InputError(f"preprocess[{name!r}]={step!r}; expected a dict of steps "
                             f"{list(STEP_KEYS)} or a callable")
    return Preprocess(per_input, None)


def preprocess_from_text(text: str) -> Any:
    """The ``--preprocess`` option: a JSON object of steps, or ``package.module:function``.

    Examples
    --------
    >>> preprocess_from_text('{"scale": "uint8", "layout": "NHWC->NCHW"}')
    {'scale': 'uint8', 'layout': 'NHWC->NCHW'}
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"--preprocess {text!r} is not valid JSON: {exc}") from exc
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise InputError(f"--preprocess {text!r}; expected a JSON object such as "
                         "'{\"scale\": \"uint8\"}' or an import path 'package.module:function'")
    if os.getcwd() not in sys.path:  # like `python -m`: modules in the working folder import
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"--preprocess {text!r}: cannot import it ({exc}); run from the "
                         "folder that holds it, or put its folder on PYTHONPATH") from exc
    return obj
