"""Commands for sweeps that run on a Ray cluster as Ray jobs: submit, logs, stop
(and `status JOB_ID --address ...`, dispatched from query_commands.status)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .app import app, fail, print_json

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
CLUSTER_ERROR = 1  # the cluster is unreachable or refused: the spec itself was fine

ADDRESS_HELP = "Ray dashboard address, http://HEAD:8265 (default: $SCALESWEEP_ADDRESS, then $RAY_ADDRESS)"


def _client(address: Optional[str]):
    from ..submit import ClusterError, SubmitError, connect, resolve_address

    try:
        addr = resolve_address(address)
    except SubmitError as exc:
        fail(str(exc))
    try:
        return connect(addr), addr
    except ClusterError as exc:
        fail(str(exc), code=CLUSTER_ERROR)


def _follow(client, job_id: str, addr: str) -> None:
    """Stream logs to stdout until the job ends; exit 0 only if it SUCCEEDED."""
    from ..submit import ClusterError, follow_logs, wait_terminal

    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    try:
        follow_logs(client, job_id, addr, write)
        status = wait_terminal(client, job_id, addr, timeout_s=30)
    except ClusterError as exc:
        fail(str(exc), code=CLUSTER_ERROR)
    except KeyboardInterrupt:
        err.print(f"\nstopped following; the job keeps running. Stop it with: scalesweep stop {job_id} --address {addr}")
        raise typer.Exit(130)
    err.print(f"job {job_id}: {status}")
    if status != "SUCCEEDED":
        raise typer.Exit(1)


@app.command("submit")
def submit(
    spec: Path = typer.Argument(..., help="sweep spec (YAML)"),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    output_dir: Optional[str] = typer.Option(None, "--output-dir",
                                             help="sweep directory on storage every node sees (overrides the spec's)"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri",
                                               help="MLflow tracking URI reachable from the cluster (overrides the spec's)"),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE set for the controller and its trials (repeatable)"),
    submission_id: Optional[str] = typer.Option(None, "--submission-id", help="job id to use (default: generated)"),
    python: str = typer.Option("python", "--python", help="Python on the cluster's nodes that runs the controller"),
    follow: bool = typer.Option(False, "--follow", "-f", help="stream the job's logs until it ends"),
) -> None:
    """Run a sweep's controller on a running Ray cluster as a Ray job; prints the job id."""
    from ...config.spec import SpecError, load_spec
    from ..submit import ClusterError, prepare_submission, submit as send

    try:
        s = load_spec(spec)
    except SpecError as exc:
        fail(str(exc))
    env_vars = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--env {item!r}: expected KEY=VALUE")
        env_vars[key] = value
    try:
        sub = prepare_submission(s, output_dir=output_dir, tracking_uri=tracking_uri, env=env_vars,
                                 submission_id=submission_id, python=python)
    except SpecError as exc:
        fail(str(exc))
    try:
        client, addr = _client(address)
        job_id = send(client, sub)
    except ClusterError as exc:
        fail(str(exc), code=CLUSTER_ERROR)
    finally:
        shutil.rmtree(sub.staging_dir, ignore_errors=True)  # uploaded by now (or never will be)
    for w in sub.warnings:
        err.print(f"note: {w}")
    err.print(f"submitted sweep {sub.spec.name} to {addr}; sweep directory {sub.spec.sweep_dir()}, "
              f"MLflow {sub.spec.tracking_uri()}")
    err.print(f"follow it:  scalesweep logs {job_id} --address {addr} --follow")
    print(job_id, flush=True)
    if follow:
        _follow(client, job_id, addr)


