"""A resumed sweep's pruner is rebuilt from the store: same references, same decisions as if it had never stopped."""
from __future__ import annotations

import numpy as np

from orchestrator.core.pruning import RULES, Completed, PruneConfig, Pruner
from orchestrator.config.pruning import completed_from_store, trial_meta
from orchestrator.io.store import ObservationStore
from trainers.contract import Schedule, TrialConfig
from trainers.simulated import train
from trainers.worlds import load_world

WORLD = load_world("tiny")
N, D, BATCH = 100_000, 2_000_000, 2048
LR_STAR = float(WORLD.lr_star(N, D))
CONFIG = PruneConfig()


def pruner() -> Pruner:
    """The divergence and paired rules only (no slow curve-law fits in this file)."""
    return Pruner(CONFIG, rules=[RULES[name](CONFIG, None) for name in ("divergence", "paired")])
FIRST = (1 / 3, 1 / 2, 1.0, 2.0, 3.0, 1 / 1.5)  # finished before the sweep was interrupted
SECOND = (1 / 30, 1 / 10, 1 / 5, 1.3)  # run after the resume


def trial(f: float, seed: int = 0):
    c = TrialConfig(trial_id=f"lr{f:.3g}-s{seed}", n_params=N, tokens=D, lr=LR_STAR * f, batch_tokens=BATCH,
                    schedule=Schedule(kind="cosine"), eval_every=20, seed=seed)
    reps: list[dict] = []
    train(c, reps.append, WORLD)
    return c.trial_id, trial_meta(c), reps


def run(p: Pruner, trials, store=None) -> dict:
    """Lockstep replay; a trial's last report, unless it stops it, completes it. trial -> (action, reason, report index) of its stop."""
    out = {}
    for k in range(max(len(r) for _, _, r in trials)):
        for tid, meta, reps in trials:
            if tid in out or k >= len(reps):
                continue
            if store is not None:
                store.append(tid, reps[k])
            d = p.on_report(tid, meta, reps[k])  # the last report too, as PrunerScheduler does
            if d.stops:
                out[tid] = (d.action, d.reason, k)
                if store is not None:
                    store.set_status(tid, "stopped", summary=d.summary())
            elif k == len(reps) - 1:
                p.on_complete(tid, reps[k]["eval_loss"])
                if store is not None:
                    store.set_status(tid, "finished", summary={"final_eval_loss": reps[k]["eval_loss"]})
    return out


def test_restored_pruner_decides_as_the_uninterrupted_one(tmp_path):
    first, second = [trial(f) for f in FIRST], [trial(f) for f in SECOND]
    store = ObservationStore(tmp_path, fsync=False)
    for tid, _, _ in first:
        store.set_status(tid, "running", config={"trial_id": tid})
    live = pruner()
    run(live, first, store)
    store.flush()

    metas = {tid: meta for tid, meta, _ in first}
    completed = completed_from_store(ObservationStore(tmp_path, fsync=False), metas)
    finished = set(live.history.finals)
    assert {c.trial_id for c in completed} == finished and len(finished) >= 5
    resumed = pruner()
    assert resumed.restore(completed) == len(completed)
    assert resumed.history.finals == live.history.finals
    assert len(resumed.history.calibration.pairs) == len(live.history.calibration.pairs) >= 9
    for a, b in zip(resumed.history.calibration.pairs, live.history.calibration.pairs):
        np.testing.assert_allclose(a, b)

    after_live, after_resumed = run(live, second), run(resumed, second)
    assert after_resumed == after_live and after_live  # the same stops, reasons and report indexes
    assert all("calibrated on" in reason for _, reason, _ in after_live.values())
    # The bug this fixes: a pruner started empty on resume had no references (uncalibrated, later stops).
    empty = run(pruner(), second)
    assert empty != after_live


def test_scheduler_starts_from_the_history():
    from orchestrator.adapters.tune.scheduler import PrunerScheduler
    from orchestrator.config.spec import PruningSpec

    tid, meta, reps = trial(1.0)
    done = [Completed(tid, meta, reps[-1]["eval_loss"], tuple(r["step"] for r in reps),
                      tuple(r["eval_loss"] for r in reps))]
    s = PrunerScheduler(PruningSpec(enabled=True), history=done, background=False, process=False)
    assert s.restored == 1 and s.pruner.history.finals[tid][1] == reps[-1]["eval_loss"]
    assert s.pruner.config == PruneConfig()  # the spec converted at the boundary


def test_unfinished_and_unplanned_trials_are_not_references():
    from orchestrator.core.pruning import completed_from_rows

    _, meta, _ = trial(1.0)
    rows = {"a": {"status": "finished", "summary": {"final_eval_loss": 3.0}, "time": 2.0},
            "b": {"status": "stopped", "summary": {}, "time": 1.0},
            "c": {"status": "diverged", "summary": {}, "time": 1.5},
            "d": {"status": "finished", "summary": {"final_eval_loss": 3.1}, "time": 1.0},
            "e": {"status": "finished", "summary": {"final_eval_loss": 3.2}, "time": 0.5}}
    obs = [{"trial_id": t, "step": s, "eval_loss": 4.0 - s / 1e3} for t in "abcde" for s in (10, 20)]
    done = completed_from_rows(rows, obs, {t: meta for t in "abcd"})  # e: no plan, skipped
    assert [c.trial_id for c in done] == ["d", "a"]  # in the order they finished
    assert done[1].final == 3.0 and done[1].steps == (10.0, 20.0)
