"""Chains of layers run as one pass: what a layer hands the next stays in cache.

The inverted residual blocks of MobileNet and EfficientNet widen the activation by a 1x1
convolution (16 -> 72 channels, say) and hand the wide tensor straight to a depthwise one.
Run node by node, the wide tensor goes out to memory and comes back: at MobileNetV3-small's
56x56 stage and batch 32, 29 MB written by the expansion and read by the depthwise layer,
5 + 1.8 ms where the arithmetic takes ~1.5. SqueezeNet's first layer writes 100 MB that the
max pool after it reads once to keep a quarter. A chain here is:

1. a *first* convolution: a 1x1 expansion, a few-channel first layer
   (:func:`.direct.few_channels_rows`) or, with AVX-512, a dense one :mod:`.dense_wide`
   takes;
2. the *window* layer that reads its output: a depthwise convolution or a MaxPool;
3. after a depthwise convolution, maybe its squeeze-excite (FusedSqueezeExcite);
4. maybe the 1x1 projection that reads the last of them (with its residual).

Each task computes the first layer for a few images, or a band of rows of one, into a
per-thread buffer that stays in L2, runs the window layer's rows on it straight away, gates
and projects that while it is in cache; only the chain's output is stored.

The executor finds chains (:func:`chain`) where each node's output has no other reader, on
the cpu device, and uses them only for untraced runs: a traced run (calibration, per-node
measurements) sees every node's value. The graph is not rewritten, so precision, pruning and
export see the layers as they are. A chain the kernels cannot take at run time (another
dtype, a layout they do not read in place) runs node by node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..conv import resolve_pads, spatial_attrs
from ..pool import pool_geometry
from ..squeeze_excite import POOLS
from . import blas, dense_wide, depthwise, direct, pointwise_wide
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
from .conv import pack_depthwise, pack_few_channels, stem_is_wide
from .epilogue import activation_code, apply_epilogue
from .pool import max_pool_into
from .simd import lanes_tag
from .squeeze_excite import squeeze_excite_samples, transposed

#: Largest block of the first layer's output a task keeps (one L2 on the 2 MiB-L2 machine it
#: was tuned on: one 56x56x72 image is 0.9 MB); bigger images go in bands of rows.
BLOCK_BYTES = 1 << 20
#: Smallest band of one image's rows a task takes (small batches).
MIN_BAND_BYTES = 256 << 10
#: Where the convolutions route 1x1 layers to MKL (AVX-512), the expansion goes to it from
#: this many input channels on (MobileNetV3-small, batch 32, 2 threads: 96 -> 576 and
#: 48 -> 288 pairs 1.15-1.2x faster so; 16 -> 72 and 24 -> 88 1.1x slower; even at 40).
MKL_MIN_CHANNELS = 40
#: A projection on at most this many input channels runs the direct kernel, epilogue
#: fused, also where 1x1 layers route to MKL: per task its GEMMs are small (one image) and
#: the epilogue a pass of its own (MobileNetV3-small, batch 32: its chains ending in 16 -> 16,
#: 72 -> 24, 88 -> 24 and 96 -> 40 projections 1.1-1.2x faster so, 120 -> 48 and 144 -> 48
#: even, 240 -> 40 and 576 -> 96 1.05-1.1x slower).
PROJECT_DIRECT_MAX_CHANNELS = 128
#: The convolutions of a chain: plain nodes of these ops.
_CONVS = ("Conv", "FusedConv")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _plain(node: Any, inputs: int = 3) -> bool:
    """No residual (``inputs`` 4: maybe one), channel shuffle, reduced precision, sparse
    weight or dilation."""
    a = node.attrs
    return (node.op in _CONVS and 2 <= len(node.inputs) <= inputs
            and int(a.get("channel_shuffle", 0) or 0) <= 1 and not _text(a.get("precision", ""))
            and not int(a.get("sparse", 0) or 0)
            and all(int(d) == 1 for d in a.get("dilations") or ()))


def _act(node: Any) -> tuple[int, float, float] | None:
    return activation_code(node.attrs.get("activation", ""),
                           node.attrs.get("activation_params"))


def _kind(node: Any, w: np.ndarray) -> str:
    """What a chain's first convolution is: "expand" (1x1, stride 1, unpadded), "stem" (few
    channels: :func:`.direct.few_channels_rows`), "dense" (one group, maybe
    :mod:`.dense_wide`'s; decided on the input's size), or ""."""
    a = node.attrs
    if int(a.get("group", 1)) != 1:
        return ""
    if w.shape[2:] == (1, 1) and not any(int(p) for p in a.get("pads") or ()) \
            and all(int(s) == 1 for s in a.get("strides") or ()) \
            and _text(a.get("auto_pad", "NOTSET")) in ("NOTSET", "VALID"):
        return "expand" if w.shape[1] * w.shape[0] < direct.POINTWISE_MAX_WEIGHT else ""
    taps = w.shape[1] * w.shape[2] * w.shape[3]
    if w.shape[1] <= direct.FEW_CHANNELS_MAX and taps <= direct.FEW_CHANNELS_MAX_TAPS:
        return "stem"
    strides, _ = spatial_attrs(2, a.get("strides"), None)
    wide = taps <= (dense_wide.MAX_STRIDED_TAPS if max(strides) > 1 else dense_wide.MAX_TAPS)
    return "dense" if w.shape[0] % dense_wide.BLOCK == 0 and wide else ""


class _Conv:
    """A convolution's weight, kernel size, strides and padding attributes."""

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


