"""The built-in corpus as bytes or as BPE tokens (a small tokenizer trained offline on it, cached).

`data: {format: builtin, tokenizer: bpe, vocab_size: 4096}` trains a byte-level BPE tokenizer
(Hugging Face `tokenizers`) on the first `BPE_TRAIN_BYTES` of the built-in corpus's training
split, once, then tokenizes both splits with it. Documents (the corpus's source files, split at
its 0-byte separator) are joined with the tokenizer's ``<|endoftext|>`` token. Everything lands
in ``<corpus dir>/bpe-<vocab>-v<BPE_VERSION>/`` (tokenizer.json, train.npy, val.npy,
manifest.json), written into a temporary directory and renamed into place. The model's vocabulary
is the tokenizer's. Nothing is downloaded.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .corpus import publish_dir
from .token_files import DataError, encode_documents, end_of_text, read_parquet

BPE_VERSION = 1  # bump when what is written changes
BPE_TRAIN_BYTES = 4 << 20  # the tokenizer learns from this much text: seconds on one core
EOT = "<|endoftext|>"


def _corpus_dir(cache_dir: Optional[str]) -> Path:
    from .corpus import builtin_corpus_dir

    return builtin_corpus_dir(cache_dir)


def _docs(stream: np.ndarray) -> list[str]:
    raw = np.asarray(stream, dtype=np.uint8).tobytes()
    return [d.decode("utf-8", errors="replace") for d in raw.split(b"\0") if d]


def train_bpe(docs: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer of `vocab_size` tokens (EOT included) learnt from `docs`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def builtin_bpe_dir(vocab_size: int, cache_dir: Optional[str] = None) -> Path:
    """The BPE-tokenized built-in corpus, built on first use (atomic, race-safe)."""
    if not 300 <= vocab_size <= 65536:
        raise DataError(f"data.vocab_size: a built-in BPE vocabulary of {vocab_size} tokens; use 300 to 65,536")
    base = _corpus_dir(cache_dir)
    final = base / f"bpe-{vocab_size}-v{BPE_VERSION}"
    if (final / "manifest.json").exists():
        return final
    train_docs = _docs(read_parquet(str(base / "train")))
    val_docs = _docs(read_parquet(str(base / "val")))
    sample, size = [], 0
    for d in train_docs:  # the first files in the corpus's fixed order: deterministic
        if size >= BPE_TRAIN_BYTES:
            break
        sample.append(d)
        size += len(d)
    tok = train_bpe(sample, vocab_size)
    eot = end_of_text(tok)
    tmp = Path(tempfile.mkdtemp(prefix=".bpe-", dir=base))
    try:
        tok.save(str(tmp / "tokenizer.json"))
        counts = {}
        for split, docs in (("train", train_docs), ("val", val_docs)):
            ids = encode_documents(tok, docs, eot).astype(np.uint16)
            np.save(tmp / f"{split}.npy", ids)
            counts[split] = int(len(ids))
        (tmp / "manifest.json").write_text(json.dumps({
            "source": "python-stdlib, BPE", "vocab_size": tok.get_vocab_size(), "tokens": counts,
            "trained_on_bytes": size, "end_of_text": eot, "bpe_version": BPE_VERSION}, indent=2))
        publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_builtin(d: dict[str, Any], cache_dir: Optional[str] = None) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(train, val, vocab_size, where) of the built-in corpus, as bytes or BPE tokens (`d` normalised)."""
    kind = d.get("tokenizer") or "bytes"
    if kind == "bytes":
        base = _corpus_dir(cache_dir)
        return read_parquet(str(base / "train")), read_parquet(str(base / "val")), 256, str(base)
    if kind != "bpe":
        raise DataError(f"data.tokenizer: the built-in corpus is 'bytes' or 'bpe', got {kind!r}")
    where = builtin_bpe_dir(int(d.get("vocab_size") or 4096), cache_dir)
    meta = json.loads((where / "manifest.json").read_text())
    train = np.load(where / "train.npy", mmap_mode="r")
    val = np.load(where / "val.npy", mmap_mode="r")
    return train, val, int(meta["vocab_size"]), str(where)
