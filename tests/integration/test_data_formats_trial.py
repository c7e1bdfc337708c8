"""Real DeepSpeed trials (in-process, CPU) on a user's memory-mapped .bin and on text tokenized with
a tokenizer.json: the model's vocabulary follows the data, losses are finite, epochs are recorded."""
import math

import numpy as np
import pytest

from trainers.contract import Schedule, TrialConfig
from trainers.deepspeed_trainer import train

pytestmark = pytest.mark.integration


def _config(data, cache, **kw):
    base = dict(trial_id="t", n_params=20_000, tokens=12 * 1024, lr=3e-3, batch_tokens=1024, seq_len=64,
                schedule=Schedule(kind="wsd", warmup=0.1, decay=0.2), eval_every=6, eval_tokens=1024,
                zero_stage=1, data=data, data_cache=cache)
    base.update(kw)
    return TrialConfig(**base)


def _check(reports, summary, train_tokens):
    assert [r["step"] for r in reports] == [6, 12]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["eval_loss"]) for r in reports)
    assert summary.epochs == pytest.approx(12 * 1024 / train_tokens)


def test_trial_on_memmap_bin(tmp_path):
    # a repeating pattern over 1,000 token ids: learnable, and the embedding needs 1,000 rows
    ids = (np.arange(40_000) * 7 % 1000).astype(np.uint16)
    ids.tofile(tmp_path / "train.bin")
    reports = []
    summary = train(_config({"format": "bin", "path": str(tmp_path / "train.bin"), "val_fraction": 0.05},
                            str(tmp_path / "cache")), reports.append)
    _check(reports, summary, 38_000)
    assert reports[-1]["eval_loss"] < math.log(1000)


def test_trial_on_text_with_tokenizer(tmp_path):
    tk = pytest.importorskip("tokenizers")
    words = "the cat sat on the mat while a dog ate the bone and the quick brown fox jumps".split()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(words, size=60)) for _ in range(400)]
    tok = tk.Tokenizer(tk.models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    tok.train_from_iterator(docs, tk.trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "<|endoftext|>"],
                                                         show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "corpus.jsonl").write_text("\n".join('{"text": "%s"}' % d for d in docs))
    data = {"format": "text", "path": str(tmp_path / "corpus.jsonl"), "tokenizer": str(tmp_path / "tokenizer.json"),
            "val_fraction": 0.05}
    reports = []
    summary = train(_config(data, str(tmp_path / "cache")), reports.append)
    from trainers.corpus import load_data

    td = load_data(data, str(tmp_path / "cache"))
    assert td.vocab_size == tok.get_vocab_size()
    _check(reports, summary, len(td.train))
