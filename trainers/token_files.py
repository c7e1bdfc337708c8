"""Token data in the formats labs use: flat binary token files, Hugging Face datasets on disk,
Parquet shards and raw text tokenized with a user's ``tokenizer.json``.

A data source is the spec's `data` field: the string ``builtin`` (the built-in corpus as bytes),
a path (a directory of Parquet shards, or a ``.bin`` file of uint16 tokens), or a mapping:

    format        builtin | parquet | bin | hf | text
    path          file, directory or glob (not for builtin)
    val_path      its validation split, same format; none = the last `val_fraction` of the tokens
    val_fraction  share of the tokens held out for validation when there is no val_path (0.01)
    dtype         bin: uint16 | uint32 (uint16, the nanoGPT / llm.c convention)
    tokenizer     text: a tokenizer.json (Hugging Face `tokenizers`); builtin: "bytes" or "bpe"
    vocab_size    the model's vocabulary; every token id must be below it. none = the tokenizer's,
                  the manifest's, or max(256, largest id + 1). builtin bpe: the BPE vocabulary (4096)
    column        hf / parquet: the token column (input_ids, then tokens); text JSONL: the text field (text)
    allow_repeats train on more tokens than the data holds (the epoch count is recorded per trial)

Reading is deterministic: files in sorted name order, rows in order, documents joined in order
(text: the tokenizer's end-of-text token between documents when it has one). Tokenized text is
cached once under the cache directory, keyed by the tokenizer's and the files' content, and
written atomically (rename into place).

>>> normalise("builtin")["format"], normalise("/d/train.bin")["format"], normalise("/d/shards")["format"]
('builtin', 'bin', 'parquet')

Long because every data format (bin, Parquet, HF, text, builtin) is read behind the one `load_streams` and
checked by the one `problems`.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

FORMATS = ("builtin", "parquet", "bin", "hf", "text")
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
DEFAULT_VAL_FRACTION = 0.01
DEFAULT_BPE_VOCAB = 4096
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".md")
EOT_NAMES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|eot_id|>", "<|end_of_text|>")

DataSource = Union[str, Mapping[str, Any]]


class DataError(ValueError):
    """A data source that cannot be used; the message names the file and the problem."""


def normalise(data: DataSource) -> dict[str, Any]:
    """The data source as a full mapping (every key present, defaults filled)."""
    if isinstance(data, str):
        if data == "builtin":
            d: dict[str, Any] = {"format": "builtin"}
        elif data.endswith(".bin"):
            d = {"format": "bin", "path": data}
        else:
            d = {"format": "parquet", "path": data}
    else:
        d = {k: v for k, v in dict(data).items() if v is not None}
    fmt = d.get("format", "builtin")
    out = {"format": fmt, "path": d.get("path"), "val_path": d.get("val_path"),
           "val_fraction": float(d.get("val_fraction", DEFAULT_VAL_FRACTION)),
           "dtype": d.get("dtype", "uint16" if fmt == "bin" else None),
           "tokenizer": d.get("tokenizer", "bytes" if fmt == "builtin" else None),
           "vocab_size": d.get("vocab_size"), "column": d.get("column"),
           "allow_repeats": bool(d.get("allow_repeats", False))}
    if fmt == "builtin" and out["tokenizer"] == "bpe" and out["vocab_size"] is None:
        out["vocab_size"] = DEFAULT_BPE_VOCAB
    return out


def default_token_cache() -> Path:
    """Where tokenized text is cached when the config does not say."""
    return Path(os.path.expanduser("~/.cache/scalesweep/tokens"))


def _files(path: str, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """The files a path names: itself, a directory's files with these suffixes, or a glob's matches."""
    p = Path(path)
    if any(c in path for c in "*?["):
        files = sorted(Path(f) for f in globlib.glob(path) if Path(f).is_file())
        if not files:
            raise DataError(f"{path}: no file matches")
        return files
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in suffixes)
        if not files:
            raise DataError(f"{path}: a directory with no {what} ({' '.join('*' + s for s in suffixes)})")
        return files
    raise DataError(f"{path}: no such file or directory")


# ---- readers: each returns one flat token stream ------------------------------------------


def read_bin(path: str, dtype: str) -> np.ndarray:
    """A header-less flat binary of token ids (nanoGPT / llm.c), memory-mapped; files concatenated."""
    if dtype not in DTYPES:
        raise DataError(f"{path}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    dt = np.dtype(DTYPES[dtype])
    parts = []
    for f in _files(path, (".bin",), "token files"):
        size = f.stat().st_size
        if size == 0:
            raise DataError(f"{f}: empty token file")
        if size % dt.itemsize:
            raise DataError(f"{f}: {size} bytes is not a whole number of {dtype} tokens "
                            f"({dt.itemsize} bytes each): wrong dtype?")
        arr = np.memmap(f, dtype=dt, mode="r")
        _check_dtype_guess(arr, dtype, f)
        parts.append(arr)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _check_dtype_guess(arr: np.ndarray, dtype: str, f: Path) -> None:
    """Catch a file written in the other width: uint32 ids read as uint16 leave every other value 0
    (the high halves); uint16 ids read as uint32 make ids of 65,536 and more."""
    sample = np.asarray(arr[: 1 << 16])
    if dtype == "uint16" and len(sample) >= 64:
        odd = sample[1::2]
        if (odd == 0).mean() > 0.9 and (sample[0::2] != 0).mean() > 0.5:
            raise DataError(f"{f}: every other uint16 is 0: it looks like uint32 tokens; set data.dtype: uint32")
    if dtype == "uint32" and len(sample) and (sample >= 1 << 16).mean() > 0.9:
        raise DataError(f"{f}: nearly all ids are >= 65,536: it looks like uint16 tokens; set data.dtype: uint16")


def read_parquet(path: str, column: Optional[str] = None) -> np.ndarray:
    """Parquet/Arrow shards: a column of token lists or a flat integer column, rows in order."""
    import pyarrow.parquet as pq

    parts = []
    for f in _files(path, (".parquet", ".arrow"), "Parquet shards"):
        if f.suffix == ".arrow":
            import pyarrow as pa
            import pyarrow.ipc as ipc

            with pa.memory_map(str(f)) as src:
                try:
                    table = ipc.open_file(src).read_all()
                except pa.ArrowInvalid:
                    src.seek(0)
                    table = ipc.open_stream(src).read_all()
        else:
            table = pq.ParquetFile(f).read()  # one file: no pyarrow.dataset import
        parts.append(_flat_column(table, column, f))
    return np.concatenate(parts)


def _flat_column(table: Any, column: Optional[str], where: Any) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    names = table.column_names
    name = column or next((c for c in ("input_ids", "tokens") if c in names), None)
    if name is None or name not in names:
        raise DataError(f"{where}: no column {column or 'input_ids or tokens'} (columns: {', '.join(names)}); "
                        "set data.column")
    col = table.column(name).combine_chunks()
    while pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        col = pc.list_flatten(col)
    if not pa.types.is_integer(col.type):
        raise DataError(f"{where}: column {name!r} must hold integers (token ids), got {col.type}")
    out = col.to_numpy(zero_copy_only=False)
    if out.size and out.min() < 0:
        raise DataError(f"{where}: negative token ids in column {name!r}")
    return out


def read_hf(path: str, column: Optional[str] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A Hugging Face dataset saved with `save_to_disk`: (train, validation or None).

    A DatasetDict gives its `train` split and `validation` (or `val`, `test`); a Dataset only train.
    """
    if not Path(path).is_dir():
        raise DataError(f"{path}: no such directory (a dataset saved with datasets' save_to_disk)")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: format hf needs the `datasets` package (pip install datasets)") from None
    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:  # noqa: BLE001 -- datasets raises many kinds; the user needs the message
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({type(exc).__name__}: {exc})") from None

    def flat(d: Any, split: str) -> np.ndarray:
        if getattr(d, "_indices", None) is not None:  # a select/shuffle view: materialise its order
            d = d.flatten_indices()
        return _flat_column(d.data.table, column, f"{path} [{split}]")

    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(ds)})")
        val = next((s for s in ("validation", "val", "test") if s in ds), None)
        return flat(ds["train"], "train"), (flat(ds[val], val) if val else None)
    return flat(ds, "train"), None


