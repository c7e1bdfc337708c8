"""Token data for trials: the built-in offline corpus, user shards, and the batch sampler.

Built-in corpus: the running interpreter's standard-library `.py` sources (real text that
needs no download), as bytes (tokens 0..255). Files are taken in sorted relative-path order,
skipping test directories and site-packages; each file is followed by a 0 byte as a document
separator. A file goes to the validation split when the first 8 hex digits of the SHA-256 of
its relative path, as an integer, are < 2 % of 16**8 — a fixed split that does not depend on
the file list. The tokens are written once as Parquet shards under the cache directory
(default `~/.cache/scalesweep/corpus`), in the same layout as user datasets:

    DIR/manifest.json        {"vocab_size": 256, "tokens": {"train": n, "val": m}, ...}
    DIR/train/00000.parquet  column `tokens`: one row per chunk (list<uint8>, 1 MiB per row)
    DIR/val/00000.parquet

The build writes into a temporary directory and renames it into place, so concurrent trials
never see a half-written corpus; the loser of a race discards its copy.

User data (token files, Hugging Face datasets, Parquet shards, text with a tokenizer.json)
and the built-in corpus as BPE tokens are read by `trainers.token_files` and
`trainers.builtin_bpe`; `load_data` takes the spec's `data` field, whatever its form. Parquet
directories keep the layout above: `train/*.parquet` and `val/*.parquet` (sorted name order),
column `tokens` a list of integers per row or a flat integer column; an optional
`manifest.json` may give `vocab_size`; otherwise it is max(256, largest token + 1).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

CORPUS_VERSION = 1  # bump when the builder changes what it writes
CHUNK_BYTES = 1 << 20
SHARD_ROWS = 8  # chunks per Parquet file
VAL_PERCENT = 2
SEPARATOR = 0  # byte appended after every source file
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class TokenData:
    """A loaded dataset: flat train and validation token streams plus its vocabulary size."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    path: str


def default_cache_dir() -> Path:
    """Where the built-in corpus is cached when the config does not say."""
    return Path(os.path.expanduser("~/.cache/scalesweep/corpus"))


def _stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        f for f in root.rglob("*.py")
        if not _SKIP_DIRS.intersection(f.relative_to(root).parts[:-1]) and f.is_file()
    ]
    return root, sorted(files, key=lambda f: f.relative_to(root).as_posix())


def is_validation(relpath: str) -> bool:
    """The fixed split rule: hash of the relative path → validation for ~2 % of files."""
    h = int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16)
    return h < VAL_PERCENT * 16**8 // 100


def _write_split(stream: bytes, out: Path) -> None:
    out.mkdir(parents=True)
    chunks = [np.frombuffer(stream[i:i + CHUNK_BYTES], dtype=np.uint8)
              for i in range(0, len(stream), CHUNK_BYTES)]
    for shard, i in enumerate(range(0, len(chunks), SHARD_ROWS)):
        rows = chunks[i:i + SHARD_ROWS]
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
        col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(rows)))
        pq.write_table(pa.table({"tokens": col}), out / f"{shard:05d}.parquet")


