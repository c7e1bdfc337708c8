"""The paired rule: runs of one (N, D) cell and schedule compared by their loss ratio, its allowance
calibrated on the sweep's own completed pairs; planted truth (simulated world) and real curves."""
from __future__ import annotations

import copy
import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.pruning import STOP, PruneConfig, Pruner
from orchestrator.core.pruning.pruner import default_rules
from orchestrator.config.pruning import trial_meta
from orchestrator.core.pruning.pairstat import overshoot as _overshoot, pair_stat, z as _z
from trainers.contract import Schedule, TrialConfig
from trainers.simulated import train
from trainers.worlds import load_world

DATA = Path(__file__).resolve().parents[3] / "data"
LRSWEEP = DATA / "lrsweep" / "curves.csv"
WORLD = load_world("tiny")
# The law-based rules are tested in test_pruner.py and the forecast rule in test_forecast_rule.py /
# test_forecast_real.py; here only the paired rule (and the divergence rule) may stop a run.
PAIRED_ONLY = dict(grace=0.99)


def paired_only(**config) -> Pruner:
    """A pruner whose only rules are the divergence and paired rules (the law rule waits past
    `grace`; the forecast rule, which shares the paired rule's grace, is left out)."""
    cfg = PruneConfig(**{**PAIRED_ONLY, **config})
    return Pruner(cfg, rules=[r for r in default_rules(cfg) if r.name != "forecast"])


def complete(p: Pruner, runs: dict) -> None:
    """Completed runs (full curves) given to the pruner, as a running sweep has them."""
    for tid, (meta, reps) in runs.items():
        loss = [r["eval_loss"] for r in reps]
        if all(math.isfinite(x) for x in loss):
            p.on_complete(tid, loss[-1], ([r["step"] for r in reps], loss), meta=meta)


def live(p: Pruner, runs: dict) -> dict:
    """Feed the runs' reports in lockstep; trial -> its stop decision.

    A run's last report completes it without a decision (at grace 0.99 it would otherwise start a
    slow prefix-only law fit, which this file does not test).
    """
    stopped = {}
    for k in range(max(len(r) for _, r in runs.values())):
        for tid, (meta, reps) in runs.items():
            if tid in stopped or k >= len(reps):
                continue
            if k == len(reps) - 1:
                if math.isfinite(reps[k]["eval_loss"]):
                    curve = ([r["step"] for r in reps], [r["eval_loss"] for r in reps])
                    p.on_complete(tid, reps[k]["eval_loss"], curve)
                continue
            d = p.on_report(tid, meta, reps[k])
            if d.stops:
                stopped[tid] = d
    return stopped


def finals(runs: dict) -> dict:
    return {t: r[-1]["eval_loss"] for t, (_, r) in runs.items() if math.isfinite(r[-1]["eval_loss"])}


# ------------------------------------------------------------------ real learning-rate sweeps
def real_groups() -> dict:
    """(N, schedule, steps) -> {trial: (meta, reports)}: GPT models trained on CPU (benchmarks.lr_sweep_curves)."""
    rows = defaultdict(list)
    with LRSWEEP.open() as fh:
        for r in csv.DictReader(fh):
            rows[(int(r["n_params"]), r["schedule"], float(r["lr"]), int(r["seed"]), int(r["total_steps"]),
                  int(r["batch_tokens"]))].append(r)
    groups: dict = defaultdict(dict)
    for (N, kind, lr, seed, T, b), rs in rows.items():
        cfg = TrialConfig(trial_id=f"N{N}-{kind}-lr{lr:.3g}-s{seed}", n_params=N, tokens=T * b, lr=lr,
                          batch_tokens=b, schedule=Schedule(kind=kind), seed=seed)
        meta = trial_meta(cfg)
        assert meta.total_steps == T
        reps = [{"step": float(r["step"]), "train_loss": float(r["train_loss"]), "eval_loss": float(r["eval_loss"])}
                for r in sorted(rs, key=lambda r: int(r["step"]))]
        groups[(N, kind, T)][cfg.trial_id] = (meta, reps)
    return dict(groups)


@pytest.fixture(scope="module")
def real():
    return real_groups()


