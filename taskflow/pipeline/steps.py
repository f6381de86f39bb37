"""Ready pre- and postprocessing steps for pipelines: functions of numpy batches that keep
rows apart, as small classes so they pickle to workers, hash by their settings (a resumed job
with another ``k`` is another job) and can be named in a pipeline file (``function: top_k``).

Each step's ``__call__`` takes and returns batch arrays; ``output_names`` names what a step
with several results returns (a stage's values are then ``<stage>.<name>`` unless the stage
names them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from taskflow.errors import InputError


class Softmax:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``.

    Examples
    --------
    >>> Softmax()(np.array([[0.0, 0.0]], np.float32))
    array([[0.5, 0.5]], dtype=float32)
    """

    def __init__(self, axis: int = -1):
        self.axis = axis

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        e = np.exp(x - x.max(axis=self.axis, keepdims=True))
        return (e / e.sum(axis=self.axis, keepdims=True)).astype(x.dtype, copy=False)


class TopK:
    """The ``k`` largest values along the last axis and their indices, largest first; a
    classifier's ``(N, C, 1, 1)`` logits are flattened to ``(N, C)`` first.

    Examples
    --------
    >>> out = TopK(2)(np.array([[0.1, 0.7, 0.2]], np.float32))
    >>> out["labels"], out["scores"]
    (array([[1, 2]]), array([[0.7, 0.2]], dtype=float32))
    """

    output_names = ("labels", "scores")

    def __init__(self, k: int = 5):
        if not isinstance(k, int) or k < 1:
            raise InputError(f"top_k: k={k!r}; expected an integer >= 1")
        self.k = k

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(x)
        x = x.reshape(len(x), -1)
        k = min(self.k, x.shape[1])
        part = np.argpartition(-x, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(x, part, axis=1), axis=1, kind="stable")
        labels = np.take_along_axis(part, order, axis=1)
        return {"labels": labels.astype(np.int64), "scores": np.take_along_axis(x, labels, 1)}


class MeanPool:
    """Mean of token embeddings ``(N, S, E)`` over the tokens the attention mask ``(N, S)``
    keeps: sentence-transformers' pooling.

    Examples
    --------
    >>> h = np.array([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]], np.float32)
    >>> MeanPool()(h, np.array([[1, 1, 0]]))
    array([[2., 3.]], dtype=float32)
    """

    def __call__(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = np.asarray(mask, hidden.dtype)[..., None]
        return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


class L2Normalize:
    """Rows scaled to unit L2 norm along ``axis`` (cosine similarity is then a dot product).

    Examples
    --------
    >>> L2Normalize()(np.array([[3.0, 4.0]]))
    array([[0.6, 0.8]])
    """

    def __init__(self, axis: int = -1, eps: float = 1e-12):
        self.axis, self.eps = axis, eps

    def __call__(self, x: np.ndarray) -> np.ndarray:
        norm = np.sqrt((x * x).sum(axis=self.axis, keepdims=True))
        return x / np.maximum(norm, self.eps)


class Normalize:
    """Images to a model's input: ``((x * scale) - mean) / std`` per channel, as ``dtype``,
    optionally from channels-last (``layout="NHWC->NCHW"``).

    Examples
    --------
    >>> x = np.full((1, 2, 2, 3), 255, np.uint8)
    >>> y = Normalize(scale=1 / 255, mean=[0.5] * 3, std=[0.5] * 3, layout="NHWC->NCHW")(x)
    >>> y.shape, float(y.max())
    ((1, 3, 2, 2), 1.0)
    """

    def __init__(self, scale: float = 1.0, mean: Any = 0.0, std: Any = 1.0,
                 layout: str | None = None, dtype: str = "float32"):
        if layout not in (None, "NHWC->NCHW", "NCHW"):
            raise InputError(f"normalize: layout={layout!r}; expected 'NHWC->NCHW' or None")
        self.scale, self.layout, self.dtype = float(scale), layout, np.dtype(dtype).name
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, np.float32)
        if self.layout == "NHWC->NCHW":
            y = y.transpose(0, 3, 1, 2)
        shape = (1, -1) + (1,) * (y.ndim - 2) if self.mean.ndim else ()
        y = (y * self.scale - self.mean.reshape(shape)) / self.std.reshape(shape)
        return np.ascontiguousarray(y, self.dtype)