def builtin_corpus_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the built-in corpus shards, building them on first use (atomic, race-safe)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    v = sys.version_info
    final = root / f"stdlib-py{v.major}.{v.minor}.{v.micro}-v{CORPUS_VERSION}"
    if (final / "manifest.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    src_root, files = _stdlib_files()
    streams: dict[str, list[bytes]] = {"train": [], "val": []}
    counts = {"train": 0, "val": 0}
    for f in files:
        rel = f.relative_to(src_root).as_posix()
        split = "val" if is_validation(rel) else "train"
        streams[split].append(f.read_bytes() + bytes([SEPARATOR]))
        counts[split] += 1
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        tokens = {}
        for split, parts in streams.items():
            data = b"".join(parts)
            tokens[split] = len(data)
            _write_split(data, tmp / split)
        manifest = {
            "source": "python-stdlib",
            "python_version": sys.version.split()[0],
            "stdlib": str(src_root),
            "vocab_size": 256,
            "tokens": tokens,
            "files": counts,
            "split_rule": f"sha256(relpath)[:8] < {VAL_PERCENT}% → val",
            "separator": SEPARATOR,
            "corpus_version": CORPUS_VERSION,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _read_split(directory: Path) -> np.ndarray:
    files = sorted(directory.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet shards in {directory}")
    parts = []
    for f in files:
        # ParquetFile, not read_table: a single file needs no pyarrow.dataset (a second's import)
        col = pq.ParquetFile(f).read(columns=["tokens"]).column("tokens").combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            col = pc.list_flatten(col)
        if not pa.types.is_integer(col.type):
            raise ValueError(f"{f}: column 'tokens' must hold integers, got {col.type}")
        parts.append(_int_values(col, f))
    out = np.concatenate(parts)  # the one copy: a writable array of all shards
    if out.size and out.min() < 0:
        raise ValueError(f"{directory}: negative token ids")
    return out


def _int_values(col: pa.Array, source: object) -> np.ndarray:
    """An integer Arrow array's values: a read-only numpy view of its buffer, no copy.

    Not `Array.to_numpy`, which imports pandas (~0.6 s of every fresh trial process), zero-copy or not.

    >>> _int_values(pa.array([7, 8, 9], pa.uint16()).slice(1), "x")
    array([8, 9], dtype=uint16)
    """
    if col.null_count:
        raise ValueError(f"{source}: column 'tokens' holds {col.null_count} null(s)")
    dtype = np.dtype(str(col.type))  # pa.types.is_integer: int8 ... uint64, numpy's names too
    if len(col) == 0:
        return np.empty(0, dtype)
    return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(col), offset=col.offset * dtype.itemsize)


_LOADED: dict[str, TokenData] = {}
_LOCK = threading.Lock()


def load_data(data: "str | dict" = "builtin", cache_dir: str | None = None) -> TokenData:
    """Load the built-in corpus (bytes or BPE) or a user data source (memoised per process).

    `data` is the spec's `data` field: "builtin", a path, or a mapping (trainers.token_files).
    Token files and tokenized text are memory-mapped where they can be, not copied.
    """
    from .token_files import normalise

    d = normalise(data)
    if d["format"] == "builtin" and d["tokenizer"] == "bytes":
        key = str(builtin_corpus_dir(cache_dir).resolve())
    else:
        key = json.dumps({**d, "cache": cache_dir}, sort_keys=True)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        if d["format"] == "builtin" and d["tokenizer"] == "bytes":
            path = Path(key)
            train, val = _read_split(path / "train"), _read_split(path / "val")
            meta = json.loads((path / "manifest.json").read_text())
            vocab = int(meta["vocab_size"])
        elif d["format"] == "builtin":
            from .builtin_bpe import load_builtin

            train, val, vocab, where = load_builtin(d, cache_dir)
            path = Path(where)
        else:
            from .token_files import load_streams

            train, val, vocab, where = load_streams(d, cache_dir)
            path = Path(where)
        dtype = np.uint8 if vocab <= 256 else (np.uint16 if vocab <= 65536 else np.int32)
        td = TokenData(_as(train, dtype), _as(val, dtype), vocab, str(path))
        _LOADED[key] = td
        return td


def _as(a: np.ndarray, dtype) -> np.ndarray:
    # a memory-mapped stream already narrow enough stays mapped (no copy of a large token file)
    return a if np.dtype(a.dtype).itemsize <= np.dtype(dtype).itemsize and a.dtype.kind == "u" else a.astype(dtype)


def sample_batch(tokens: np.ndarray, seq_len: int, n_seqs: int, seed: int, rank: int,
                 step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random contiguous windows of seq_len+1 tokens, a pure function of (seed, rank, step)."""
    if len(tokens) < seq_len + 1:
        raise ValueError(f"stream of {len(tokens)} tokens is shorter than one window ({seq_len + 1})")
    rng = np.random.default_rng([seed, rank, step])
    starts = rng.integers(0, len(tokens) - seq_len, size=n_seqs)
    win = torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
    return win[:, :-1], win[:, 1:]


def eval_windows(tokens: np.ndarray, seq_len: int, n_tokens: int) -> torch.Tensor:
    """Fixed evaluation windows (seq_len+1 tokens each) evenly spaced over the validation stream."""
    n = max(1, n_tokens // seq_len)
    if len(tokens) < seq_len + 1:
        raise ValueError(f"validation stream of {len(tokens)} tokens is shorter than one window")
    starts = np.linspace(0, len(tokens) - seq_len - 1, n).astype(np.int64)
    return torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written cache directory into place atomically; another process that won the
    race (its `final` has a manifest) is not an error."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "manifest.json").exists():
            raise
