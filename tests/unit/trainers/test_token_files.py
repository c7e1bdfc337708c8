"""Token data in the formats labs use: memory-mapped .bin, Hugging Face datasets on disk, Parquet,
text with a user's tokenizer.json; and the errors `scalesweep validate` gives for bad data (exit 2)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.app.cli import get_app
from trainers import corpus
from trainers.corpus import load_data, sample_batch
from trainers.token_files import DataError, load_streams, read_bin

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tiny.yaml"


def _bin(path: Path, ids, dtype) -> Path:
    np.asarray(ids, dtype=dtype).tofile(path)
    return path


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_bin_memmap_split_and_deterministic_batches(tmp_path, dtype):
    rng = np.random.default_rng(0)
    top = 50_000 if dtype == "uint16" else 100_000
    ids = rng.integers(1, top, size=20_000)
    f = _bin(tmp_path / "train.bin", ids, dtype)
    train, val, vocab, _ = load_streams({"format": "bin", "path": str(f), "dtype": dtype, "val_fraction": 0.1})
    assert isinstance(train, np.memmap)  # mapped, not read into memory
    assert len(train) == 18_000 and len(val) == 2_000  # the last 10 % held out, never trained on
    assert train.tolist() + val.tolist() == ids.tolist()
    assert vocab == int(ids.max()) + 1
    data = load_data({"format": "bin", "path": str(f), "dtype": dtype, "val_fraction": 0.1})
    x1, _ = sample_batch(data.train, 32, 4, seed=3, rank=0, step=7)
    x2, _ = sample_batch(data.train, 32, 4, seed=3, rank=0, step=7)
    assert (x1 == x2).all() and int(x1.max()) < top


def test_bin_with_its_own_validation_file_and_vocab(tmp_path):
    tr = _bin(tmp_path / "train.bin", np.arange(1000) % 300, np.uint16)
    va = _bin(tmp_path / "val.bin", np.arange(200) % 300, np.uint16)
    train, val, vocab, _ = load_streams({"format": "bin", "path": str(tr), "val_path": str(va), "vocab_size": 512})
    assert len(train) == 1000 and len(val) == 200 and vocab == 512
    with pytest.raises(DataError, match=r"token id 299 >= vocabulary size 256"):
        load_streams({"format": "bin", "path": str(tr), "val_path": str(va), "vocab_size": 256})


def test_bin_wrong_dtype_is_named(tmp_path):
    as32 = _bin(tmp_path / "u32.bin", np.arange(1, 5001) % 1000 + 1, np.uint32)
    with pytest.raises(DataError, match=r"u32\.bin: every other uint16 is 0: it looks like uint32"):
        read_bin(str(as32), "uint16")
    as16 = _bin(tmp_path / "u16.bin", np.arange(5000) % 1000 + 3000, np.uint16)
    with pytest.raises(DataError, match=r"u16\.bin: nearly all ids are >= 65,536: it looks like uint16"):
        read_bin(str(as16), "uint32")
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02\x00\x03\x00")
    with pytest.raises(DataError, match=r"odd\.bin: 6 bytes is not a whole number of uint32"):
        read_bin(str(odd), "uint32")
    with pytest.raises(DataError, match="no such file"):
        read_bin(str(tmp_path / "missing.bin"), "uint16")


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": rows}),
                               "validation": datasets.Dataset.from_dict({"input_ids": [[10, 11]]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    train, val, vocab, _ = load_streams({"format": "hf", "path": str(tmp_path / "dd")})
    assert train.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9] and val.tolist() == [10, 11] and vocab == 256
    # a plain Dataset, shuffled: its (view's) order is what is read; validation = the tail
    ds = datasets.Dataset.from_dict({"tokens": [[i] * 3 for i in range(10)]}).shuffle(seed=1)
    ds.save_to_disk(str(tmp_path / "ds"))
    train, val, _, _ = load_streams({"format": "hf", "path": str(tmp_path / "ds"), "val_fraction": 0.1})
    expected = [t for row in ds["tokens"] for t in row]
    assert train.tolist() + val.tolist() == expected and len(val) == 3
    with pytest.raises(DataError, match="no column nope"):
        load_streams({"format": "hf", "path": str(tmp_path / "ds"), "column": "nope"})


def _tokenizer(tmp_path: Path) -> Path:
    tk = pytest.importorskip("tokenizers")
    tok = tk.Tokenizer(tk.models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    text = ["the cat sat on the mat", "a dog ate the bone", "the quick brown fox jumps"] * 20
    tok.train_from_iterator(text, tk.trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]", "<|endoftext|>"],
                                                         show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path / "tokenizer.json"


def test_text_and_jsonl_tokenized_once_and_cached(tmp_path):
    tj = _tokenizer(tmp_path)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tj))
    eot = tok.token_to_id("<|endoftext|>")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text("\n".join(json.dumps({"text": f"the cat sat on the mat {i}"}) for i in range(50)))
    (docs / "b.txt").write_text("the quick brown fox jumps over the dog")
    cache = tmp_path / "cache"
    spec = {"format": "text", "path": str(docs), "tokenizer": str(tj), "val_fraction": 0.05}
    train, val, vocab, _ = load_streams(spec, str(cache))
    stream = train.tolist() + val.tolist()
    first = tok.encode("the cat sat on the mat 0", add_special_tokens=False).ids
    assert stream[: len(first) + 1] == first + [eot]  # documents in order, each followed by end-of-text
    assert stream.count(eot) == 51 and vocab == tok.get_vocab_size()
    cached = list(cache.glob("text-*.npy"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again, _, _, _ = load_streams(spec, str(cache))
    assert again.tolist() == train.tolist() and cached[0].stat().st_mtime_ns == mtime  # read, not re-tokenized
    with pytest.raises(DataError, match="line 1 has no text field 'body'"):
        load_streams({**spec, "column": "body", "path": str(docs / "a.jsonl")}, str(cache))
    bad = tmp_path / "bad.json"
    bad.write_text("{not a tokenizer")
    with pytest.raises(DataError, match=r"bad\.json: not a tokenizer\.json"):
        load_streams({**spec, "tokenizer": str(bad)}, str(cache))


def test_builtin_bpe_is_cached_and_sets_the_vocab(tmp_path):
    pytest.importorskip("tokenizers")
    from trainers import builtin_bpe

    # a small stand-in corpus (the real one takes ~10 s): the same layout, built by the same writer
    base = tmp_path / "corpus"
    src = (Path(corpus.__file__).read_bytes() + b"\0") * 40
    corpus._write_split(src, base / "train")
    corpus._write_split(src[:20_000], base / "val")
    builtin_bpe._corpus_dir = lambda cache: base  # type: ignore[assignment]
    try:
        d = {"format": "builtin", "tokenizer": "bpe", "vocab_size": 512}
        train, val, vocab, where = builtin_bpe.load_builtin(d)
        assert vocab == 512 and Path(where, "tokenizer.json").is_file()
        assert len(train) < len(src) / 2  # BPE: fewer tokens than bytes
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(where, "tokenizer.json")))
        eot = tok.token_to_id("<|endoftext|>")
        first = tok.decode(list(train[: list(train).index(eot)]))
        assert first == src.split(b"\0")[0].decode()  # lossless byte-level round trip
        again = builtin_bpe.load_builtin(d)
        assert again[3] == where and np.array_equal(again[0], train)
    finally:
        import importlib

        importlib.reload(builtin_bpe)


# ---- `scalesweep validate`: bad data exits 2 naming the file, nothing starts ------------------


def _validate(tmp_path: Path, data, **over) -> tuple[int, str]:
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec.update(output_dir=str(tmp_path / "out"), data=data, **over)
    spec["model"]["n_params"] = [4000]
    spec["tokens"] = {"per_param": [20]}  # D = 80,000 tokens
    spec["schedule"]["branch"] = False
    spec["budget"] = {}
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(spec))
    r = CliRunner().invoke(get_app(), ["validate", str(f)])
    return r.exit_code, r.output


def test_validate_refuses_bad_data_and_accepts_good(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALESWEEP_CACHE", str(tmp_path / "cache"))
    good = _bin(tmp_path / "good.bin", np.arange(200_000) % 1000, np.uint16)
    code, out = _validate(tmp_path, {"format": "bin", "path": str(good)})
    assert code == 0, out
    code, out = _validate(tmp_path, {"format": "bin", "path": str(tmp_path / "nope.bin")})
    assert code == 2 and "nope.bin: no such file" in out
    wrong = _bin(tmp_path / "wide.bin", np.arange(200_000) % 1000 + 1, np.uint32)
    code, out = _validate(tmp_path, {"format": "bin", "path": str(wrong)})
    assert code == 2 and "wide.bin" in out and "looks like uint32" in out
    code, out = _validate(tmp_path, {"format": "bin", "path": str(good), "vocab_size": 500})
    assert code == 2 and "good.bin" in out and "token id 999 >= vocabulary size 500" in out
    small = _bin(tmp_path / "small.bin", np.arange(40_000) % 1000, np.uint16)
    code, out = _validate(tmp_path, {"format": "bin", "path": str(small)})
    # 39,600 training tokens (1 % held out) for D = 80,000: 2.02 epochs
    assert code == 2 and "small.bin" in out and "2.02 times (epochs)" in out and "allow_repeats" in out
    code, out = _validate(tmp_path, {"format": "bin", "path": str(small), "allow_repeats": True})
    assert code == 0, out
    code, out = _validate(tmp_path, {"format": "text", "path": str(tmp_path), "tokenizer": str(tmp_path / "t.json")})
    assert code == 2 and "t.json: no such tokenizer file" in out
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello world")
    code, out = _validate(tmp_path, {"format": "text", "path": str(tmp_path / "docs"), "tokenizer": str(broken)})
    assert code == 2 and "broken.json: not a tokenizer.json" in out
    code, out = _validate(tmp_path, {"format": "bin", "path": str(good), "dtype": "int8"})
    assert code == 2 and "data.dtype" in out