def load_tokenizer(path: str) -> Any:
    """A Hugging Face `tokenizers` tokenizer from a tokenizer.json; DataError naming the file otherwise."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError(f"{path}: a tokenizer needs the `tokenizers` package (pip install tokenizers)") from None
    if not Path(path).is_file():
        raise DataError(f"{path}: no such tokenizer file")
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # noqa: BLE001 -- the Rust side raises a bare Exception
        raise DataError(f"{path}: not a tokenizer.json that Hugging Face tokenizers can load ({exc})") from None


def end_of_text(tok: Any) -> Optional[int]:
    """The tokenizer's document separator id, if it has one of the usual names."""
    for name in EOT_NAMES:
        i = tok.token_to_id(name)
        if i is not None:
            return int(i)
    return None


def _documents(files: list[Path], field: str) -> list[str]:
    docs = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if f.suffix in (".jsonl", ".json") and text.lstrip().startswith("{"):
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{f}: line {n} is not JSON ({exc.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get(field), str):
                    raise DataError(f"{f}: line {n} has no text field {field!r}; set data.column")
                docs.append(row[field])
        else:
            docs.append(text)
    return docs


def encode_documents(tok: Any, docs: list[str], eot: Optional[int]) -> np.ndarray:
    """Documents tokenized in order and joined (the separator after each when given)."""
    ids: list[np.ndarray] = []
    sep = np.array([eot], dtype=np.int64) if eot is not None else None
    for i in range(0, len(docs), 256):
        for enc in tok.encode_batch(docs[i:i + 256], add_special_tokens=False):
            ids.append(np.asarray(enc.ids, dtype=np.int64))
            if sep is not None:
                ids.append(sep)
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)


