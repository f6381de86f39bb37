"""The ``taskflow`` command line.

Subcommands register themselves in :data:`COMMANDS`; each is a small function taking the parsed
arguments and returning an exit code, so later features (``run``, ``bench``) add one entry.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from taskflow.errors import InputError, TaskflowError

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {}


def command(name: str, setup: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn`` as subcommand ``name`` with argument setup ``setup``."""

    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (setup, fn)
        return fn

    return deco


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to an ONNX model")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--plan", action="store_true",
                   help="also print the thread plan for this machine (workers x threads x "
                        "kernel threads, usable cores and where that number came from)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of a symbolic input dim for the FLOP count, e.g. --dim seq=128 "
                        "(repeatable; dims not given count as 1 and are listed as assumed)")


def _dims(pairs: Sequence[str]) -> dict[str, int]:
    """``["seq=128"]`` -> ``{"seq": 128}``; a malformed pair is a :class:`InputError`."""
    dims = {}
    for pair in pairs:
        name, _, size = pair.partition("=")
        if not name or not size.strip().isdigit() or int(size) < 1:
            raise InputError(f"--dim {pair!r} is not NAME=SIZE with a positive integer SIZE "
                             f"(e.g. --dim seq=128)")
        dims[name.strip()] = int(size)
    return dims


@command("info", _info_args)
def info(args: argparse.Namespace) -> int:
    """Ops, parameters, FLOPs per sample and import notes of a model."""
    from taskflow.model import load

    model = load(args.model)
    dims = _dims(args.dim)
    summary = model.info(dims=dims) if dims else model.info()
    if args.json:
        print(json.dumps({
            "name": summary.name,
            "inputs": [[v.name, str(v.dtype), list(v.shape or [])] for v in summary.inputs],
            "outputs": [[v.name, str(v.dtype), list(v.shape or [])] for v in summary.outputs],
            "nodes": sum(summary.op_counts.values()),
            "op_counts": summary.op_counts,
            "parameters": summary.parameters,
            "flops_per_sample": summary.flops_per_sample,
            "dims": summary.dims,
            "assumed_dims": summary.assumed,
            "notes": summary.notes,
            **({"thread_plan": _plan_json()} if args.plan else {}),
        }, indent=2))
    else:
        print(summary)
        if args.plan:
            from taskflow.dask.threads import default_plan

            plan = default_plan()
            print(f"threads   {plan}\ncores     {plan.source}")
    return 0


def _plan_json() -> dict:
    from taskflow.dask.threads import default_plan

    plan = default_plan()
    return {"workers": plan.workers, "threads_per_worker": plan.threads_per_worker,
            "kernel_threads": plan.kernel_threads, "usable_cores": plan.cores,
            "source": plan.source}


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--in-process", action="store_true",
                   help="run Model.run in this process instead of Zarr -> Zarr on a cluster")