@pytest.fixture(scope="module")
def prefixes(real):
    """i -> a pruner that has seen the first i groups of `real` complete (rules caught up); never mutate
    one, copy it."""
    prefix = paired_only()
    out = [copy.deepcopy(prefix)]
    for runs in real.values():
        complete(prefix, runs)
        out.append(copy.deepcopy(prefix))
    return out


@pytest.fixture(scope="module")
def calibrated_on_the_others(real, prefixes):
    """Group -> a fresh copy of a pruner that has seen every other group of `real` complete, in
    `real`'s order (what a group sees when the rest of the sweep completed first); None -> every group.

    Completing a group is the expensive step, so the pruners are built once for the file and share
    their common prefix: the one for the i-th group is the first i-1 groups' pruner plus the groups
    after it (half the completions of building each from scratch, the same order and so the same state).
    """
    keys, built = list(real), {}
    for i, key in enumerate(keys):
        built[key] = copy.deepcopy(prefixes[i])
        for other in keys[i + 1:]:
            complete(built[key], real[other])
    built[None] = prefixes[-1]  # every group completed
    return lambda key: copy.deepcopy(built[key])


@pytest.mark.parametrize("calibrated", [False, True])
def test_real_lr_sweeps_never_lose_their_winner(real, calibrated, calibrated_on_the_others):
    # Real curves cross: at 20-35 % of the steps the eventual winner trails a lower lr by up to
    # 5 %, and a WSD decay moves a pair's ratio by up to 3.5 %. The rule must wait that out, with
    # the trend allowance and prior before the sweep can calibrate, with the calibrated one after.
    # Calibrated, the same (N, D) cell's other schedule has completed too: a run may then also be
    # stopped across schedules (on these curves WSD ends 3-12 % below cosine at every size), but only
    # when it ends > 1 % worse than the cell's best; against its own schedule, than its group's best.
    far_stopped = cross = 0
    for key, runs in real.items():
        # calibrated: the other groups of the sweep completed first
        p = calibrated_on_the_others(key) if calibrated else paired_only()
        cell_best = math.inf
        if calibrated:
            for other, r2 in real.items():
                if other != key and (other[0], other[2]) == (key[0], key[2]):
                    cell_best = min(cell_best, *finals(r2).values())
            assert p.history.calibration.allowance() is not None
        stopped = live(p, runs)
        f = finals(runs)
        best = min(f.values())
        cell_best = min(cell_best, best)
        for tid, d in stopped.items():
            if d.action == STOP:
                assert d.prediction["calibrated"] is calibrated
                if d.prediction.get("cross_schedule"):
                    assert calibrated and f[tid] > cell_best * 1.01, (key, tid, d.reason)
                    cross += 1
                else:
                    assert f[tid] > best * 1.01, (key, tid, d.reason)  # never the winner, nor a near-tie
        far_stopped += sum(t in stopped for t in f if f[t] > 1.2 * best)
    assert far_stopped >= 10  # and the far-off runs are stopped (they are 20-70 % worse)
    assert cross == 0 or calibrated


def test_real_both_schedules_live_never_lose_the_cell_winner(real, prefixes):
    # Both schedules of one size run together (the cross-schedule rule compares them), calibrated
    # on the other sizes' completed runs: the cell's winner is never stopped, nor a run within 1 %
    # of it, and the far-off runs of both schedules still are.
    # Each size's pruner sees the other sizes complete in `real`'s order. A size's groups are adjacent
    # there, so its pruner starts from the prefix of the sizes before it (`prefixes`).
    order = [(N, T) for N, _, T in real]
    sizes = list(dict.fromkeys(order))
    assert order == sorted(order, key=sizes.index)  # adjacent: the completion order is unchanged
    far = 0
    for i, (N, T) in enumerate(sizes):
        p = copy.deepcopy(prefixes[order.index((N, T))])  # the groups of the sizes before this one
        for (N2, kind, T2), r2 in real.items():
            if sizes.index((N2, T2)) > i:
                complete(p, r2)
        runs = {t: v for (N2, kind, T2), r2 in real.items() if (N2, T2) == (N, T) for t, v in r2.items()}
        stopped = live(p, runs)
        f = finals(runs)
        best = min(f.values())
        assert min(f, key=f.get) not in stopped
        for tid, d in stopped.items():
            if d.action == STOP:
                assert f[tid] > best * 1.01, (N, tid, d.reason)
        far += sum(t in stopped for t in f if f[t] > 1.2 * best)
    assert far >= 10