def _stream_dtype(vocab: int) -> Any:
    return np.uint16 if vocab <= 1 << 16 else np.uint32


def save_atomic(arr: np.ndarray, final: Path) -> None:
    """Write an .npy so that readers never see half of it (rename into place; the loser of a race drops its copy)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_text(path: str, tokenizer: str, column: Optional[str], cache_dir: Optional[str]) -> np.ndarray:
    """Raw text (.txt files, or JSONL with a text field) tokenized with a tokenizer.json, cached once."""
    tok = load_tokenizer(tokenizer)
    files = _files(path, TEXT_SUFFIXES, "text files")
    field = column or "text"
    h = hashlib.sha256(Path(tokenizer).read_bytes())
    h.update(field.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    cached = Path(cache_dir or default_token_cache()) / f"text-{h.hexdigest()[:24]}.npy"
    if cached.exists():
        return np.load(cached, mmap_mode="r")
    ids = encode_documents(tok, _documents(files, field), end_of_text(tok))
    arr = ids.astype(_stream_dtype(tok.get_vocab_size()))
    save_atomic(arr, cached)
    return np.load(cached, mmap_mode="r")


# ---- a whole source: train and validation streams -------------------------------------------


def _read_one(d: dict[str, Any], path: str, cache_dir: Optional[str]) -> np.ndarray:
    fmt = d["format"]
    if fmt == "bin":
        return read_bin(path, d["dtype"])
    if fmt == "parquet":
        return read_parquet(path, d["column"])
    if fmt == "text":
        if not d["tokenizer"]:
            raise DataError(f"{path}: format text needs data.tokenizer (a tokenizer.json)")
        return read_text(path, d["tokenizer"], d["column"], cache_dir)
    raise DataError(f"data.format: {fmt!r} is not one of {', '.join(FORMATS)}")


def load_streams(data: DataSource, cache_dir: Optional[str] = None) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(train, val, vocab_size, where) of a user data source (not the built-in corpus).

    Validation: `val_path` when given; the dataset's own split (a Parquet directory's val/, a
    DatasetDict's validation); otherwise the last `val_fraction` of the tokens, which train never sees.
    """
    d = normalise(data)
    fmt, path = d["format"], d["path"]
    if fmt == "builtin":
        raise DataError("load_streams reads user data; the built-in corpus is trainers.corpus.load_data")
    if not path:
        raise DataError(f"data.path: format {fmt} needs a path")
    meta_vocab = None
    val: Optional[np.ndarray] = None
    if fmt == "parquet" and Path(path).is_dir() and (Path(path) / "train").is_dir():
        train = read_parquet(str(Path(path) / "train"), d["column"])
        if (Path(path) / "val").is_dir():
            val = read_parquet(str(Path(path) / "val"), d["column"])
        manifest = Path(path) / "manifest.json"
        if manifest.exists():
            meta_vocab = json.loads(manifest.read_text()).get("vocab_size")
    elif fmt == "hf":
        train, val = read_hf(path, d["column"])
    else:
        train = _read_one(d, path, cache_dir)
    if d["val_path"]:
        val = read_hf(d["val_path"], d["column"])[0] if fmt == "hf" else _read_one(d, d["val_path"], cache_dir)
    if val is None:
        frac = d["val_fraction"]
        if not 0 < frac < 1:
            raise DataError(f"{path}: no validation split; data.val_fraction must be in (0, 1), got {frac}")
        cut = len(train) - max(1, int(round(len(train) * frac)))
        train, val = train[:cut], train[cut:]
    vocab = d["vocab_size"] or meta_vocab
    if vocab is None and fmt == "text":
        vocab = load_tokenizer(d["tokenizer"]).get_vocab_size()
    top = int(max(_max(train), _max(val)))
    if vocab is None:
        vocab = max(256, top + 1)
    if top >= int(vocab):
        raise DataError(f"{path}: token id {top} >= vocabulary size {vocab} (data.vocab_size or the tokenizer's): "
                        "the model's embedding has no row for it" + (f"; or wrong dtype ({d['dtype']})?" if fmt == "bin" else ""))
    return train, val, int(vocab), str(path)