class Resize:
    """Bilinear resize of images to ``(height, width)``, channels-last ``(N, H, W, C)`` or
    ``(N, H, W)`` (half-pixel centres, as PIL and OpenCV); the dtype is kept (rounded).

    Examples
    --------
    >>> Resize(2, 2)(np.arange(16, dtype=np.uint8).reshape(1, 4, 4)).tolist()
    [[[2, 4], [10, 12]]]
    """

    def __init__(self, height: int, width: int):
        self.height, self.width = int(height), int(width)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        ys, y0, y1 = _taps(x.shape[1], self.height)
        xs, x0, x1 = _taps(x.shape[2], self.width)
        extra = (None,) * (x.ndim - 3)  # a channel axis after W
        f = x.astype(np.float32)
        wy = ys[(slice(None), None, *extra)]
        rows = f[:, y0] * (1 - wy) + f[:, y1] * wy
        wx = xs[(slice(None), *extra)]
        out = rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx
        if np.issubdtype(x.dtype, np.integer):
            info = np.iinfo(x.dtype)
            return np.clip(np.rint(out), info.min, info.max).astype(x.dtype)
        return out.astype(x.dtype)


class Average:
    """Mean of several batches of the same shape, optionally weighted: an ensemble's fan-in.

    Examples
    --------
    >>> Average()(np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]]))
    array([[0.4, 0.6]])
    >>> Average(weights=[3, 1])(np.array([[1.0]]), np.array([[5.0]]))
    array([[2.]])
    """

    def __init__(self, weights: Any = None):
        self.weights = None if weights is None else [float(w) for w in weights]
        if self.weights is not None and (not self.weights or sum(self.weights) <= 0):
            raise InputError(f"average: weights={weights!r}; expected non-negative numbers "
                             "with a positive sum")

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        if not arrays:
            raise InputError("average: no inputs; name them with the stage's inputs=[...]")
        weights = self.weights or [1.0] * len(arrays)
        if len(weights) != len(arrays):
            raise InputError(f"average: {len(arrays)} inputs but {len(weights)} weights")
        total = sum(np.asarray(a) * np.asarray(w, np.asarray(a).dtype)
                    for a, w in zip(arrays, weights))
        return total / np.asarray(sum(weights), np.asarray(total).dtype)


class Tokenize:
    """Text to a BERT-style encoder's inputs with a Hugging Face ``tokenizers`` file: int64
    ``input_ids``, ``attention_mask`` and ``token_type_ids`` of shape ``(N, max_length)``,
    truncated and right-padded to ``max_length``, so every chunk has the same shape.

    ``tokenizer`` is a ``tokenizer.json`` path or its text. The step keeps the text (it
    travels to the workers, and a job with another vocabulary is another job); each process
    builds the tokenizer once.

    Examples
    --------
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "hi": 2, "there": 3},
    ...                                  unk_token="[UNK]"))
    >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> out = Tokenize(tok.to_str(), max_length=4)(np.array(["hi there", "hi you"]))
    >>> out["input_ids"].tolist(), out["attention_mask"].tolist()
    ([[2, 3, 0, 0], [2, 1, 0, 0]], [[1, 1, 0, 0], [1, 1, 0, 0]])
    """

    output_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, tokenizer: str, max_length: int = 128):
        if not isinstance(max_length, int) or max_length < 2:
            raise InputError(f"tokenize: max_length={max_length!r}; expected an integer >= 2")
        text = str(tokenizer)
        if not text.lstrip().startswith("{"):
            from pathlib import Path

            path = Path(text).expanduser()
            if not path.is_file():
                raise InputError(f"tokenize: tokenizer {text!r} is neither a tokenizer.json "
                                 "file nor its JSON text")
            text = path.read_text()
        self.tokenizer, self.max_length = text, max_length

    def __call__(self, texts: np.ndarray) -> dict[str, np.ndarray]:
        tok = _tokenizer(self.tokenizer, self.max_length)
        rows = tok.encode_batch([str(t) for t in np.asarray(texts).reshape(-1)])
        return {name: np.array([getattr(r, attr) for r in rows], np.int64).reshape(
                    len(rows), self.max_length)
                for name, attr in zip(self.output_names, ("ids", "attention_mask", "type_ids"))}


_TOKENIZERS: dict[tuple[str, int], Any] = {}


def _tokenizer(text: str, max_length: int) -> Any:
    """One padded and truncating ``tokenizers.Tokenizer`` per JSON text and length, per
    process (building MiniLM's takes ~50 ms; a chunk's encoding a few)."""
    key = (text, max_length)
    if key not in _TOKENIZERS:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(text)
        tok.enable_truncation(max_length)
        tok.enable_padding(length=max_length)
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights and the two source indices of each output pixel along one axis."""
    pos = (np.arange(n_out, dtype=np.float32) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return pos - lo, lo, hi


#: Names a pipeline file may give as ``function:``; each is called with the stage's ``args``.
STEPS = {"softmax": Softmax, "top_k": TopK, "mean_pool": MeanPool,
         "l2_normalize": L2Normalize, "normalize": Normalize, "resize": Resize,
         "average": Average, "tokenize": Tokenize}
