"""Every CuPy ``gpu`` kernel against its numpy reference (the definition).

The gpu kernels are array-module generic (``xp = array_module(x)``), so without a GPU each one
runs here on numpy arrays standing in for CuPy arrays: that checks its logic (indexing, dtypes,
broadcasting, edge shapes), not CuPy. The same cases run again on CuPy arrays in the tests
marked ``gpu``, which skip with the reason where CuPy or a CUDA device is missing.

The cases are the cpu kernels' (``taskflow.ops.cpu.warmup.CASES``: every compiled path, at the
case's batch and at an empty batch, one sample and a ragged 3) plus :data:`GPU_CASES` for the
ops only the gpu registers (the transformer and mobile-CNN models' shape plumbing, reductions,
the rest of the elementwise family) and for paths the cpu cases do not reach. Which ops must
have a gpu kernel is read from the registry, so a new cpu kernel without a gpu one fails
:func:`test_every_cpu_kernel_has_a_gpu_kernel`, naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import taskflow.ops as ops
from onnx import TensorProto
from taskflow.ops import registry
from taskflow.ops.cpu.warmup import CASES as CPU_CASES
from taskflow.ops.device import gpu_problem, to_host

from .oracles import assert_close

#: Ops the transformer (MiniLM, ViT, GPT) and mobile-CNN (MobileNetV3, ShuffleNet, SqueezeNet)
#: exports run after optimisation that have no cpu kernel (found by loading them: their shape
#: plumbing, masks and pooled-embedding steps). The cpu-kernel ops come from the registry.
MODEL_OPS = ("Cast", "Concat", "Equal", "Expand", "Flatten", "Gather", "Range", "ReduceL2",
             "ReduceMean", "ReduceSum", "Reshape", "Shape", "Slice", "Split", "Sqrt", "Squeeze",
             "Transpose", "Unsqueeze", "Where")

#: Outputs that depend on shapes and attributes only, never on the input values.
DATA_FREE = {"Shape", "Size", "Constant", "ConstantOfShape", "EyeLike"}

Maker = Callable[..., Any]


# --- input makers: (rng, dtype, batch) -> array; ``batch`` replaces a batched input's dim 0 ---
def x(*shape: int, scale: float = 1.0, special: bool = False, batched: bool = True) -> Maker:
    def make(rng: np.random.Generator, dtype: Any, batch: int | None) -> np.ndarray:
        full = shape if batch is None or not batched else (batch, *shape[1:])
        a = (rng.standard_normal(full) * scale).astype(dtype)
        if special and a.size:  # nan and +-inf at random places
            flat = a.reshape(-1)
            for v in (np.nan, np.inf, -np.inf):
                flat[rng.integers(0, flat.size, 2)] = v
        return a
    return make


def halves(*shape: int, batched: bool = True) -> Maker:
    """Floats among -1, -0.5, 0, 0.5, 1: equal values are common."""
    def make(rng: np.random.Generator, dtype: Any, batch: int | None) -> np.ndarray:
        full = shape if batch is None or not batched else (batch, *shape[1:])
        return (rng.integers(-2, 3, full) / 2).astype(dtype)
    return make


def w(*shape: int) -> Maker:
    return lambda rng, dtype, batch: rng.standard_normal(shape).astype(dtype)


def pos(*shape: int, batched: bool = True) -> Maker:
    def make(rng: np.random.Generator, dtype: Any, batch: int | None) -> np.ndarray:
        full = shape if batch is None or not batched else (batch, *shape[1:])
        return rng.uniform(0.5, 2.0, full).astype(dtype)
    return make


def ints(*shape: int, low: int = -4, high: int = 5, dtype: Any = np.int64,
         batched: bool = True) -> Maker:
    def make(rng: np.random.Generator, _: Any, batch: int | None) -> np.ndarray:
        full = shape if batch is None or not batched else (batch, *shape[1:])
        return rng.integers(low, high, full).astype(dtype)
    return make


def bools(*shape: int) -> Maker:
    def make(rng: np.random.Generator, _: Any, batch: int | None) -> np.ndarray:
        full = shape if batch is None else (batch, *shape[1:])
        return rng.random(full) < 0.5
    return make


def const(value: Any, dtype: Any = np.int64) -> Maker:
    return lambda rng, _, batch: np.asarray(value, dtype)


def scalar(low: float, high: float, dtype: Any = None) -> Maker:
    return lambda rng, d, batch: np.asarray(rng.uniform(low, high), dtype or d)


def none() -> Maker:
    return lambda rng, dtype, batch: None


def inputs(*makers: Maker) -> Maker:
    return lambda rng, dtype, batch=None: [m(rng, dtype, batch) for m in makers]


X4 = x(3, 4, 5, 6)
#: A causal mask whose first row masks everything: nan probabilities there, set to 0.
CAUSAL = np.triu(np.full((6, 6), -np.inf, np.float32), k=1)
CAUSAL[0] = -np.inf
#: (op, inputs(rng, dtype, batch), attributes): the gpu-only ops, and gpu paths the cpu
#: kernels' cases do not take.
GPU_CASES: list[tuple[str, Maker, dict[str, Any]]] = [
    *[(op, inputs(X4), {}) for op in ("Abs", "Neg", "Floor", "Ceil", "Sign", "Sin", "Cos",
                                      "Exp", "Softplus", "Softsign", "Mish", "Celu")],
    ("Round", inputs(x(3, 4, 5, scale=4.0)), {}),
    *[(op, inputs(pos(3, 4, 5)), {}) for op in ("Sqrt", "Log", "Reciprocal")],
    ("IsNaN", inputs(x(3, 4, 5, special=True)), {}),
    ("IsInf", inputs(x(3, 4, 5, special=True)), {"detect_negative": 0}),
    ("IsInf", inputs(x(3, 4, 5, special=True)), {}),
    ("Not", inputs(bools(3, 4)), {}),
    *[(op, inputs(ints(3, 4, 5), ints(4, 5, batched=False)), {})
      for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")],
    ("Equal", inputs(halves(3, 4, 5), halves(1, 5, batched=False)), {}),
    *[(op, inputs(bools(3, 4), bools(3, 4)), {}) for op in ("And", "Or", "Xor")],
    ("Div", inputs(ints(3, 4, 5, low=-20, high=20), ints(4, 5, low=-3, high=4, batched=False)),
     {}),
    ("Div", inputs(ints(3, 4, low=-9, high=9, dtype=np.int32),
                   ints(3, 4, low=1, high=4, dtype=np.int32)), {}),
    ("Pow", inputs(pos(3, 4, 5), w(5)), {}),
    ("Pow", inputs(ints(3, 5, low=-3, high=4), ints(3, 5, low=-2, high=4)), {}),
    ("Pow", inputs(ints(3, 5, low=0, high=4, dtype=np.int32), pos(5, batched=False)), {}),
    ("Mod", inputs(ints(3, 4, low=-20, high=20), ints(4, low=1, high=6, batched=False)), {}),
    ("Mod", inputs(ints(3, 4, low=-20, high=20), ints(4, low=1, high=6, batched=False)),
     {"fmod": 1}),
    ("Mod", inputs(X4, pos(6, batched=False)), {"fmod": 1}),
    ("Mod", inputs(X4, pos(6, batched=False)), {}),
    *[(op, inputs(X4, w(4, 1, 1), w(1, 5, 6)), {}) for op in ("Min", "Max", "Sum", "Mean")],
    ("Max", inputs(X4), {}),
    ("Where", inputs(bools(3, 1, 5, 6), X4, w(4, 1, 1)), {}),
    ("Cast", inputs(x(3, 4, scale=9.0)), {"to": TensorProto.INT32}),
    ("Cast", inputs(x(3, 4)), {"to": TensorProto.FLOAT16}),
    ("Cast", inputs(x(3, 4)), {"to": TensorProto.BFLOAT16}),
    ("Cast", inputs(ints(3, 4)), {"to": TensorProto.FLOAT}),
    ("CastLike", inputs(x(3, 4, scale=9.0), const(0, np.int8)), {}),
    ("Identity", inputs(X4), {}),
    ("Dropout", inputs(X4), {}),
    ("Dropout", inputs(X4, scalar(0.1, 0.5), const(False, bool)), {}),
    # activations
    ("PRelu", inputs(X4, w(4, 1, 1)), {}),
    ("ThresholdedRelu", inputs(X4), {"alpha": 0.3}),
    ("Swish", inputs(X4), {"alpha": 1.5}),
    ("Elu", inputs(X4), {"alpha": 0.7}),
    ("Selu", inputs(X4), {}),
    ("Celu", inputs(X4), {"alpha": 2.0}),
    ("LeakyRelu", inputs(x(3, 40)), {}),
    ("Gelu", inputs(x(3, 40, scale=4.0)), {"approximate": "tanh"}),
    ("Gelu", inputs(x(3, 40, scale=4.0)), {}),
    ("HardSwish", inputs(lambda rng, d, b: x(3, 40, scale=4.0)(rng, np.float16, b)), {}),
    ("Gelu", inputs(lambda rng, d, b: x(3, 40, scale=4.0)(rng, np.float16, b)), {}),
    ("Clip", inputs(X4, none(), scalar(0.0, 0.5)), {}),
    ("Clip", inputs(X4), {}),
    ("Softmax", inputs(x(3, 5, 7)), {"axis": 0}),
    ("LogSoftmax", inputs(x(3, 5, 7)), {}),
    ("LogSoftmax", inputs(x(3, 5, 7)), {"axis": 1}),
    # movement and shape plumbing
    ("Flatten", inputs(X4), {"axis": 2}),
    ("Reshape", inputs(x(3, 4, 5, 6, batched=False), const([0, -1, 3])), {}),
    ("Reshape", inputs(X4, const([0, 4, 30])), {}),
    ("Transpose", inputs(X4), {"perm": [0, 2, 3, 1]}),
    ("Transpose", inputs(X4), {}),
    ("Squeeze", inputs(x(3, 1, 5, 1), const([-1, 1])), {}),
    ("Squeeze", inputs(x(3, 1, 5, 1)), {}),
    ("Unsqueeze", inputs(x(3, 5), const([1, -1])), {}),
    ("Expand", inputs(x(3, 1, 5), const([2, 1, 4, 1])), {}),
    ("Tile", inputs(x(3, 2, 5), const([1, 3, 2])), {}),
    ("DepthToSpace", inputs(x(2, 8, 3, 4)), {"blocksize": 2}),
    ("DepthToSpace", inputs(x(2, 8, 3, 4)), {"blocksize": 2, "mode": "CRD"}),
    ("SpaceToDepth", inputs(x(2, 2, 4, 6)), {"blocksize": 2}),
    ("Split", inputs(X4, const([1, 3])), {"axis": 1}),
    ("Split", inputs(X4), {"axis": -1, "num_outputs": 4}),
    ("Slice", inputs(X4, const([1, -1]), const([4, -7]), const([1, 3]), const([2, -2])), {}),
    ("Slice", inputs(X4, const([0]), const([2])), {}),
    ("Pad", inputs(X4, const([0, 1, -1, 2, 0, 0, 2, 1]), scalar(-1, 1)), {}),
    *[(("Pad", inputs(X4, const([1, 2, 2, 1]), none(), const([2, -1])), {"mode": m}))
      for m in ("reflect", "edge", "wrap")],
    ("Gather", inputs(w(10, 4), ints(3, 5, low=-10, high=10)), {}),
    ("Gather", inputs(X4, ints(2, low=-4, high=4, batched=False)), {"axis": 1}),
    ("GatherElements", inputs(x(3, 4, 5), ints(3, 2, 5, low=-4, high=4)), {"axis": 1}),
    ("Shape", inputs(X4), {"start": 1}),
    ("Size", inputs(X4), {}),
    ("Range", inputs(scalar(-3, 0), scalar(5, 9), scalar(0.5, 1.5)), {}),
    ("Range", inputs(ints(low=-50, high=0, batched=False), const(7), const(2)), {}),
    ("ConstantOfShape", inputs(const([2, 3])), {"value": np.array([1.5], np.float32)}),
    ("Constant", inputs(), {"value_floats": [1.0, 2.5]}),
    ("EyeLike", inputs(x(3, 5)), {"k": 1}),
    # reductions
    *[(op, inputs(x(3, 4, 5), const([1, -1])), {"keepdims": k}) for op in (
        "ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceSumSquare",
        "ReduceMean", "ReduceLogSumExp") for k in (0, 1)],
    *[(op, inputs(pos(3, 4, 5), const([1])), {}) for op in ("ReduceL2", "ReduceLogSum")],
    ("ReduceSum", inputs(x(3, 4, 5)), {"keepdims": 0}),
    ("ReduceSum", inputs(x(3, 4, 5), const([], np.int64)), {"noop_with_empty_axes": 1}),
    ("ReduceSum", inputs(ints(3, 4, dtype=np.int32), const([0])), {}),
    ("ReduceMean", inputs(ints(3, 4, low=-9, high=9), const([1])), {}),
    ("ReduceL2", inputs(ints(3, 4, low=-50, high=50), const([1])), {}),  # wide: integer norms of
    # small values coincide between two seeds
    ("ReduceMax", inputs(x(3, 0, 4), const([1])), {}),
    ("ReduceMin", inputs(ints(3, 0, 4), const([1])), {"keepdims": 0}),
    ("ArgMax", inputs(ints(3, 4, 5, low=0, high=3)), {"axis": 1, "select_last_index": 1}),
    ("ArgMax", inputs(ints(3, 4, 5, low=0, high=3)), {"axis": -1}),
    ("ArgMin", inputs(x(3, 4, 5)), {"axis": 2, "keepdims": 0}),
    # normalisations
    ("GroupNormalization", inputs(x(3, 6, 4, 5), w(6), w(6)), {"num_groups": 3}),
    ("RMSNormalization", inputs(x(3, 6, 8), w(8)), {}),
    ("RMSNormalization", inputs(x(3, 6, 8), w(6, 8)), {"axis": 1}),
    ("LayerNormalization", inputs(x(3, 6, 8), w(6, 8), none()), {"axis": 1}),
    ("LayerNormalization", inputs(lambda rng, d, b: x(3, 8)(rng, np.float16, b),
                                  const(np.ones(8), np.float16), const(np.zeros(8), np.float16)),
     {}),
    # contractions: paths the cpu cases leave out
    ("Conv", inputs(x(2, 4, 11), w(6, 2, 3), w(6)),
     {"group": 2, "dilations": [2], "auto_pad": "SAME_UPPER"}),
    ("Conv", inputs(x(2, 3, 5, 6, 4), w(4, 3, 2, 3, 2)), {"strides": [1, 2, 1],
                                                          "pads": [1, 0, 1, 0, 1, 1]}),
    ("Conv", inputs(x(2, 6, 9, 8), w(6, 3, 3, 2)),
     {"group": 2, "strides": [2, 3], "dilations": [1, 2], "auto_pad": "SAME_LOWER"}),
    ("Conv", inputs(x(2, 6, 9, 8), w(4, 6, 1, 1), w(4)), {"strides": [2, 3]}),
    ("FusedConv", inputs(x(2, 8, 7, 7), w(8, 8, 3, 3), w(8), x(2, 8, 7, 7)),
     {"pads": [1, 1, 1, 1], "activation": "HardSigmoid", "activation_params": [0.3, 0.4],
      "precision": "int8"}),
    ("FusedConv", inputs(x(2, 8, 7, 7), w(8, 4, 3, 3), w(8)),
     {"group": 2, "activation": "Gelu", "channel_shuffle": 2, "precision": "bf16"}),
    ("Gemm", inputs(x(5, 7, batched=False), w(4, 5), w(1, 4)),
     {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}),
    ("Gemm", inputs(x(5, 7), w(7, 4), scalar(-1, 1)), {}),
    ("FusedGemm", inputs(x(5, 16), w(16, 8), w(8)),
     {"precision": "int8", "x_scale": 0.05, "x_zero_point": 120, "activation": "Tanh"}),
    ("MatMul", inputs(x(3, 4, 5), w(5)), {}),
    ("MatMul", inputs(x(5, batched=False), w(3, 5, 4)), {}),
    ("MatMul", inputs(lambda rng, d, b: x(3, 4, 5)(rng, np.float16, b),
                      lambda rng, d, b: w(5, 6)(rng, np.float16, b)), {}),
    ("FusedMatMul", inputs(x(3, 4, 16), w(16, 8), w(8)), {"precision": "int8",
                                                          "activation": "LeakyRelu",
                                                          "activation_params": [0.2]}),
    ("FusedMatMul", inputs(x(3, 4, 16, batched=False), w(3, 16, 8)), {"precision": "bf16"}),
    ("FusedMatMul", inputs(x(3, 4, 16), w(16, 8), w(8)),
     {"activation": "Gelu", "activation_params": [1.0]}),  # the tanh form
    ("FusedAttention", inputs(x(2, 3, 6, 5), x(2, 3, 5, 6), x(2, 3, 6, 4),
                              const(np.where(np.arange(6) < 3, 0.0, -np.inf), np.float32)),
     {"scale": 0.5, "nan_to_zero": 1}),
    ("FusedAttention", inputs(x(2, 3, 6, 5), x(2, 3, 5, 6), x(2, 3, 6, 4),
                              const(CAUSAL, np.float32)),
     {"nan_to_zero": 1}),
    ("MaxPool", inputs(x(2, 3, 9, 8)), {"kernel_shape": [3, 2], "dilations": [2, 1],
                                        "pads": [1, 0, 1, 1], "strides": [2, 2],
                                        "ceil_mode": 1}),
    ("MaxPool", inputs(ints(2, 3, 7, dtype=np.int32)), {"kernel_shape": [2],
                                                        "auto_pad": "SAME_UPPER"}),
    ("AveragePool", inputs(x(2, 3, 9, 8)), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                            "count_include_pad": 1, "strides": [2, 2]}),
    ("AveragePool", inputs(x(2, 3, 5, 6, 4)), {"kernel_shape": [2, 2, 2], "ceil_mode": 1,
                                               "strides": [2, 2, 2]}),
    ("FusedSqueezeExcite", inputs(x(2, 12, 5, 7), w(4, 12, 1, 1), none(), w(12, 4, 1, 1),
                                  w(12)),
     {"activation": "LeakyRelu", "activation_params": [0.1], "gate": "Sigmoid"}),
]
CASES = [*CPU_CASES, *GPU_CASES]

#: (rtol, atol) in float32 against the reference on numpy arrays; float64 uses FLOAT64_TOL.
#: An op not listed is bit-identical: its kernel makes the reference's IEEE operations in
#: the reference's order.
TOL: dict[str, tuple[float, float]] = {
    # the squeezed (N, C) matrix times the 1x1 weight as one GEMM, where the reference runs a
    # 1x1 convolution (a batched GEMM per sample): BLAS sums C in another order
    "FusedSqueezeExcite": (1e-5, 1e-6),
    # a grouped convolution's GEMMs per group have other shapes than the reference's; on an
    # AVX-512 CPU BLAS sums some of them in another order (1 ulp seen, channel-shuffled case),
    # and on some CPU models a 1x1's 40-term sums too: 1.5e-6 off on an output near 0 (an
    # error of the summed terms' size, ~3, not of the result's), so atol 1e-5
    "FusedConv": (1e-5, 1e-5),
    # sums over the window axes in one (pairwise) reduction, the reference tap by tap
    "AveragePool": (1e-6, 1e-6),
    # means of a channels-last input (the cpu cases') read in its own memory order; the
    # reference gets a C-ordered copy: pairwise sums in another order
    "GlobalAveragePool": (1e-6, 1e-7),
    "InstanceNormalization": (1e-5, 1e-6),
}
FLOAT64_TOL = (1e-12, 1e-12)
#: On a GPU: CUDA's libm (1-2 ulp) and cuBLAS's summation orders against numpy's OpenBLAS ones,
#: as the cpu suite allows MKL against OpenBLAS.
DEVICE_TOL = (1e-4, 1e-4)
DEVICE_FLOAT64_TOL = (1e-10, 1e-10)
EDGE_BATCHES = (None, 0, 1, 3)


def gpu_ops() -> list[str]:
    return sorted(spec.name for spec in ops.specs() if spec.has_kernel("gpu"))


def without_gpu_kernel() -> list[str]:
    """Ops that must have a gpu kernel and have none: every cpu-kernel op, and MODEL_OPS."""
    must = {s.name for s in ops.specs() if "cpu" in s.kernels} | set(MODEL_OPS)
    return sorted(op for op in must if not ops.get(op).has_kernel("gpu"))


def run_case(case: int, batch: int | None, dtype: Any, *, seed: int = 0,
             device: Any = None) -> tuple[tuple, tuple, tuple[float, float]]:
    """(kernel outputs on the host, reference outputs, tolerance) of case ``case``."""
    op, make, attrs = CASES[case]
    args = make(np.random.default_rng(case + seed), np.dtype(dtype), batch)
    spec = ops.get(op)
    assert spec.has_kernel("gpu"), f"{op} has no gpu kernel"  # (also imports them, lazily)
    want = ops.as_outputs(spec.reference(
        *(None if a is None else np.array(a, order="C") for a in args), **attrs))
    moved = [a if device is None or a is None else device.asarray(a) for a in args]
    got = ops.as_outputs(spec.kernels["gpu"](*moved, **attrs))
    tol = TOL.get(op, (0, 0)) if np.dtype(dtype) == np.float32 else FLOAT64_TOL
    return tuple(to_host(g) for g in got), want, tol


def compare(op: str, got: tuple, want: tuple, tol: tuple[float, float], what: str) -> None:
    assert len(got) == len(want), f"{op}: {len(got)} outputs, the reference {len(want)}"
    for k, (g, r) in enumerate(zip(got, want)):
        assert_close(g, r, rtol=tol[0], atol=tol[1], what=f"{op} output {k} {what}")


# --- coverage ----------------------------------------------------------------------------------
def test_every_cpu_kernel_has_a_gpu_kernel():
    missing = without_gpu_kernel()
    assert missing == [], f"ops with a cpu kernel (or used by the model zoo) but no gpu kernel: " \
                          f"{missing}; add one to ops/gpu/"


def test_a_new_cpu_kernel_without_a_gpu_one_is_reported(monkeypatch):
    spec = registry.OpSpec(name="Frobnicate", kind="elementwise", reference=lambda x: x)
    spec.kernels["cpu"] = lambda x: x
    monkeypatch.setitem(registry._REGISTRY, "Frobnicate", spec)
    assert without_gpu_kernel() == ["Frobnicate"]


def test_every_gpu_kernel_has_a_case_and_is_not_its_reference():
    assert set(gpu_ops()) <= {op for op, _, _ in CASES}
    assert set(TOL) <= set(gpu_ops())
    for op in gpu_ops():
        kernel = ops.get(op).kernels["gpu"]
        assert kernel is not ops.get(op).reference, op
        assert kernel.__name__.endswith("_gpu"), (op, kernel.__name__)
        assert not getattr(kernel, "host_fallback", False), op


def test_the_gpu_kernels_register_lazily_and_import_no_cupy(tmp_path):
    """A ``cupy`` that records its import sits on the path: nothing in taskflow imports it
    while loading, registering and running the gpu kernels on numpy arrays."""
    import subprocess
    import sys

    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    code = ("import sys, numpy as np, taskflow, taskflow.ops as ops\n"
            "assert 'taskflow.ops.gpu' not in sys.modules\n"
            "k = ops.get('Conv').kernel('gpu')\n"
            "assert 'taskflow.ops.gpu' in sys.modules, 'register_lazy did not import it'\n"
            "y = k(np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32))\n"
            "assert y.shape == (1, 3, 3, 3) and float(y[0, 0, 0, 0]) == 18.0\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "imported").exists(), "CuPy was imported"


# --- kernels against references, on numpy arrays -----------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", EDGE_BATCHES, ids=lambda b: "own" if b is None else f"n{b}")
@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: f"{CASES[i][0]}-{i}")
def test_gpu_kernel_matches_reference(case, batch, dtype):
    op = CASES[case][0]
    got, want, tol = run_case(case, batch, dtype)
    compare(op, got, want, tol, f"case {case} batch={batch} {CASES[case][2]}")
    if batch is None and op not in DATA_FREE:  # the comparison saw values, not constants
        args = CASES[case][1](np.random.default_rng(case), np.dtype(dtype), batch)
        if any(a is not None and a.size == 0 for a in args):  # an empty reduction's identity
            return
        other, _, _ = run_case(case, batch, dtype, seed=1000)
        assert any(not np.array_equal(a, b, equal_nan=True) for a, b in zip(got, other)), \
            f"{op}: the output does not change with the input values"


def test_fused_epilogues_take_every_activation():
    from taskflow.ops.conv import ACTIVATIONS

    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 16), dtype=np.float32)
    b = rng.standard_normal((16, 8), dtype=np.float32)
    params = {"LeakyRelu": [0.1], "Clip": [-0.5, 0.7], "HardSigmoid": [0.3, 0.4]}
    for act in ACTIVATIONS:
        attrs = {"activation": act, "activation_params": params.get(act, [])}
        spec = ops.get("FusedGemm")
        compare("FusedGemm", ops.as_outputs(spec.kernels["gpu"](a, b, **attrs)),
                ops.as_outputs(spec.reference(a, b, **attrs)), (1e-6, 1e-6), act)


def test_errors_are_the_references():
    from taskflow.errors import ShapeError, UnsupportedOpError

    rng = np.random.default_rng(4)
    with pytest.raises(ShapeError):
        ops.get("Conv").kernels["gpu"](rng.standard_normal((1, 3, 5, 5)),
                                       rng.standard_normal((4, 2, 3, 3)))
    with pytest.raises(UnsupportedOpError, match="Swish"):
        ops.get("FusedConv").kernels["gpu"](rng.standard_normal((1, 2, 3, 3)),
                                            rng.standard_normal((2, 2, 1, 1)),
                                            activation="Swish")
    with pytest.raises(UnsupportedOpError, match="precision"):
        ops.get("FusedGemm").kernels["gpu"](np.ones((2, 2)), np.ones((2, 2)), precision="fp8")
    with pytest.raises(ShapeError):
        ops.get("Reshape").kernels["gpu"](np.ones((2, 3)), np.array([4, -1, 5]))


# --- the same cases on a GPU -------------------------------------------------------------------
@pytest.fixture(scope="module")
def cupy():
    cp = pytest.importorskip("cupy", reason="CuPy is not installed: pip install 'taskflow[gpu]'")
    problem = gpu_problem("gpu")
    if problem:
        pytest.skip(problem)
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", EDGE_BATCHES, ids=lambda b: "own" if b is None else f"n{b}")
@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: f"{CASES[i][0]}-{i}")
def test_gpu_kernel_matches_reference_on_cupy_arrays(case, batch, dtype, cupy):
    op = CASES[case][0]
    got, want, tol = run_case(case, batch, dtype, device=cupy)
    floor = DEVICE_TOL if np.dtype(dtype) == np.float32 else DEVICE_FLOAT64_TOL
    tol = (max(tol[0], floor[0]), max(tol[1], floor[1]))
    compare(op, got, want, tol, f"case {case} batch={batch} on CuPy")
