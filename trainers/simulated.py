"""The simulated trainer: the real trainer's reports and cadence, with losses drawn from a world.

`train(config, report, world)` follows the trial contract exactly like the DeepSpeed trainer:
tokens per step = the batch rounded down to whole sequences, T = ceil(tokens / that) steps, a
report every `eval_every` steps and at the end (eval_loss evaluated at every report), FLOPs
those of the model the family realises for `n_params` (6·N per token of its N, or the exact count
with `exact_flops`: the planner's and the real trainer's unit), and on divergence one last report with NaN losses and `done` = 1. Losses come from
the world's noise-free curve (`World.curve_at`) plus

- a per-trial seed offset: the whole curve × (1 + noise.seed·z), z ~ N(0, 1);
- train-loss noise: each step's loss has relative std noise.train·√(ref_tokens / batch), so the
  mean over the k steps since the last report has that over √k;
- eval-loss noise: relative std noise.eval·√(ref_tokens / eval_tokens) per evaluation;
- optionally (docs/worlds.md) Student-t draws with `noise.tail_df` degrees instead of normal ones
  (same std), and outlier runs: with probability `noise.outlier_prob` the whole curve is
  × (1 + outlier_scale·e), e ~ Exp(1), drawn from a stream of its own.

z and the per-report draws come from a generator seeded by (config.seed, a hash of the config's
math-relevant fields), so a trial is deterministic given its config. Time is simulated, never
slept: a step takes its FLOPs / flops_per_s + step_overhead_s seconds. (The losses are the world's at
the target `n_params`.)

Checkpoints, like the real trainer's: with `config.checkpoint_dir`, the last report step at or
past each multiple of `checkpoint_every` is recorded in `simulated.json` there after its report
(the last step before its report), and at the step just reported when `report` raises
`StopRequested` (the user stopped the sweep); a trial started again on the same directory (a
restarted trial, a resumed sweep) sends only the reports after that step. The losses are a function of the config,
so a resumed trial reports exactly what an uninterrupted one would have. A WSD branch
(`config.branch_step`) reports only the steps after its branch point, as the real trainer does; with
a `checkpoint_dir`, a trunk writes its state at each of `config.checkpoint_steps` to `step<k>/state.json`
(the real trainer's tag folder) before it reports a step past it, and a branch without a checkpoint of
its own starts by reading its trunk's (`config.branch_from`): a missing one fails the trial, as a
missing DeepSpeed checkpoint does. What it restored is recorded in its folder (`restored.json`).
With `config.checkpoint_mirror` (a sweep whose store is on S3) each checkpoint is copied there and a
trial starts from the mirror's (trainers.checkpoint_mirror), on whatever node it runs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from trainers.contract import REPORT_KEYS, Reporter, StopRequested, TrialConfig, TrialSummary
from trainers.flops import realised
from trainers.schedules import lr_array
from trainers.worlds.world import World, WorldError, load_world

DEFAULT_WORLD = "tiny"
# Config fields that do not change what a run computes (where it is stored, how many threads).
# (A new contract field belongs here unless it changes the run: hashing it redraws every simulated
# trial's noise, and every benchmark and planted test with it.)
_NOT_HASHED = ("contract_version", "options", "tasks", "tasks_at", "task_items", "trial_id", "checkpoint_dir",
               "checkpoint_mirror", "checkpoint_every", "checkpoint_steps", "branch_from", "branch_step", "family",
               "data_cache", "threads")
_BLOWUP_FACTOR = 10.0  # a diverging loss climbs to this multiple of the world's max_loss, then NaN


def train(config: TrialConfig, report: Reporter,
          world: Union[World, str, None] = None) -> TrialSummary:
    """Simulate one trial of `config` in `world` (default: the bundled tiny world), reporting like the real trainer."""
    w = load_world(world if world is not None else DEFAULT_WORLD)
    N, b, T = _plan(config)
    r = lr_array(T, 1.0, config.schedule)
    ends = _report_steps(T, config.eval_every)

    # Divergence: from the first step at lr >= lr_multiple·lr*, the loss climbs geometrically and is
    # non-finite blowup_steps later (at the end at the latest), where the run reports NaN and stops.
    nan_step = None
    limit = w.lr_limit(N, T * b, b)
    over = np.flatnonzero(config.lr * r >= limit)
    if over.size:
        nan_step = min(T, int(over[0]) + w.divergence.blowup_steps)
        ends = np.append(ends[ends < nan_step], nan_step)

    starts = np.concatenate(([1], ends[:-1] + 1))
    mids = (starts + ends) // 2
    points, inverse = np.unique(np.concatenate([starts, mids, ends]), return_inverse=True)
    curve = w.curve_at(N, config.lr, b, T, config.schedule, points, r=r)
    if nan_step is not None:
        cross = int(over[0])  # steps taken before the first over-limit step
        grow = np.clip((points - cross) / w.divergence.blowup_steps, 0.0, 1.0)
        curve = curve * (_BLOWUP_FACTOR * w.curve.max_loss / curve) ** grow
    at = curve[inverse].reshape(3, -1)
    # Simpson's rule over the steps since the last report: the mean train loss of that window.
    train_mean = (at[0] + 4.0 * at[1] + at[2]) / 6.0
    eval_mean = at[2]

    seed_key = [config.seed & 0xFFFFFFFF, _config_hash(config)]
    rng = np.random.default_rng(seed_key)
    z = _draws(rng, w.noise.tail_df)
    offset = 1.0 + w.noise.seed * z()
    if w.noise.outlier_prob > 0.0:  # its own stream: the other draws stay those of the same world without outliers
        out_rng = np.random.default_rng(seed_key + [1])
        if out_rng.random() < w.noise.outlier_prob:
            offset *= 1.0 + w.noise.outlier_scale * out_rng.standard_exponential()
    k = (ends - starts + 1).astype(np.float64)
    train_sd = w.noise.train * math.sqrt(w.noise.ref_tokens / b) / np.sqrt(k)
    eval_sd = w.noise.eval * math.sqrt(w.noise.ref_tokens / max(1, config.eval_tokens))
    train_loss = train_mean * offset * (1.0 + train_sd * z(ends.size))
    eval_loss = eval_mean * offset * (1.0 + eval_sd * z(ends.size))

    per_token, n_real, n_total = realised(config)
    step_s = per_token * b / w.throughput.flops_per_s + w.throughput.step_overhead_s
    tokens_per_s = b / step_s
    diverged = nan_step is not None
    resumed = _resume_step(config)
    if resumed is None and config.branch_from and config.checkpoint_dir:
        resumed = _restore_branch(config)
    points = sorted(config.checkpoint_steps) if config.checkpoint_dir else []
    prev = 0
    for i, s in enumerate(ends.tolist()):
        last = i == ends.size - 1
        bad = diverged and last
        tokens = s * b
        crossed = config.checkpoint_every > 0 and s // config.checkpoint_every > prev // config.checkpoint_every
        prev = s
        while points and points[0] <= s and not bad:  # a WSD trunk's branch points, before a report past them
            _save_branch_point(config, points.pop(0), b, resumed)
        if resumed is not None and s <= resumed and not last:
            continue  # reported before the checkpoint this run resumed from (the final one is re-sent)
        if s <= config.branch_step and not last:
            continue  # a WSD branch: its trunk trained (and reported) these steps
        if config.checkpoint_dir and last:  # before the final report, which may end the trial
            _save_step(config, s)
        try:
            report({
                "step": float(s), "tokens": float(tokens), "flops": per_token * tokens,
                "lr": float(config.lr * r[s - 1]),
                "train_loss": math.nan if bad else float(train_loss[i]),
                "eval_loss": math.nan if bad else float(eval_loss[i]),
                "tokens_per_s": tokens_per_s, "step_time_s": (s - config.branch_step) * step_s, "done": float(last),
            })
        except StopRequested:  # the user stopped the sweep after this report was recorded: resume from here
            if config.checkpoint_dir and not last and not bad:
                _save_step(config, s)
            raise
        if config.checkpoint_dir and crossed and not last:  # after the report: killed in between, it re-sends it
            _save_step(config, s)
    steps = int(ends[-1])
    return TrialSummary(
        final_eval_loss=math.nan if diverged else float(eval_loss[-1]), steps=steps,
        tokens=int(steps * b), flops=per_token * steps * b, n_params=n_real,
        n_params_total=n_total, shape={}, diverged=diverged)


def final_loss(config: TrialConfig, world: Union[World, str, None] = None) -> float:
    """The final eval loss `train` would report for `config` (NaN when it diverges), without reports."""
    from dataclasses import replace

    return train(replace(config, checkpoint_dir=None), lambda _: None, world).final_eval_loss


CHECKPOINT_FILE = "simulated.json"


def _resume_step(config: TrialConfig) -> Optional[int]:
    """The step of the trial's checkpoint, if it has one (a restarted or resumed trial)."""
    if not config.checkpoint_dir:
        return None
    if config.checkpoint_mirror:  # the mirror is the authority: the trial may have run on elsewhere
        from trainers.checkpoint_mirror import pull

        pull(config.checkpoint_dir, config.checkpoint_mirror)
    path = Path(config.checkpoint_dir) / CHECKPOINT_FILE
    try:
        return int(json.loads(path.read_text())["step"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


BRANCH_POINT_FILE = "state.json"  # in a trunk's tag folder step<k>/: the state a WSD branch restores
RESTORED_FILE = "restored.json"  # in a branch's folder: the trunk state it restored (its provenance)


def _save_branch_point(config: TrialConfig, step: int, batch: float, resumed: Optional[int]) -> None:
    """A WSD trunk's checkpoint at a branch point, `step<k>/state.json` (the real trainer's tag folder);
    one saved before this run resumed stays as it was."""
    folder = Path(config.checkpoint_dir) / f"step{step}"
    if resumed is not None and step <= resumed and (folder / BRANCH_POINT_FILE).is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{BRANCH_POINT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"step": int(step), "tokens": int(step * batch), "trial_id": config.trial_id}))
    os.replace(tmp, folder / BRANCH_POINT_FILE)
    if config.checkpoint_mirror:
        from trainers.checkpoint_mirror import push

        push(config.checkpoint_dir, config.checkpoint_mirror, names=[folder.name])


