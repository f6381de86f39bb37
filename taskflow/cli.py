"""The ``taskflow`` command line.

Subcommands register themselves in :data:`COMMANDS`; each is a small function taking the parsed
arguments and returning an exit code, so later features (``run``, ``bench``) add one entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .errors import TaskflowError

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


@command("info", _info_args)
def info(args: argparse.Namespace) -> int:
    """Ops, parameters, FLOPs per sample and import notes of a model."""
    from .model import load

    model = load(args.model)
    summary = model.info()
    if args.json:
        print(json.dumps({
            "name": summary.name,
            "inputs": [[v.name, str(v.dtype), list(v.shape or [])] for v in summary.inputs],
            "outputs": [[v.name, str(v.dtype), list(v.shape or [])] for v in summary.outputs],
            "nodes": sum(summary.op_counts.values()),
            "op_counts": summary.op_counts,
            "parameters": summary.parameters,
            "flops_per_sample": summary.flops_per_sample,
            "notes": summary.notes,
            **({"thread_plan": _plan_json()} if args.plan else {}),
        }, indent=2))
    else:
        print(summary)
        if args.plan:
            from .threads import default_plan

            plan = default_plan()
            print(f"threads   {plan}\ncores     {plan.source}")
    return 0


def _plan_json() -> dict:
    from .threads import default_plan

    plan = default_plan()
    return {"workers": plan.workers, "threads_per_worker": plan.threads_per_worker,
            "kernel_threads": plan.kernel_threads, "usable_cores": plan.cores,
            "source": plan.source}


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")


@command("demo", _demo_args)
def demo(args: argparse.Namespace) -> int:
    """Classify the bundled handwritten-digits test split with the bundled CNN."""
    from .demo import run_demo

    run_demo(batch_size=args.batch_size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskflow", description="Batch neural-network inference on Dask."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (setup, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0])
        setup(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (TaskflowError, FileNotFoundError) as exc:
        print(f"taskflow {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
