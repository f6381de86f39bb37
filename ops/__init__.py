"""Op registry and kernels, installed as ``taskflow.ops``.

Importing this package registers every op family. GPU (CuPy) kernels (``ops/gpu/``) register
lazily, on the first request for a ``"gpu"`` kernel; they import no CuPy themselves, and
:mod:`.device` imports it only when a gpu device is asked for, so CPU-only machines never do.
"""

from __future__ import annotations

from . import (  # noqa: F401  (imported to register their ops)
    activation,
    attention,
    conv,
    elementwise,
    indexing,
    matmul,
    norm,
    pool,
    quant,
    reduce,
    rotary,
    shape,
    skip_norm,
    squeeze_excite,
)
from .device import array_module, parse_device
from .registry import (
    KINDS,
    OpSpec,
    as_outputs,
    get,
    lookup,
    names,
    register,
    register_kernel,
    register_lazy,
    specs,
)

__all__ = [
    "KINDS",
    "OpSpec",
    "array_module",
    "as_outputs",
    "get",
    "lookup",
    "names",
    "parse_device",
    "register",
    "register_kernel",
    "register_lazy",
    "specs",
]

from . import cpu  # noqa: E402, F401  (Numba/BLAS "cpu" kernels register themselves)

register_lazy("gpu", "taskflow.ops.gpu")  # array-module generic kernels: CuPy or numpy arrays