def job_status(job_id: str, address: Optional[str], as_json: bool) -> None:
    """`scalesweep status JOB_ID --address ...`: the job's state (and the sweep's, if its directory is visible)."""
    from ..submit import ClusterError, job_info

    client, addr = _client(address)
    try:
        doc = job_info(client, job_id, addr)
    except ClusterError as exc:
        fail(str(exc), code=CLUSTER_ERROR)
    sweep_dir = doc["metadata"].get("scalesweep.sweep_dir")
    if sweep_dir and (Path(sweep_dir) / "store").is_dir():
        from ...io.store import ObservationStore

        counts: dict[str, int] = {}
        for rec in ObservationStore(Path(sweep_dir)).trials().values():
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        doc["trials"] = counts
    if as_json:
        print_json(doc)
        return
    colour = {"SUCCEEDED": "green", "FAILED": "red", "STOPPED": "yellow"}.get(doc["status"], "cyan")
    console.print(f"job {job_id}: [{colour}]{doc['status']}[/]" + (f" ({doc['message']})" if doc["message"] else ""))
    if doc["metadata"].get("scalesweep.sweep"):
        console.print(f"  sweep       {doc['metadata']['scalesweep.sweep']}")
    if sweep_dir:
        console.print(f"  sweep dir   {sweep_dir}")
    if doc["metadata"].get("scalesweep.tracking_uri"):
        console.print(f"  MLflow      {doc['metadata']['scalesweep.tracking_uri']}")
    console.print(f"  started     {doc['start_time'] or '-'}")
    console.print(f"  ended       {doc['end_time'] or '-'}")
    if "trials" in doc:
        console.print("  trials      " + (", ".join(f"{v} {k}" for k, v in sorted(doc["trials"].items())) or "none yet"))


@app.command("logs")
def logs(
    job_id: str = typer.Argument(..., help="job id printed by `scalesweep submit`"),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep streaming until the job ends"),
) -> None:
    """The controller's output (the job driver's logs) of a submitted sweep."""
    from ..submit import ClusterError, job_logs

    client, addr = _client(address)
    if follow:
        _follow(client, job_id, addr)
        return
    try:
        sys.stdout.write(job_logs(client, job_id, addr))
    except ClusterError as exc:
        fail(str(exc), code=CLUSTER_ERROR)


@app.command("stop")
def stop(
    job_id: str = typer.Argument(..., help="job id printed by `scalesweep submit`, or the directory of a sweep "
                                           "running on this machine", metavar="JOB_ID|SWEEP_DIR"),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait until the job has stopped"),
    timeout: float = typer.Option(60.0, "--timeout", min=0, help="seconds to wait with --wait"),
) -> None:
    """Stop a sweep gracefully: its controller ends the running trials (marked stopped-by-user), ends the
    MLflow parent run KILLED and exits. `scalesweep resume SWEEP_DIR` finishes it later."""
    if Path(job_id).is_dir():
        _stop_local(Path(job_id), wait, timeout)
        return
    from ..submit import ClusterError, stop as stop_job, wait_terminal

    client, addr = _client(address)
    try:
        requested = stop_job(client, job_id, addr)
        status = wait_terminal(client, job_id, addr, timeout_s=timeout) if wait else None
    except ClusterError as exc:
        fail(str(exc), code=CLUSTER_ERROR)
    from ..submit import TERMINAL

    if not requested:
        console.print(f"job {job_id} had already ended" + (f": {status}" if status else ""))
    elif status is None:
        console.print(f"job {job_id}: stop requested")
    elif status not in TERMINAL:
        fail(f"job {job_id} is still {status} after {timeout:.0f}s", code=CLUSTER_ERROR)
    else:
        console.print(f"job {job_id}: {status}")


def _stop_local(sweep_dir: Path, wait: bool, timeout: float) -> None:
    """SIGTERM to the controller of a sweep running on this machine (its pid is in the sweep dir)."""
    import os
    import signal
    import time

    from ..stopping import controller_pid

    pid = controller_pid(sweep_dir)
    if pid is None:
        fail(f"{sweep_dir}: no controller of this sweep is running on this machine", code=1)
    os.kill(pid, signal.SIGTERM)
    if not wait:
        console.print(f"sweep {sweep_dir}: stop requested (controller pid {pid})")
        return
    t0 = time.monotonic()
    while controller_pid(sweep_dir) == pid and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    if controller_pid(sweep_dir) == pid:
        fail(f"sweep {sweep_dir}: the controller (pid {pid}) is still running after {timeout:.0f}s", code=1)
    console.print(f"sweep {sweep_dir}: stopped; continue with `scalesweep resume {sweep_dir}`")
