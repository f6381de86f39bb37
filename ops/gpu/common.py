"""What the gpu kernels share: registration, operands on one array module, host-side shape
operands, half precision in float32, and the fused activation epilogues.

A value that describes a shape (Reshape's ``shape``, Slice's ``starts``, a reduction's
``axes``...) is read on the host as Python ints, wherever it lives; every other operand is
brought onto the module of the kernel's data (:func:`operands`), so a small constant that
stayed on the host meets a device activation without an error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import registry
from ..conv import ACTIVATIONS
from ..device import array_module, to_host
from ..elementwise import HALF_DTYPES
from ..registry import register_kernel

Kernel = Callable[..., Any]


def snake(op: str) -> str:
    """``"LeakyRelu"`` -> ``"leaky_relu"``: how a generated kernel is named (``<op>_gpu``)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", op).lower()


def gpu_kernel(op: str, fn: Kernel | None = None) -> Any:
    """Register ``fn`` as op ``op``'s ``"gpu"`` kernel (decorator, or called with ``fn``).

    Numpy's float warnings are off inside, as in the references: inf and nan are ONNX results
    (CuPy never warns).
    """

    def deco(kernel: Kernel) -> Kernel:
        @functools.wraps(kernel)
        def quiet(*args: Any, **attrs: Any) -> Any:
            with np.errstate(all="ignore"):
                return kernel(*args, **attrs)

        if not kernel.__name__.endswith("_gpu"):  # generated from a table
            quiet.__name__ = quiet.__qualname__ = f"{snake(op)}_gpu"
        register_kernel(op, "gpu")(quiet)
        return quiet

    return deco(fn) if fn is not None else deco


def operands(*arrays: Any) -> tuple[Any, list[Any]]:
    """``(xp, arrays)`` with every array on ``xp``, the module of the device ones (None kept)."""
    xp = array_module(*arrays)
    return xp, [None if a is None else xp.asarray(a) for a in arrays]


def host_ints(x: Any) -> list[int]:
    """A shape-like operand (any module) as a list of Python ints."""
    return [int(v) for v in np.asarray(to_host(x)).ravel()]


def in_float32(fn: Kernel) -> Kernel:
    """Run ``fn(x, ...)`` with float16/bfloat16 ``x`` in float32, cast back to x's dtype:
    the references' ``half_in_float32``, for any module."""

    @functools.wraps(fn)
    def wrapper(x: Any, *args: Any, **attrs: Any) -> Any:
        wide = x.astype(np.float32) if x.dtype in HALF_DTYPES else x
        return fn(wide, *args, **attrs).astype(x.dtype, copy=False)

    return wrapper


def apply_activation(y: Any, activation: str | bytes = "",
                     params: Sequence[float] | None = None) -> Any:
    """The fused epilogue ``activation(y)`` through the gpu kernels of the activation ops:
    :func:`taskflow.ops.conv.apply_activation` with the same names, parameters and errors."""
    if isinstance(activation, bytes):
        activation = activation.decode()
    names = ACTIVATIONS.get(activation)
    params = list(params if params is not None else ())
    if names is None or len(params) > len(names):
        from ..conv import apply_activation as check  # raises the reference's error

        return check(y, activation, params)
    if not activation:
        return y
    values = [y.dtype.type(p) for p in params]
    kernel = registry.get(activation).kernels["gpu"]
    if activation == "Clip":
        return kernel(y, *(np.asarray(v) for v in values))
    if activation == "Gelu":  # parameter 0 / 1: the erf / tanh form
        return kernel(y, approximate="tanh" if params and params[0] else "none")
    return kernel(y, **dict(zip(names, values)))


def windows(x: Any, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
            out: Sequence[int]) -> Any:
    """The view ``(N, C, *out, *kernel)`` of every window of ``x`` (already padded): window
    ``o`` starts at ``o * stride`` and reads every ``dilation``-th element. No copy."""
    nd = len(kernel)
    xp = array_module(x)
    st = x.strides[2:]
    shape = (*x.shape[:2], *out, *kernel)
    strides = (*x.strides[:2], *(t * s for t, s in zip(st, strides)),
               *(t * d for t, d in zip(st, dilations)))
    assert len(shape) == len(strides) == 2 + 2 * nd
    return xp.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)


def pad_spatial(x: Any, begin: Sequence[int], end: Sequence[int], fill: Any = 0) -> Any:
    """``x`` padded with ``fill`` on its spatial axes (2..), or ``x`` when there is nothing
    to pad."""
    if not any(begin) and not any(end):
        return x
    xp = array_module(x)
    return xp.pad(x, [(0, 0), (0, 0), *zip(begin, end)], mode="constant",
                  constant_values=np.asarray(fill).item())
