"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3), NHWC.

Each 2x2 block of output pixels ("tile") comes from a 4x4 input patch. With
``V = B^T d B`` (input patch, per channel), ``U = G g G^T`` (filter, per channel pair) and
``Y = A^T [U . V] A``, the 36 multiplies per tile and channel pair of the direct method become
16, and the element-wise products over channels are 16 GEMMs ``(tiles, C) @ (C, M)``, one per
position of the 4x4 transformed patch, which BLAS runs at full speed. 2.25x fewer GEMM FLOPs
than im2col for the same layer.

F(2x2, 3x3) is the accurate member of the family: its transforms only add, subtract and halve,
so float32 results stay within a few ulps of the direct sum's magnitude (the larger tiles,
F(4x4, 3x3), multiply by up to 8 and lose about two more digits, beyond the 1e-4 bar the
conformance suite sets against ONNX Runtime).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import blas
from .blas import batch_function, gemm_batch
from .common import MIN_TASK_FLOPS, packed, run_tasks, scratch, threads
from .epilogue import activate_row

#: The filter transform G of F(2x2, 3x3) (B^T and A^T are written out in the kernels).
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: Transformed input + GEMM output per task: fits this machine's 2 MiB L2 with the weights
#: streaming past...
SLICE_BYTES = 3 << 19
#: ...while each of the 16 GEMMs keeps enough rows to amortise BLAS packing its weight
#: block (up to 1 MiB on ResNet's last stage) once per call.
MIN_TILES = 256
#: Below this many input channels the 16 GEMMs (K = channels) are too thin for BLAS to pay for
#: the transforms: measured against oneMKL on SqueezeNet's layers, im2col won at 16 and 32
#: channels (K = 144, 288), Winograd from 48 up (1.2x at 48, 1.3-1.5x at 64-128).
MIN_CHANNELS = 40
#: :data:`MIN_CHANNELS` where OpenBLAS runs the GEMMs (its batch call runs the 16): on the
#: Zen 4 VM, batch 32, against the 16-lane direct kernel or im2col, Winograd won from 24
#: channels (2 threads: 24 -> 96 on 28 x 28 1.4x, 32 -> 32 on 56 x 56 1.37x, 32 -> 128 on
#: 27 x 27 1.06x (1 thread 1.14x), 24 -> 64 1.07x) and lost at 16 (16 -> 64 on 55 x 55 0.9x).
MIN_CHANNELS_OPENBLAS = 24


def transform_filter(w: np.ndarray) -> np.ndarray:
    """(M, C, 3, 3) -> U, (16, C, M): G g G^T for every (m, c), in float64 then cast."""
    u = np.einsum("ai,mcij,bj->abcm", G, w.astype(np.float64), G)
    return np.ascontiguousarray(u.reshape(16, w.shape[1], w.shape[0]), dtype=w.dtype)


@njit(cache=True, inline="always")
def _sub(out, a, b):
    for k in range(out.shape[0]):
        out[k] = a[k] - b[k]


@njit(cache=True, inline="always")
def _add(out, a, b):
    for k in range(out.shape[0]):
        out[k] = a[k] + b[k]


