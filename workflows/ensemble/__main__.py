"""``python -m workflows.ensemble {make-data,make-model,classify,demo}``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from workflows import ensemble
from workflows._common import job_args, job_options


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workflows.ensemble",
                                 description=ensemble.__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-data", help="write the digits test split to Zarr")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--chunk", type=int, default=64)
    sub.add_parser("make-model", help=f"refit {ensemble.LINEAR_FILE.name}")
    p = sub.add_parser("classify", help="stream images through the ensemble; score against "
                                        "'truth' if the input has it")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-o", "--output", required=True)
    job_args(p)
    p = sub.add_parser("demo", help="make-data, classify and score in a temporary folder")
    job_args(p)
    args = ap.parse_args(argv)

    if args.command == "make-data":
        ensemble.make_data(args.output, chunk=args.chunk)
        print(f"wrote the 450 test images to {args.output} ('images', 'truth')")
    elif args.command == "make-model":
        ensemble.LINEAR_FILE.unlink(missing_ok=True)
        print(f"wrote {ensemble.linear_file()}")
    elif args.command == "classify":
        _classify(args.input, args.output, args)
    else:
        with tempfile.TemporaryDirectory(prefix="taskflow-ensemble-") as tmp:
            src = ensemble.make_data(Path(tmp) / "digits.zarr")
            _classify(src, str(Path(tmp) / "predictions.zarr"), args)
    return 0


def _classify(src: str, dst: str, args: argparse.Namespace) -> None:
    import zarr

    print(ensemble.classify(src, dst, **job_options(args)))
    if "truth" in zarr.open_group(src, mode="r"):
        acc = ensemble.accuracies(dst, src)
        print("top-1 accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))


if __name__ == "__main__":
    raise SystemExit(main())