@command("demo", _demo_args)
def demo(args: argparse.Namespace) -> int:
    """Classify the bundled handwritten-digits test split with the bundled CNN."""
    from taskflow.demo import run_demo

    run_demo(batch_size=args.batch_size, mode="in-process" if args.in_process else "zarr")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an ONNX model, or a pipeline file (.yaml, .yml, .toml)")
    p.add_argument("--input", "-i", required=True, action="append", metavar="[NAME=]SRC",
                   help="Zarr array or group (path or fsspec URL) to read; NAME=SRC per model "
                        "input for several (repeat the option)")
    p.add_argument("--output", "-o", required=True, metavar="DST",
                   help="Zarr group to write, one array per model output")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on this Dask scheduler (default: an embedded local cluster)")
    p.add_argument("--batch-size", type=_positive, help="rows per model call and output "
                                                       "chunk (default: the input's chunking)")
    p.add_argument("--window", type=_positive, help="tasks in flight at most (default: 2 per "
                                                    "worker thread)")
    p.add_argument("--resume", action="store_true", help="compute only chunks not yet done")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--rerun-failed", action="store_true",
                   help="recompute only the chunks a previous run quarantined")
    p.add_argument("--retries", type=_non_negative, default=2,
                   help="extra attempts per failing chunk before quarantine (default 2)")
    p.add_argument("--chunks-per-task", type=_positive,
                   help="output chunks per task (default: grouped adaptively; 1: one each)")
    p.add_argument("--priority", type=int, default=0, metavar="N",
                   help="Dask priority of the job's tasks: higher runs first when jobs share "
                        "a cluster (default 0; negative for background work)")
    p.add_argument("--outputs", help="comma-separated model outputs to write (default: all)")
    p.add_argument("--device", metavar="cpu|gpu|cuda|cuda:N|auto", help="the model's kernels: "
                   "cpu (default), a CUDA gpu (CuPy), or auto (the gpu where CuPy finds one)")
    _precision_arg(p)
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="a progress bar on stderr (plain lines every 10 s and 10%% where "
                        "stderr is not a terminal), JSON lines on stdout, or none")
    p.add_argument("--name", help="the job's name on the dashboard, in /metrics and the summary "
                   "(default: the model's stem and start time, e.g. squeezenet-20261205-2214)")
    p.add_argument("--policy", metavar="NAMES",
                   help="scheduler policies, comma-separated (e.g. 'default', "
                        "'job-priority,throughput-balancer', 'dask' for Dask's own)")
    p.add_argument("--report", metavar="HTML", help="save a Dask performance report of the job")
    p.add_argument("--preprocess", metavar="JSON|MODULE:FUNC",
                   help='declared steps, e.g. \'{"scale": "uint8", "mean": [0.485, 0.456, '
                        '0.406], "std": [0.229, 0.224, 0.225], "layout": "NHWC->NCHW"}\', '
                        "or an importable function fn(feed) -> feed")
    p.add_argument("--storage-options", metavar="JSON|@FILE",
                   help="fsspec options for the input and output URLs, e.g. '{\"key\": ..., "
                        "\"secret\": ..., \"client_kwargs\": {\"endpoint_url\": ...}}' for "
                        "s3://; @FILE reads them from a file (keeps secrets out of `ps`)")
    p.add_argument("--input-storage-options", metavar="JSON|@FILE",
                   help="fsspec options for the inputs only, instead of --storage-options")
    p.add_argument("--output-storage-options", metavar="JSON|@FILE",
                   help="fsspec options for the output only, instead of --storage-options")
    _cluster_args(p)


def _precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", metavar="fp32|bf16|int8",
                   help="run the convolutions and matrix products in bf16 or dynamic int8 where "
                        "that is measured faster on this machine (default fp32). An int8 file "
                        "from `taskflow quantize` runs int8 in every quantised layer; with "
                        "int8, only where measured faster")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for --scheduler before giving up (default 10)")
    p.add_argument("--oversubscribe", action="store_true",
                   help="allow more worker x kernel threads than the cluster's usable cores")
    p.add_argument("--memory-limit", type=_memory, metavar="SIZE",
                   help="memory limit of each worker of the embedded cluster, e.g. 2GB "
                        "(default: this machine's memory / workers; a --scheduler's workers "
                        "set theirs where they start: dask worker --memory-limit)")
    tls = p.add_argument_group("TLS (a tls:// --scheduler; Dask's Security)")
    tls.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate to trust")
    tls.add_argument("--tls-cert", metavar="PEM", help="this client's certificate")
    tls.add_argument("--tls-key", metavar="PEM", help="this client's private key (default: "
                                                       "in --tls-cert)")


def _cluster_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :class:`taskflow.Cluster` from :func:`_cluster_args`'s options."""
    from taskflow.dask.connect import CONNECT_TIMEOUT

    options: dict = {"oversubscribe": args.oversubscribe,
                     "connect_timeout": args.connect_timeout or CONNECT_TIMEOUT}
    if args.memory_limit is not None:
        if args.scheduler:
            raise TaskflowError(f"--memory-limit {args.memory_limit} given with --scheduler: "
                                "a running cluster's workers have their memory limit already; "
                                "start them with dask worker --memory-limit, or drop "
                                "--scheduler for an embedded cluster")
        options["memory_limit"] = args.memory_limit
    given = {k: v for k, v in (("--tls-ca-file", args.tls_ca_file), ("--tls-cert", args.tls_cert),
                               ("--tls-key", args.tls_key)) if v}
    if given:
        if not args.scheduler:
            raise TaskflowError(f"{', '.join(given)} given without --scheduler: the TLS options "
                                "are for connecting to a running tls:// scheduler")
        if not (args.tls_ca_file and args.tls_cert):
            raise TaskflowError("TLS needs --tls-ca-file and --tls-cert (and --tls-key unless "
                                "the key is in the certificate file)")
        for flag, path in given.items():
            if not os.path.isfile(path):
                raise TaskflowError(f"{flag} {path!r}: no such file")
        from distributed.security import Security

        options["security"] = Security(tls_ca_file=args.tls_ca_file,
                                       tls_client_cert=args.tls_cert,
                                       tls_client_key=args.tls_key, require_encryption=True)
    return options


