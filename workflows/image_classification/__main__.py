"""``python -m workflows.image_classification {make-data,make-model,classify,demo}``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from workflows import image_classification as ic
from workflows._common import job_args, job_options


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workflows.image_classification",
                                 description=ic.__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-data", help="write sample images with a known dominant colour")
    p.add_argument("-o", "--output", required=True, help="Zarr group to create")
    p.add_argument("-n", type=int, default=256, help="images (default 256)")
    p.add_argument("--chunk", type=int, default=64, help="images per chunk (default 64)")
    p.add_argument("--seed", type=int, default=0)
    sub.add_parser("make-model", help=f"rewrite {ic.MODEL_FILE.name}")
    p = sub.add_parser("classify", help="stream images through the pipeline into Zarr")
    p.add_argument("-i", "--input", required=True, help="Zarr group with 'images'")
    p.add_argument("-o", "--output", required=True, help="Zarr group to write")
    p.add_argument("--model", help="another ONNX classifier taking (N, 3, S, S) float32")
    p.add_argument("--size", type=int, default=ic.SIZE, help="its input side S")
    p.add_argument("--imagenet", action="store_true", help="ImageNet mean and std")
    p.add_argument("-k", type=int, default=ic.TOP_K, help="labels per image")
    job_args(p)
    p = sub.add_parser("demo", help="make-data, classify and score in a temporary folder")
    p.add_argument("-n", type=int, default=256)
    job_args(p)
    args = ap.parse_args(argv)

    if args.command == "make-data":
        ic.make_data(args.output, n=args.n, chunk=args.chunk, seed=args.seed)
        print(f"wrote {args.n} images to {args.output} ('images', 'truth')")
    elif args.command == "make-model":
        ic.MODEL_FILE.unlink(missing_ok=True)
        print(f"wrote {ic.model_file()}")
    elif args.command == "classify":
        mean, std = (ic.IMAGENET_MEAN, ic.IMAGENET_STD) if args.imagenet else (ic.MEAN, ic.STD)
        pipe = ic.build_pipeline(args.model, size=args.size, mean=mean, std=std, k=args.k)
        _classify(pipe, args.input, args.output, args, named=args.model is None)
    else:
        with tempfile.TemporaryDirectory(prefix="taskflow-images-") as tmp:
            src = ic.make_data(Path(tmp) / "images.zarr", n=args.n)
            _classify(ic.build_pipeline(), src, str(Path(tmp) / "labels.zarr"), args,
                      named=True)
    return 0


def _classify(pipe, src: str, dst: str, args: argparse.Namespace, named: bool) -> None:
    import zarr

    summary = ic.classify(src, dst, pipe=pipe, **job_options(args))
    print(summary)
    out = zarr.open_group(dst, mode="r")
    labels, scores = out["labels"][:5], out["scores"][:5]
    for i, (ls, ss) in enumerate(zip(labels, scores)):
        names = [ic.CLASSES[j] if named else str(j) for j in ls]
        print(f"image {i}: " + ", ".join(f"{n} {s:.3f}" for n, s in zip(names, ss)))
    if named and "truth" in zarr.open_group(src, mode="r"):
        truth = zarr.open_group(src, mode="r")["truth"][:]
        print(f"top-1 accuracy {ic.accuracy(dst, src):.3f} on {len(truth)} images "
              f"({np.bincount(truth, minlength=len(ic.CLASSES)).min()}+ per class)")


if __name__ == "__main__":
    raise SystemExit(main())
