"""The forecast rule (orchestrator/core/pruning/rules/forecast.py): its calibrated interval against
planted truth (curves of a known law with known run-to-run and report noise), and its stops.

The sweep here: runs of one size and schedule, the annealing law with planted parameters (the law
the rule fits, ``PruneConfig(law="annealing")``, cheaper than the multi-power law), each run × its own
offset exp(N(0, 0.03²)) (seed and data order) × report noise exp(N(0, 0.01²)).
"""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.core.laws.final_loss import make_law
from orchestrator.core.pruning import Patient, PruneConfig, Pruner, TrialMeta
from orchestrator.core.pruning.rules.forecast import MIN_RUNS, Forecast, ForecastConfig

T, EVERY = 200, 5
OFFSET_SD, NOISE_SD = 0.03, 0.01
CFG = PruneConfig(law="annealing")


def _meta(N: float = 1e6, cell_D: float | None = None) -> TrialMeta:
    s = np.arange(T)
    warm = 10
    lr = np.where(s < warm, (s + 1) / warm, 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (s - warm + 1) / (T - warm))))
    return TrialMeta(N=N, D=T * 2048.0, total_steps=T, lr=1e-3 * lr, flops=6 * N * T * 2048.0, warmup_steps=warm,
                     schedule="cosine", cell_D=cell_D)


META = _meta()
STEPS = np.arange(EVERY, T + 1, EVERY, dtype=float)


def _truth() -> np.ndarray:
    law = make_law("annealing")
    law.theta = np.array([2.0, 0.5, 0.5, 1.0])  # L0, A, alpha, C
    return law.predict_schedule(META.law_schedule(), STEPS)


TRUTH = _truth()


class Spy:
    """Wraps the forecast rule and keeps each trial's latest forecast (the pruner returns only stops)."""

    name = "spy"

    def __init__(self, rule: Forecast):
        self.rule = rule
        self.last: dict[str, dict] = {}

    def check(self, trial_id, t, history):
        v = self.rule.check(trial_id, t, history)
        if v is not None and "low" in v.prediction:
            self.last[trial_id] = dict(v.prediction)
        return v


def _run(rng: np.random.Generator, factor: float = 1.0) -> np.ndarray:
    return factor * TRUTH * np.exp(rng.normal(0, OFFSET_SD) + rng.normal(0, NOISE_SD, TRUTH.size))


def _feed(p: Pruner, tid: str, loss: np.ndarray, upto: float = 1.0, complete: bool = True,
          meta: TrialMeta = META) -> str:
    """Reports up to fraction ``upto``; the decision that ended it (or 'continue'); completes it."""
    for s, x in zip(STEPS, loss):
        if s > upto * T:
            return "continue"
        d = p.on_report(tid, meta, {"step": s, "train_loss": x, "eval_loss": x})
        if d.stops:
            return d.action
    if complete:
        p.on_complete(tid, float(loss[-1]))
    return "continue"


def _calibrated(n_done: int = 30, seed: int = 0):
    """A pruner whose forecast rule has seen ``n_done`` completed runs of the size and schedule: the
    first three in one (N, D) cell (the reference of the tests' runs), the others each in a cell of
    its own (so none is stopped: the calibration pool is every completed run but the first)."""
    rng = np.random.default_rng(seed)
    spy = Spy(Forecast(ForecastConfig.of(CFG)))
    p = Pruner(CFG, rules=[Patient(spy, CFG.min_reports)])
    for i in range(n_done):
        assert _feed(p, f"done{i}", _run(rng), meta=META if i < 3 else _meta(cell_D=1e8 + i)) == "continue"
    return p, spy, rng


def test_no_interval_before_enough_completed_runs():
    p, spy, rng = _calibrated(n_done=MIN_RUNS)  # the first run has no law to be scored with: 8 scored
    assert spy.rule.allowances(("cosine", "cosine")) is None
    _feed(p, "x", _run(rng), upto=0.6, complete=False)
    assert "x" not in spy.last  # uncalibrated: no forecast, no vote


def test_calibrated_interval_covers_planted_finals_at_its_level():
    p, spy, rng = _calibrated()
    lo_ok, hi_ok, width = [], [], []
    for i in range(40):
        loss = _run(rng)
        # Its own (N, D) cell (same size and schedule: the same law and calibration): no reference,
        # so nothing stops it before the forecast at ~50 % is made.
        assert _feed(p, f"new{i}", loss, upto=0.5, complete=False, meta=_meta(cell_D=1e9 + i)) == "continue"
        f = spy.last[f"new{i}"]
        assert 0.3 <= f["fraction"] <= 0.5
        lo_ok.append(f["low"] <= loss[-1])
        hi_ok.append(loss[-1] <= f["high"])
        width.append(np.log(f["high"] / f["low"]) / 2)
    assert spy.rule.allowances(("cosine", "cosine"))[2] >= 25  # every completed run after the first, scored
    # Conformal at level 0.9, each bound (the sup/inf over later checks makes it conservative): the
    # final, one report with 1 % noise, above the low end for ≥ 90 % of new runs of the same world
    # in expectation (32/40 leaves room for the draw of one pool and 40 runs), below the high end likewise.
    assert np.mean(lo_ok) >= 0.8 and np.mean(hi_ok) >= 0.8
    # ... and not wider than the noise calls for: the offset is estimated from ~20 reports and the
    # final report has 1 % noise (a 90 % half-width of ~1.7 % for a known law); not past 4 %.
    assert 0.01 < np.median(width) < 0.04


def test_stops_a_clearly_hopeless_run_early_and_only_runs_that_end_behind():
    p, spy, rng = _calibrated()
    best = min(v for _, v in p.history.finals.values())
    assert _feed(p, "bad", _run(rng, factor=1.15), complete=False) == "stop"
    assert spy.last["bad"]["fraction"] <= 0.5 and spy.last["bad"]["low"] > best
    # Runs of the same world: the best of 14 completed runs ends ~5 % below a typical one (offset sd
    # 3 %), so most peers are rightly stopped; none that would have ended below the best.
    peers = [_run(rng) for _ in range(12)]
    stops = [_feed(p, f"peer{i}", x, complete=False) for i, x in enumerate(peers)]
    assert all(x[-1] > best for x, s in zip(peers, stops) if s == "stop")
    assert stops.count("stop") >= 6


@pytest.mark.parametrize("factor", [1.0, 0.97])
def test_the_eventual_best_run_is_never_stopped(factor):
    p, spy, rng = _calibrated(seed=1)
    best = min(v for _, v in p.history.finals.values())
    loss = _run(rng, factor)
    loss *= min(1.0, 0.995 * best / loss[-1])  # it ends below every completed run
    assert _feed(p, "winner", loss, complete=False) == "continue"
    assert spy.last["winner"]["low"] <= best
