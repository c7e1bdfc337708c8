"""The built-in stdlib corpus, user shards and the batch sampler."""
import json
import multiprocessing as mp
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainers import corpus
from trainers.corpus import builtin_corpus_dir, eval_windows, is_validation, load_data, sample_batch


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("corpus")
    return cache, builtin_corpus_dir(cache)


def test_builtin_corpus_is_the_stdlib_bytes(built):
    cache, path = built
    manifest = json.loads((path / "manifest.json").read_text())
    data = load_data("builtin", str(cache))
    assert data.vocab_size == 256 and data.train.dtype == np.uint8
    assert manifest["tokens"] == {"train": len(data.train), "val": len(data.val)}
    assert manifest["python_version"] in path.name
    # ~2 % of files by the hash rule; a real corpus of several MB
    assert 0.005 < manifest["files"]["val"] / sum(manifest["files"].values()) < 0.05
    assert len(data.train) > 2_000_000 and len(data.val) > 20_000
    # the train stream starts with the first non-validation stdlib file, then the separator
    root = Path(sysconfig.get_paths()["stdlib"])
    first = next(f for f in corpus._stdlib_files()[1] if not is_validation(f.relative_to(root).as_posix()))
    body = first.read_bytes()
    assert bytes(data.train[: len(body)]) == body and data.train[len(body)] == corpus.SEPARATOR
    assert b"def " in bytes(data.val[:50_000]) and b"import " in bytes(data.train[:200_000])


def _build(cache):
    return str(builtin_corpus_dir(cache))


def test_concurrent_builds_are_atomic(tmp_path):
    with mp.get_context("fork").Pool(3) as pool:
        paths = pool.map(_build, [tmp_path] * 3)
    assert len(set(paths)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [Path(paths[0]).name]  # no leftover temp dirs
    assert json.loads((Path(paths[0]) / "manifest.json").read_text())["tokens"]["train"] > 0


def test_sampler_is_deterministic_and_shifted(built):
    cache, _ = built
    tokens = load_data("builtin", str(cache)).train
    x, y = sample_batch(tokens, 64, 8, seed=1, rank=0, step=5)
    x2, y2 = sample_batch(tokens, 64, 8, seed=1, rank=0, step=5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (8, 64) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for other in ({"seed": 2, "rank": 0, "step": 5}, {"seed": 1, "rank": 1, "step": 5},
                  {"seed": 1, "rank": 0, "step": 6}):
        assert not torch.equal(x, sample_batch(tokens, 64, 8, **other)[0])


def test_eval_windows_are_fixed(built):
    cache, _ = built
    val = load_data("builtin", str(cache)).val
    w = eval_windows(val, 32, 32 * 10)
    assert w.shape == (10, 33)
    assert torch.equal(w[0], torch.from_numpy(val[:33].astype(np.int64)))
    assert torch.equal(w[-1], torch.from_numpy(val[-33:].astype(np.int64)))


def test_user_shards_list_and_flat(tmp_path):
    # list<int> rows in train (two files, sorted order), a flat int32 column in val, vocab from manifest
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    pq.write_table(pa.table({"tokens": pa.array([[1, 2, 3], [4, 5]], pa.list_(pa.int64()))}), tmp_path / "train/a.parquet")
    pq.write_table(pa.table({"tokens": pa.array([[999, 6]], pa.list_(pa.int64()))}), tmp_path / "train/b.parquet")
    pq.write_table(pa.table({"tokens": pa.array(np.arange(100, dtype=np.int32))}), tmp_path / "val/0.parquet")
    (tmp_path / "manifest.json").write_text(json.dumps({"vocab_size": 1000}))
    data = load_data(str(tmp_path))
    assert data.vocab_size == 1000 and data.train.dtype == np.uint16
    assert data.train.tolist() == [1, 2, 3, 4, 5, 999, 6]
    assert data.val.tolist() == list(range(100))


def test_user_shards_vocab_inferred_and_checked(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        pq.write_table(pa.table({"tokens": pa.array(np.array([0, 300, 7], dtype=np.uint16))}), tmp_path / split / "0.parquet")
    assert load_data(str(tmp_path)).vocab_size == 301
    bad = tmp_path / "bad"
    for split in ("train", "val"):
        (bad / split).mkdir(parents=True)
        pq.write_table(pa.table({"tokens": pa.array([1.5, 2.0])}), bad / split / "0.parquet")
    with pytest.raises(ValueError, match="integers"):
        load_data(str(bad))


def test_reading_a_split_keeps_arrows_tokens_and_does_not_import_pandas(built, tmp_path):
    """`_read_split` views each shard's Arrow buffer (no `to_numpy`, whose pandas import cost ~0.6 s
    of every fresh trial): same tokens and dtype as pyarrow's own conversion, in a fresh process."""
    import os
    import subprocess
    import sys

    import pyarrow.compute as pc

    rng = np.random.default_rng(0)
    splits = {"lists": tmp_path / "lists", "flat": tmp_path / "flat", "builtin": built[1] / "train"}
    splits["lists"].mkdir()
    splits["flat"].mkdir()
    for i in range(3):  # list<uint16> rows of ragged length, several row groups per file
        rows = [rng.integers(0, 60000, size=int(n)).tolist() for n in rng.integers(0, 50, size=40)]
        pq.write_table(pa.table({"tokens": pa.array(rows, pa.list_(pa.uint16()))}), splits["lists"] / f"{i}.parquet",
                       row_group_size=7)
    pq.write_table(pa.table({"tokens": pa.array(rng.integers(0, 2**40, size=1000), pa.int64())}),
                   splits["flat"] / "0.parquet", row_group_size=300)
    code = ("import sys, numpy as np; from pathlib import Path; from trainers.corpus import _read_split\n"
            f"for name, d in {({k: str(v) for k, v in splits.items()})!r}.items():\n"
            f"    np.save(Path({str(tmp_path)!r}) / (name + '.npy'), _read_split(Path(d)))\n"
            "print('pandas' in sys.modules)")
    root = str(Path(__file__).resolve().parents[3])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": root}, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
    for name, d in splits.items():
        ref = []
        for f in sorted(d.glob("*.parquet")):  # pyarrow's conversion (pandas loaded here: no matter)
            col = pq.read_table(f).column("tokens").combine_chunks()
            ref.append((pc.list_flatten(col) if pa.types.is_list(col.type) else col).to_numpy())
        got = np.load(tmp_path / f"{name}.npy")
        assert got.dtype == ref[0].dtype and np.array_equal(got, np.concatenate(ref)), name
        assert got.size > 100


def test_a_shard_with_null_tokens_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    pq.write_table(pa.table({"tokens": pa.array([[1, None, 3]], pa.list_(pa.int32()))}), tmp_path / "s/0.parquet")
    with pytest.raises(ValueError, match="null"):
        corpus._read_split(tmp_path / "s")
    # and a view keeps the array's offset (a slice of a shard's column)
    assert corpus._int_values(pa.array(np.arange(10, dtype=np.int16)).slice(3, 4), "x").tolist() == [3, 4, 5, 6]
