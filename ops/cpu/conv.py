"""Numba/BLAS kernels for Conv and FusedConv, chosen by shape.

All paths compute in NHWC (see :mod:`.common`) and return the logical NCHW view:

- **register-blocked direct kernels** (:mod:`.direct`, float32): depthwise; with AVX-512,
  one-group 1x1 layers with whole 16-lane vectors of outputs (:mod:`.pointwise_wide`: on
  any number of inputs, or on at most 64 where oneMKL runs the GEMMs); other 1x1 whose
  weight per group is under 64K elements (any group width, ShuffleNet's folded channel
  shuffle included); few-channel stems read in NCHW; dense KxK on few channels or strided
  (with AVX-512, 6 pixels by 64 outputs in 16-lane registers: :mod:`.dense_wide`);
- **patch embeddings** (kernel = stride, unpadded): NCHW patches as GEMM rows (:mod:`.patches`);
- **1x1, stride 1, no padding**, larger weights: the NHWC input already is the
  ``(N*H*W, C)`` column matrix, so the convolution is a plain GEMM with the weight (a view,
  no copy); with few narrow groups, one GEMM with the block-diagonal weight;
- **3x3, stride 1, >= 40 channels**: Winograd F(2x2, 3x3) (:mod:`.winograd`), 2.25x fewer
  multiplies in 16 GEMMs;
- **depthwise** in other dtypes or with a residual: a direct loop, vectorised along
  channels, with the epilogue applied to each output pixel while it is in registers;
- **everything else** (KxK, strided 1x1, grouped): im2col into a per-thread scratch buffer,
  one slice of output rows at a time, and one BLAS GEMM per slice (and group) written
  straight into the output; columns are ordered (group, kh, kw, c) so each group's block is
  contiguous and BLAS reads it in place (:func:`.blas.gemm`: MKL's sgemm, or numpy's).

FusedConv's ``precision`` ("bf16", "int8") swaps each GEMM of the 1x1 and im2col paths for
:mod:`.lowp`'s reduced one on the weight packed once; an im2col slice is quantised after the
copy, so padding (zeros) becomes the zero point, as in the reference. Winograd is skipped; a
depthwise convolution runs its float32 loops on the fake-quantised input and weight (the
reference's definition; the precision passes do not mark depthwise layers).
``sparse=1`` makes the 1x1 path (one group, float32, no precision) multiply by W in CSR
(:mod:`.sparse`); other convolutions ignore it.

Slices are the tasks the kernel threads share (:func:`.common.run_tasks`); after each
slice's GEMM the epilogue (bias, residual, activation) runs on that slice while it is still in
cache. Shapes or dtypes outside these paths (1-D/3-D convolutions, integer or half dtypes,
an empty batch, invalid attributes) run the numpy reference, which also raises the
reference's errors.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import numpy as np
from numba import njit

from ..conv import conv as conv_reference
from ..conv import fused_conv as fused_conv_reference
from ..conv import resolve_pads, spatial_attrs
from ..quant import (
    dynamic_qparams,
    fake_quant_bf16,
    fake_quant_u8,
    quantize_weight_per_channel,
    to_handoff,
)
from ..registry import register_kernel
from . import dense_wide, depthwise, direct, lowp, lowp_rows, pointwise_wide, sparse, winograd
from .blas import gemm
from .common import (
    MIN_TASK_ELEMENTS,
    MIN_TASK_FLOPS,
    as_nhwc,
    fast_dtype,
    nchw_view,
    new_output,
    output_buffer,
    packed,
    run_ranges,
    run_tasks,
    scratch,
    threads,
    vector,
)
from .epilogue import activate_row, activation_code, apply_epilogue
from .movement import channel_shuffle_cpu, im2col, shuffle_row
from .patches import conv_patches, is_patch_embedding
from .simd import lanes_tag


def l2_bytes(default: int = 2 << 20) -> int:
    """One core's L2 cache in bytes, from Linux's sysfs (cpu0), else ``default``."""
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(os.path.join(index, "level")) as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(index, "size")) as f:
                size = f.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
        digits = size.rstrip("KMB")
        if digits.isdigit() and int(digits) > 0:
            return int(digits) * scale
    return default


#: Twice one core's L2 (4 MiB on the 2 MiB-L2 AVX-512 machine these were tuned on; 1 MiB on a
#: 512 KiB-L2 EPYC, where 4 MiB slices made SqueezeNet and ShuffleNet 4-5% slower at batch 32
#: on 2 threads: the epilogue re-read each slice's output from L3).
SLICE_BYTES = 2 * l2_bytes()
#: im2col slice size: large enough that each slice's GEMM runs near BLAS's full speed (it
#: re-packs the weight once per call), small enough to stay in L2 plus the shared L3 while
#: the GEMM reads it back.
IM2COL_SLICE_BYTES = SLICE_BYTES
#: A slice never has fewer rows than this (deep layers have 18 KiB rows): below it BLAS's
#: per-call weight packing dominates.
MIN_SLICE_ROWS = 256
#: A slice has at least (weight elements / this) rows, so that packing the weight stays a
#: small part of each GEMM call (measured: ResNet-50's 256->1024 1x1 ran 13% slower in
#: 1024-row slices than in one call).
WEIGHT_ROWS_RATIO = 64
#: A grouped 1x1 convolution with at most this many input channels, and fewer than
#: DENSE_GROUPED_MAX_PER_GROUP per group, runs as one GEMM with a block-diagonal weight
#: (measured against one BLAS call per group: faster up to K = 64 in all and 16 per group,
#: slower from 30 per group on).
DENSE_GROUPED_MAX_CHANNELS = 64
DENSE_GROUPED_MAX_PER_GROUP = 24
#: Multiply-adds per task of the direct kernels (depthwise, stems, dense; ~0.1-0.4 ms on one
#: core): MIN_TASK_ELEMENTS counted them before, and the digits CNN's first layer (0.6M
#: multiply-adds) went from 100 to 180 us when split in 3 tasks on a 2-core VM
MIN_TASK_MACS = 1 << 21
#: Output slice for the plain-GEMM path: the epilogue re-reads the slice from cache.
GEMM_SLICE_BYTES = SLICE_BYTES


@njit(cache=True, nogil=True, error_model="numpy")
def _depthwise(x, w, bias, z, y, c0, sh, sw, dh, dw, ph, pw, act, p0, p1, one, lo, hi):
    """y[n, oh, ow, c0 + c] = act(sum_{a,b} x[n, ih, iw, c] * w[a, b, c] + bias[c] + z[...]).

    x (N, H, W, C), w (KH, KW, C), z (N, Ho, Wo, C), y (N, Ho, Wo, >= c0 + C); an empty z
    means no residual. Output rows (n, oh) in [lo, hi).
    """
    n_, h, wd, c = x.shape
    kh, kw = w.shape[0], w.shape[1]
    ho, wo = y.shape[1], y.shape[2]
    has_z = z.shape[0] == n_ and n_ > 0
    for t in range(lo, hi):
        n = t // ho
        oh = t % ho
        acc = np.empty(c, y.dtype)
        for ow in range(wo):
            for k in range(c):
                acc[k] = 0
            for a in range(kh):
                ih = oh * sh - ph + a * dh
                if ih < 0 or ih >= h:
                    continue
                for b in range(kw):
                    iw = ow * sw - pw + b * dw
                    if iw < 0 or iw >= wd:
                        continue
                    for k in range(c):
                        acc[k] += x[n, ih, iw, k] * w[a, b, k]
            for k in range(c):
                acc[k] += bias[k]
            if has_z:
                for k in range(c):
                    acc[k] += z[n, oh, ow, k]
            activate_row(acc, act, p0, p1, one)
            out = y[n, oh, ow, c0:c0 + c]
            for k in range(c):
                out[k] = acc[k]


def _pack_kxk(w: np.ndarray, group: int) -> np.ndarray:
    """(M, C/g, KH, KW) -> (g, KH*KW*C/g, M/g): each group's GEMM right-hand side."""
    m, cg, kh, kw = w.shape
    return np.ascontiguousarray(
        w.reshape(group, m // group, cg, kh, kw).transpose(0, 3, 4, 2, 1)
        .reshape(group, kh * kw * cg, m // group))


def _block_diagonal(w: np.ndarray, group: int) -> np.ndarray:
    """A grouped 1x1 weight (M, C/g, 1, 1) as the dense (1, C, M) right-hand side whose
    off-group blocks are zero."""
    m, cg = w.shape[:2]
    mg = m // group
    dense = np.zeros((1, cg * group, m), w.dtype)
    for g in range(group):
        dense[0, g * cg:(g + 1) * cg, g * mg:(g + 1) * mg] = w[g * mg:(g + 1) * mg, :, 0, 0].T
    return dense


def pack_few_channels(w: np.ndarray) -> np.ndarray:
    """A first layer's weight (M, C, KH, KW) for :func:`.direct.few_channels_rows`: (C, KH,
    KW, M), flattened."""
    return np.ascontiguousarray(w.transpose(1, 2, 3, 0)).ravel()


def pack_depthwise(w: np.ndarray) -> np.ndarray:
    """A depthwise weight (C, 1, KH, KW) as (KH, KW, C): each tap's channels contiguous."""
    return np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))  # (KH, KW, C)


def _geometry(x: np.ndarray, w: np.ndarray, group: int, auto_pad: str,
              dilations: Sequence[int] | None, kernel_shape: Sequence[int] | None,
              pads: Sequence[int] | None, strides: Sequence[int] | None):
    """(strides, dilations, begin pads, output size) for a valid 2-D case, else None."""
    if x.ndim != 4 or w.ndim != 4 or x.shape[0] == 0:
        return None
    if kernel_shape is not None and tuple(kernel_shape) != w.shape[2:]:
        return None
    c, m = x.shape[1], w.shape[0]
    if group < 1 or c != w.shape[1] * group or m % group:
        return None
    s, d = spatial_attrs(2, strides, dilations)
    try:
        pb, pe = resolve_pads(x.shape[2:], w.shape[2:], s, d, pads, auto_pad)
    except Exception:  # the reference raises the right error
        return None
    out = [(i + b + e - (k - 1) * dd - 1) // ss + 1
           for i, b, e, k, dd, ss in zip(x.shape[2:], pb, pe, w.shape[2:], d, s)]
    if min(out) <= 0 or min(s) <= 0 or min(d) <= 0:
        return None
    return s, d, pb, out


def _fake_quant_weight(w: np.ndarray, precision: str) -> np.ndarray:
    """W as the reference sees it at ``precision``: bf16-rounded, or int8 per output channel."""
    if precision == "bf16":
        return fake_quant_bf16(w)
    q, scale = quantize_weight_per_channel(w, 0)
    return (q.astype(np.float32) * scale.reshape(-1, 1, 1, 1)).astype(w.dtype, copy=False)


def conv_nhwc(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, z: np.ndarray | None,
              group: int, s, d, pb, out, act: tuple[int, float, float], shuffle: int = 0,
              precision: str = "", x_scale: float = 0.0, x_zp: int = 0, use_sparse: int = 0,
              y_handoff: tuple[str, float, int] = ("", 0.0, 0)) -> np.ndarray:
    """The NHWC convolution with epilogue (and, for ``shuffle`` > 1, its output channels
    shuffled in that many groups); returns the logical NCHW view of the output.

    ``precision`` "bf16" / "int8" runs the reduced-precision GEMMs of :mod:`.lowp` on a
    float32 ``x``, or on an ``x`` handed over already narrow (bf16 bits as uint16, or uint8
    at ``x_scale`` / ``x_zp``); for int8 with ``x_scale`` 0 the scale and zero point come
    from the whole ``x`` (:func:`taskflow.ops.quant.dynamic_qparams`), before it is split
    into slices. ``y_handoff`` ``(precision, y_scale, y_zp)`` writes the output narrow the
    same way (one group only). ``use_sparse`` runs a float32 1x1 one-group convolution's
    GEMMs on W in CSR."""
    n, c = x.shape[:2]
    m, cg, kh, kw = w.shape
    ho, wo = out
    narrow_x = precision != "" and x.dtype != np.float32
    dtype = np.dtype(np.float32) if narrow_x else x.dtype
    vec_ok = not precision and not use_sparse and dtype == np.float32 and tuple(d) == (1, 1)
    simple = vec_ok and shuffle <= 1 and m % 8 == 0
    plain = simple and z is None
    if plain and group == 1 and c <= direct.FEW_CHANNELS_MAX \
            and c * kh * kw <= direct.FEW_CHANNELS_MAX_TAPS and x.flags.c_contiguous:
        return _few_channels(x, w, bias, s, pb, out, act)  # reads the NCHW input in place
    if plain and group == 1 and is_patch_embedding(x, (kh, kw), s, pb, d, out):  # reads it too
        return conv_patches(x, w, None if bias is None else vector(bias, dtype), act, out)
    xh = as_nhwc(x)
    if precision == "int8" and not x_scale:
        x_scale, x_zp = dynamic_qparams(xh)
    if precision and kh == kw == 1 and max(s) > 1 and not any(pb) and group == 1:
        # a strided 1x1 is a 1x1 on the pixels it reads: only those are converted, and its
        # GEMM reads them in place, with no im2col
        xh = np.ascontiguousarray(xh[:, ::s[0], ::s[1]])
        s = (1, 1)
    if precision and group == c == m and group > 1:
        # depthwise: the float32 loops on the fake-quantised operands (the definition)
        xq = fake_quant_bf16(xh) if precision == "bf16" else fake_quant_u8(xh, x_scale, x_zp)
        wq = packed(w, ("fake-quant", precision), lambda a: _fake_quant_weight(a, precision))
        return conv_nhwc(nchw_view(xq), wq, bias, z, group, s, d, pb, out, act, shuffle)
    # Written into channels c0:c0 + m of ``full``: an offered Concat buffer (ir.placement), else
    # a fresh output. One handed on narrow needs it in the emulation only (np.empty: no pages).
    full, c0 = (np.empty((n, ho, wo, m), dtype), 0) if y_handoff[0] else \
        output_buffer((n, ho, wo, m), dtype)
    y = full[..., c0:c0 + m]
    if bias is not None:
        bias = vector(bias, dtype)
    zh = None if z is None else as_nhwc(z.astype(dtype, copy=False))
    use_winograd = not precision and winograd.usable(w, group, s, d)
    if shuffle > 1 and (group == c == m or use_winograd):
        # the shuffle rides along with the GEMM paths' epilogue; here it is its own pass
        y = conv_nhwc(x, w, bias, z, group, s, d, pb, out, act)
        return channel_shuffle_cpu(y, group=shuffle)
    if group == c and m == c and group > 1:  # depthwise: direct loops
        wd = packed(w, ("depthwise", dtype.str), lambda a: pack_depthwise(a.astype(dtype)))
        t = dtype.type
        b_ = np.zeros(m, dtype) if bias is None else bias
        z_ = np.zeros((0, 0, 0, 0), dtype) if zh is None else zh
        blocked = plain and xh.flags.c_contiguous  # 4 pixels x 8 or 16 channels in registers
        tag = lanes_tag(direct.vector_lanes())

        def rows(lo: int, hi: int) -> None:
            if blocked:
                depthwise.depthwise_rows(xh, wd, b_, full, c0, s[0], (0,) * s[1], pb[0], pb[1],
                                         act[0], t(act[1]), t(act[2]), t(1), lo, hi, tag,
                                         (0,) * kw)
            else:
                _depthwise(xh, wd, b_, z_, full, c0, s[0], s[1], d[0], d[1], pb[0], pb[1],
                           act[0], t(act[1]), t(act[2]), t(1), lo, hi)

        run_ranges(rows, n * ho, max(1, MIN_TASK_MACS // (wo * m * kh * kw)))
        return nchw_view(y)
    if plain and group == 1 and not use_winograd and xh.flags.c_contiguous \
            and direct.vector_lanes() == 16 and dense_wide.usable(c, m, kh, kw, s, wo, xh.shape[2],
                                                                  pb[1]):
        _dense_wide(xh, w, np.zeros(m, dtype) if bias is None else bias, full, c0, s, pb, out,
                    act, False)
        return nchw_view(y)
    if plain and group == 1 and kh * kw > 1 and not use_winograd and xh.flags.c_contiguous \
            and wo >= direct.DENSE_MIN_WIDTH and direct.dense_max_taps() \
            and (kh * kw * c <= direct.dense_max_taps()
                 and kh * kw * c * m <= direct.DENSE_MAX_TAPS_X_M if max(s) == 1
                 else kh * kw * c <= direct.DENSE_MAX_STRIDED_TAPS):
        wp = packed(w, ("dense", dtype.str), lambda a: direct.pack_dense(a.astype(dtype)))
        b_ = direct.pad_groups(bias, 1, m, dtype)
        t = dtype.type
        run_ranges(lambda lo, hi: direct.dense_rows(
            xh, wp, b_, full, c0, kh, kw, s[0], s[1], pb[0], pb[1], act[0], t(act[1]),
            t(act[2]), t(1), lo, hi), n * ho, max(1, MIN_TASK_MACS // (wo * m * c * kh * kw)))
        return nchw_view(y)
    if use_winograd:
        winograd.conv3x3(xh, w, bias, zh, (pb[0], pb[1]), full, act, c0)
        return nchw_view(y)
    rows = n * ho * wo
    y2d = full.reshape(rows, full.shape[3])  # C-contiguous: our columns are c0:c0 + m
    # the output handed to the next layer narrow (bf16 bits / uint8): written by the fused row
    # blocks below, else (the emulation) converted from the float32 output at the end
    y_narrow = None if not y_handoff[0] else \
        new_output((n, ho, wo, m), np.uint16 if y_handoff[0] == "bf16" else np.uint8)
    # A reduced layer converts its input once (bf16 bits, or uint8 at the layer's scale),
    # before the im2col: a kxk layer's columns repeat each input value kh * kw times, and
    # its copies then move half (bf16) or a quarter (int8) of the bytes
    src_x, pad = xh, dtype.type(0)
    # a one-group 1x1 on MKL converts each block of rows in its GEMM task instead (no pass of
    # its own: ResNet-50's 256 -> 64 int8 1x1, batch 8, spent 2.5 of its 4 ms converting)
    mg = m // group
    # the GEMMs' right-hand sides, (group, K, M/group): float32/64 arrays, or with a
    # precision one lowp-packed weight per group
    pack = {"": None, "bf16": lowp.pack_bf16, "int8": lowp.pack_int8}[precision]

    def weights(how: str, layout) -> object:
        if pack is None:
            return packed(w, (how, group, dtype.str), lambda a: layout(a.astype(dtype)))
        return packed(w, (f"{how}-{precision}", group),
                      lambda a: [pack(g) for g in layout(a.astype(np.float32))])

    def one_by_one(a: np.ndarray) -> np.ndarray:
        return a.reshape(group, mg, c // group).transpose(0, 2, 1)

    late = precision != "" and not narrow_x and group == 1 and kh == kw == 1 and s == (1, 1) \
        and not any(pb) and lowp.mkl_functions(precision, c, precision == "int8" and weights(
            "1x1", one_by_one)[0].wmax) is not None
    if narrow_x:  # handed over converted by the layer before
        pad = xh.dtype.type(x_zp if precision == "int8" else 0)
    elif precision == "bf16" and not late:
        src_x, pad = lowp_rows.convert_input(xh, lowp.to_bf16, np.uint16), np.uint16(0)
    elif precision == "int8" and not late:
        src_x = lowp_rows.convert_input(
            xh, lambda a, o: lowp.quantize_u8(a, x_scale, x_zp, o), np.uint8)
        pad = np.uint8(x_zp)
    z2d = None if zh is None else zh.reshape(rows, m)
    csr = None
    if kh == kw == 1 and not any(pb) and (s == (1, 1) or vec_ok):
        # 1x1: the input is the column matrix (strided: its pixels subsampled, copied once);
        # the weight's transpose is a view
        x2d = (src_x if s == (1, 1) else np.ascontiguousarray(src_x[:, ::s[0], ::s[1]])
               ).reshape(rows, c)
        if vec_ok and group == 1 and shuffle <= 1 and direct.vector_lanes() == 16 \
                and pointwise_wide.usable(c, m) and xh.flags.c_contiguous \
                and (zh is None or zh.flags.c_contiguous):
            wp = packed(w, ("pointwise-wide", dtype.str), pointwise_wide.pack)
            bp = np.zeros(m, dtype) if bias is None else bias
            z_ = np.zeros((0, m), dtype) if zh is None else zh.reshape(rows, m)
            t = dtype.type
            run_ranges(lambda lo, hi: pointwise_wide.pointwise_wide_rows(
                x2d, wp, bp, z_, y2d, c0, m, act[0], t(act[1]), t(act[2]), t(1), lo, hi),
                rows, max(pointwise_wide.ROWS, MIN_TASK_MACS // (c * m)))
            return nchw_view(y)
        if vec_ok and cg * mg < direct.pointwise_max_weight() \
                and xh.flags.c_contiguous and (zh is None or zh.flags.c_contiguous):
            wp = packed(w, ("pointwise", group, dtype.str),
                        lambda a: direct.pack_pointwise(a.astype(dtype), group))
            bp = direct.pad_groups(bias, group, m, dtype)
            z_ = np.zeros((0, m), dtype) if zh is None else zh.reshape(rows, m)
            t = dtype.type
            run_ranges(lambda lo, hi: direct.pointwise_rows(
                x2d, wp, bp, z_, y2d, c0, group, m, max(shuffle, 1), act[0], t(act[1]),
                t(act[2]), t(1), lo, hi), rows, max(4, MIN_TASK_ELEMENTS // (4 * m)))
            return nchw_view(y)
        if use_sparse and group == 1 and pack is None and dtype == np.float32:
            csr = packed(w, ("csr", False), lambda a: sparse.pack_csr(a.reshape(m, c)))
            wt = None
        elif group > 1 and c <= DENSE_GROUPED_MAX_CHANNELS and cg < DENSE_GROUPED_MAX_PER_GROUP \
                and np.isfinite(np.sum(xh)):
            # few, narrow groups: one GEMM with the block-diagonal weight beats one BLAS call per
            # group, whose packing dominates at K = 3-16 (ShuffleNet's first 1x1, K = 6 per group:
            # 1.6x), despite ``group`` times the multiply-adds. Finite inputs only: inf * 0 = nan.
            wt = weights("dense1x1", lambda a: _block_diagonal(a, group))
            group, mg, cg = 1, m, c
        elif pack is None:
            wt = w.astype(dtype, copy=False).reshape(group, mg, cg).transpose(0, 2, 1)
        else:
            wt = weights("1x1", one_by_one)
        step = max(MIN_SLICE_ROWS, GEMM_SLICE_BYTES // (m * dtype.itemsize))
        kdim = cg
    else:
        wt = weights("kxk", lambda a: _pack_kxk(a, group))
        x2d = None
        kdim = kh * kw * cg
        step = max(MIN_SLICE_ROWS, min(IM2COL_SLICE_BYTES // (kdim * group * src_x.itemsize),
                                       GEMM_SLICE_BYTES // (m * dtype.itemsize)))

    # BLAS packs the weight once per call: a big weight gets proportionally taller slices
    step = max(step, kdim * mg // WEIGHT_ROWS_RATIO)
    # at least one slice per kernel thread, unless slices would get tiny
    step = max(MIN_TASK_FLOPS // (2 * kdim * m), min(step, -(-rows // threads())))

    fused = None
    if pack is not None and group == 1 and csr is None:
        fused = lowp_rows.conv_rows(precision, src_x, None if late else x2d, wt[0], kdim,
                                    step, (kh, kw, s, d, pb, ho, wo), pad,
                                    y2d if y_narrow is None else y_narrow.reshape(rows, m),
                                    c0, m, bias, z2d, act, x_scale, x_zp, y_handoff[1:],
                                    x2d if late else None)

    def work(i: int) -> None:
        r0 = i * step
        r1 = min(rows, r0 + step)
        if fused is not None:
            fused(r0, r1)
            if shuffle > 1:
                _shuffle_in_place(y2d[r0:r1], c0, m, shuffle, scratch("shuffle", (m,), dtype))
            return
        if x2d is None:
            src = scratch("im2col", (r1 - r0, kdim * group), src_x.dtype)
            im2col(src_x, src, r0, kh, kw, s[0], s[1], d[0], d[1], pb[0], pb[1], ho, wo, group,
                    pad)
        else:
            src = x2d[r0:r1]
        for g in range(group):
            a, dst = src[:, g * kdim:(g + 1) * kdim], y2d[r0:r1, c0 + g * mg:c0 + (g + 1) * mg]
            if csr is not None:
                sparse.csr_matmul(a, csr, dst)
            elif pack is None:
                gemm(a, wt[g], dst)
            elif precision == "bf16":
                lowp.gemm_bf16_bits(a, wt[g], dst)
            else:
                lowp.gemm_u8(a, wt[g], dst, x_scale, x_zp)
        apply_epilogue(y2d[r0:r1], bias, None if z2d is None else z2d[r0:r1], act,
                       parallel=False, c0=c0, width=m)
        if shuffle > 1:  # while the rows are in cache: no pass of its own over the output
            _shuffle_in_place(y2d[r0:r1], c0, m, shuffle, scratch("shuffle", (m,), dtype))

    run_tasks(work, -(-rows // step))
    if y_narrow is not None and fused is None:  # the emulation: convert as the reference does
        return nchw_view(to_handoff(y, *y_handoff))
    return nchw_view(y if y_narrow is None else y_narrow)


def _dense_wide(x: np.ndarray, w: np.ndarray, bias: np.ndarray, full: np.ndarray, c0: int, s,
                pb, out, act: tuple[int, float, float], nchw: bool) -> None:
    """:func:`.dense_wide.dense_wide_rows` over all output rows, into channels c0:c0 + M of
    ``full``: ``x`` NHWC, or NCHW (a first layer's input, read in place) with ``nchw``."""
    n, c = x.shape[0], x.shape[1] if nchw else x.shape[3]
    m, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = out
    t = x.dtype.type
    wp = packed(w, ("dense-wide", x.dtype.str), lambda a: dense_wide.pack(a.astype(x.dtype)))
    run_ranges(lambda lo, hi: dense_wide.dense_wide_rows(
        x, wp, bias, full, c0, kh, kw, s[0], s[1], pb[0], pb[1], act[0], t(act[1]), t(act[2]),
        t(1), lo, hi, nchw), n * ho, max(1, MIN_TASK_MACS // (wo * m * c * kh * kw)))


def stem_is_wide(c: int, m: int, kh: int, kw: int, s, wo: int, wd: int, pw: int) -> bool:
    """Whether a few-channel first layer (NCHW input) runs :func:`.dense_wide.dense_wide_rows`
    on its input in place: 16 lanes, whole 64-output blocks (SqueezeNet's, ResNet's, VGG's
    3 -> 64 stems), where :func:`.direct.few_channels_rows` holds 4 pixels by 32 outputs."""
    return direct.vector_lanes() == 16 and dense_wide.usable(c, m, kh, kw, s, wo, wd, pw)


def _few_channels(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, s, pb, out,
                  act: tuple[int, float, float]) -> np.ndarray:
    """A first layer's few-channel convolution by :func:`.direct.few_channels_rows`, or by
    :func:`.dense_wide.dense_wide_rows` where :func:`stem_is_wide`."""
    n, m, kh, kw = x.shape[0], w.shape[0], w.shape[2], w.shape[3]
    ho, wo = out
    full, c0 = output_buffer((n, ho, wo, m), x.dtype)
    wp = packed(w, ("few-channels", x.dtype.str), lambda a: pack_few_channels(a.astype(x.dtype)))
    b_ = np.zeros(m, x.dtype) if bias is None else vector(bias, x.dtype)
    t = x.dtype.type
    if stem_is_wide(x.shape[1], m, kh, kw, s, wo, x.shape[3], pb[1]):
        _dense_wide(x, w, b_, full, c0, s, pb, out, act, True)
        return nchw_view(full[..., c0:c0 + m])
    # 16 lanes where the outputs fill them: a last 8 channels would take the taps' broadcasts
    # again (ShuffleNet's 24-channel stem ran 1.25x slower so than on 8 lanes)
    tag = lanes_tag(direct.vector_lanes() if m % 16 == 0 else 8)
    run_ranges(lambda lo, hi: direct.few_channels_rows(
        x, wp, b_, full, c0, kh, kw, s[0], s[1], pb[0], pb[1], act[0], t(act[1]), t(act[2]),
        t(1), lo, hi, tag, (0,) * kw), n * ho,
        max(1, MIN_TASK_MACS // (wo * m * x.shape[1] * kh * kw)))
    return nchw_view(full[..., c0:c0 + m])


@njit(cache=True, nogil=True, error_model="numpy")
def _shuffle_in_place(y, c0, m, group, tmp):
    """y[r, c0:c0 + m] channel-shuffled in ``group`` groups (see ChannelShuffle), per row
    through the (m,) scratch row ``tmp``."""
    for r in range(y.shape[0]):
        row = y[r, c0:c0 + m]
        for k in range(m):
            tmp[k] = row[k]
        shuffle_row(tmp, row, group)


def _fast(X, W, B, Z, group, auto_pad, dilations, kernel_shape, pads, strides, act,
          shuffle=0, lowp_attrs=("", 0.0, 0), use_sparse=0, y_handoff=("", 0.0, 0)):
    if lowp_attrs is None:
        return None  # an invalid precision: the reference says why
    if y_handoff[0] and (y_handoff[0] != lowp_attrs[0] or group != 1 or shuffle):
        return None
    # a reduced layer's input may come narrow from the layer before (:func:`narrow_input`)
    narrow = narrow_input(X, *lowp_attrs)
    if narrow and group != 1:
        return None
    dtype = np.dtype(np.float32) if narrow else X.dtype
    if act is None or not fast_dtype(W) or W.dtype != dtype or (B is not None
                                                                  and B.dtype != dtype):
        return None
    if (lowp_attrs[0] and dtype != np.float32) or (  # float64
            Z is not None and (Z.dtype != dtype or Z.ndim != 4)):
        return None
    geo = _geometry(X, W, group, auto_pad, dilations, kernel_shape, pads, strides)
    if geo is None:
        return None
    s, d, pb, out = geo
    if (B is not None and B.size != W.shape[0]) or (
            Z is not None and Z.shape != (X.shape[0], W.shape[0], *out)):
        return None
    if shuffle and (shuffle < 1 or W.shape[0] % shuffle):
        return None  # the reference says why
    return conv_nhwc(X, W, B, Z, group, s, d, pb, out, act, shuffle, *lowp_attrs, use_sparse,
                     y_handoff)


def narrow_input(x: np.ndarray, precision: str, x_scale: float, x_zp: int) -> bool:
    """Whether ``x`` is a reduced layer's input handed over narrow by the layer before:
    bfloat16 bits (uint16) for bf16, uint8 values for a static int8 layer."""
    return (precision == "bf16" and x.dtype == np.uint16) or \
        (precision == "int8" and x_scale > 0 and x.dtype == np.uint8)


@register_kernel("Conv", "cpu")
def conv_cpu(X: np.ndarray, W: np.ndarray, B: np.ndarray | None = None, *,
             auto_pad: str = "NOTSET", dilations: Sequence[int] | None = None, group: int = 1,
             kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
             strides: Sequence[int] | None = None) -> np.ndarray:
    """Conv (see :func:`taskflow.ops.conv.conv`) in NHWC with BLAS and Numba."""
    y = _fast(X, W, B, None, group, auto_pad, dilations, kernel_shape, pads, strides,
              (0, 0.0, 0.0))
    if y is None:
        return conv_reference(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group,
                              kernel_shape=kernel_shape, pads=pads, strides=strides)
    return y


@register_kernel("FusedConv", "cpu")
def fused_conv_cpu(X: np.ndarray, W: np.ndarray, B: np.ndarray | None = None,
                   Z: np.ndarray | None = None, *, auto_pad: str = "NOTSET",
                   dilations: Sequence[int] | None = None, group: int = 1,
                   kernel_shape: Sequence[int] | None = None,
                   pads: Sequence[int] | None = None, strides: Sequence[int] | None = None,
                   activation: str = "",
                   activation_params: Sequence[float] | None = None,
                   channel_shuffle: int = 0, precision: str = "", x_scale: float = 0.0,
                   x_zero_point: int = 0, sparse: int = 0, y_precision: str = "",
                   y_scale: float = 0.0, y_zero_point: int = 0) -> np.ndarray:
    """FusedConv: the convolution's GEMM output gets bias, residual and activation in place
    (and the channel shuffle, row by row, while the rows are in cache); with a
    ``precision``, the GEMMs are :mod:`.lowp`'s bf16 or int8 ones, on an input given in
    float32 or already narrow, and with ``y_precision`` the output is written narrow (see
    :func:`taskflow.ops.conv.fused_conv`); with ``sparse``, a 1x1 convolution's are the CSR
    products of :mod:`.sparse`."""
    act = activation_code(activation, activation_params)
    shuffle = int(channel_shuffle) if int(channel_shuffle) > 1 else 0
    handoff = lowp.precision_attrs(y_precision, y_scale, y_zero_point)
    y = None if handoff is None or (handoff[0] == "int8" and not handoff[1]) else _fast(
        X, W, B, Z, group, auto_pad, dilations, kernel_shape, pads, strides, act, shuffle,
        lowp.precision_attrs(precision, x_scale, x_zero_point), int(sparse), handoff)
    if y is None:
        return fused_conv_reference(X, W, B, Z, auto_pad=auto_pad, dilations=dilations,
                                    group=group, kernel_shape=kernel_shape, pads=pads,
                                    strides=strides, activation=activation,
                                    activation_params=activation_params,
                                    channel_shuffle=channel_shuffle, precision=precision,
                                    x_scale=x_scale, x_zero_point=x_zero_point,
                                    sparse=sparse, y_precision=y_precision, y_scale=y_scale,
                                    y_zero_point=y_zero_point)
    return y



