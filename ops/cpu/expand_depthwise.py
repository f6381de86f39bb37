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
from . import depthwise, direct
from .blas import gemm
from .common import as_nhwc, nchw_view, new_output, packed, run_tasks, scratch, threads
from .epilogue import activation_code, apply_epilogue
from .simd import lanes_tag

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


def pair(pw: Any, dw: Any, constants: Mapping[str, np.ndarray]) -> Callable | None:
    """``run(pw_args, dw_weights) -> output or None`` for an expansion node ``pw`` followed by
    the depthwise node ``dw`` that reads its output (the caller checks that nothing else
    does), or None where the two do not make such a pair. ``pw_args`` are the expansion's
    inputs, ``dw_weights`` the depthwise node's inputs after its first."""
    if not (_plain(pw) and _plain(dw)) or dw.inputs[0] != pw.outputs[0]:
        return None
    w1, w2 = constants.get(pw.inputs[1]), constants.get(dw.inputs[1])
    if w1 is None or w2 is None or w1.ndim != 4 or w2.ndim != 4 or w1.shape[2:] != (1, 1):
        return None
    m = w1.shape[0]
    a1, a2 = pw.attrs, dw.attrs
    if int(a1.get("group", 1)) != 1 or int(a2.get("group", 1)) != m or w2.shape[:2] != (m, 1):
        return None
    if any(int(p) for p in a1.get("pads") or ()) or any(int(s) != 1 for s in a1.get("strides")
                                                        or ()) \
            or _text(a1.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        return None
    if m % 8 or w1.shape[1] * m >= direct.POINTWISE_MAX_WEIGHT or w1.dtype != np.float32 \
            or w2.dtype != np.float32:
        return None
    act1, act2 = _act(pw), _act(dw)
    if act1 is None or act2 is None:
        return None
    kh, kw = w2.shape[2:]
    strides, _ = spatial_attrs(2, a2.get("strides"), None)
    pads, auto_pad = a2.get("pads"), _text(a2.get("auto_pad", "NOTSET"))

    def run(pw_args: list, dw_weights: list) -> np.ndarray | None:
        x, b1 = pw_args[0], pw_args[2] if len(pw_args) > 2 else None
        b2 = dw_weights[1] if len(dw_weights) > 1 else None
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 \
                or x.shape[0] == 0 or x.shape[1] != w1.shape[1] \
                or any(b is not None and (b.dtype != np.float32 or b.size != m)
                       for b in (b1, b2)):
            return None
        xh = as_nhwc(x)
        if not xh.flags.c_contiguous:
            return None
        try:
            pb, pe = resolve_pads(x.shape[2:], (kh, kw), strides, (1, 1), pads, auto_pad)
        except Exception:  # the nodes' own kernels raise the right error
            return None
        ho, wo = ((i + b + e - k) // s + 1 for i, b, e, k, s in
                  zip(x.shape[2:], pb, pe, (kh, kw), strides))
        if ho <= 0 or wo <= 0:
            return None
        return expand_depthwise(xh, w1, b1, act1, w2, b2, act2, strides, pb, (ho, wo))

    return run


def expand_depthwise(xh: np.ndarray, w1: np.ndarray, b1: np.ndarray | None,
                     act1: tuple[int, float, float], w2: np.ndarray, b2: np.ndarray | None,
                     act2: tuple[int, float, float], s, pb, out) -> np.ndarray:
    """act2(depthwise(act1(1x1(xh, w1) + b1), w2) + b2) for the NHWC float32 ``xh``; returns
    the logical NCHW view of the NHWC output.

    Tasks are whole images, as many as fit :data:`BLOCK_BYTES` expanded, while there are at
    least two per kernel thread; else bands of output rows of one image, each expanding the
    input rows its taps read (a band's first ``KH - stride`` rows are also its
    predecessor's)."""
    n, h, wd, c = xh.shape
    m, kh, kw = w2.shape[0], w2.shape[2], w2.shape[3]
    ho, wo = out
    sh, sw = s
    f32 = np.float32
    y = new_output((n, ho, wo, m), f32)
    # the expansion: MKL's 16-lane GEMM, then the epilogue on the block in cache, where the
    # convolutions route 1x1 layers to it; else the 8-lane direct kernel, epilogue fused
    mkl = direct.pointwise_max_weight() == 0 and c >= MKL_MIN_CHANNELS
    wt1 = w1.reshape(m, c).T
    wp1 = packed(w1, ("pointwise", 1, "<f4"), lambda a: direct.pack_pointwise(a, 1))
    bp1 = direct.pad_groups(b1, 1, m, f32)
    wp2 = packed(w2, ("depthwise", "<f4"), lambda a: np.ascontiguousarray(
        a[:, 0].transpose(1, 2, 0)))
    bp2 = np.zeros(m, f32) if b2 is None else b2
    no_z = np.zeros((0, m), f32)
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

    def task(i: int) -> None:
        n0, n1, o0, o1 = tasks[i]
        r0, r1 = 0, h  # whole images (whose rows are contiguous), or a band's input rows
        if bands > 1:
            r0, r1 = max(0, o0 * sh - pb[0]), min(h, (o1 - 1) * sh - pb[0] + kh)
        wide = scratch("expanded", (n1 - n0, r1 - r0, wd, m), f32)
        x2d, w2d = xh[n0:n1, r0:r1].reshape(-1, c), wide.reshape(-1, m)
        if mkl:
            gemm(x2d, wt1, w2d)
            apply_epilogue(w2d, b1, None, act1, parallel=False)
        else:
            direct.pointwise_rows(x2d, wp1, bp1, no_z, w2d, 0, 1, m, 1, act1[0], f32(act1[1]),
                                  f32(act1[2]), f32(1), 0, x2d.shape[0])
        # the band's rows as an image of their own: padding above only where row 0 is in it
        depthwise.depthwise_rows(wide, wp2, bp2, y[n0:n1, o0:o1], 0, sh, sw,
                                 pb[0] - o0 * sh + r0, pb[1], act2[0], f32(act2[1]),
                                 f32(act2[2]), f32(1), 0, (n1 - n0) * (o1 - o0), tag, ktag)

    run_tasks(task, len(tasks))
    return nchw_view(y)
