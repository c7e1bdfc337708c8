"""`trainer.warm_start` under a real sweep, nothing mocked: a local Ray cluster, the real pruner, real
processes forked from the trial process's zygote (trainers.warm_start).

The sweep of tests/integration/test_own_trainer.py (examples/own-trainer/train_lm.py, four learning
rates of one cell, 1e-5 hopeless) with `warm_start: [torch]`: every attempt's program is forked
warm, the pruner's stop reaches the hopeless one as SIGTERM (it stops after its step, exits 0, and
its exit status is recorded on the trial), and a later trial of a slot reuses that slot's zygote
(Tune reuses the trial process). Run under `flock /tmp/scalesweep-ray.lock` when other Ray clusters
share the machine.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.config.spec import parse_spec
from orchestrator.io.store import ObservationStore

# Not `serial`: the pruner decides inline (`pruning.background: false`), and the hopeless trial's reference
# is its peer's latest loss from the peer's first report on (the law rule's `_running_high`): under load
# the peer it starts beside may start seconds late (CI: before that reference, the trial finished first).
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY = 96, 6
SLEEP = 0.1  # a step: the late-starting peer's slack is ~10 reports of it (see above)
LRS = (1e-5, 1e-3, 3e-3, 1e-2)


def test_warm_started_programs_report_are_pruned_and_reuse_the_zygote(tmp_path, local_ray):
    from orchestrator.app.session import run_sweep

    data = {"name": "warm", "model": {"n_params": [20000], "seq_len": 64}, "tokens": {"values": [STEPS * 2048]},
            "learning_rates": list(LRS), "batch_sizes": [2048],
            "schedule": {"kind": "wsd", "warmup": 0.1, "decay": 0.2}, "eval": {"every": EVERY, "tokens": 4096},
            "pruning": {"enabled": True, "background": False}, "checkpoints": {"enabled": False},
            "fit": {"bootstrap": 0}, "output_dir": str(tmp_path / "sweep"),
            "trainer": {"backend": "command", "cwd": str(REPO), "warm_start": ["torch"], "grace_period_s": 5,
                        "command": ["{python}", "examples/own-trainer/train_lm.py", "--config", "{config}"],
                        "options": {"step_sleep_s": SLEEP}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    local_ray(2)  # the session's 2-CPU local Ray instance (conftest.py)
    outcome = run_sweep(spec, str(tmp_path / "spec.yaml"), show_progress=False)
    store = ObservationStore(outcome.sweep_dir)
    trials = store.trials()
    by_lr = {rec["config"]["lr"]: (tid, rec) for tid, rec in trials.items()}
    assert set(by_lr) == set(LRS)
    exits = {tid: json.loads(p.read_text()) for tid in trials
             for p in sorted((outcome.sweep_dir / "runs" / tid).glob("attempt-*/exit.json"))}
    assert len(exits) == 4 and all(e["warm_start"]["used"] for e in exits.values()), exits
    # the pruner's stop: SIGTERM to the forked program, which stops after its step and exits 0
    tid, rec = by_lr[1e-5]
    assert rec["status"] == "stopped" and rec["summary"]["reason"], rec
    assert exits[tid]["ended"] == "stopped" and exits[tid]["returncode"] == 0, exits[tid]
    # ... and so does the trial's summary (completed once exit.json appeared: SweepCallback.ending)
    assert exits[tid]["status"] == rec["summary"]["process"]["status"] == "exit status 0", rec
    assert "stopped at step" in (Path(exits[tid]["attempt_dir"]) / "stderr.log").read_text()
    assert store.last_reports()[tid]["step"] < STEPS
    finished = [t for t, r in trials.items() if r["status"] == "finished"]
    assert len(finished) >= 2 and all(trials[t]["summary"]["process"]["status"] == "exit status 0" for t in finished)
    # 4 trials on 2 slots: some zygote served more than one trial; none outlived the sweep's trial processes
    zygotes = [e["warm_start"]["zygote_pid"] for e in exits.values()]
    assert len(set(zygotes)) < len(zygotes), zygotes
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in zygotes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in zygotes)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
