"""gpu kernels of the movement ops (reshapes, transposes, joins, slices, gathers, pads) and of
the shape ops.

Movement is views and copies: where a reference only calls array *methods* on its data
(``reshape``, ``transpose``, indexing) it runs on any module as it is, and its kernel hands it
the shape-like operands on the host. The shape ops (Shape, Size, Range, ConstantOfShape,
Constant, EyeLike) compute on the host: their outputs are shapes and small constants, which
the next kernel reads as ints or uploads with its operands.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from taskflow.errors import ShapeError

from .. import movement as ref
from .. import shape as shape_ref
from ..device import to_host
from .common import gpu_kernel, host_ints, operands

# --- the references that are array methods only: shape-like operands on the host ------------


@gpu_kernel("Flatten")
def flatten_gpu(input: Any, *, axis: int = 1) -> Any:
    return ref.flatten(input, axis=axis)


@gpu_kernel("Reshape")
def reshape_gpu(data: Any, shape: Any, *, allowzero: int = 0) -> Any:
    return ref.reshape(data, to_host(shape), allowzero=allowzero)


@gpu_kernel("Slice")
def slice_gpu(data: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    return ref.slice_(data, to_host(starts), to_host(ends), to_host(axes), to_host(steps))


@gpu_kernel("DepthToSpace")
def depth_to_space_gpu(input: Any, *, blocksize: int, mode: str = "DCR") -> Any:
    return ref.depth_to_space(input, blocksize=blocksize, mode=mode)


@gpu_kernel("SpaceToDepth")
def space_to_depth_gpu(input: Any, *, blocksize: int, mode: str = "DCR") -> Any:
    return ref.space_to_depth(input, blocksize=blocksize, mode=mode)


@gpu_kernel("ChannelShuffle")
def channel_shuffle_gpu(input: Any, *, group: int) -> Any:
    return ref.channel_shuffle(input, group=group)


# --- written out on xp ------------------------------------------------------------------------


@gpu_kernel("Transpose")
def transpose_gpu(data: Any, *, perm: Any = None) -> Any:
    xp, (data,) = operands(data)
    return xp.transpose(data, None if perm is None else host_ints(perm))


@gpu_kernel("Squeeze")
def squeeze_gpu(data: Any, axes: Any = None) -> Any:
    if axes is None:
        return data.reshape([d for d in data.shape if d != 1])
    axes = ref._axes(to_host(axes), data.ndim)
    bad = [a for a in axes if data.shape[a] != 1]
    if bad:
        raise ShapeError(f"Squeeze axes {bad!r} of shape {data.shape!r} are not of size 1")
    return data.reshape([d for a, d in enumerate(data.shape) if a not in axes])


@gpu_kernel("Unsqueeze")
def unsqueeze_gpu(data: Any, axes: Any) -> Any:
    axes = to_host(axes)
    rank = data.ndim + np.size(axes)
    new = set(ref._axes(axes, rank))
    dims = iter(data.shape)
    return data.reshape([1 if a in new else next(dims) for a in range(rank)])


@gpu_kernel("Expand")
def expand_gpu(input: Any, shape: Any) -> Any:
    xp, (input,) = operands(input)
    try:
        out = np.broadcast_shapes(input.shape, tuple(host_ints(shape)))
    except ValueError as exc:
        raise ShapeError(f"cannot Expand {input.shape!r} with shape {host_ints(shape)!r}") \
            from exc
    return xp.broadcast_to(input, out).copy()


@gpu_kernel("Tile")
def tile_gpu(input: Any, repeats: Any) -> Any:
    xp, (input,) = operands(input)
    repeats = host_ints(repeats)
    if len(repeats) != input.ndim:
        raise ShapeError(f"Tile repeats {repeats!r} must have one entry per input dim "
                         f"(input shape {input.shape!r})")
    return xp.tile(input, repeats)


@gpu_kernel("Concat")
def concat_gpu(*inputs: Any, axis: int) -> Any:
    if not inputs:
        raise ShapeError("Concat needs at least one input")
    xp, arrays = operands(*inputs)
    return xp.concatenate(arrays, axis=ref._axis(axis, arrays[0].ndim))


@gpu_kernel("Split")
def split_gpu(input: Any, split: Any = None, *, axis: int = 0,
              num_outputs: int | None = None) -> tuple[Any, ...]:
    """The reference itself (array-module generic), the sizes read on the host."""
    return ref.split(input, to_host(split), axis=axis, num_outputs=num_outputs)


@gpu_kernel("Pad")
def pad_gpu(data: Any, pads: Any, constant_value: Any = None, axes: Any = None, *,
            mode: str = "constant") -> Any:
    """The reference itself (array-module generic), its shape operands read on the host."""
    _, (data,) = operands(data)
    return ref.pad(data, to_host(pads), to_host(constant_value), to_host(axes), mode=mode)


@gpu_kernel("Gather")
def gather_gpu(data: Any, indices: Any, *, axis: int = 0) -> Any:
    xp, (data, indices) = operands(data, indices)
    return xp.take(data, indices, axis=ref._axis(axis, data.ndim))


@gpu_kernel("GatherElements")
def gather_elements_gpu(data: Any, indices: Any, *, axis: int = 0) -> Any:
    xp, (data, indices) = operands(data, indices)
    axis = ref._axis(axis, data.ndim)
    data = data[tuple(slice(None) if a == axis else slice(0, n)
                      for a, n in enumerate(indices.shape))]
    return xp.take_along_axis(data, indices, axis=axis)


# --- shape ops: on the host -------------------------------------------------------------------


@gpu_kernel("Shape")
def shape_gpu(data: Any, *, start: int = 0, end: int | None = None) -> Any:
    return shape_ref.shape(data, start=start, end=end)  # reads data.shape only


@gpu_kernel("Size")
def size_gpu(data: Any) -> Any:
    return shape_ref.size(data)


@gpu_kernel("Range")
def range_gpu(start: Any, limit: Any, delta: Any, *, stash_type: int = 1) -> Any:
    return shape_ref.range_(to_host(start), to_host(limit), to_host(delta),
                            stash_type=stash_type)


@gpu_kernel("ConstantOfShape")
def constant_of_shape_gpu(input: Any, *, value: Any = None) -> Any:
    return shape_ref.constant_of_shape(to_host(input), value=value)


@gpu_kernel("Constant")
def constant_gpu(**attrs: Any) -> Any:
    return shape_ref.constant(**attrs)


@gpu_kernel("EyeLike")
def eye_like_gpu(input: Any, *, dtype: int | None = None, k: int = 0) -> Any:
    return shape_ref.eye_like(input, dtype=dtype, k=k)  # reads input's shape and dtype only