def _max(a: np.ndarray) -> int:
    if not len(a):
        return 0
    # chunked: a memmap's max without paging the whole file in at once
    return int(max(int(a[i:i + (1 << 24)].max()) for i in range(0, len(a), 1 << 24)))


def epochs(train_tokens: int, tokens: int) -> float:
    """Passes over the training stream a trial of `tokens` tokens makes.

    >>> epochs(1000, 2500)
    2.5
    """
    return float(tokens) / max(1, int(train_tokens))


def problems(data: DataSource, largest_tokens: int, seq_len: int, cache_dir: Optional[str] = None,
             builtin_cache: Optional[str] = None) -> list[str]:
    """What stops a sweep from training on this data, as `data...: message` lines (empty: usable).

    Loads the data once (tokenizing and caching text), then checks the validation split holds a
    window and that the largest trial's D fits the training tokens, unless allow_repeats.
    """
    d = normalise(data)
    try:
        if d["format"] == "builtin":
            from .builtin_bpe import load_builtin

            train, val, _vocab, where = load_builtin(d, builtin_cache)
        else:
            train, val, _vocab, where = load_streams(d, cache_dir)
    except DataError as exc:
        return [f"data: {exc}"]
    except OSError as exc:
        return [f"data: {getattr(exc, 'filename', None) or d['path']}: {exc.strerror or exc}"]
    out = []
    if len(val) < seq_len + 1:
        out.append(f"data: {where}: the validation split has {len(val)} tokens, fewer than one window of "
                   f"model.seq_len + 1 = {seq_len + 1}; give data.val_path or a larger data.val_fraction")
    if len(train) < seq_len + 1:
        out.append(f"data: {where}: {len(train)} training tokens, fewer than one window of {seq_len + 1}")
    elif largest_tokens > len(train) and not d["allow_repeats"]:
        out.append(f"data: {where}: {len(train):,} training tokens; the largest trial (D = {largest_tokens:,}) "
                   f"would pass over them {epochs(len(train), largest_tokens):.2f} times (epochs). Set "
                   "data.allow_repeats: true to train on repeated tokens (the epoch count is recorded per "
                   "trial), or give more data or a smaller largest D (tokens)")
    return out
