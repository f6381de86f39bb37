"""Train the bundled digits CNN and write ``taskflow/data/digits_cnn.onnx`` + ``digits.npz``.

The data is scikit-learn's handwritten digits (1797 images, 8x8, grey levels 0..16, 10 classes),
split 75/25 (stratified, fixed seed). A small CNN is trained with PyTorch, its weights are copied
into a :class:`taskflow.frontend.nn.Sequential` of the same layers (plus a final Softmax), and
the script checks that PyTorch and taskflow agree before saving. The runtime needs neither
sklearn nor torch: the dataset ships as ``digits.npz`` and the model as ONNX.

PyTorch is needed by this script only (``pip install torch==2.13.0``)::

    python workflows/digits/train.py            # ~10 s on 2 cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn as tnn

import taskflow
from taskflow.frontend import nn

DATA_DIR = Path(__file__).resolve().parents[2] / "taskflow" / "data"
#: Grey levels of sklearn's digits run 0..16; the model takes ``images / 16`` as float32.
PIXEL_MAX = 16.0


def torch_net(dropout: float) -> tnn.Sequential:
    return tnn.Sequential(
        tnn.Conv2d(1, 16, 3, padding=1), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(16, 32, 3, padding=1), tnn.BatchNorm2d(32), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(128, 64), tnn.ReLU(), tnn.Dropout(dropout), tnn.Linear(64, 10),
    )


def taskflow_net(dropout: float) -> nn.Sequential:
    """The same layers, indices matching ``torch_net`` so state_dict keys carry over."""
    return nn.Sequential([
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dense(128, 64), nn.ReLU(), nn.Dropout(dropout), nn.Dense(64, 10),
        nn.Softmax(axis=-1),
    ], input_shape=(1, 8, 8), name="digits_cnn")


def train(net: tnn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch: int,
          seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss_fn = tnn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for k in range(0, len(x), batch):
            idx = order[k:k + batch]
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DATA_DIR, help="folder for the two files")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    digits = load_digits()
    images = digits.images.astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.25,
                                           stratify=labels, random_state=args.seed)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    x = torch.from_numpy(images.astype(np.float32) / PIXEL_MAX)
    y = torch.from_numpy(labels)

    t0 = time.perf_counter()
    net = torch_net(dropout=0.25)
    train(net, x[train_idx], y[train_idx], epochs=args.epochs, batch=64, seed=args.seed)
    with torch.no_grad():
        torch_probs = torch.softmax(net(x[test_idx]), dim=-1).numpy()
    acc = float((torch_probs.argmax(1) == labels[test_idx]).mean())
    print(f"trained {args.epochs} epochs on {len(train_idx)} images in "
          f"{time.perf_counter() - t0:.1f} s; torch test accuracy {acc:.4f}")

    seq = taskflow_net(dropout=0.25)
    seq.load_state({k: v.detach().numpy() for k, v in net.state_dict().items()
                    if not k.endswith("num_batches_tracked")})
    feed = {"input": x[test_idx].numpy()}
    tf_probs = seq.to_model().run(None, feed)[0]
    diff = float(np.abs(tf_probs - torch_probs).max())
    agree = float((tf_probs.argmax(1) == torch_probs.argmax(1)).mean())
    print(f"taskflow vs torch: max |dp| {diff:.2e}, same prediction on {agree:.0%} of images")
    if diff > 1e-4 or agree < 1:
        raise SystemExit("taskflow and torch disagree; not saving")

    args.out.mkdir(parents=True, exist_ok=True)
    model_path, data_path = args.out / "digits_cnn.onnx", args.out / "digits.npz"
    seq.to_model().save(model_path)
    proto = onnx.load(model_path)
    proto.doc_string = (
        f"Small CNN for scikit-learn's 8x8 handwritten digits; input = grey levels / "
        f"{PIXEL_MAX:g} as float32 (N, 1, 8, 8); output = class probabilities (N, 10). "
        f"Test accuracy {acc:.4f} on {len(test_idx)} held-out images (stratified 25% split, "
        f"seed {args.seed}). Trained with torch {torch.__version__}, "
        f"workflows/digits/train.py.")
    onnx.helper.set_model_props(proto, {
        "dataset": "sklearn.datasets.load_digits", "test_accuracy": f"{acc:.4f}",
        "test_images": str(len(test_idx)), "input_scale": f"1/{PIXEL_MAX:g}",
        "trained_with": f"torch {torch.__version__}", "split_seed": str(args.seed)})
    onnx.save(proto, model_path)
    np.savez_compressed(data_path, images=images, labels=labels, test_idx=test_idx)

    reloaded = taskflow.load(model_path).run(None, feed)[0]
    if not np.array_equal(reloaded, tf_probs):
        raise SystemExit(f"{model_path} does not reproduce the in-memory model's outputs")
    print(f"wrote {model_path} ({model_path.stat().st_size:,} bytes) and {data_path} "
          f"({data_path.stat().st_size:,} bytes); test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