def _restore_branch(config: TrialConfig) -> int:
    """A WSD branch with no checkpoint of its own: its trunk's state at `branch_step`, read from
    `branch_from` (FileNotFoundError when the trunk never saved it, ValueError at another step), recorded
    in the branch's folder (`restored.json`) and as its own checkpoint; the step it continues from."""
    path = Path(config.branch_from) / BRANCH_POINT_FILE
    if config.checkpoint_mirror and not path.is_file():
        from trainers.checkpoint_mirror import mirror_path, pull

        pull(config.branch_from, mirror_path(config.checkpoint_dir, config.checkpoint_mirror, config.branch_from))
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"WSD branch: no trunk checkpoint at {path}") from None
    if int(state["step"]) != config.branch_step:
        raise ValueError(f"branch checkpoint {config.branch_from} is at step {state['step']}, not {config.branch_step}")
    folder = Path(config.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESTORED_FILE).write_text(json.dumps({"from": str(config.branch_from), **state}))
    _save_step(config, config.branch_step)
    return config.branch_step


def _save_step(config: TrialConfig, step: int) -> None:
    """Record a checkpoint at `step` (written to a temporary file and renamed: atomic), and copy it
    to the checkpoint mirror if the trial has one."""
    folder = Path(config.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"step": int(step)}))
    os.replace(tmp, folder / CHECKPOINT_FILE)
    if config.checkpoint_mirror:
        from trainers.checkpoint_mirror import push

        push(str(folder), config.checkpoint_mirror, pointer=CHECKPOINT_FILE)