class _MaxPool:
    """A MaxPool's window (no indices output): geometry as the reference's, rows by
    :func:`.pool.max_pool_into`."""

    def __init__(self, attrs: Mapping[str, Any]) -> None:
        self.attrs = attrs
        self.k = tuple(int(k) for k in attrs["kernel_shape"])
        _, self.d = spatial_attrs(2, attrs.get("strides"), attrs.get("dilations"))

    def geometry(self, size) -> tuple | None:
        """As :meth:`_Conv.geometry`."""
        a = self.attrs
        try:
            pb, _, _, out, s, _ = pool_geometry(
                tuple(size), self.k, a.get("strides"), a.get("dilations"), a.get("pads"),
                _text(a.get("auto_pad", "NOTSET")), int(a.get("ceil_mode", 0)))
        except Exception:
            return None
        return tuple(s), tuple(pb), tuple(out)


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
    return (packed(w1, ("se", "<f4"), transposed), packed(w2, ("se", "<f4"), transposed),
            act, gate)


def _window(node: Any, constants: Mapping[str, np.ndarray], m: int) -> tuple | None:
    """("depthwise", weight, activation) or ("maxpool", None, None) for a chain's window
    node over ``m`` channels, else None."""
    if node.op == "MaxPool":
        a = node.attrs
        if len(node.outputs) != 1 or int(a.get("storage_order", 0)) \
                or len(a.get("kernel_shape") or ()) != 2:
            return None
        return "maxpool", None, None
    w = constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
    act = _act(node) if node.op in _CONVS else None
    if not _plain(node) or w is None or act is None or w.ndim != 4 or w.shape[:2] != (m, 1) \
            or int(node.attrs.get("group", 1)) != m or m % 8 or w.dtype != np.float32:
        return None
    return "depthwise", w, act