def test_real_calibration_learns_that_real_ratios_move(calibrated_on_the_others):
    # Calibrated on the real sweep, the allowance early in a run is large (curves cross), late small.
    p = calibrated_on_the_others(None)
    A = p.history.calibration.allowance()
    assert A is not None and len(p.history.calibration.pairs) >= 50
    assert A[15] > 0.04 and A[95] < A[15] / 2


def test_real_same_config_other_seed(real, calibrated_on_the_others):
    # Two runs of one config that differ only in seed (at this scale their finals differ by up to
    # 7 %): the better one is never stopped by the other, with or without calibration; nor is
    # either when they tie. (Calibrated, the cell's completed runs of the other schedule are known
    # too: a stop across schedules is allowed only for a run > 1 % worse than the best of them.)
    n = 0
    for (N, kind, T), runs in real.items():
        pair = {t: v for t, v in runs.items() if "lr0.01-" in t}
        if len(pair) < 2:
            continue
        f = finals(pair)
        better = min(f, key=f.get)
        for calibrated in (False, True):
            p = calibrated_on_the_others((N, kind, T)) if calibrated else paired_only()
            cell_best = math.inf
            if calibrated:
                for other, r2 in real.items():
                    if other != (N, kind, T) and (other[0], other[2]) == (N, T):
                        cell_best = min(cell_best, *finals(r2).values())
            stopped = live(p, pair)
            within = {t: d for t, d in stopped.items() if not d.prediction.get("cross_schedule")}
            assert better not in within, (N, kind)
            if max(f.values()) < 1.01 * min(f.values()):
                assert not within, (N, kind)
            for t, d in stopped.items():
                if t not in within:
                    assert calibrated and f[t] > 1.01 * cell_best, (N, kind, t, d.reason)
        n += 1
    assert n >= 5


# ------------------------------------------------------------------ planted truth
N1, D1, N2, D2, BATCH = 100_000, 2_000_000, 200_000, 4_000_000, 2048
FACTORS = (1 / 30, 1 / 10, 1 / 3, 1.0, 3.0)