def _plan(config: TrialConfig) -> tuple[float, float, int]:
    """(N, tokens per step, steps) as the real trainer derives them; ValueError on a bad config."""
    for name in ("n_params", "tokens", "lr", "batch_tokens", "seq_len"):
        v = getattr(config, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be positive, got {v!r}")
    if config.batch_tokens < config.seq_len:
        raise ValueError(f"batch_tokens={config.batch_tokens} must hold at least one sequence of {config.seq_len}")
    b = (int(config.batch_tokens) // config.seq_len) * config.seq_len
    T = max(1, math.ceil(config.tokens / b))
    return float(config.n_params), float(b), T


def _report_steps(T: int, eval_every: int) -> np.ndarray:
    """Steps with a report: every eval_every steps, and the last."""
    if eval_every and eval_every > 0:
        ends = np.arange(eval_every, T + 1, eval_every, dtype=np.int64)
        if ends.size == 0 or ends[-1] != T:
            ends = np.append(ends, T)
        return ends
    return np.array([T], dtype=np.int64)


def _draws(rng: np.random.Generator, tail_df: Optional[float]):
    """Unit-variance draws: standard normal, or Student-t with `tail_df` (> 2) degrees scaled to std 1."""
    if tail_df is None:
        return rng.standard_normal
    scale = math.sqrt((tail_df - 2.0) / tail_df)
    return lambda size=None: scale * rng.standard_t(tail_df, size)


def _config_hash(config: TrialConfig) -> int:
    """A stable 64-bit hash of the fields that change what the trial computes."""
    d = {k: v for k, v in config.to_dict().items() if k not in _NOT_HASHED}
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


__all__ = ["train", "final_loss", "REPORT_KEYS", "WorldError", "DEFAULT_WORLD"]
