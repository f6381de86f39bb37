"""A 1x1 expansion and the depthwise convolution it feeds, run as one pass.

The inverted residual blocks of MobileNet and EfficientNet widen the activation by a 1x1
convolution (16 -> 72 channels, say) and hand the wide tensor straight to a depthwise one.
Run node by node, the wide tensor goes out to memory and comes back: at MobileNetV3-small's
56x56 stage and batch 32, 29 MB written by the expansion and read by the depthwise layer,
5 + 1.8 ms where the arithmetic takes ~1.5. Here each task expands a few images (or a band of
rows of one) into a per-thread buffer that stays in L2 and runs the depthwise rows on it
straight away; the wide tensor is never stored.

The executor pairs the nodes (:func:`pair`) where the expansion's output has no other reader
and both are plain float32 layers, on the cpu device, and only for untraced runs: a traced
run (calibration, per-node measurements) sees every node's value. The graph is not rewritten,
so precision, pruning and export see the two convolutions as they are. A pair the kernel
cannot take at run time (another dtype, a layout it does not read in place) runs as two
steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..conv import resolve_pads, spatial_attrs
from ..squeeze_excite import POOLS
from . import depthwise, direct
from .blas import gemm
from .common import (
    as_nhwc,
    is_channels_last,
    nchw_view,
    new_output,
    packed,
    run_ranges,
    run_tasks,
    scratch,
    threads,
)
from .epilogue import activation_code, apply_epilogue
from .simd import lanes_tag
from .squeeze_excite import _transposed, squeeze_excite_samples

#: Largest expanded block a task keeps (one L2 on the 2 MiB-L2 machine it was tuned on:
#: one 56x56x72 image is 0.9 MB).
BLOCK_BYTES = 1 << 20
#: Smallest band of one image's expanded rows a task takes (small batches).
MIN_BAND_BYTES = 256 << 10
#: Where the convolutions route 1x1 layers to MKL (AVX-512), the expansion goes to it from
#: this many input channels on (MobileNetV3-small, batch 32, 2 threads: 96 -> 576 and
#: 48 -> 288 pairs 1.15-1.2x faster so; 16 -> 72 and 24 -> 88 1.1x slower; even at 40).
MKL_MIN_CHANNELS = 40
#: The pair's two nodes: plain convolutions of these ops.
_CONVS = ("Conv", "FusedConv")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _plain(node: Any) -> bool:
    """No residual, channel shuffle, reduced precision, sparse weight or dilation."""
    a = node.attrs
    return (node.op in _CONVS and 2 <= len(node.inputs) <= 3
            and int(a.get("channel_shuffle", 0) or 0) <= 1 and not _text(a.get("precision", ""))
            and not int(a.get("sparse", 0) or 0)
            and all(int(d) == 1 for d in a.get("dilations") or ()))


def _act(node: Any) -> tuple[int, float, float] | None:
    return activation_code(node.attrs.get("activation", ""),
                           node.attrs.get("activation_params"))


def _gate(se: Any, constants: Mapping[str, np.ndarray], m: int) -> tuple | None:
    """The squeeze-excite node's packed weights and activation codes, where its kernel's
    fast path takes them (float32 constants over the depthwise output's ``m`` channels)."""
    if se.op != "FusedSqueezeExcite" or len(se.inputs) < 4 \
            or _text(se.attrs.get("pool", "GlobalAveragePool")) not in POOLS:
        return None
    w1, w2 = constants.get(se.inputs[1]), constants.get(se.inputs[3])
    if w1 is None or w2 is None or w1.ndim != 4 or w1.shape[1:] != (m, 1, 1) \
            or w2.shape != (m, w1.shape[0], 1, 1) or w1.dtype != np.float32 \
            or w2.dtype != np.float32:
        return None
    act = activation_code(se.attrs.get("activation", "Relu"), se.attrs.get("activation_params"))
    gate = activation_code(se.attrs.get("gate", "HardSigmoid"), se.attrs.get("gate_params"))
    if act is None or gate is None:
        return None
    return (packed(w1, ("se", "<f4"), _transposed), packed(w2, ("se", "<f4"), _transposed),
            act, gate)


def _first(node: Any, w: np.ndarray) -> str:
    """What the chain's first node is: "expand" (a 1x1, stride 1, unpadded), "stem" (a
    first layer on few channels, :func:`.direct.few_channels_rows`), or "" (neither)."""
    a = node.attrs
    if int(a.get("group", 1)) != 1:
        return ""
    if w.shape[2:] == (1, 1) and not any(int(p) for p in a.get("pads") or ()) \
            and all(int(s) == 1 for s in a.get("strides") or ()) \
            and _text(a.get("auto_pad", "NOTSET")) in ("NOTSET", "VALID"):
        return "expand" if w.shape[1] * w.shape[0] < direct.POINTWISE_MAX_WEIGHT else ""
    taps = w.shape[1] * w.shape[2] * w.shape[3]
    few = w.shape[1] <= direct.FEW_CHANNELS_MAX and taps <= direct.FEW_CHANNELS_MAX_TAPS
    return "stem" if few else ""


def pair(pw: Any, dw: Any, constants: Mapping[str, np.ndarray],
         se: Any = None) -> Callable | None:
    """``run(pw_args, later) -> output or None`` for a first node ``pw`` (a 1x1 expansion or
    a few-channel first layer) followed by the depthwise node ``dw`` that reads its output
    (the caller checks that nothing else does) and, given ``se``, the FusedSqueezeExcite
    node that reads dw's; None where they do not make such a chain. ``pw_args`` are the
    first node's inputs, ``later`` each later node's inputs after its first. The gate is
    applied to each task's images in place while they are in cache (a band of an image's
    rows has no whole image to pool: then one pass after the tasks)."""
    if not (_plain(pw) and _plain(dw)) or dw.inputs[0] != pw.outputs[0]:
        return None
    w1, w2 = constants.get(pw.inputs[1]), constants.get(dw.inputs[1])
    if w1 is None or w2 is None or w1.ndim != 4 or w2.ndim != 4:
        return None
    m = w1.shape[0]
    mode = _first(pw, w1)
    if not mode or int(dw.attrs.get("group", 1)) != m or w2.shape[:2] != (m, 1) or m % 8 \
            or w1.dtype != np.float32 or w2.dtype != np.float32:
        return None
    act1, act2 = _act(pw), _act(dw)
    if act1 is None or act2 is None:
        return None
    gate = None
    if se is not None:
        gate = _gate(se, constants, m)
        if gate is None or se.inputs[0] != dw.outputs[0]:
            return None
    first = _Conv(w1, pw.attrs)
    second = _Conv(w2, dw.attrs)

    def run(pw_args: list, later: list[list]) -> np.ndarray | None:
        x, b1 = pw_args[0], pw_args[2] if len(pw_args) > 2 else None
        b2 = later[0][1] if len(later[0]) > 1 else None
        biases = [(b1, m), (b2, m)]
        scale = None
        if gate is not None:  # the squeeze-excite's biases: inputs 2 and 4
            sb1, sb2 = later[1][1], later[1][3] if len(later[1]) > 3 else None
            biases += [(sb1, gate[0].shape[1]), (sb2, m)]
            empty = np.zeros(0, np.float32)
            scale = (gate[0], empty if sb1 is None else sb1.reshape(-1), gate[1],
                     empty if sb2 is None else sb2.reshape(-1), gate[2], gate[3])
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 \
                or x.shape[0] == 0 or x.shape[1] != w1.shape[1] \
                or any(b is not None and (not isinstance(b, np.ndarray)
                                          or b.dtype != np.float32 or b.size != k)
                       for b, k in biases):
            return None
        if mode == "stem":  # read in NCHW, in place
            if is_channels_last(x) or not x.flags.c_contiguous:
                return None
        else:
            x = as_nhwc(x)
            if not x.flags.c_contiguous:
                return None
        mid = first.geometry(x.shape[2:] if mode == "stem" else x.shape[1:3])
        out = None if mid is None else second.geometry(mid[2])
        if out is None:
            return None
        return _run(mode, x, first, mid, b1, act1, second, out, b2, act2, scale)

    return run


class _Conv:
    """A chain node's weight, kernel size and stride and padding attributes."""

    def __init__(self, w: np.ndarray, attrs: Mapping[str, Any]) -> None:
        self.w = w
        self.k = w.shape[2:]
        self.strides, _ = spatial_attrs(2, attrs.get("strides"), None)
        self.pads, self.auto_pad = attrs.get("pads"), _text(attrs.get("auto_pad", "NOTSET"))

    def geometry(self, size) -> tuple | None:
        """(strides, begin pads, output size) on an input of ``size`` (H, W); None where the
        node's own kernel must judge (it raises the right error)."""
        try:
            pb, pe = resolve_pads(tuple(size), self.k, self.strides, (1, 1), self.pads,
                                  self.auto_pad)
        except Exception:
            return None
        out = tuple((i + b + e - k) // s + 1
                    for i, b, e, k, s in zip(size, pb, pe, self.k, self.strides))
        return None if min(out) <= 0 else (self.strides, tuple(pb), out)


def _run(mode: str, x: np.ndarray, first: _Conv, mid: tuple, b1: np.ndarray | None,
         act1: tuple[int, float, float], second: _Conv, out: tuple, b2: np.ndarray | None,
         act2: tuple[int, float, float], scale: tuple | None) -> np.ndarray:
    """act2(depthwise(act1(first(x) + b1)) + b2), times its squeeze-excite gate where
    ``scale`` gives one (:func:`.squeeze_excite.squeeze_excite_samples`' transposed weights,
    biases and activation codes); returns the logical NCHW view of the NHWC output. ``x`` is
    NHWC for an expansion, NCHW for a stem; ``mid`` and ``out`` are the two convolutions'
    :meth:`_Conv.geometry`.

    Tasks are whole images, as many as fit :data:`BLOCK_BYTES` of the first node's output,
    while there are at least two per kernel thread; else bands of output rows of one image,
    each computing the first node's rows its taps read (a band's first ``KH - stride`` rows
    are also its predecessor's)."""
    n = x.shape[0]
    w1, w2 = first.w, second.w
    m, kh, kw = w2.shape[0], w2.shape[2], w2.shape[3]
    h, wd = mid[2]
    (sh, sw), pb, (ho, wo) = out
    f32 = np.float32
    y = new_output((n, ho, wo, m), f32)
    wp2 = packed(w2, ("depthwise", "<f4"), lambda a: np.ascontiguousarray(
        a[:, 0].transpose(1, 2, 0)))
    bp2 = np.zeros(m, f32) if b2 is None else b2
    tag, ktag = lanes_tag(direct.vector_lanes()), (0,) * kw
    image = h * wd * m * 4
    per = max(1, min(BLOCK_BYTES // image, n // (2 * threads()) or 1))
    # a small batch: bands of rows, at least MIN_BAND_BYTES expanded each (a task costs a
    # hand-off to a pool thread; MobileNetV3's 7x7 and 14x14 layers run as one at batch 1)
    bands = 1 if n >= 2 * threads() else max(1, min(-(-2 * threads() // n),
                                                    image // MIN_BAND_BYTES))
    rows = -(-ho // bands)
    bands = -(-ho // rows)
    tasks = [(n0, min(n, n0 + per), o0, min(ho, o0 + rows))
             for n0 in range(0, n, per if bands == 1 else 1) for o0 in range(0, ho, rows)]
    fill = _stem(x, w1, b1, act1, mid) if mode == "stem" else _expansion(x, w1, b1, act1)

    def task(i: int) -> None:
        n0, n1, o0, o1 = tasks[i]
        r0, r1 = 0, h  # whole images (whose rows are contiguous), or a band's input rows
        if bands > 1:
            r0, r1 = max(0, o0 * sh - pb[0]), min(h, (o1 - 1) * sh - pb[0] + kh)
        wide = scratch("expanded", (n1 - n0, r1 - r0, wd, m), f32)
        fill(n0, n1, r0, r1, wide)
        # the band's rows as an image of their own: padding above only where row 0 is in it
        depthwise.depthwise_rows(wide, wp2, bp2, y[n0:n1, o0:o1], 0, sh, sw,
                                 pb[0] - o0 * sh + r0, pb[1], act2[0], f32(act2[1]),
                                 f32(act2[2]), f32(1), 0, (n1 - n0) * (o1 - o0), tag, ktag)
        if scale is not None and bands == 1:
            gated(n0, n1)

    def gated(n0: int, n1: int) -> None:  # y[n0:n1] times its gate, in place
        y3 = y[n0:n1].reshape(n1 - n0, ho * wo, m)
        w1t, sb1, w2t, sb2, act, gate = scale
        squeeze_excite_samples(y3, w1t, sb1, w2t, sb2, y3, True, act[0], f32(act[1]),
                               f32(act[2]), gate[0], f32(gate[1]), f32(gate[2]), f32(1), 0,
                               n1 - n0)

    run_tasks(task, len(tasks))
    if scale is not None and bands > 1:
        run_ranges(gated, n, 1)
    return nchw_view(y)


def _expansion(xh: np.ndarray, w1: np.ndarray, b1: np.ndarray | None,
               act1: tuple[int, float, float]) -> Callable:
    """``fill(n0, n1, r0, r1, wide)``: the 1x1 expansion of rows [r0, r1) of images n0..n1
    of the NHWC ``xh`` into ``wide``. MKL's 16-lane GEMM, then the epilogue on the block in
    cache, where the convolutions route 1x1 layers to it (from :data:`MKL_MIN_CHANNELS`);
    else the 8-lane direct kernel, epilogue fused."""
    c, m = xh.shape[3], w1.shape[0]
    f32 = np.float32
    mkl = direct.pointwise_max_weight() == 0 and c >= MKL_MIN_CHANNELS
    wt1 = w1.reshape(m, c).T
    wp1 = packed(w1, ("pointwise", 1, "<f4"), lambda a: direct.pack_pointwise(a, 1))
    bp1 = direct.pad_groups(b1, 1, m, f32)
    no_z = np.zeros((0, m), f32)

    def fill(n0: int, n1: int, r0: int, r1: int, wide: np.ndarray) -> None:
        x2d, w2d = xh[n0:n1, r0:r1].reshape(-1, c), wide.reshape(-1, m)
        if mkl:
            gemm(x2d, wt1, w2d)
            apply_epilogue(w2d, b1, None, act1, parallel=False)
        else:
            direct.pointwise_rows(x2d, wp1, bp1, no_z, w2d, 0, 1, m, 1, act1[0], f32(act1[1]),
                                  f32(act1[2]), f32(1), 0, x2d.shape[0])

    return fill


def _stem(x: np.ndarray, w1: np.ndarray, b1: np.ndarray | None,
          act1: tuple[int, float, float], mid: tuple) -> Callable:
    """``fill(n0, n1, r0, r1, wide)``: output rows [r0, r1) of the few-channel first layer
    on images n0..n1 of the NCHW ``x`` into ``wide`` (:func:`.direct.few_channels_rows`; a
    band's rows as an output of their own, its input rows offset through the top padding)."""
    (sh, sw), pb, _ = mid
    m, kh, kw = w1.shape[0], w1.shape[2], w1.shape[3]
    f32 = np.float32
    wp = packed(w1, ("few-channels", "<f4"),
                lambda a: np.ascontiguousarray(a.transpose(1, 2, 3, 0)).ravel())
    bp = np.zeros(m, f32) if b1 is None else b1
    tag = lanes_tag(direct.vector_lanes() if m % 16 == 0 else 8)

    def fill(n0: int, n1: int, r0: int, r1: int, wide: np.ndarray) -> None:
        direct.few_channels_rows(x[n0:n1], wp, bp, wide, 0, kh, kw, sh, sw, pb[0] - r0 * sh,
                                 pb[1], act1[0], f32(act1[1]), f32(act1[2]), f32(1), 0,
                                 (n1 - n0) * (r1 - r0), tag, (0,) * kw)

    return fill