def _memory(text: str) -> str:
    from dask.utils import parse_bytes

    try:
        parse_bytes(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512MB or 4GiB") \
            from None
    return text


def _positive(text: str) -> int:
    return _integer(text, 1)


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {low}")
    return value


def _sources(values: list[str]) -> str | dict[str, str]:
    named = [v.partition("=") for v in values]
    if len(values) == 1 and not (named[0][1] and "/" not in named[0][0]
                                 and ":" not in named[0][0]):
        return values[0]
    bad = [v for v, (name, sep, _) in zip(values, named) if not sep or not name]
    if bad:
        raise TaskflowError(f"--input {bad[0]!r}: with several inputs, give each as NAME=SRC")
    return {name: src for name, _, src in named}


class _ConnectionNoise(logging.Filter):
    """Drops the tracebacks Dask's client logs when its scheduler is lost: the fetch failing in a
    background callback (``CommClosedError``, via tornado), the reconnect loop's
    ``CancelledError`` or "Failed to reconnect to scheduler after 10.00 seconds" however soon
    it was closed (distributed 2026.8), and ``distributed.batched``'s "Batched Comm Closed"
    (seen in CI). ``taskflow run`` reports the loss in one line instead; ``--debug`` keeps them.
    """

    LOGGERS = ("distributed.client", "distributed.batched", "tornado.application")

    def filter(self, record: logging.LogRecord) -> bool:
        import asyncio

        from distributed.comm import CommClosedError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (asyncio.CancelledError, CommClosedError)):
            return False
        return not str(record.msg).startswith("Failed to reconnect to scheduler")

    @classmethod
    def install(cls) -> None:
        for name in cls.LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, cls) for f in logger.filters):
                logger.addFilter(cls())


def _load_runnable(path: str, precision: str = "fp32", device: str | None = None) -> Any:
    """An ONNX model (at ``precision``, on ``device``), or a pipeline from its file."""
    from taskflow.pipeline.config import is_pipeline_file, load_pipeline

    if is_pipeline_file(path):
        if precision != "fp32":
            raise TaskflowError(f"--precision {precision} applies to an ONNX model; {path!r} "
                                "is a pipeline file: quantize its models with `taskflow "
                                "quantize` and name the int8 files in it")
        if device:
            raise TaskflowError(f"--device applies to an ONNX model; {path!r} is a pipeline "
                                "file: give each model stage its device in it")
        return load_pipeline(path)
    from taskflow.model import load

    return load(path, precision=precision, device=device or "cpu")


@command("run", _run_args)
def run(args: argparse.Namespace) -> int:
    """Stream a Zarr dataset through a model on a Dask cluster into a Zarr group.

    Exit codes: 0 every chunk done; 2 refused (bad input, existing output, resume mismatch);
    3 some chunks quarantined after their retries (listed; ``--rerun-failed`` redoes them);
    4 some chunks neither done nor quarantined (an earlier run was killed, or this one lost its
    scheduler; ``--resume``);
    130 interrupted (``--resume`` finishes the job).
    """
    from taskflow.dashboard.extension import page_link, performance_report_context
    from taskflow.dask.cluster import Cluster
    from taskflow.ops.device import resolve_device
    from taskflow.schedulers import policies_from_names
    from taskflow.stream.infer import (
        EXIT_INCOMPLETE,
        EXIT_QUARANTINED,
        SchedulerLostError,
        infer_zarr,
    )
    from taskflow.stream.manifest import target_exists
    from taskflow.stream.preprocess import preprocess_from_text
    from taskflow.stream.report import job_name
    from taskflow.stream.sources import location, validate_feed
    from taskflow.stream.stores import side_options, storage_options_from_text

    device = args.device and resolve_device(args.device, argument="--device")  # first: no work
    preprocess = preprocess_from_text(args.preprocess) if args.preprocess else None
    options = {flag: storage_options_from_text(text, flag) if text else None
               for flag, text in (("--storage-options", args.storage_options),
                                  ("--input-storage-options", args.input_storage_options),
                                  ("--output-storage-options", args.output_storage_options))}
    src_options, dst_options = side_options(*options.values())
    policies = policies_from_names(args.policy) if args.policy else None
    model, sources = _load_runnable(args.model, args.precision, device), _sources(args.input)
    # bad input is refused before a cluster starts (infer_zarr checks again, on its own)
    validate_feed(model, sources, preprocess, location(args.output), src_options)
    target_exists(location(args.output), dst_options)  # denied, or a missing bucket
    if not getattr(args, "debug", False):
        _ConnectionNoise.install()
    try:
        with Cluster(args.scheduler, policies=policies, quiet=True,
                     **_cluster_options(args)) as cluster:
            link = page_link(cluster.dashboard_link)
            if link and args.progress == "bar":  # stderr holds the one progress line
                print(f"taskflow: dashboard {link}", flush=True)
            with performance_report_context(args.report):
                summary = infer_zarr(
                    model, sources, args.output, batch_size=args.batch_size,
                    window=args.window, resume=args.resume, overwrite=args.overwrite,
                    rerun_failed=args.rerun_failed, preprocess=preprocess,
                    outputs=args.outputs.split(",") if args.outputs else None,
                    progress=args.progress, client=cluster, retries=args.retries,
                    chunks_per_task=args.chunks_per_task, priority=args.priority,
                    source_options=src_options, target_options=dst_options,
                    name=args.name or job_name(
                        args.model if hasattr(model, "graph") else model))
    except KeyboardInterrupt:
        print("taskflow run: interrupted; finished chunks are kept, rerun with --resume",
              file=sys.stderr)
        return 130
    except SchedulerLostError as exc:  # not a refusal (2): the job is incomplete, like a kill
        if getattr(args, "debug", False):
            raise
        print(f"taskflow run: error: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    if args.progress == "json":
        print(json.dumps(summary.to_dict()))
    else:
        print(summary)
    if summary.ok:
        return 0
    return EXIT_QUARANTINED if summary.failed else EXIT_INCOMPLETE


def _warmup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?",
                   help="also run this model (path or light-zoo name) once at batch 1")


