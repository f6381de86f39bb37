"""Device names, and arrays between the host and a CUDA device (CuPy, imported lazily).

One place parses what users write (``"cpu"``, ``"gpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``,
``"reference"``) into the canonical names the rest of taskflow compares against: ``"cpu"``,
``"gpu"`` (the current CUDA device), ``"gpu:N"`` (CUDA device N) and ``"reference"``. It sits
in the ops layer so that the registry, the executor, the model and the Dask lowering share it.

CuPy is imported here, and only when a gpu device is asked for (or ``"auto"`` looks for one):
``import taskflow`` never imports it. The array helpers (:func:`array_module`,
:func:`to_host`) recognise CuPy arrays without importing CuPy, so the gpu kernels, written
against ``xp = array_module(x)``, also run on numpy arrays, which is how they are tested on
machines without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from taskflow.errors import TaskflowError

#: What users may write, in the words of the error message.
DEVICE_NAMES = ("cpu", "gpu", "cuda", "cuda:N", "auto", "reference")
_INDEXED = re.compile(r"(?:cuda|gpu):(\d+)")
#: Initializer dtype kinds uploaded to the device once per plan: floats, bools and complex are
#: data. Integer initializers stay on the host: they are shapes, axes and indices, which kernels
#: read as Python ints (reading them back from a device would cost a sync per node).
DEVICE_DTYPE_KINDS = "fbc"


class DeviceError(TaskflowError, ValueError):
    """A device name taskflow does not know.

    Examples
    --------
    >>> from taskflow.ops.device import DeviceError, parse_device
    >>> try:
    ...     parse_device("tpu")
    ... except DeviceError as exc:                  # also a TaskflowError and a ValueError
    ...     print(str(exc)[:42])
    device='tpu' is not a device; expected one
    """


def parse_device(device: Any, *, argument: str = "device") -> str:
    """The canonical name of ``device``: ``"cpu"``, ``"gpu"``, ``"gpu:N"`` or ``"reference"``.

    ``"gpu"`` and ``"cuda"`` are the same (the current CUDA device), ``"cuda:N"`` is device N
    (``"gpu:N"``), and ``"auto"`` becomes ``"gpu"`` where CuPy finds a CUDA device, else
    ``"cpu"``. Case and surrounding blanks are ignored. Only the name is checked: see
    :func:`resolve_device` for whether a gpu is there.

    Parameters
    ----------
    device : str
        What the user wrote.
    argument : str
        How the error message names the argument (``"--device"`` on the command line).

    Raises
    ------
    DeviceError
        ``device`` is none of the names above; the message lists them.

    Examples
    --------
    >>> from taskflow.ops import parse_device
    >>> parse_device("CUDA"), parse_device("cuda:1"), parse_device("cpu")
    ('gpu', 'gpu:1', 'cpu')
    >>> parse_device("banana")                                  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    taskflow.ops.device.DeviceError: device='banana' is not a device; expected one of 'cpu', ...
    """
    name = device.strip().lower() if isinstance(device, str) else None
    if name in ("cpu", "reference"):
        return name
    if name in ("gpu", "cuda"):
        return "gpu"
    if name == "auto":
        return "gpu" if gpu_problem("gpu") is None else "cpu"
    match = _INDEXED.fullmatch(name or "")
    if match:
        return f"gpu:{int(match.group(1))}"
    raise DeviceError(
        f"{argument}={device!r} is not a device; expected one of 'cpu', 'gpu' (or 'cuda': the "
        "current CUDA device), 'cuda:N' (CUDA device N = 0, 1, ...), 'auto' (gpu where CuPy "
        "finds a CUDA device, else cpu) or 'reference' (the numpy definitions)")


def resolve_device(device: Any, *, argument: str = "device") -> str:
    """:func:`parse_device`, then, for a gpu, check that CuPy and the CUDA device are there.

    Raises
    ------
    DeviceError
        An unknown name.
    TaskflowError
        A gpu was asked for and CuPy is not importable (``pip install "taskflow[gpu]"``),
        finds no CUDA device, or not device N.

    Examples
    --------
    >>> from taskflow.ops.device import resolve_device
    >>> resolve_device(" Reference ")
    'reference'
    >>> resolve_device("gpu")                                   # doctest: +SKIP
    'gpu'
    """
    name = parse_device(device, argument=argument)
    if is_gpu(name):
        problem = gpu_problem(name)
        if problem:
            raise TaskflowError(f"{argument}={device!r}: {problem}")
    return name


def is_gpu(device: str) -> bool:
    """Whether the canonical ``device`` is a CUDA device (``"gpu"`` or ``"gpu:N"``).

    Examples
    --------
    >>> from taskflow.ops.device import is_gpu
    >>> is_gpu("gpu:1"), is_gpu("cpu")
    (True, False)
    """
    return device == "gpu" or device.startswith("gpu:")


def kernel_device(device: str) -> str:
    """The registry's kernel key for ``device``: ``"gpu"`` for every CUDA device.

    Examples
    --------
    >>> from taskflow.ops.device import kernel_device
    >>> kernel_device("gpu:3"), kernel_device("cpu")
    ('gpu', 'cpu')
    """
    return "gpu" if is_gpu(device) else device


def gpu_problem(device: str = "gpu") -> str | None:
    """Why ``device`` cannot run here (no CuPy, no CUDA device, no device N), or None.

    Examples
    --------
    >>> from taskflow.ops.device import gpu_problem
    >>> gpu_problem("gpu") is None or "CuPy" in gpu_problem("gpu") or "CUDA" in gpu_problem()
    True
    """
    try:
        cp = cupy_module()
    except ImportError as exc:
        return (f"the gpu kernels need CuPy, which is not importable here ({exc}); install it "
                'with pip install "taskflow[gpu]" (brings cupy-cuda12x), or use device="cpu"')
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except Exception as exc:  # CUDARuntimeError without a driver; its type lives in CuPy
        count, why = 0, f"{type(exc).__name__}: {exc}"
    else:
        why = "the CUDA runtime counts 0 devices"
    if count == 0:
        return (f"CuPy is installed but finds no CUDA device ({why}); use device=\"cpu\", or "
                "device=\"auto\" to take a gpu only where there is one")
    index = device_index(device)
    if index is not None and index >= count:
        return (f"CUDA device {index} was asked for, but CuPy finds {count} "
                f"(cuda:0 .. cuda:{count - 1})")
    return None


def device_index(device: str) -> int | None:
    """N of ``"gpu:N"``; None for ``"gpu"`` (the current device) and the host devices.

    Examples
    --------
    >>> from taskflow.ops.device import device_index
    >>> device_index("gpu:2"), device_index("gpu")
    (2, None)
    """
    return int(device[4:]) if device.startswith("gpu:") else None


# --- CuPy, lazily ----------------------------------------------------------------------------
_cupy: Any = None  #: the CuPy module once imported here (tests put a stand-in in its place)


def _import_cupy() -> Any:
    import cupy

    return cupy


def cupy_module() -> Any:
    """CuPy, imported on first call; ``ImportError`` where it is not installed.

    Examples
    --------
    >>> from taskflow.ops.device import cupy_module
    >>> cp = cupy_module()                                      # doctest: +SKIP
    """
    global _cupy
    if _cupy is None:
        _cupy = _import_cupy()
    return _cupy


def _loaded_cupy() -> Any:
    """CuPy if this process imported it already (here or by the user), else None: an array
    can only be a CuPy array if CuPy is loaded, so nothing is imported to find out."""
    return _cupy if _cupy is not None else sys.modules.get("cupy")


def is_device_array(x: Any) -> bool:
    """Whether ``x`` is a CuPy array (checked without importing CuPy).

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.ops.device import is_device_array
    >>> is_device_array(np.zeros(3)), is_device_array(None)
    (False, False)
    """
    cp = _loaded_cupy()
    return cp is not None and isinstance(x, cp.ndarray)


def array_module(*arrays: Any) -> Any:
    """``cupy`` if any of ``arrays`` is a CuPy array, else ``numpy`` (like
    ``cupy.get_array_module``, but never imports CuPy). ``None`` arguments are ignored.

    The gpu kernels are written against it (``xp = array_module(x)``), so they run unchanged
    on numpy arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.ops import array_module
    >>> array_module(np.ones(2), None) is np
    True
    """
    cp = _loaded_cupy()
    if cp is not None and any(isinstance(a, cp.ndarray) for a in arrays):
        return cp
    return np


def to_host(x: Any) -> Any:
    """``x`` as a numpy array (a CuPy array is copied to the host); None stays None.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.ops.device import to_host
    >>> a = np.arange(3)
    >>> to_host(a) is a
    True
    """
    if x is None:
        return None
    if is_device_array(x):
        return _loaded_cupy().asnumpy(x)
    return x if isinstance(x, np.ndarray) else np.asarray(x)


def to_device(x: Any) -> Any:
    """``x`` on the current CUDA device (a CuPy array is returned as it is); None stays None.

    Examples
    --------
    >>> from taskflow.ops.device import to_device
    >>> y = to_device(np.ones(3, np.float32))                   # doctest: +SKIP
    """
    if x is None or is_device_array(x):
        return x
    return cupy_module().asarray(x)


@contextlib.contextmanager
def use_device(device: str) -> Iterator[None]:
    """Make CUDA device N current inside the block for ``"gpu:N"``; nothing otherwise.

    Examples
    --------
    >>> from taskflow.ops.device import use_device
    >>> with use_device("cpu"):
    ...     pass
    """
    index = device_index(device)
    if index is None:
        yield
        return
    with cupy_module().cuda.Device(index):
        yield


def on_host(reference: Callable[..., Any]) -> Callable[..., Any]:
    """``reference`` run on the host: device arguments copied to numpy, and the results copied
    back to the device when any argument was on it. The gpu fallback of an op without a gpu
    kernel (``strict=False``): correct, and two copies slower.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.ops.device import on_host
    >>> on_host(np.negative)(np.ones(2))
    array([-1., -1.])
    """

    @functools.wraps(reference)
    def host_call(*args: Any, **attrs: Any) -> Any:
        device = any(is_device_array(a) for a in args)
        result = reference(*(to_host(a) for a in args), **attrs)
        if not device:
            return result
        if isinstance(result, (tuple, list)):
            return tuple(None if r is None else to_device(r) for r in result)
        return to_device(result)

    host_call.host_fallback = True  # type: ignore[attr-defined]
    return host_call
