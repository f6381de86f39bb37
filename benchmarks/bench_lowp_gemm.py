"""The reduced-precision GEMMs one by one: oneMKL's sgemm, its int8 and bf16 GEMMs, and
taskflow's dot-instruction kernels (``ops/cpu/dotgemm.py``), on ResNet-50 and MiniLM shapes,
one thread, GOP/s and ratios to sgemm from one run.

What decides :func:`taskflow.ops.cpu.lowp.dot_kernels` on a new machine: where oneMKL does
not use the CPU's VNNI / AVX512-BF16 (an AMD Zen 4), its int8 GEMM runs below its sgemm and
taskflow's kernels run 4-5x above it. Each row times every variant interleaved (best of
``--repeat`` after one untimed call), each on the same operands: A quantised to uint8 or
rounded to bf16 once, outside the timing (what the row functions do per block in a layer), B
packed once (each path's own layout). int8 sums are checked equal between the two paths.

    python benchmarks/bench_lowp_gemm.py [--repeat 7] [--json out.json]
    python benchmarks/bench_lowp_gemm.py --quick        # small shapes: a test's size
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: (rows, K, N): ResNet-50's 1x1 and 3x3 layers at 512-row blocks and whole, MiniLM's
#: projections and FFN at batch 8 x 128 tokens
SHAPES = [(3136, 576, 64), (784, 1152, 128), (196, 2304, 256), (3136, 64, 256),
          (512, 4608, 512), (1024, 384, 384), (1024, 384, 1536), (1024, 1536, 384)]
QUICK_SHAPES = [(64, 96, 48), (37, 130, 70)]
#: the variants, in the table's order
VARIANTS = ("mkl-sgemm", "mkl-int8", "dot-int8", "mkl-bf16", "dot-bf16")


def _best(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Seconds per call, best of ``repeat`` rounds, the variants interleaved in each."""
    for fn in fns.values():
        fn()  # compile, pack, fault the pages in
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def bench_shape(m: int, k: int, n: int, repeat: int) -> dict[str, Any]:
    from taskflow.ops.cpu import blas, lowp

    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    out = {name: np.empty((m, n), np.float32) for name in VARIANTS}
    p8, p16 = lowp.pack_int8(w), lowp.pack_bf16(w)
    scale, zp = float(np.abs(a).max() / 127), 128
    q, bits = lowp.quantize_u8(a, scale, zp), lowp.to_bf16(a)
    have_mkl = lowp._bindings() is not None
    fns: dict[str, Callable[[], Any]] = {
        "mkl-sgemm": lambda: blas.gemm(a, w, out["mkl-sgemm"]),
        "dot-int8": lambda: lowp._gemm_q(q, p8, out["dot-int8"], scale, zp, True),
        "dot-bf16": lambda: lowp._gemm_bits(bits, p16, out["dot-bf16"], True),
    }
    if have_mkl:
        fns["mkl-int8"] = lambda: lowp._gemm_q(q, p8, out["mkl-int8"], scale, zp, False)
        fns["mkl-bf16"] = lambda: lowp._gemm_bits(bits, p16, out["mkl-bf16"], False)
    seconds = _best(fns, repeat)
    ops = 2.0 * m * k * n
    gops = {name: ops / s / 1e9 for name, s in seconds.items()}
    row: dict[str, Any] = {"shape": [m, k, n], "gops": gops,
                           "vs_sgemm": {name: g / gops["mkl-sgemm"] for name, g in gops.items()}}
    if have_mkl:
        # both paths sum the same integers exactly; bf16 agrees to float32 summation order
        row["int8_paths_equal"] = bool(np.array_equal(out["mkl-int8"], out["dot-int8"]))
        scale16 = np.abs(out["mkl-bf16"]).max() + 1e-30
        row["bf16_paths_max_rel_diff"] = float(
            np.abs(out["mkl-bf16"] - out["dot-bf16"]).max() / scale16)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="two small shapes, 2 rounds")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    from taskflow.ops.cpu import blas, dotgemm, lowp
    from threadpoolctl import threadpool_limits

    shapes, repeat = (QUICK_SHAPES, 2) if args.quick else (SHAPES, args.repeat)
    with threadpool_limits(1):
        rows = [bench_shape(m, k, n, repeat) for m, k, n in shapes]
    result = {
        "machine": {"features": sorted(lowp.cpu_features()), "blas": blas.backend(),
                    "dot_instructions": {"int8": dotgemm.HAS_VNNI, "bf16": dotgemm.HAS_BF16},
                    "chosen": {p: lowp.lowp_backend(p) for p in ("int8", "bf16")}},
        "rows": rows,
    }
    m = result["machine"]
    print(f"features {', '.join(m['features'])}; chosen: int8 {m['chosen']['int8']}, "
          f"bf16 {m['chosen']['bf16']}; one thread, GOP/s (x MKL sgemm), best of {repeat}")
    print(f"{'rows x K x N':>20s} " + " ".join(f"{v:>15s}" for v in VARIANTS))
    for row in rows:
        cells = [f"{row['gops'][v]:6.0f} ({row['vs_sgemm'][v]:4.2f}x)" if v in row["gops"]
                 else f"{'-':>15s}" for v in VARIANTS]
        print(f"{' x '.join(map(str, row['shape'])):>20s} " + " ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