@command("warmup", _warmup_args)
def warmup(args: argparse.Namespace) -> int:
    """Compile the Numba cpu kernels (or load them from the on-disk cache) and say how long."""
    import time

    from taskflow.ops.cpu.warmup import warmup as compile_kernels

    start = time.perf_counter()
    compile_kernels()
    print(f"kernels   {time.perf_counter() - start:.2f} s (compile on a cold cache, cache "
          "load after)")
    if args.model:
        from taskflow.bench.harness import resolve_model, warmup_model
        from taskflow.model import load

        first, warm = warmup_model(load(resolve_model(args.model)))
        print(f"model     first batch-1 run {first:.2f} s, second {warm:.3f} s")
    return 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="*",
                   help="ONNX model path, light-zoo name (light_resnet50) or real-model export "
                        "(gpt-dynamo; python -m benchmarks.models --list); several: one table")
    p.add_argument("--all", action="store_true",
                   help="the whole suite in one table: the light zoo and the exports "
                        "(--suite all)")
    p.add_argument("--suite", choices=("light", "modern", "all"),
                   help="one table over the light zoo, the real-model exports, or both")
    p.add_argument("--json", metavar="PATH", help="also write the table's rows to PATH")
    p.add_argument("--cache", metavar="DIR",
                   help="folder of the real-model exports, made once (default "
                        "~/.cache/taskflow/exports)")
    p.add_argument("--batch-size", type=int,
                   help="rows per run (default: 32; VGG-19, ZFNet and the GPT decoder 8)")
    p.add_argument("--threads", type=int, default=2,
                   help="kernel threads for taskflow and every peer (default 2)")
    p.add_argument("--repeat", type=int, default=5,
                   help="timed runs per runtime, interleaved; medians reported (default 5)")
    p.add_argument("--seq-len", type=int,
                   help="length of a transformer's sequence dimension (default 128; GPT 64)")
    _precision_arg(p)
    p.add_argument("--no-dask", dest="dask", action="store_false",
                   help="skip taskflow on Dask (an embedded one-worker cluster, started here; "
                        "one model only: a table never runs Dask)")


