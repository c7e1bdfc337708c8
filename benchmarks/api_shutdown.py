"""How long `scalesweep serve` takes to exit on SIGTERM with a sweep running, a few times over.

    python -m benchmarks.api_shutdown [--repeats 3] [--report-delay 0.3] [--json results/api-shutdown.json]

Each repetition, all real and nothing mocked: a `scalesweep serve` process on loopback (a fresh root
directory, the default `--stop-grace` of 2 s) is sent a small simulated sweep (3 trials of 16
reports, 2 at a time, each report slowed to `--report-delay` seconds by SCALESWEEP_REPORT_DELAY_S,
as in tests/integration/test_api_shutdown.py); once the sweep's store holds a few reports (trials
are training: an event, not a time), the server gets SIGTERM, and the benchmark times until the
server process exits. Per repetition it records that time; the sweep controller's own stop (from
the server's stop request to the controller's exit, both in `controller.json`) and whether the
controller needed the second signal after the grace period; the exit codes; the trials' states in
the store; and any process of the sweep still alive 30 s after the server exited (killed then, and
counted: there should be none). Each sweep starts its own local Ray cluster, so a repetition takes
a minute or so on a busy machine; the load average is recorded, since on a shared machine it moves
the seconds more than anything else.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .extrapolation import write_json

REPO = Path(__file__).resolve().parents[1]
SPEC = {
    "name": "api-shutdown",
    "model": {"n_params": [20000, 50000, 125000]},
    "tokens": {"values": [262144]},  # 32 steps of 8192 tokens
    "learning_rates": [0.03],
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 2},  # a report every 2 steps: 16 reports per trial
    "fit": {"bootstrap": 0},
    "resources": {"max_concurrent": 2},
}
TRAINING = 4  # SIGTERM once the store holds this many reports: trials are mid-run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(report_delay: float) -> dict[str, str]:
    """The server's environment (its sweeps inherit it): this checkout first, reports `report_delay` s
    apart, and no RAY_ADDRESS, so each sweep starts and stops a local Ray cluster as it would alone."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(SCALESWEEP_REPORT_DELAY_S=repr(report_delay), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return env


def _reports(sweep_dir: Path) -> int:
    """Reports the sweep's controller has stored: lines of its store's write-ahead logs plus rows of its parts."""
    from orchestrator.io.store import ObservationStore

    if not (sweep_dir / "store").is_dir():
        return 0
    n = sum(p.read_text().count("\n") for p in (sweep_dir / "store" / "wal").glob("*.jsonl"))
    return n + ObservationStore(sweep_dir).observations().num_rows


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc): the sweep's supervisor, controller and Ray cluster."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    seen, todo = set(), [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def outlived(procs: set[int], wait_s: float = 30.0) -> dict[int, bytes]:
    """The processes of `procs` still running `wait_s` after their server exited (the last Ray processes
    are reparented to init and reaped there), {pid: the start of its command line}; each is killed."""
    deadline = time.monotonic() + wait_s
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {}
    for p in procs:
        if alive(p):
            try:
                left[p] = Path(f"/proc/{p}/cmdline").read_bytes()[:200]
            except OSError:
                left[p] = b""
            os.kill(p, signal.SIGKILL)
    return left


def _wait(predicate, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}; log tail:\n"
                               + (log.read_text()[-3000:] if log.exists() else "(no log)"))
        time.sleep(0.2)


def one_shutdown(root: Path, report_delay: float) -> dict[str, Any]:
    """Start a server, submit the sweep, SIGTERM the server mid-sweep; what happened and how long it took."""
    import httpx

    from orchestrator.io.store import ObservationStore

    port, log = _free_port(), root / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "orchestrator.app.cli", "serve", "--root", str(root / "sweeps"),
                               "--port", str(port), "--log-level", "warning"], cwd=REPO, env=_env(report_delay),
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    sweep_dir = root / "sweeps" / SPEC["name"]
    procs: set[int] = set()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url + "/openapi.json", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        _wait(up, 120, "the server", log)
        r = httpx.post(url + "/sweeps", json=SPEC, timeout=60.0)
        if r.status_code != 202:
            raise RuntimeError(f"POST /sweeps: {r.status_code} {r.text}")
        _wait(lambda: _reports(sweep_dir) >= TRAINING, 300, "the sweep's first reports", sweep_dir / "controller.log")
        ctrl = json.loads((sweep_dir / "controller.json").read_text())
        procs = {ctrl["pid"], *descendants(ctrl["pid"])}
        reports_before = _reports(sweep_dir)
        t0 = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server_code = server.wait(timeout=120)
        server_exit_s = time.monotonic() - t0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    left = list(outlived(procs))  # never left to the next repetition
    ctrl = json.loads((sweep_dir / "controller.json").read_text())
    states: dict[str, int] = {}
    for rec in ObservationStore(sweep_dir).trials().values():
        states[rec["status"]] = states.get(rec["status"], 0) + 1
    return {"server_exit_s": server_exit_s, "server_exit_code": server_code,
            "controller_stop_s": ctrl["finished_at"] - ctrl["stop_requested"],
            "second_signal": bool(ctrl.get("hard_stop_requested")), "controller_exit_code": ctrl.get("exit_code"),
            "reports_before_sigterm": reports_before, "trial_states": states, "sweep_processes": len(procs),
            "left_after_30s": len(left)}


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="server shutdowns to time")
    ap.add_argument("--report-delay", type=float, default=0.3,
                    help="seconds between a trial's reports (past --stop-grace, 2 s: the second signal stops it)")
    ap.add_argument("--json", type=Path, default=Path("results/api-shutdown.json"), help="write the numbers here")
    args = ap.parse_args(argv)
    load = [os.getloadavg()[0]]
    runs = []
    for k in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-api-shutdown-") as tmp:
            runs.append(one_shutdown(Path(tmp), args.report_delay))
        r = runs[-1]
        print(f"run {k + 1}/{args.repeats}: server exited {r['server_exit_s']:.1f} s after SIGTERM", flush=True)
    load.append(os.getloadavg()[0])
    doc = {"args": {**vars(args), "json": str(args.json)}, "python": sys.version.split()[0], "cpus": os.cpu_count(),
           "load_average": load, "spec": SPEC, "runs": runs,
           **{key: _stats([r[key] for r in runs]) for key in ("server_exit_s", "controller_stop_s")}}

    print(f"\nload average {load[0]:.1f} -> {load[1]:.1f} on {os.cpu_count()} CPUs; reports every "
          f"{args.report_delay:g} s; --stop-grace 2 s")
    print(f"{'run':>4} {'server exit s':>14} {'controller stop s':>18} {'2nd signal':>11} {'exit codes':>11} "
          f"{'trials':>36} {'left':>5}")
    for k, r in enumerate(runs, 1):
        trials = ", ".join(f"{n} {s}" for s, n in sorted(r["trial_states"].items()))
        print(f"{k:>4} {r['server_exit_s']:>14.1f} {r['controller_stop_s']:>18.1f} {str(r['second_signal']):>11} "
              f"{r['server_exit_code']:>5}/{r['controller_exit_code']:<5} {trials:>36} {r['left_after_30s']:>5}")
    for key in ("server_exit_s", "controller_stop_s"):
        st = doc[key]
        print(f"{key}: median {st['median']:.1f} s (range {st['min']:.1f}-{st['max']:.1f}, {len(runs)} runs)")
    write_json(args.json, doc)
    return doc


if __name__ == "__main__":
    main()