def sim_cell(N: int, D: int, seed: int) -> dict:
    lr_star = float(WORLD.lr_star(N, D))
    runs = {}
    for kind in ("cosine", "wsd"):
        for f in FACTORS:
            c = TrialConfig(trial_id=f"N{N}-{kind}-x{f:.3g}", n_params=N, tokens=D, lr=lr_star * f,
                            batch_tokens=BATCH, schedule=Schedule(kind=kind), eval_every=max(1, D // BATCH // 60),
                            seed=seed)
            reps: list = []
            train(c, reps.append, WORLD)
            runs[c.trial_id] = (trial_meta(c), reps, c)
    return runs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_truth_losers_stop_early_and_the_winner_never(seed):
    # A first cell completes (it calibrates the rule), then a second cell runs in lockstep: every
    # run whose true (noise-free) final loss is > 3 % worse than its schedule's best is stopped by
    # the calibrated paired rule before 25 % of its steps; the winner never is, nor a true tie
    # (within 0.3 %), and every stopped run ends worse than the trial it was judged against.
    first, second = sim_cell(N1, D1, seed), sim_cell(N2, D2, seed)
    p = paired_only(seed=seed)
    complete(p, {t: (m, r) for t, (m, r, _) in first.items()})
    assert p.history.calibration.allowance() is not None
    stopped = live(p, {t: (m, r) for t, (m, r, _) in second.items()})
    f = finals({t: (m, r) for t, (m, r, _) in second.items()})
    assert min(f, key=f.get) not in stopped
    for kind in ("cosine", "wsd"):
        truth = {t: WORLD.true_loss(N2, D2, c.lr, BATCH, c.schedule) for t, (_, _, c) in second.items()
                 if c.schedule.kind == kind and t in f}
        best = min(truth.values())
        for t, v in truth.items():
            if v > 1.03 * best:
                d = stopped[t]
                assert d.action == STOP and d.prediction["mode"] == "paired" and d.prediction["calibrated"]
                assert d.prediction["fraction"] < 0.25, (t, d.reason)
                assert d.prediction["ratio_low"] > 1 + p.config.paired_margin
            elif v < 1.003 * best:
                assert t not in stopped, (t, stopped[t].reason)
    for t, d in stopped.items():
        if d.action == STOP:
            assert f[t] > f[d.prediction["reference_trial"]], (t, d.reason)


def _lone(first: dict, second: dict, lone: str) -> tuple[Pruner, dict, dict]:
    """First cell completed (both schedules: it calibrates both rules), then the second cell's cosine
    runs live with one WSD run, `lone`, that has no partner of its own schedule."""
    p = paired_only()
    complete(p, {t: (m, r) for t, (m, r, _) in first.items()})
    runs = {t: (m, r) for t, (m, r, _) in second.items() if "cosine" in t or t == lone}
    return p, runs, live(p, runs)


@pytest.mark.parametrize("seed", [0, 1])
def test_lone_run_is_compared_across_schedules(seed):
    # Planted truth (tiny world, noise-free finals): in cell (N2, D2) WSD ends ~0.6 % below cosine
    # at every lr; a WSD run at lr*/30 ends 8 % above the cell's best cosine run, at lr*/10 3 %. With
    # no other WSD run in its cell, the same-schedule rule has nothing to pair it with; the
    # cross-schedule rule (calibrated on the first cell's WSD/cosine pairs) stops it early.
    first, second = sim_cell(N1, D1, seed), sim_cell(N2, D2, seed)
    for x in (1 / 30, 1 / 10):
        lone = f"N{N2}-wsd-x{x:.3g}"
        p, runs, stopped = _lone(first, second, lone)
        assert p.history.calibration.cross_allowance((runs[lone][0].schedule_kind(),
                                       runs[f"N{N2}-cosine-x1"][0].schedule_kind())) is not None
        d = stopped[lone]
        assert d.action == STOP and d.prediction["mode"] == "paired" and d.prediction["cross_schedule"], d.reason
        assert d.prediction["calibrated"] and "across schedules" in d.reason
        # the 8 %-worse run within a quarter of its steps, the 3 %-worse one before its decay starts
        # (0.13 and 0.31 resp. 0.13 and 0.57 of its steps on seeds 0 and 1)
        assert d.prediction["fraction"] < (0.25 if x < 0.05 else 0.8), d.reason
        assert "cosine" in d.prediction["reference_trial"]
        f = finals(runs)
        assert f[lone] > f[d.prediction["reference_trial"]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lone_winner_is_never_stopped_across_schedules(seed):
    # The lone WSD run at lr* is the cell's winner (0.6 % below the best cosine run): never
    # stopped, while the far-off cosine runs are (by the same-schedule rule).
    first, second = sim_cell(N1, D1, seed), sim_cell(N2, D2, seed)
    lone = f"N{N2}-wsd-x1"
    p, runs, stopped = _lone(first, second, lone)
    assert lone not in stopped, stopped[lone].reason
    assert f"N{N2}-cosine-x0.0333" in stopped


def test_cross_schedule_rule_waits_for_calibration():
    # Without completed pairs of the two schedule kinds there is no cross-schedule comparison: the
    # drift of a WSD/cosine ratio is not ~0, so no prior can stand in for its calibration.
    second = sim_cell(N2, D2, 0)
    lone = f"N{N2}-wsd-x0.0333"
    p = paired_only()
    runs = {t: (m, r) for t, (m, r, _) in second.items() if "cosine" in t or t == lone}
    stopped = live(p, runs)
    assert lone not in stopped
    assert not any(d.prediction.get("cross_schedule") for d in stopped.values())


def test_uncalibrated_rule_says_so_and_still_stops_a_far_off_run():
    runs = {t: (m, r) for t, (m, r, _) in sim_cell(N1, D1, 0).items() if "cosine" in t}
    p = paired_only()
    stopped = live(p, runs)
    far = f"N{N1}-cosine-x{1 / 30:.3g}"  # ~20 % worse
    d = stopped[far]
    assert d.action == STOP and not d.prediction["calibrated"]
    assert d.prediction["allowance"] >= p.config.paired_prior
    assert "uncalibrated" in d.reason and "paired" in d.reason
    assert 0.1 <= d.prediction["fraction"] < 0.5 and d.prediction["ratio"] > d.prediction["ratio_low"] > 1


# ------------------------------------------------------------------ the calibration itself
def test_allowance_is_the_conformal_quantile_of_completed_pairs():
    p = Pruner(PruneConfig(level=0.9))
    rng = np.random.default_rng(0)
    pool = [np.full(101, v) for v in rng.permutation(np.arange(1, 20) / 100)]
    p.history.calibration.pairs = pool[:8]
    assert p.history.calibration.allowance() is None  # 8 pairs cannot give a 90 % bound
    p.history.calibration.pairs = pool[:9]
    assert p.history.calibration.allowance()[0] == max(v[0] for v in pool[:9])  # ⌈10·0.9⌉ = 9th of 9
    p.history.calibration.pairs = pool
    assert p.history.calibration.allowance()[0] == pytest.approx(0.18)  # ⌈20·0.9⌉ = 18th of 19


def test_overshoot_of_a_pair_whose_ratio_reverses():
    # Planted: run a is 5 % worse than b until half way, then the gap closes to -2 % at the end.
    T = 1000
    s = np.arange(20.0, T + 1, 20.0)
    gap = np.where(s <= 500, 0.05, 0.05 - 0.07 * (s - 500) / 500)
    la = 1.0 + 0.0 * s
    lb = la - gap
    A = _overshoot(s, la, s, lb, 50, T, _z(0.9))
    assert A[20] > 0.05  # from 20 % on, the bound said 'a is worse by 5 %', the end says 'better by 2 %'
    assert A[99] < 0.01  # at the end there is nothing left to overshoot
    # A pair with a constant ratio overshoots by nothing
    B = _overshoot(s, la, s, la - 0.03, 50, T, _z(0.9))
    assert np.nanmax(B[np.isfinite(B)]) <= 1e-12


def test_pythia_noise_alone_never_stops_a_pair():
    # Pythia 14M's single-step losses, split into two interleaved runs (same truth, independent
    # step noise ~1 %): neither stops the other; a copy 8 % above is stopped by the paired rule.
    from test_pythia_noise import DATA as PYTHIA, meta

    rows = np.loadtxt(PYTHIA, delimiter="\t", skiprows=1)
    steps, loss = rows[:, 1], rows[:, 0]
    even = steps % 200 == 0
    for shift, expect in ((0.0, set()), (0.08, {"b"})):
        p = paired_only(metric="train_loss")
        m = meta()
        a = list(zip(steps[even], loss[even]))
        b = list(zip(steps[~even], loss[~even] * (1 + shift)))
        stopped = set()
        for (sa, la), (sb, lb) in zip(a, b):
            if max(sa, sb) >= p.config.grace * m.total_steps:
                break  # the paired rule's path; the law rules are test_pythia_noise.py's
            for tid, s, v in (("a", sa, la), ("b", sb, lb)):
                report = {"step": s, "train_loss": v, "eval_loss": math.nan}
                if tid not in stopped and p.on_report(tid, m, report).stops:
                    stopped.add(tid)
        assert stopped == expect, shift


def test_the_trend_allowance_extrapolates_a_closing_gap_not_a_widening_one():
    # Planted: d = log L_i - log L_j exactly linear in log steps, 10 % to 25 % of a 400-step run.
    s, T = np.arange(40.0, 101.0, 4.0), 400.0
    lj = np.log(3.0 + 0 * s)
    slope = 0.05
    widening = lj + 0.1 + slope * np.log(s / 40.0)  # falling further behind
    closing = lj + 0.1 + slope * np.log(40.0) - slope * np.log(s)  # catching up at the same speed
    _, _, naive_w, low_w = pair_stat(s, widening, s, lj, 0.0, T, _z(0.9))
    _, _, naive_c, low_c = pair_stat(s, closing, s, lj, 0.0, T, _z(0.9))
    to_go = math.log(T) - float(np.mean(np.log(s[s >= 0.25 * s[-1]])))
    # a closing gap may close as much again: the whole slope over the log-steps to go
    assert naive_c - low_c == pytest.approx(slope * to_go, rel=1e-6)
    # a widening one is not extrapolated (its slope's noise only: none here)
    assert naive_w - low_w == pytest.approx(0.0, abs=1e-9)
