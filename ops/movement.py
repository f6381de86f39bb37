"""Movement ops: rearrange elements without arithmetic (Resize's interpolation aside).

Every reference follows the newest ONNX opset: Slice/Squeeze/Unsqueeze/Split/Pad/Resize take
their shape-like operands as *inputs*. Results may be numpy views of the input (Transpose,
Slice, Split...); anything that numpy would hand back read-only (``broadcast_to``) is copied.
Imported from ``shape.py`` so that ``ops/__init__`` keeps one import per family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskflow.errors import ShapeError, UnsupportedOpError

from .device import array_module
from .registry import register


def _axis(axis: int, rank: int, what: str = "axis") -> int:
    """``axis`` in ``[-rank, rank)`` made non-negative."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ShapeError(f"{what} {axis!r} is out of range for rank {rank}; "
                         f"expected {-rank} <= {what} < {rank}")
    return axis % rank if rank else 0


def _axes(axes: Any, rank: int, what: str = "axes") -> list[int]:
    """Normalised, checked-for-duplicates list of axes."""
    out = [_axis(a, rank, what) for a in np.asarray(axes, np.int64).ravel()]
    if len(set(out)) != len(out):
        raise ShapeError(f"{what} {out!r} repeats an axis")
    return out


def _ints(x: Any) -> list[int]:
    return [int(v) for v in np.asarray(x).ravel()]


# ---------------------------------------------------------------------------- reshaping


@register("Flatten", "movement")
def flatten(input, *, axis=1):
    """(prod(d[:axis]), prod(d[axis:]))"""
    axis = int(axis) + input.ndim if axis < 0 else int(axis)  # axis may equal the rank
    if not 0 <= axis <= input.ndim:
        raise ShapeError(f"Flatten axis {axis!r} is out of range for shape {input.shape!r}")
    return input.reshape(math.prod(input.shape[:axis]), math.prod(input.shape[axis:]))


@register("Reshape", "movement")
def reshape(data, shape, *, allowzero=0):
    """data.reshape(shape), where 0 copies data's dim (unless allowzero) and -1 is inferred"""
    shape = _ints(shape)
    if not allowzero:
        for i, d in enumerate(shape):
            if d == 0:
                if i >= data.ndim:
                    raise ShapeError(f"Reshape shape {shape!r} has 0 at position {i} but the "
                                     f"input has rank {data.ndim}")
                shape[i] = data.shape[i]
    try:
        return data.reshape(shape)
    except ValueError as exc:
        raise ShapeError(f"cannot Reshape {data.shape!r} to {shape!r}: {exc}") from exc


@register("Transpose", "movement")
def transpose(data, *, perm=None):
    """out.shape = d[perm] (default: reversed axes)"""
    return np.transpose(data, None if perm is None else _ints(perm))


@register("Squeeze", "movement")
def squeeze(data, axes=None):
    """drop the size-1 dims in axes (all size-1 dims if omitted)"""
    if axes is None:
        return np.squeeze(data)
    axes = _axes(axes, data.ndim)
    bad = [a for a in axes if data.shape[a] != 1]
    if bad:
        raise ShapeError(f"Squeeze axes {bad!r} of shape {data.shape!r} are not of size 1")
    return np.squeeze(data, axis=tuple(axes))


@register("Unsqueeze", "movement")
def unsqueeze(data, axes):
    """insert size-1 dims at axes (of the output's rank)"""
    return np.expand_dims(data, tuple(_axes(axes, data.ndim + np.size(axes))))


@register("Expand", "movement")
def expand(input, shape):
    """broadcast_to(input, broadcast(input.shape, shape)) (bidirectional)"""
    try:
        out = np.broadcast_shapes(input.shape, tuple(_ints(shape)))
    except ValueError as exc:
        raise ShapeError(f"cannot Expand {input.shape!r} with shape {_ints(shape)!r}") from exc
    return np.broadcast_to(input, out).copy()


