"""Patch-embedding convolutions: kernel == stride, no padding (ViT's 16x16/16 stem, the
4x4/4 stems of ConvNeXt and Swin).

Each output pixel reads its own patch and no other pixel's, so the column matrix of the GEMM
is a permutation of the input: its row for output pixel (n, oh, ow) is the patch
``x[n, :, oh*kh:(oh+1)*kh, ow*kw:(ow+1)*kw]`` in (c, kh, kw) order, which is the order of the
weight's own (M, C*kh*kw) rows. :func:`patch_rows` gathers those rows for a block of output
rows straight from the NCHW input: each input row is read once, whole, and its ``wo`` runs of
``kw`` values go to ``wo`` column rows. The general path first converted the whole input to
NHWC (a pass of its own over 19 MB at ViT's batch 32, on one thread) and then ran im2col on
it. A task gathers its block into a per-thread scratch buffer that stays in L2, multiplies it
by the weight (MKL's sgemm) into its rows of the NHWC output, and runs the epilogue on them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .blas import gemm
from .common import MIN_TASK_FLOPS, nchw_view, output_buffer, packed, run_tasks, scratch, threads
from .epilogue import apply_epilogue

#: Column block per task: the gathered patches and the GEMM's output rows stay in one
#: core's L2 (2 MiB) while the GEMM reads them.
BLOCK_BYTES = 1 << 20


def is_patch_embedding(x: np.ndarray, kernel: tuple[int, int], strides, pads, dilations,
                       out) -> bool:
    """Whether :func:`conv_patches` takes the layer: a C-contiguous NCHW float32 input, the
    kernel's size equal to its stride (larger than 1), no dilation, no padding before and
    none read after (``pads``: the begin pads; ``out``: the output size)."""
    return (x.dtype == np.float32 and x.flags.c_contiguous and tuple(strides) == kernel
            and max(kernel) > 1 and not any(pads) and tuple(dilations) == (1, 1)
            and out[0] * kernel[0] <= x.shape[2] and out[1] * kernel[1] <= x.shape[3])


@njit(cache=True, nogil=True, error_model="numpy")
def patch_rows(x, cols, p0, p1, ho, wo, kh, kw):
    """Rows of ``cols`` for output rows (image, oh) = divmod(p, ho), p in [p0, p1): row
    ``(p - p0) * wo + ow`` is the (c, kh, kw)-ordered patch of output pixel (oh, ow)."""
    c = x.shape[1]
    for p in range(p0, p1):
        img = p // ho
        oh = p - img * ho
        base = (p - p0) * wo
        for ci in range(c):
            for i in range(kh):
                src = x[img, ci, oh * kh + i]
                col0 = (ci * kh + i) * kw
                for ow in range(wo):
                    dst = cols[base + ow, col0:col0 + kw]
                    run = src[ow * kw:ow * kw + kw]
                    for j in range(kw):
                        dst[j] = run[j]


def conv_patches(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                 act: tuple[int, float, float], out: tuple[int, int]) -> np.ndarray:
    """act(conv(x, w) + bias) for a layer :func:`is_patch_embedding` accepts; returns the
    logical NCHW view of the NHWC output (written into an offered Concat buffer if any)."""
    n, c = x.shape[:2]
    m, _, kh, kw = w.shape
    ho, wo = out
    k = c * kh * kw
    full, c0 = output_buffer((n, ho, wo, m), np.float32)
    y2d = full.reshape(n * ho * wo, full.shape[3])
    wt = packed(w, ("patches", "<f4"),
                lambda a: np.ascontiguousarray(a.astype(np.float32).reshape(m, k).T))
    pairs = n * ho  # (image, output row) pairs: each gives wo column rows
    step = max(1, BLOCK_BYTES // (wo * (k + m) * 4))
    # at least one task per kernel thread, unless tasks would get tiny
    step = max(MIN_TASK_FLOPS // (2 * wo * k * m) or 1, min(step, -(-pairs // threads())))

    def work(i: int) -> None:
        p0 = i * step
        p1 = min(pairs, p0 + step)
        cols = scratch("patches", ((p1 - p0) * wo, k), np.float32)
        patch_rows(x, cols, p0, p1, ho, wo, kh, kw)
        rows = y2d[p0 * wo:p1 * wo]
        gemm(cols, wt, rows[:, c0:c0 + m])
        apply_epilogue(rows, bias, None, act, parallel=False, c0=c0, width=m)

    run_tasks(work, -(-pairs // step))
    return nchw_view(full[..., c0:c0 + m])
