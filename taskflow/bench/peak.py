"""This machine's fp32 peak as the benchmarks measure it, and the CPU it runs on.

The peak is *measured*: the best sgemm rate on a large square with the benchmark's thread count.
A theoretical peak (FMA units x vector width x cores x clock) is left out on purpose: the FMA
units per core differ within one ISA (Zen 1 splits each AVX2 FMA into two 128-bit halves,
some Xeons have one AVX-512 unit, others two) and a VM's clock is not what ``/proc/cpuinfo``
says, so the number would often be 2x off. The ISA is reported next to the measured peak.

Examples
--------
>>> peak = sgemm_peak(threads=2)                           # doctest: +SKIP
>>> print(peak)                                            # doctest: +SKIP
61.8 GFLOP/s (oneMKL sgemm, sequential, 2 threads side by side, 2048^2)
>>> cpu_description()                                      # doctest: +SKIP
'AMD EPYC, 2 usable core(s), AVX2+FMA'
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

#: Square sgemm size for the peak: big enough for BLAS's full rate (~0.5 s per product here),
#: small enough that ``threads`` copies (48 MiB each) fit in memory anywhere.
PEAK_GEMM_SIZE = 2048


@dataclass(frozen=True)
class SgemmPeak:
    """Best sgemm rate measured, and which BLAS call gave it."""

    gflops: float
    how: str

    def __str__(self) -> str:
        return f"{self.gflops:.1f} GFLOP/s ({self.how})"


def _best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm: page faults, BLAS buffers, the pool's threads
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def sgemm_peak(threads: int = 1, repeat: int = 3, size: int = PEAK_GEMM_SIZE) -> SgemmPeak:
    """The best fp32 GEMM rate of this process on ``threads`` threads.

    Two ways are timed and the faster one counts, so the peak is never understated:
    ``threads`` sequential sgemms of the kernels' BLAS side by side, one per thread (what
    taskflow's kernels do: oneMKL's sequential layer or OpenBLAS at one thread, taskflow's
    own threads), and numpy's ``matmul`` under the
    threadpool limits in force (its BLAS threading itself; call inside
    :func:`taskflow.dask.threads.apply_kernel_threads` so it gets ``threads``).
    """
    from taskflow.ops.cpu import blas

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    outs = [np.empty_like(a) for _ in range(max(1, threads))]
    flop = 2.0 * size**3
    rates: dict[str, float] = {}
    if blas.backend() != "numpy":
        name = {"mkl": "oneMKL", "openblas": "OpenBLAS"}[blas.backend()]
        with ThreadPoolExecutor(len(outs)) as pool:

            def side_by_side() -> None:
                list(pool.map(lambda out: blas.gemm(a, a, out), outs))

            rates[f"{name} sgemm, sequential, {len(outs)} thread(s) side by side, {size}^2"] = (
                flop * len(outs) / _best(side_by_side, repeat) / 1e9
            )
    rates[f"numpy matmul, {size}^2"] = (
        flop / _best(lambda: np.matmul(a, a, out=outs[0]), repeat) / 1e9
    )
    how, gflops = max(rates.items(), key=lambda kv: kv[1])
    return SgemmPeak(gflops, how)


def cpu_isa(flags: set[str]) -> str:
    """The widest fp32 vector ISA in a set of ``/proc/cpuinfo`` flags (``"AVX2+FMA"``)."""
    for flag, name in (
        ("amx_tile", "AVX-512+AMX"),
        ("avx512f", "AVX-512"),
        ("avx2", "AVX2"),
        ("avx", "AVX"),
        ("sse2", "SSE2"),
    ):
        if flag in flags:
            fma = "+FMA" if "fma" in flags and name in ("AVX2", "AVX") else ""
            return name + fma
    return "unknown ISA"


def cpu_description() -> str:
    """CPU model, usable cores and vector ISA, from ``/proc/cpuinfo`` where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    from taskflow.dask.threads import usable_cores

    return f"{model}, {usable_cores()} usable core(s), {cpu_isa(flags)}"