@njit(cache=True, nogil=True, error_model="numpy")
def _input_transform(x, v, t0, tiles_h, tiles_w, pt, pl, zero, rows):
    """v[e, t, :] = (B^T d B)[e] for the 4x4 input patch d of tile t0 + t (zero outside x).

    B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]. Each step is a loop over channels
    with one output and two inputs, which LLVM vectorises (``rows`` (16, C) is scratch).
    """
    h, w = x.shape[1], x.shape[2]
    per_image = tiles_h * tiles_w
    for t in range(v.shape[1]):
        tile = t0 + t
        n = tile // per_image
        ih0 = ((tile % per_image) // tiles_w) * 2 - pt
        iw0 = (tile % tiles_w) * 2 - pl
        for j in range(4):  # rows of B^T d, one patch column j at a time
            iw = iw0 + j
            inside = 0 <= iw < w
            d0 = x[n, ih0, iw] if inside and 0 <= ih0 < h else zero
            d1 = x[n, ih0 + 1, iw] if inside and 0 <= ih0 + 1 < h else zero
            d2 = x[n, ih0 + 2, iw] if inside and 0 <= ih0 + 2 < h else zero
            d3 = x[n, ih0 + 3, iw] if inside and 0 <= ih0 + 3 < h else zero
            _sub(rows[j], d0, d2)
            _add(rows[4 + j], d1, d2)
            _sub(rows[8 + j], d2, d1)
            _sub(rows[12 + j], d1, d3)
        for i in range(4):  # columns: (B^T d) B
            r = 4 * i
            _sub(v[r, t], rows[r], rows[r + 2])
            _add(v[r + 1, t], rows[r + 1], rows[r + 2])
            _sub(v[r + 2, t], rows[r + 2], rows[r + 1])
            _sub(v[r + 3, t], rows[r + 1], rows[r + 3])


@njit(cache=True, nogil=True, error_model="numpy")
def _output_transform(m, y, c0, t0, tiles_h, tiles_w, bias, z, act, p0, p1, one):
    """y's 2x2 block of tile t0 + t = act(A^T m[:, t] A + bias + z) (A^T = [[1,1,1,0],
    [0,1,-1,-1]]), in channels ``c0:c0 + M`` of y; pixels past the output's edge are
    dropped."""
    ho, wo, mm = y.shape[1], y.shape[2], m.shape[2]
    per_image = tiles_h * tiles_w
    has_bias = bias.shape[0] == mm
    has_z = z.shape[0] == y.shape[0]
    for t in range(m.shape[1]):
        tile = t0 + t
        n = tile // per_image
        oh = ((tile % per_image) // tiles_w) * 2
        ow = (tile % tiles_w) * 2
        for a in range(2):
            if oh + a >= ho:
                continue
            for b in range(2):
                if ow + b >= wo:
                    continue
                out = y[n, oh + a, ow + b, c0:c0 + mm]
                for k in range(mm):
                    # rows of A^T m, then the column of A picked by b
                    if a == 0:
                        s0 = m[0, t, k] + m[4, t, k] + m[8, t, k]
                        s1 = m[1, t, k] + m[5, t, k] + m[9, t, k]
                        s2 = m[2, t, k] + m[6, t, k] + m[10, t, k]
                        s3 = m[3, t, k] + m[7, t, k] + m[11, t, k]
                    else:
                        s0 = m[4, t, k] - m[8, t, k] - m[12, t, k]
                        s1 = m[5, t, k] - m[9, t, k] - m[13, t, k]
                        s2 = m[6, t, k] - m[10, t, k] - m[14, t, k]
                        s3 = m[7, t, k] - m[11, t, k] - m[15, t, k]
                    val = s0 + s1 + s2 if b == 0 else s1 - s2 - s3
                    if has_bias:
                        val += bias[k]
                    if has_z:
                        val += z[n, oh + a, ow + b, k]
                    out[k] = val
                activate_row(out, act, p0, p1, one)


def usable(w: np.ndarray, group: int, strides, dilations) -> bool:
    """Whether F(2x2, 3x3) applies: a dense 3x3 stride-1 undilated filter on enough
    channels (for the library that runs the GEMMs)."""
    least = MIN_CHANNELS_OPENBLAS if blas.backend() == "openblas" else MIN_CHANNELS
    return (w.shape[2:] == (3, 3) and group == 1 and tuple(strides) == (1, 1)
            and tuple(dilations) == (1, 1) and w.shape[1] >= least)


def conv3x3(xh: np.ndarray, w: np.ndarray, bias: np.ndarray | None, zh: np.ndarray | None,
            pads: tuple[int, int], y: np.ndarray, act: tuple[int, float, float],
            c0: int = 0) -> None:
    """Write act(conv(xh, w) + bias + zh) into channels ``c0:c0 + M`` of ``y`` (all NHWC,
    C-contiguous; 3x3, stride 1)."""
    n, c = xh.shape[0], xh.shape[3]
    m = w.shape[0]
    dtype = xh.dtype
    ho, wo = y.shape[1], y.shape[2]
    tiles_h, tiles_w = -(-ho // 2), -(-wo // 2)
    tiles = n * tiles_h * tiles_w
    u = packed(w, ("winograd", dtype.str), lambda a: transform_filter(a.astype(dtype)))
    zero = np.zeros(c, dtype)
    bias_ = np.zeros(0, dtype) if bias is None else bias
    z_ = np.zeros((0, 0, 0, 0), dtype) if zh is None else zh
    t = dtype.type
    p0, p1 = t(act[1]), t(act[2])
    step = max(MIN_TILES, SLICE_BYTES // (16 * (c + m) * dtype.itemsize))
    # a task for every kernel thread, unless tasks would get tiny (32 FLOPs a tile and pair)
    step = max(MIN_TASK_FLOPS // (32 * c * m), min(step, -(-tiles // threads())))
    matmul = product(dtype)

    def work(i: int) -> None:
        t0 = i * step
        count = min(tiles, t0 + step) - t0
        v = scratch("winograd-in", (16, count, c), dtype)
        prod = scratch("winograd-out", (16, count, m), dtype)
        _input_transform(xh, v, t0, tiles_h, tiles_w, pads[0], pads[1], zero,
                         scratch("winograd-rows", (16, c), dtype))
        # 16 GEMMs in one call (GIL released): numpy's (OpenBLAS per item) or MKL's batch,
        # for float32 (see product)
        matmul(v, u, out=prod)
        _output_transform(prod, y, c0, t0, tiles_h, tiles_w, bias_, z_, act[0], p0, p1, t(1))

    run_tasks(work, -(-tiles // step))


def _numpy_product(v: np.ndarray, u: np.ndarray, out: np.ndarray) -> None:
    np.matmul(v, u, out=out)


def _batch_product(v: np.ndarray, u: np.ndarray, out: np.ndarray) -> None:
    gemm_batch(v, u, out)


def product(dtype: np.dtype):
    """The call for a task's 16 products ``(tiles, C) @ (C, M)``: the strided batch GEMM of
    :func:`.blas.batch_function` (OpenBLAS's or MKL's) for float32, else numpy's matmul.

    Not numpy's (its own OpenBLAS, one sgemm per matrix) when there is one: on a 2-core AVX2
    EPYC, numpy's OpenBLAS 0.3.31 ran the same product, e.g. (256, 64) @ (64, 64),
    (256, 128) @ (128, 128) or (256, 64) @ (64, 256), at 30-35 GFLOP/s per core or at 9-20
    depending on where its buffers lay (not on the shape or the data), while MKL's batch GEMM
    ran every one at 28-34. SqueezeNet's fire8/9 expand 3x3 (64 -> 256 channels, 13x13, batch
    32, 2 threads) took 45 ms each with numpy, 23 ms with MKL.
    """
    if np.dtype(dtype) == np.float32 and batch_function() is not None:
        return _batch_product
    return _numpy_product
