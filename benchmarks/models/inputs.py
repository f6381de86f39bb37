"""Valid sample inputs for each kind of model, in numpy only (no torch needed)."""

from __future__ import annotations

import numpy as np

# BERT's uncased vocabulary: ids below 1000 are [PAD], [unused*], [CLS], [SEP], [MASK] and
# single characters; 1996 ("the") onwards are ordinary word pieces.
BERT_PAD, BERT_CLS, BERT_SEP = 0, 101, 102
BERT_WORDS = (1996, 30522)


def bert_tokens(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``[CLS] words… [SEP] [PAD]…`` rows; row 0 is full length, the others end in padding.

    Examples
    --------
    >>> feed = bert_tokens(3, 8)
    >>> sorted(feed), feed["input_ids"].dtype.name
    (['attention_mask', 'input_ids', 'token_type_ids'], 'int64')
    """
    if seq < 2:
        raise ValueError(f"seq={seq!r} leaves no room for [CLS] and [SEP]; use seq >= 2")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min(2, seq), seq + 1, size=batch)
    # At least one row without padding (the ragged-free path) and, where the batch allows,
    # one with at least half padding.
    lengths[0] = seq
    if batch > 1 and seq > 3:
        lengths[-1] = max(2, seq // 2)
    positions = np.arange(seq)
    mask = (positions[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(*BERT_WORDS, size=(batch, seq), dtype=np.int64)
    ids[:, 0] = BERT_CLS
    ids[np.arange(batch), lengths - 1] = BERT_SEP
    ids[mask == 0] = BERT_PAD
    return {"input_ids": ids, "attention_mask": mask,
            "token_type_ids": np.zeros((batch, seq), np.int64)}


def gpt_tokens(batch: int, seq: int, seed: int = 0, vocab: int = 1000) -> dict[str, np.ndarray]:
    """Uniform token ids in ``[0, vocab)``, no padding (a causal LM scores whole rows)."""
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)}


def images(batch: int, size: int, seed: int = 0, name: str = "pixel_values",
           channels: int = 3) -> dict[str, np.ndarray]:
    """Standard-normal float32 NCHW images: what a normalised RGB batch looks like."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((batch, channels, size, size), dtype=np.float32)}