@command("bench", _bench_args)
def bench(args: argparse.Namespace) -> int:
    """Time taskflow next to ONNX Runtime, OpenVINO and PyTorch: one model, or a table.

    One model: its report, in-process and on Dask (``--no-dask``: no Dask). Several models,
    ``--suite``/``--all`` or ``--json``: one table of ratios from one run, GFLOP/s and share
    of the measured sgemm peak, the geometric mean of taskflow/ORT and issue 13's targets.
    """
    from taskflow.bench import suite
    from taskflow.bench.harness import PEERS
    from taskflow.precision import check_precision

    if not (args.model or args.all or args.suite):
        raise InputError("give a MODEL, several, --suite light|modern|all or --all")
    check_precision(args.precision)
    cases = [suite.case_for(m, args.batch_size, args.seq_len) for m in args.model]
    if len(cases) == 1 and not (args.all or args.suite or args.json):
        print(suite.run_case(cases[0], threads=args.threads, repeat=args.repeat,
                             dask=args.dask, peers=PEERS, cache_dir=args.cache,
                             measure_peak=True, precision=args.precision))
        return 0
    if args.all or args.suite:
        cases += suite.suite_cases("all" if args.all else args.suite)
    result = suite.run_suite(cases, threads=args.threads, repeat=args.repeat,
                             cache_dir=args.cache, precision=args.precision,
                             progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(result.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.as_dict(), f, indent=1)
    return 0


def _prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to an ONNX model")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                   help="where to write the pruned model")
    p.add_argument("--sparsity", type=float, required=True,
                   help="fraction in [0, 1) of each layer's channels (or weights) to remove")
    p.add_argument("--unstructured", action="store_true",
                   help="zero single weights instead of removing whole channels (layers "
                        "whose sparse kernel is measured faster run it; the file saved is dense)")


@command("prune", _prune_args)
def prune(args: argparse.Namespace) -> int:
    """Magnitude-prune a model's channels (or weights) and save it as ONNX."""
    from taskflow.model import load

    pruned = load(args.model).prune(args.sparsity, structured=not args.unstructured)
    pruned.save(args.output)
    print(pruned.prune_report)
    print(f"saved {args.output}")
    return 0


def _quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to an ONNX model (fp32)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                   help="where to write the int8 model (ONNX QDQ form, loadable by ONNX Runtime)")
    p.add_argument("--calibration", metavar="DATA.zarr",
                   help="Zarr array or group (path or fsspec URL) of representative input rows, "
                        "as the model takes them (required for --mode static). Without --eval "
                        "its last 20%% of rows are held out: calibration uses the rest, the "
                        "report compares int8 with fp32 on them")
    p.add_argument("--eval", metavar="DATA.zarr", help="held-out rows to compare int8 with "
                   "fp32 on (the first 512); all --calibration rows then calibrate")
    p.add_argument("--mode", choices=("static", "dynamic"), default="static",
                   help="static: activations quantised with calibrated ranges (default); "
                        "dynamic: weights only, activation ranges measured per call")
    p.add_argument("--method", choices=("minmax", "percentile", "entropy"), default="minmax",
                   help="how each activation's range is chosen (default minmax)")
    p.add_argument("--percentile", type=float, default=99.999,
                   help="for --method percentile (default 99.999)")
    p.add_argument("--per-tensor", action="store_true",
                   help="one scale per weight tensor instead of per output channel")
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto", help="7-bit "
                   "weights, for a fast int8 GEMM without VNNI (AVX2 only); auto: where needed")
    p.add_argument("--input-name", metavar="NAME",
                   help="the model input the --calibration array feeds (default: the only one)")
    p.add_argument("--batch-size", type=_positive, default=32,
                   help="rows per model run and per calibration task (default 32)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="calibrate on this Dask scheduler (default: an embedded local cluster)")
    _cluster_args(p)


@command("quantize", _quantize_args)
def quantize(args: argparse.Namespace) -> int:
    """Quantise a model to int8 (calibrated on a Zarr dataset on Dask) and save it as ONNX."""
    from taskflow.dask.calibrate import quantize_files

    report = quantize_files(
        args.model, args.output, calibration=args.calibration, eval_data=args.eval,
        mode=args.mode, method=args.method, percentile=args.percentile,
        per_channel=not args.per_tensor, input_name=args.input_name,
        batch_size=args.batch_size, cluster=lambda: _cluster(args),
        reduce_range={"auto": None, "on": True, "off": False}[args.reduce_range])
    print(report)
    print(f"saved {args.output}")
    return 0


def _cluster(args: argparse.Namespace) -> Any:
    from taskflow.dask.cluster import Cluster

    if not getattr(args, "debug", False):
        _ConnectionNoise.install()
    return Cluster(args.scheduler, quiet=True, **_cluster_options(args))


def build_parser() -> argparse.ArgumentParser:
    from taskflow._version import __version__

    parser = argparse.ArgumentParser(
        prog="taskflow", description="Batch neural-network inference on Dask."
    )
    parser.add_argument("--version", action="version", version=f"taskflow {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (setup, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0])
        setup(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
        p.set_defaults(func=fn)
    return parser


def _warning_line(command: str) -> Callable[..., None]:
    """``warnings.showwarning`` for the command line: one line on stderr, like its errors
    (not Python's ``file:line: Category: message`` and the source line under it)."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        print(f"taskflow {command}: warning: {message}", file=file or sys.stderr, flush=True)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # plain `taskflow`: say what it can do
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():  # restores the default display on the way out
            warnings.showwarning = _warning_line(args.command)
            return args.func(args)
    except (TaskflowError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"taskflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or an environment problem: one line unless --debug
        if args.debug:
            raise
        print(f"taskflow {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
