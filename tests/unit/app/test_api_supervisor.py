"""The API server's shutdown of the sweeps it started (`Supervisor.shutdown`), on real processes
standing in for sweep supervisors: every sweep is signalled at once; one that ends on the first
SIGTERM gets no other; one still running after the grace period gets a second SIGTERM (a stop at
once: recorded and resumable); one still running after that is killed with its process group.
The real sweep behind it: tests/integration/test_api_shutdown.py."""
from __future__ import annotations

import doctest
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from orchestrator.app import quick_exit
from orchestrator.app.api import supervisor
from orchestrator.app.api.supervisor import Supervisor, read_controller, update_controller

# A stand-in supervisor: a child in the sweep's process group (a Ray worker, a trial program), then
# SIGTERMs counted; "graceful" exits on the first, "slow" on the second, "stuck" never.
FAKE = textwrap.dedent("""
    import signal, subprocess, sys, time
    mode, out = sys.argv[1], sys.argv[2]
    child = subprocess.Popen(["sleep", "60"])
    seen = []
    def on_term(signum, frame):
        seen.append(signum)
        with open(out, "a") as fh:
            fh.write("TERM\\n")
        if mode == "graceful" or (mode == "slow" and len(seen) == 2):
            sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
    with open(out, "a") as fh:
        fh.write(f"ready {child.pid}\\n")
    while True:
        time.sleep(0.05)
""")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def test_sweeps_are_stopped_at_once_then_hard_then_killed(tmp_path):
    sup = Supervisor("NO_TOKEN")
    outs = {}
    for mode in ("graceful", "slow", "stuck"):
        d = tmp_path / mode
        d.mkdir()
        outs[mode] = d / "signals.txt"
        update_controller(d, launched=True)
        proc = subprocess.Popen([sys.executable, "-c", FAKE, mode, str(outs[mode])], start_new_session=True)
        update_controller(d, pid=proc.pid)
        sup.procs[mode] = (proc, d)
    t0 = time.monotonic()
    while not all(o.exists() and "ready" in o.read_text() for o in outs.values()):
        assert time.monotonic() - t0 < 60, {m: o.exists() for m, o in outs.items()}
        time.sleep(0.05)
    grandchildren = [int(o.read_text().split()[1]) for o in outs.values()]

    sup.shutdown(grace_s=1.0, hard_s=1.0)

    terms = {m: o.read_text().count("TERM") for m, o in outs.items()}
    assert terms == {"graceful": 1, "slow": 2, "stuck": 2}, terms
    docs = {m: read_controller(tmp_path / m) for m in outs}
    assert all(doc["stop_reason"] == "the API server shut down" for doc in docs.values()), docs
    assert "hard_stop_requested" not in docs["graceful"] and docs["slow"]["hard_stop_requested"], docs
    assert docs["stuck"]["exit_code"] == -9 and "killed" in docs["stuck"]["reason"], docs["stuck"]
    states = {m: sup.state(m, tmp_path / m)[:2] for m in outs}
    assert states == {"graceful": ("stopped", 143), "slow": ("stopped", 143), "stuck": ("stopped", -9)}, states
    deadline = time.monotonic() + 10  # the sweeps' own children die with their process group
    while any(_alive(p) for p in grandchildren) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in grandchildren if _alive(p)]


def test_doctests():
    assert doctest.testmod(supervisor).failed == 0
    assert doctest.testmod(quick_exit).failed == 0
