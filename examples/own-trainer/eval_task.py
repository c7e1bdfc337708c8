#!/usr/bin/env python
"""A lab's own evaluation harness as a scalesweep command task (docs/downstream.md, "Command tasks").

    python eval_task.py --checkpoint DIR --out METRICS.json [--windows 32]

In a spec: `eval: {tasks: ["command:next_byte={python} examples/own-trainer/eval_task.py
--checkpoint {checkpoint} --out {out}"]}`. It reads the model from DIR — train_lm.py's format
(`model.pt` holding {"model", "shape"}) or the one scalesweep's built-in trainer writes
(`model.json` + `model.pt`, read by `trainers.tasks.load_task_model`) — and writes to OUT the
next-token top-1 accuracy over fixed windows of the built-in corpus's validation split: `acc`,
`task_loss` (mean negative log-likelihood, nats per token), `chance` (1 / vocabulary), `n_items`
(predictions scored) and `tokens` (tokens run through the model).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainers.corpus import load_data


def load_model(folder: Path):
    """(model(idx) -> logits, window length) from either checkpoint format."""
    if (folder / "model.json").exists():
        from trainers.tasks import load_task_model

        model = load_task_model(folder)
        return model, model.max_seq_len
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_lm import GPT

    state = torch.load(folder / "model.pt", weights_only=False)
    vocab, seq, d, layers, heads = state["shape"]
    model = GPT(vocab, seq, d, layers, heads)
    model.load_state_dict(state["model"])
    return model.eval(), seq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--windows", type=int, default=32)
    args = ap.parse_args()
    model, seq = load_model(Path(args.checkpoint))
    val = load_data("builtin").val
    starts = np.linspace(0, len(val) - seq - 2, args.windows).astype(np.int64)
    batch = torch.from_numpy(np.stack([val[s:s + seq + 1] for s in starts]).astype(np.int64))
    with torch.no_grad():
        logits = model(batch[:, :-1]).float()
    target = batch[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1)).item()
    acc = (logits.argmax(-1) == target).float().mean().item()
    Path(args.out).write_text(json.dumps({"acc": acc, "task_loss": nll, "chance": 1.0 / logits.size(-1),
                                          "n_items": target.numel(), "tokens": batch[:, :-1].numel()}))


if __name__ == "__main__":
    main()
