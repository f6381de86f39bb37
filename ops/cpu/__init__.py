"""Numba/BLAS ``cpu`` kernels, registered on import (``taskflow.ops`` imports this package).

Each module registers the cpu kernels of one op family with :func:`register_kernel`; every
kernel takes the reference's arguments, agrees with it (tests/ops/test_cpu_kernels.py), and
runs the reference itself for cases outside its fast paths. :mod:`.common` holds what they
share: the channels-last layout, the kernel threads, scratch and recycled output buffers and
the packed-weight cache; :mod:`.warmup` compiles them all (``taskflow warmup``).

    conv.py      Conv, FusedConv (1x1 GEMM, im2col + GEMM, depthwise)   winograd.py  3x3 F(2,3)
    matmul.py    Gemm, FusedGemm, FusedMatMul                          epilogue.py  bias/act/res
    pool.py      MaxPool, AveragePool, Global*Pool, LRN                norm.py      BN(+act) LN IN
    eltwise.py   activations, Add/Sub/Mul/Div, Softmax, Gelu, Erf      movement.py  Concat, shuffle
    movement.py  also im2col, the convolutions' GEMM operand (float32, bf16 bits, uint8)
    blas.py      the GEMM all of them call (oneMKL's sequential sgemm, else numpy's)
    lowp.py      bf16 and int8 GEMMs of FusedConv/Gemm/MatMul's ``precision`` (oneMKL or
                 dotgemm.py's VNNI / AVX512-BF16 kernels, else emulated); lowp_engine.py
                 which of them runs here (cpu_features, lowp_backend, dot_kernels)
    lowp_rows.py their row blocks (conversion, GEMM, epilogue) as one Numba call each
    sparse.py    CSR weights of FusedConv/Gemm/MatMul's ``sparse`` (oneMKL's sparse BLAS, else
                 a Numba loop); sparse_backend
    attention.py batched MatMul, FusedAttention (strided batch GEMMs per group of heads)
    skip_norm.py FusedAddLayerNorm (residual add + LayerNormalization, one pass per row)
    squeeze_excite.py  FusedSqueezeExcite (pool, two GEMVs, scale: one sweep per sample)
    direct.py    register-blocked convolutions (stems, small 1x1, dense KxK), and depthwise.py
                 the depthwise one, on simd.py's 8- and 16-lane vector types; dense_wide.py
                 the 16-lane dense KxK one (6 pixels x 64 outputs, AVX-512);
                 pointwise_wide.py the 16-lane 1x1 one on few input channels
    chains.py    adjacent layers as one pass (conv -> depthwise/MaxPool -> squeeze-excite ->
                 1x1 projection), for the executor's untraced runs
    cache.py     drops cached kernels compiled from older sources (Numba cannot tell)
"""

from __future__ import annotations

from .cache import invalidate_stale

invalidate_stale()  # before any kernel module loads its cached machine code

from . import (  # noqa: E402, F401  (register kernels)
    attention,
    conv,
    eltwise,
    matmul,
    movement,
    norm,
    pool,
    skip_norm,
    squeeze_excite,
)
