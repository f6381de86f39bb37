"""Op registry and kernels, installed as ``taskflow.ops``.

Importing this package registers every op family. GPU (CuPy) kernels register lazily, on the
first request for a ``"gpu"`` kernel, so CuPy is never imported on CPU-only machines.
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
    "as_outputs",
    "get",
    "lookup",
    "names",
    "register",
    "register_kernel",
    "register_lazy",
    "specs",
]

from . import cpu  # noqa: E402, F401  (Numba/BLAS "cpu" kernels register themselves)