def chain(first: Any, window: Any, constants: Mapping[str, np.ndarray], se: Any = None,
          project: Any = None) -> Callable | None:
    """``run(first_args, later) -> output or None`` for the chain of ``first`` (a
    convolution), the ``window`` node that reads its output (a depthwise convolution or a
    MaxPool), maybe the squeeze-excite ``se`` that reads a depthwise output and maybe the 1x1
    ``project`` that reads the last of them (the caller checks that no value of the chain
    has another reader); None where they make no chain the kernels take. ``first_args`` are
    the first node's inputs, ``later`` each later node's inputs after its first."""
    if not _plain(first) or not window.inputs or window.inputs[0] != first.outputs[0]:
        return None
    w1 = constants.get(first.inputs[1])
    if w1 is None or w1.ndim != 4 or w1.dtype != np.float32:
        return None
    m = w1.shape[0]
    kind, act1 = _kind(first, w1), _act(first)
    shape = _window(window, constants, m)
    if not kind or act1 is None or shape is None:
        return None
    gate = None
    if se is not None:
        gate = _gate(se, constants, m) if shape[0] == "depthwise" else None
        if gate is None or se.inputs[0] != window.outputs[0]:
            return None
    third = None
    if project is not None:
        w3 = constants.get(project.inputs[1]) if len(project.inputs) > 1 else None
        act3 = _act(project)
        if w3 is None or act3 is None or w3.ndim != 4 or w3.shape[1] != m \
                or _kind(project, w3) != "expand" or w3.dtype != np.float32 \
                or project.inputs[0] != (se or window).outputs[0] or not _plain(project, 4):
            return None
        third = (w3, act3)
    conv1 = _Conv(w1, first.attrs)
    second = _Conv(shape[1], window.attrs) if shape[0] == "depthwise" \
        else _MaxPool(window.attrs)

    def run(first_args: list, later: list[list]) -> np.ndarray | None:
        x, b1 = first_args[0], first_args[2] if len(first_args) > 2 else None
        b2 = later[0][1] if shape[0] == "depthwise" and len(later[0]) > 1 else None
        biases = [(b1, m), (b2, m)]
        scale = projection = None
        if gate is not None:  # the squeeze-excite's biases: inputs 2 and 4
            sb1, sb2 = later[1][1], later[1][3] if len(later[1]) > 3 else None
            biases += [(sb1, gate[0].shape[1]), (sb2, m)]
            empty = np.zeros(0, np.float32)
            scale = (gate[0], empty if sb1 is None else sb1.reshape(-1), gate[1],
                     empty if sb2 is None else sb2.reshape(-1), gate[2], gate[3])
        if third is not None:  # the projection's bias and residual: its inputs 3 and 4
            args3 = later[-1]
            b3 = args3[1] if len(args3) > 1 else None
            z3 = args3[2] if len(args3) > 2 else None
            biases.append((b3, third[0].shape[0]))
            if z3 is not None and not (isinstance(z3, np.ndarray) and z3.dtype == np.float32):
                return None
            projection = (third[0], b3, z3, third[1])
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 \
                or x.shape[0] == 0 or x.shape[1] != w1.shape[1] \
                or any(b is not None and (not isinstance(b, np.ndarray)
                                          or b.dtype != np.float32 or b.size != k)
                       for b, k in biases):
            return None
        if kind == "stem":  # read in NCHW, in place
            if is_channels_last(x) or not x.flags.c_contiguous:
                return None
        else:
            x = as_nhwc(x)
            if not x.flags.c_contiguous:
                return None
        mid = conv1.geometry(x.shape[2:] if kind == "stem" else x.shape[1:3])
        out = None if mid is None else second.geometry(mid[2])
        if out is None:
            return None
        if kind == "dense" and not (direct.vector_lanes() == 16 and dense_wide.usable(
                x.shape[3], m, *w1.shape[2:], mid[0], mid[2][1], x.shape[2], mid[1][1])):
            return None
        if projection is not None and projection[2] is not None:
            z = projection[2]
            if z.shape != (x.shape[0], projection[0].shape[0], *out[2]):
                return None
            zh = as_nhwc(z)
            if not zh.flags.c_contiguous:
                return None
            projection = (*projection[:2], zh, projection[3])
        fill = _FILLERS[kind](x, w1, b1, act1, mid)
        if shape[0] == "depthwise":
            rows, span = _depthwise_rows(shape[1], b2, shape[2], out), shape[1].shape[2]
        else:
            rows, span = _max_pool_rows(second, out), (second.k[0] - 1) * second.d[0] + 1
        return _run(x.shape[0], fill, (*mid[2], m), rows, span, out, scale, projection)

    return run


