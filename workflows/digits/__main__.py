"""``python -m workflows.digits {make-data,classify,score,demo}``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from workflows import digits
from workflows._common import job_args, job_options


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workflows.digits",
                                 description=digits.__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-data", help="write the test split to Zarr ('images', 'truth')")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--chunk", type=int, default=64, help="images per chunk (default 64)")
    p = sub.add_parser("classify", help="stream images through the pipeline; score if the "
                                        "input has 'truth'")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-o", "--output", required=True)
    job_args(p)
    p = sub.add_parser("score", help="accuracy of a finished output against 'truth'")
    p.add_argument("output")
    p.add_argument("input")
    p = sub.add_parser("demo", help="make-data, classify and score in a temporary folder")
    job_args(p)
    args = ap.parse_args(argv)

    if args.command == "make-data":
        digits.make_data(args.output, chunk=args.chunk)
        print(f"wrote the 450 test images to {args.output} ('images', 'truth')")
    elif args.command == "score":
        _score(args.output, args.input)
    elif args.command == "classify":
        print(digits.classify(args.input, args.output, **job_options(args)))
        _score(args.output, args.input)
    else:
        with tempfile.TemporaryDirectory(prefix="taskflow-digits-") as tmp:
            src = digits.make_data(Path(tmp) / "digits.zarr")
            dst = str(Path(tmp) / "predictions.zarr")
            print(digits.classify(src, dst, **job_options(args)))
            _score(dst, src)
    return 0


def _score(output: str, source: str) -> None:
    import zarr

    if "truth" in zarr.open_group(source, mode="r"):
        n = zarr.open_group(source, mode="r")["truth"].shape[0]
        print(f"digits: accuracy {digits.accuracy(output, source):.4f} on {n} test images")


if __name__ == "__main__":
    raise SystemExit(main())