@register("Tile", "movement")
def tile(input, repeats):
    """out[i] = input[i % d]; out.shape = d * repeats"""
    repeats = _ints(repeats)
    if len(repeats) != input.ndim:
        raise ShapeError(f"Tile repeats {repeats!r} must have one entry per input dim "
                         f"(input shape {input.shape!r})")
    return np.tile(input, repeats)


@register("DepthToSpace", "movement")
def depth_to_space(input, *, blocksize, mode="DCR"):
    """(N, C*b*b, H, W) -> (N, C, H*b, W*b); DCR reads channels as (b, b, C), CRD as (C, b, b)"""
    n, c, h, w = input.shape
    b, oc = blocksize, c // (blocksize * blocksize)
    if mode == "DCR":
        x = input.reshape(n, b, b, oc, h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        x = input.reshape(n, oc, b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise ValueError(f"DepthToSpace mode {mode!r} is not 'DCR' or 'CRD'")
    return x.reshape(n, oc, h * b, w * b)


@register("SpaceToDepth", "movement")
def space_to_depth(input, *, blocksize, mode="DCR"):
    """(N, C, H*b, W*b) -> (N, C*b*b, H, W); the inverse of DepthToSpace with the same mode"""
    n, c, h, w = input.shape
    b = blocksize
    x = input.reshape(n, c, h // b, b, w // b, b)
    if mode == "DCR":
        x = x.transpose(0, 3, 5, 1, 2, 4)
    elif mode == "CRD":
        x = x.transpose(0, 1, 3, 5, 2, 4)
    else:
        raise ValueError(f"SpaceToDepth mode {mode!r} is not 'DCR' or 'CRD'")
    return x.reshape(n, c * b * b, h // b, w // b)


@register("ChannelShuffle", "movement", domain="taskflow")
def channel_shuffle(input, *, group):
    """reshape (N, group, C/group, ...) -> swap axes 1 and 2 -> reshape (N, C, ...)

    ShuffleNet's channel shuffle, which ONNX spells as Reshape, Transpose and Reshape (the
    optimiser's ``fuse_channel_shuffle`` makes it one node)."""
    group = int(group)
    if input.ndim < 2 or group < 1 or input.shape[1] % group:
        raise ShapeError(f"ChannelShuffle input of shape {input.shape}: expected a channel "
                         f"axis (axis 1) divisible by group={group}")
    n, c = input.shape[:2]
    rest = input.shape[2:]
    return input.reshape(n, group, c // group, *rest).swapaxes(1, 2).reshape(input.shape)


# ---------------------------------------------------------------------------- joining, slicing


@register("Concat", "movement")
def concat(*inputs, axis):
    """concatenate(inputs, axis)"""
    if not inputs:
        raise ShapeError("Concat needs at least one input")
    return np.concatenate(inputs, axis=_axis(axis, inputs[0].ndim))


@register("Split", "movement")
def split(input, split=None, *, axis=0, num_outputs=None):
    """consecutive chunks along axis of sizes split (or ceil(d / num_outputs), last smaller)"""
    axis = _axis(axis, input.ndim)
    d = input.shape[axis]
    if split is not None and np.size(split):
        sizes = _ints(split)
        if sum(sizes) != d or min(sizes) < 0:
            raise ShapeError(f"Split sizes {sizes!r} do not add up to dim {axis} = {d}")
    elif num_outputs:
        chunk = -(-d // num_outputs)
        sizes = [min(chunk, max(d - i * chunk, 0)) for i in range(num_outputs)]
    else:
        # Opset < 18 split evenly into len(node.output); the importer must set num_outputs.
        raise ValueError("Split needs the 'split' input or the 'num_outputs' attribute")
    # the module of the input: numpy here, cupy when the gpu kernel hands a CuPy array in
    return tuple(array_module(input).split(input, np.cumsum(sizes)[:-1].tolist(), axis=axis))


@register("Slice", "movement")
def slice_(data, starts, ends, axes=None, steps=None):
    """data[starts:ends:steps] on axes, clamped as ONNX (a negative step's start clamps to d-1)"""
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _axes(axes, data.ndim)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError(f"Slice starts {starts!r}, ends {ends!r}, axes {axes!r} and steps "
                         f"{steps!r} must have the same length")
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        d = data.shape[axis]
        if step == 0:
            raise ShapeError(f"Slice step on axis {axis} is 0")
        start, end = start + d if start < 0 else start, end + d if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), d), min(max(end, 0), d)
        else:  # Python would wrap end = -1; ONNX means "just before index 0".
            start, end = min(max(start, 0), d - 1), min(max(end, -1), d - 1)
        index[axis] = slice(start, None if end < 0 else end, step)
    return data[tuple(index)]


@register("Pad", "movement")
def pad(data, pads, constant_value=None, axes=None, *, mode="constant"):
    """pad axes by pads = [begins..., ends...] (negative: crop) with constant/reflect/edge/wrap"""
    axes = list(range(data.ndim)) if axes is None else _axes(axes, data.ndim)
    pads = _ints(pads)
    if len(pads) != 2 * len(axes):
        raise ShapeError(f"Pad pads {pads!r} must have 2 entries per padded axis {axes!r}")
    width = [[0, 0] for _ in range(data.ndim)]
    for i, a in enumerate(axes):
        width[a] = [pads[i], pads[len(axes) + i]]
    # Negative pads crop first; the remaining (non-negative) pads then see the cropped data.
    data = data[tuple(slice(max(-b, 0), d - max(-e, 0)) for (b, e), d in zip(width, data.shape))]
    width = [(max(b, 0), max(e, 0)) for b, e in width]
    xp = array_module(data)  # numpy here; cupy when the gpu kernel hands a CuPy array in
    if mode == "constant":
        value = 0 if constant_value is None else np.asarray(constant_value).ravel()[0].item()
        return xp.pad(data, width, mode="constant", constant_values=value)
    if mode not in ("reflect", "edge", "wrap"):
        raise ValueError(f"Pad mode {mode!r} is not 'constant', 'reflect', 'edge' or 'wrap'")
    return xp.pad(data, width, mode=mode)


# ---------------------------------------------------------------------------- gathers


@register("Gather", "movement")
def gather(data, indices, *, axis=0):
    """out[i..., j..., k...] = data[i..., indices[j...], k...] (negative indices count back)"""
    return np.take(data, indices, axis=_axis(axis, data.ndim))


@register("GatherElements", "movement")
def gather_elements(data, indices, *, axis=0):
    """out[i][j][k] = data[i][indices[i][j][k]][k] for axis = 1 (likewise for any axis)"""
    axis = _axis(axis, data.ndim)  # (fancy indexing counts negative indices back)
    # Off the axis, indices may be shorter than data: only data's leading part is read.
    data = data[tuple(slice(None) if a == axis else slice(0, n)
                      for a, n in enumerate(indices.shape))]
    return np.take_along_axis(data, indices, axis=axis)


@register("GatherND", "movement")
def gather_nd(data, indices, *, batch_dims=0):
    """out[b..., i...] = data[b..., *indices[b..., i..., :]]"""
    b, k = batch_dims, indices.shape[-1]
    batch = math.prod(data.shape[:b])
    m = math.prod(indices.shape[b:-1])
    flat = data.reshape((batch, *data.shape[b:]))
    idx = indices.reshape(batch, m, k)  # fancy indexing counts negative indices back
    rows = np.broadcast_to(np.arange(batch)[:, None], (batch, m))
    out = flat[(rows, *(idx[..., j] for j in range(k)))]
    return out.reshape(indices.shape[:-1] + data.shape[b + k:])


# ---------------------------------------------------------------------------- Resize

TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
              "asymmetric", "tf_crop_and_resize")

#: Source coordinates within this (relative) distance of a multiple of 1/2 are snapped onto it.
#: Where the exact coordinate is a nearest_mode tie (k + 1/2, or k for floor/ceil), float64
#: rounding would otherwise decide it: 2.5 * (1 - 6 / 6.25) + 0.5 / 1.25 - 0.5 is 1.1e-16, not 0.
#: Exact non-ties lie at least 1 / (2 * length) away, far above this for any real tensor.
SNAP_TOLERANCE = 1e-9

#: Index of the nearest input sample per nearest_mode.
_NEAREST = {
    "round_prefer_floor": lambda x: np.ceil(x - 0.5),
    "round_prefer_ceil": lambda x: np.floor(x + 0.5),
    "floor": np.floor,
    "ceil": np.ceil,
}

#: FLOPs per output element per resized axis: 2 taps (2 mul + 1 add), 4 taps (4 mul + 3 add).
_RESIZE_FLOPS_PER_AXIS = {"nearest": 0, "linear": 3, "cubic": 7}


def _resize_flops(in_shapes: Sequence[tuple[int, ...]], out_shapes: Sequence[tuple[int, ...]],
                  *, mode: str = "nearest", **attrs: Any) -> int:
    resized = sum(i != o for i, o in zip(in_shapes[0], out_shapes[0]))
    return _RESIZE_FLOPS_PER_AXIS.get(mode, 0) * resized * math.prod(out_shapes[0])


def _source_coords(mode: str, y: np.ndarray, s: float, i: int, o: int, w: float,
                   roi: np.ndarray) -> np.ndarray:
    """x_original of the output coordinates ``y`` along one axis, length ``i`` -> ``o``.

    ``w = s * i`` is the target length, fractional when a scale was given: ONNX intends it (its
    expected outputs and ReferenceEvaluator use it; ORT uses ``o``: onnx/onnx#2462).
    """
    if mode == "align_corners":
        x = y * (i - 1) / (w - 1) if w != 1 else 0 * y
    elif mode == "asymmetric":
        x = y / s
    elif mode == "tf_crop_and_resize":
        x = (roi[0] * (i - 1) + y * (roi[1] - roi[0]) * (i - 1) / (w - 1) if w != 1
             else 0 * y + 0.5 * (roi[0] + roi[1]) * (i - 1))
    elif mode == "pytorch_half_pixel" and w <= 1:
        x = 0 * y
    else:  # half_pixel, and the others' shifted variants
        x = (y + 0.5) / s - 0.5
        if mode == "half_pixel_symmetric":
            x = x + i / 2 * (1 - o / w)
    half = np.round(x * 2) / 2
    return np.where(np.abs(x - half) <= SNAP_TOLERANCE * np.maximum(np.abs(x), 1), half, x)


def _taps(x: np.ndarray, mode: str, a: float) -> tuple[np.ndarray, np.ndarray]:
    """Input indices (unclamped) and weights, each (len(x), taps), for linear or cubic."""
    x0 = np.floor(x)
    t = (x - x0)[:, None]
    if mode == "linear":
        return x0[:, None] + np.array([0, 1]), np.concatenate([1 - t, t], axis=1)
    d = np.abs(t - np.array([-1.0, 0.0, 1.0, 2.0]))  # distances to the 4 cubic taps
    w = np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                 np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
    return x0[:, None] + np.array([-1, 0, 1, 2]), w


def _output_sizes(shape: list[int], scales: Any, sizes: Any,
                  policy: str) -> list[tuple[int, float, float]]:
    """(output length, scale, target length scale * d) of each resized axis."""
    if sizes is not None:
        out = _ints(sizes)
        if len(out) != len(shape):
            raise ShapeError(f"Resize sizes {out!r} must have one entry per resized axis "
                             f"(input dims {shape!r})")
        if policy == "stretch":
            return [(o, o / i if i else 1.0, float(o)) for o, i in zip(out, shape)]
        if policy not in ("not_larger", "not_smaller"):
            raise ValueError(f"keep_aspect_ratio_policy {policy!r} is not 'stretch', "
                             "'not_larger' or 'not_smaller'")
        s = (min if policy == "not_larger" else max)(o / i for o, i in zip(out, shape))
        return [(math.floor(s * i + 0.5), s, s * i) for i in shape]  # rounded half up
    scale = np.asarray(scales, np.float32).astype(np.float64).ravel()
    if len(scale) != len(shape):
        raise ShapeError(f"Resize scales {scale.tolist()!r} must have one entry per resized "
                         f"axis (input dims {shape!r})")
    # floor(d * scale) with the exact float32 scale, as ONNX shape inference: 10 * 0.7f is 6.
    # (ONNX Runtime multiplies in float32 and gets 7.) Like shape inference, ORT and the
    # ReferenceEvaluator we ignore the spec's roi factor under tf_crop_and_resize.
    return [(math.floor(i * s), s, i * s) for i, s in zip(shape, scale.tolist())]


def _cast_like(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":  # round half to even, saturate (as onnx's saturate_cast)
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


@register("Resize", "movement", flops=_resize_flops)
def resize(X, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
           coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
           extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
           nearest_mode="round_prefer_floor"):
    """out[y] = sum_k w_k(x) X[clip(i_k(x))], x = transform(y), per axis (separable)"""
    if antialias:
        raise UnsupportedOpError(f"Resize antialias={antialias!r} is not supported (only 0)",
                                 [("Resize", "")])
    if mode not in ("nearest", "linear", "cubic"):
        raise ValueError(f"Resize mode {mode!r} is not 'nearest', 'linear' or 'cubic'")
    ctm = coordinate_transformation_mode
    if ctm not in TRANSFORMS:
        raise ValueError(f"Resize coordinate_transformation_mode {ctm!r} is not one of "
                         f"{TRANSFORMS}")
    if mode == "nearest" and nearest_mode not in _NEAREST:
        raise ValueError(f"Resize nearest_mode {nearest_mode!r} is not one of {sorted(_NEAREST)}")
    axes = list(range(X.ndim)) if axes is None else _axes(axes, X.ndim)
    scales = None if scales is None or np.size(scales) == 0 else scales
    sizes = None if sizes is None or np.size(sizes) == 0 else sizes
    if (scales is None) == (sizes is None):
        raise ValueError("Resize needs exactly one of the 'scales' and 'sizes' inputs")
    n = len(axes)
    crop = ctm == "tf_crop_and_resize"
    roi = np.asarray([0.0] * n + [1.0] * n if roi is None or np.size(roi) == 0 else roi,
                     np.float64).ravel()
    shape = [X.shape[a] for a in axes]

    x = X if mode == "nearest" else X.astype(np.float64)
    along = [1] * X.ndim  # reshapes a per-output-index vector to broadcast along axis a
    resized = _output_sizes(shape, scales, sizes, keep_aspect_ratio_policy)
    for k, (a, i, (o, s, w)) in enumerate(zip(axes, shape, resized)):
        if o == i and s == 1.0 and not crop:
            continue  # every transform is the identity here
        src = _source_coords(ctm, np.arange(o, dtype=np.float64), s, i, o, w, roi[[k, n + k]])
        if mode == "nearest":
            idx = np.clip(_NEAREST[nearest_mode](src), 0, max(i - 1, 0)).astype(np.intp)
            x = np.take(x, idx, axis=a)
        else:
            idx, wts = _taps(src, mode, cubic_coeff_a)
            if exclude_outside:
                wts = np.where((idx < 0) | (idx >= i), 0.0, wts)
                total = wts.sum(axis=1, keepdims=True)
                wts = wts / np.where(total == 0, 1.0, total)  # all outside: crop extrapolates
            x = np.take(x, np.clip(idx, 0, max(i - 1, 0)).astype(np.intp), axis=a)
            x = (x * wts.reshape(along[:a] + list(wts.shape) + along[a + 1:])).sum(axis=a + 1)
        if crop:
            outside = (src < 0) | (src > i - 1)
            x = np.where(outside.reshape(along[:a] + [o] + along[a + 1:]), extrapolation_value, x)
    return _cast_like(np.asarray(x), X.dtype)