def _run(n: int, fill: Callable, mid: tuple[int, int, int], window: Callable, span: int,
         out: tuple, scale: tuple | None, projection: tuple | None) -> np.ndarray:
    """The chain on ``n`` images; returns the logical NCHW view of its NHWC output.

    ``fill(n0, n1, r0, r1, buf)`` writes rows [r0, r1) of the first layer's output (H, W, M
    = ``mid``) for images n0..n1 into ``buf``; ``window(buf, dst, ph, count)`` computes
    ``count`` rows of the window layer into ``dst`` from ``buf`` as an input of its own with
    top padding ``ph``; its kernel spans ``span`` input rows and ``out`` is its geometry.
    ``scale`` is a squeeze-excite gate (:func:`.squeeze_excite.squeeze_excite_samples`'
    transposed weights, biases and activation codes), ``projection`` a 1x1 convolution
    (weight, bias, NHWC residual or None, activation), either None.

    Tasks are whole images, as many as fit :data:`BLOCK_BYTES` of the first layer's output,
    while there are at least two per kernel thread and an image fits; else bands of output
    rows of one image, each computing the first layer's rows its window reads (a band's first
    ``span - stride`` rows are also its predecessor's). The window output goes to the chain's
    output, or, with a projection, to a per-thread buffer the projection reads (to a full one
    when a gate needs whole images and the tasks are bands: then the gate and the projection
    are passes of their own after the tasks)."""
    h, wd, m = mid
    (sh, _), pb, (ho, wo) = out
    f32 = np.float32
    image = h * wd * m * 4
    per = max(1, min(BLOCK_BYTES // image, n // (2 * threads()) or 1))
    # a small batch: bands of rows, at least MIN_BAND_BYTES each (a task costs a hand-off to a
    # pool thread; MobileNetV3's 7x7 and 14x14 layers run as one at batch 1); an image over
    # BLOCK_BYTES: bands that fit
    few = 1 if n >= 2 * threads() else max(1, min(-(-2 * threads() // n),
                                                  image // MIN_BAND_BYTES))
    bands = max(few, -(-image // BLOCK_BYTES))
    rows = -(-ho // bands)
    bands = -(-ho // rows)
    tasks = [(n0, min(n, n0 + per), o0, min(ho, o0 + rows))
             for n0 in range(0, n, per if bands == 1 else 1) for o0 in range(0, ho, rows)]
    after = scale is not None and bands > 1  # the gate (and projection) after the tasks
    project = None if projection is None else _Projection(*projection, (n, ho, wo))
    y = new_output((n, ho, wo, m), f32) if project is None or after else None

    def task(i: int) -> None:
        n0, n1, o0, o1 = tasks[i]
        r0, r1 = 0, h  # whole images (whose rows are contiguous), or a band's input rows
        if bands > 1:
            r0, r1 = max(0, o0 * sh - pb[0]), min(h, (o1 - 1) * sh - pb[0] + span)
        buf = scratch("chain-first", (n1 - n0, r1 - r0, wd, m), f32)
        fill(n0, n1, r0, r1, buf)
        dst = scratch("chain-window", (n1 - n0, o1 - o0, wo, m), f32) if y is None \
            else y[n0:n1, o0:o1]
        # the band's rows as an input of their own: padding above only where row 0 is in it
        window(buf, dst, pb[0] - o0 * sh + r0, (n1 - n0) * (o1 - o0))
        if not after:
            if scale is not None:
                _gate_in_place(dst, scale)
            if project is not None:
                project(dst, ((n0 * ho + o0) * wo, ((n1 - 1) * ho + o1) * wo))

    run_tasks(task, len(tasks))
    if after:
        run_ranges(lambda lo, hi: _gate_in_place(y[lo:hi], scale), n, 1)
        if project is not None:
            run_ranges(lambda lo, hi: project(y[lo:hi], (lo * ho * wo, hi * ho * wo)), n, 1)
    return nchw_view(project.out if project is not None else y)


def _gate_in_place(y: np.ndarray, scale: tuple) -> None:
    """The NHWC images ``y`` times their squeeze-excite gate, in place."""
    f32 = np.float32
    k, ho, wo, m = y.shape
    y3 = y.reshape(k, ho * wo, m)
    w1t, sb1, w2t, sb2, act, gate = scale
    squeeze_excite_samples(y3, w1t, sb1, w2t, sb2, y3, True, act[0], f32(act[1]), f32(act[2]),
                           gate[0], f32(gate[1]), f32(gate[2]), f32(1), 0, k)


class _Projection:
    """``project(src, (lo, hi))``: the 1x1 projection of the NHWC pixels ``src`` into rows
    [lo, hi) of its output :attr:`out` (N, Ho, Wo, M3), with its bias, residual rows and
    activation: the direct kernel (epilogue fused) for weights under
    :func:`.direct.pointwise_max_weight` (as :mod:`.conv` routes a 1x1 layer) or on at most
    :data:`PROJECT_DIRECT_MAX_CHANNELS` inputs, else the GEMM and the epilogue."""

    def __init__(self, w3: np.ndarray, b3: np.ndarray | None, zh: np.ndarray | None,
                 act3: tuple[int, float, float], size: tuple[int, int, int]) -> None:
        f32 = np.float32
        self.m3, self.k = w3.shape[0], w3.shape[1]
        self.out = new_output((*size, self.m3), f32)
        self.b3, self.act3 = b3, act3
        self.z2d = None if zh is None else zh.reshape(-1, self.m3)
        self.wide = direct.vector_lanes() == 16 and pointwise_wide.usable(self.k, self.m3)
        self.direct = self.wide or w3.size < direct.pointwise_max_weight() or (
            self.k <= PROJECT_DIRECT_MAX_CHANNELS and w3.size < direct.POINTWISE_MAX_WEIGHT)
        self.wt = w3.reshape(self.m3, self.k).T
        if self.wide:
            self.wp = packed(w3, ("pointwise-wide", "<f4"), pointwise_wide.pack)
            self.bp = np.zeros(self.m3, f32) if b3 is None else b3
        elif self.direct:
            self.wp = packed(w3, ("pointwise", 1, "<f4"), lambda a: direct.pack_pointwise(a, 1))
            self.bp = direct.pad_groups(b3, 1, self.m3, f32)
        if self.direct:
            self.z_ = np.zeros((0, self.m3), f32) if zh is None else self.z2d

    def __call__(self, src: np.ndarray, rows: tuple[int, int]) -> None:
        f32 = np.float32
        lo, hi = rows
        x2d, y2d = src.reshape(-1, self.k), self.out.reshape(-1, self.m3)
        act = self.act3
        if self.direct:
            z = self.z_ if self.z_.shape[0] == 0 else self.z_[lo:hi]
            if self.wide:
                pointwise_wide.pointwise_wide_rows(x2d, self.wp, self.bp, z, y2d[lo:hi], 0,
                                                   self.m3, act[0], f32(act[1]), f32(act[2]),
                                                   f32(1), 0, hi - lo)
                return
            direct.pointwise_rows(x2d, self.wp, self.bp, z, y2d[lo:hi], 0, 1, self.m3, 1,
                                  act[0], f32(act[1]), f32(act[2]), f32(1), 0, hi - lo)
        else:
            gemm(x2d, self.wt, y2d[lo:hi])
            apply_epilogue(y2d[lo:hi], self.b3, None if self.z2d is None else self.z2d[lo:hi],
                           act, parallel=False)


# --- the first layer's rows ----------------------------------------------------------------------
def _expansion(xh: np.ndarray, w1: np.ndarray, b1: np.ndarray | None,
               act1: tuple[int, float, float], mid: tuple) -> Callable:
    """``fill(n0, n1, r0, r1, buf)``: the 1x1 expansion of rows [r0, r1) of images n0..n1
    of the NHWC ``xh``. The BLAS's 16-lane GEMM, then the epilogue on the block in cache,
    where the convolutions route 1x1 layers to it (from :data:`MKL_MIN_CHANNELS` input
    channels) and oneMKL runs it or :mod:`.pointwise_wide` cannot; else the 16-lane or 8-lane
    direct kernel, epilogue fused."""
    c, m = xh.shape[3], w1.shape[0]
    f32 = np.float32
    wide = direct.vector_lanes() == 16 and pointwise_wide.usable(c, m)
    mkl = direct.pointwise_max_weight() == 0 and c >= MKL_MIN_CHANNELS \
        and (blas.backend() == "mkl" or not wide)
    wide = wide and not mkl
    wt1 = w1.reshape(m, c).T
    if wide:
        wp1 = packed(w1, ("pointwise-wide", "<f4"), pointwise_wide.pack)
        bp1 = np.zeros(m, f32) if b1 is None else b1
    else:
        wp1 = packed(w1, ("pointwise", 1, "<f4"), lambda a: direct.pack_pointwise(a, 1))
        bp1 = direct.pad_groups(b1, 1, m, f32)
    no_z = np.zeros((0, m), f32)

    def fill(n0: int, n1: int, r0: int, r1: int, buf: np.ndarray) -> None:
        x2d, b2d = xh[n0:n1, r0:r1].reshape(-1, c), buf.reshape(-1, m)
        if mkl:
            gemm(x2d, wt1, b2d)
            apply_epilogue(b2d, b1, None, act1, parallel=False)
        elif wide:
            pointwise_wide.pointwise_wide_rows(x2d, wp1, bp1, no_z, b2d, 0, m, act1[0],
                                               f32(act1[1]), f32(act1[2]), f32(1), 0,
                                               x2d.shape[0])
        else:
            direct.pointwise_rows(x2d, wp1, bp1, no_z, b2d, 0, 1, m, 1, act1[0], f32(act1[1]),
                                  f32(act1[2]), f32(1), 0, x2d.shape[0])

    return fill


def _stem(x: np.ndarray, w1: np.ndarray, b1: np.ndarray | None,
          act1: tuple[int, float, float], mid: tuple) -> Callable:
    """``fill``: output rows [r0, r1) of the few-channel first layer on images n0..n1 of the
    NCHW ``x`` (:func:`.direct.few_channels_rows`, or :func:`_dense`'s kernel reading NCHW
    where :func:`.conv.stem_is_wide`; a band's rows as an output of their own, its input
    rows offset through the top padding)."""
    (sh, sw), pb, (_, wo) = mid
    m, kh, kw = w1.shape[0], w1.shape[2], w1.shape[3]
    if stem_is_wide(x.shape[1], m, kh, kw, (sh, sw), wo, x.shape[3], pb[1]):
        return _dense(x, w1, b1, act1, mid, nchw=True)
    f32 = np.float32
    bp = np.zeros(m, f32) if b1 is None else b1
    wp = packed(w1, ("few-channels", "<f4"), pack_few_channels)
    tag = lanes_tag(direct.vector_lanes() if m % 16 == 0 else 8)

    def fill(n0: int, n1: int, r0: int, r1: int, buf: np.ndarray) -> None:
        direct.few_channels_rows(x[n0:n1], wp, bp, buf, 0, kh, kw, sh, sw, pb[0] - r0 * sh,
                                 pb[1], act1[0], f32(act1[1]), f32(act1[2]), f32(1), 0,
                                 (n1 - n0) * (r1 - r0), tag, (0,) * kw)

    return fill


def _dense(xh: np.ndarray, w1: np.ndarray, b1: np.ndarray | None,
           act1: tuple[int, float, float], mid: tuple, nchw: bool = False) -> Callable:
    """``fill``: output rows [r0, r1) of a dense convolution :mod:`.dense_wide` takes, on
    images n0..n1 of the NHWC ``xh`` (NCHW with ``nchw``: a stem's input; a band's rows
    offset as in :func:`_stem`)."""
    (sh, sw), pb, _ = mid
    m, kh, kw = w1.shape[0], w1.shape[2], w1.shape[3]
    f32 = np.float32
    wp = packed(w1, ("dense-wide", "<f4"), dense_wide.pack)
    bp = np.zeros(m, f32) if b1 is None else b1

    def fill(n0: int, n1: int, r0: int, r1: int, buf: np.ndarray) -> None:
        dense_wide.dense_wide_rows(xh[n0:n1], wp, bp, buf, 0, kh, kw, sh, sw, pb[0] - r0 * sh,
                                   pb[1], act1[0], f32(act1[1]), f32(act1[2]), f32(1), 0,
                                   (n1 - n0) * (r1 - r0), nchw)

    return fill


_FILLERS = {"expand": _expansion, "stem": _stem, "dense": _dense}


# --- the window layer's rows ---------------------------------------------------------------------
def _depthwise_rows(w2: np.ndarray, b2: np.ndarray | None, act2: tuple[int, float, float],
                    out: tuple) -> Callable:
    """``window(buf, dst, ph, count)`` for a depthwise convolution
    (:func:`.depthwise.depthwise_rows`)."""
    (sh, sw), pb, _ = out
    m, kw = w2.shape[0], w2.shape[3]
    f32 = np.float32
    wp = packed(w2, ("depthwise", "<f4"), pack_depthwise)
    bp = np.zeros(m, f32) if b2 is None else b2
    tag, ktag, stag = lanes_tag(direct.vector_lanes()), (0,) * kw, (0,) * sw

    def window(buf: np.ndarray, dst: np.ndarray, ph: int, count: int) -> None:
        depthwise.depthwise_rows(buf, wp, bp, dst, 0, sh, stag, ph, pb[1], act2[0],
                                 f32(act2[1]), f32(act2[2]), f32(1), 0, count, tag, ktag)

    return window


def _max_pool_rows(pool: _MaxPool, out: tuple) -> Callable:
    """``window(buf, dst, ph, count)`` for a MaxPool (:func:`.pool.max_pool_into`; a tap outside
    the band is outside the image, as the band holds every row its windows read)."""
    (sh, sw), pb, _ = out
    (kh, kw), (dh, dw) = pool.k, pool.d
    fill = np.finfo(np.float32).min

    def window(buf: np.ndarray, dst: np.ndarray, ph: int, count: int) -> None:
        max_pool_into(buf, dst, 0, (kh, kw), (sh, sw), (dh, dw), (ph, pb[1]), fill, 0, count)

    return window
