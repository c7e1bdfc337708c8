"""Sending a sweep's controller to a running Ray cluster as a Ray job, and following it.

`prepare_submission` turns a validated spec into what Ray's job submission client needs:
an entrypoint (`python -m orchestrator.app.cli run spec.yaml --no-progress`, run by the job's
driver on the head node), a runtime environment that carries the project (the `orchestrator`,
`trainers` and `cluster` packages as `py_modules`, the rewritten spec as the `working_dir`)
and metadata naming the sweep. Nothing in the spec may point at this machine only: the
sweep directory (store, checkpoints, Tune state, default SQLite MLflow store) must be an
absolute path that every node sees (shared storage), or the tracking URI a server.

The job's driver reaches the cluster through `RAY_ADDRESS`, which Ray sets for job drivers;
the controller's `ray.init` uses it.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from typing import Any, Callable, Optional

import yaml

from ..config.spec import SpecError, SweepSpec, parse_spec

ADDRESS_ENV = ("SCALESWEEP_ADDRESS", "RAY_ADDRESS")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STOP_WAIT_S = 60  # seconds a stopped job's controller has to stop gracefully before Ray kills it

# Never uploaded with the project (runtime_env "excludes", gitignore syntax).
EXCLUDES = [".venv", ".git", "sweeps", "benchmarks/results", "mlruns", "mlflow.db", "runs", ".cache",
            "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", ".whl", "*.egg-info", "checkpoints"]
PACKAGES = ("orchestrator", "trainers", "cluster")
META_PREFIX = "scalesweep."


class SubmitError(Exception):
    """A submission that cannot be made as asked (bad address, a path the cluster cannot see)."""


class ClusterError(Exception):
    """The cluster did not answer, or refused the request."""


def resolve_address(address: Optional[str]) -> str:
    """--address, else $SCALESWEEP_ADDRESS, else $RAY_ADDRESS (the dashboard's http://HEAD:8265)."""
    for value in (address, *(os.environ.get(k) for k in ADDRESS_ENV)):
        if value and value.strip():
            return value.strip()
    raise SubmitError("no cluster address: pass --address http://HEAD:8265 (the Ray dashboard) "
                      "or set SCALESWEEP_ADDRESS")


def _use_token_if_available() -> None:
    """Send Ray's auth token when one is configured, as `ray.init` does when it joins a cluster.

    Clusters started by Ray 2.6x enable token authentication by default when a token exists
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); the job client only attaches it
    when RAY_AUTH_MODE=token, so without this a user would have to export that as well.
    RAY_AUTH_MODE set explicitly is respected."""
    import logging

    try:
        from ray._private.authentication import authentication_token_setup as auth
    except ImportError:  # a Ray without token authentication
        return
    logger = logging.getLogger(auth.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)  # its "token authentication is enabled" notice is for `ray start`
    try:
        auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except Exception:  # best effort: the request then fails with Ray's own authentication message
        pass
    finally:
        logger.setLevel(level)


def connect(address: str):
    """A JobSubmissionClient for `address`; ClusterError when the dashboard does not answer."""
    from ray.job_submission import JobSubmissionClient

    _use_token_if_available()
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, requests' errors, RuntimeError for bad answers
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else exc.__class__.__name__
    if exc.__class__.__name__ == "AuthenticationError" or "authentication token" in msg.lower():
        msg += (" (the cluster uses Ray token authentication: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, "
                "to its token; ~/.ray/auth_token is the default)")
    return msg


@dataclass
class Submission:
    """Everything handed to `JobSubmissionClient.submit_job`."""

    spec: SweepSpec
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    submission_id: str
    staging_dir: Path
    warnings: list[str] = field(default_factory=list)


def _is_remote_uri(uri: str) -> bool:
    return "://" in uri and not uri.startswith(("sqlite:", "file:"))


def _check_reachable(spec: SweepSpec) -> list[str]:
    """Errors for paths a remote driver would resolve differently; warnings for local-only stores."""
    errors, warnings = [], []
    if not spec.output_dir or not Path(spec.output_dir).is_absolute():
        errors.append(f"output_dir: {spec.output_dir or '(unset: ./sweeps/' + spec.name + ')'} is not an absolute "
                      "path; a submitted sweep writes its store where every node sees it: set output_dir to a "
                      "shared path (NFS, EFS, a PVC) or pass --output-dir /shared/path")
    uri = spec.tracking.uri
    if uri is not None and not _is_remote_uri(uri):
        if uri.startswith("sqlite:"):
            ok = uri.startswith("sqlite:////")
        else:
            ok = Path(uri.removeprefix("file://").removeprefix("file:")).is_absolute()
        if not ok:
            errors.append(f"tracking.uri: {uri} is a relative path; use an absolute shared path "
                          "(sqlite:////shared/mlflow.db), an MLflow server (http://...) or leave it unset "
                          "(mlflow.db in the sweep directory)")
    loc = spec.tracking.artifact_location
    if loc and not urlparse(loc).scheme and not Path(loc).is_absolute():
        errors.append(f"tracking.artifact_location: {loc} is a relative path; use an absolute shared path or an "
                      "object store (s3://bucket/prefix)")
    if uri is None or not _is_remote_uri(uri):
        warnings.append("MLflow writes to a file store on the shared path; for several users or a UI that stays up, "
                        "use an MLflow tracking server (--tracking-uri http://MLFLOW:5000)")
    ds = spec.data_spec()
    for name, p in (("data.path", ds.path), ("data.val_path", ds.val_path),
                    ("data.tokenizer", ds.tokenizer if ds.format == "text" else None)):
        if p and not Path(p).is_absolute():
            errors.append(f"{name}: {p} is a relative path; give the data's absolute path on shared storage")
    if spec.trainer.backend == "simulated":
        w = Path(spec.trainer.world)
        if (w.suffix or w.exists()) and not w.is_absolute():
            errors.append(f"trainer.world: {spec.trainer.world} is a relative path; use a bundled world name or "
                          "an absolute path on shared storage")
    if errors:
        raise SpecError("spec cannot be submitted as is:\n  " + "\n  ".join(errors))
    return warnings


def _package_dirs() -> list[str]:
    import importlib

    dirs = []
    for name in PACKAGES:
        mod = importlib.import_module(name)
        dirs.append(str(Path(mod.__file__).resolve().parent))
    return dirs


def prepare_submission(spec: SweepSpec, *, output_dir: Optional[str] = None, tracking_uri: Optional[str] = None,
                       env: Optional[dict[str, str]] = None, submission_id: Optional[str] = None,
                       python: str = "python") -> Submission:
    """Validate that the spec can run remotely and build the job (writes the spec to a staging dir).

    `output_dir` and `tracking_uri` override the spec's. Raises SpecError for a spec that
    cannot be submitted (nothing is sent)."""
    data = spec.model_dump(mode="json")
    if output_dir is not None:
        data["output_dir"] = output_dir
    if tracking_uri is not None:
        data["tracking"] = {**data.get("tracking", {}), "uri": tracking_uri}
    submitted = parse_spec(data, "submitted spec") if (output_dir or tracking_uri) else spec
    warnings = _check_reachable(submitted)

    staging = Path(tempfile.mkdtemp(prefix=f"scalesweep-submit-{submitted.name}-"))
    (staging / "spec.yaml").write_text(yaml.safe_dump(submitted.model_dump(mode="json"), sort_keys=False))
    sid = submission_id or f"scalesweep-{submitted.name}-{secrets.token_hex(4)}"
    # `scalesweep stop` (Ray's job stop) sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S
    # (Ray's default: 3 s, too short for the controller to record the stop and end the MLflow runs)
    env_vars = {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S), **(env or {})}
    runtime_env = {"working_dir": str(staging), "py_modules": _package_dirs(), "excludes": list(EXCLUDES),
                   "env_vars": env_vars}
    entrypoint = f"{shlex.quote(python)} -m orchestrator.app.cli run spec.yaml --no-progress"
    metadata = {f"{META_PREFIX}sweep": submitted.name, f"{META_PREFIX}sweep_dir": str(submitted.sweep_dir()),
                f"{META_PREFIX}tracking_uri": submitted.tracking_uri()}
    return Submission(submitted, entrypoint, runtime_env, metadata, sid, staging, warnings)


def submit(client, sub: Submission) -> str:
    """Send the job; returns its submission id."""
    try:
        return client.submit_job(entrypoint=sub.entrypoint, runtime_env=sub.runtime_env, metadata=sub.metadata,
                                 submission_id=sub.submission_id)
    except Exception as exc:
        raise ClusterError(f"the cluster refused the job: {_short(exc)}") from None


def _job_call(fn: Callable, job_id: str, address: str):
    try:
        return fn(job_id)
    except Exception as exc:
        msg = _short(exc)
        if "404" in msg or "does not exist" in msg:
            raise ClusterError(f"no job {job_id!r} on the cluster at {address}") from None
        raise ClusterError(f"{address}: {msg}") from None


def job_info(client, job_id: str, address: str) -> dict[str, Any]:
    """The job's status, message, times, entrypoint and metadata as plain JSON."""
    info = _job_call(client.get_job_info, job_id, address)

    def ts(ms: Optional[int]) -> Optional[str]:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ms / 1000)) if ms else None

    status = getattr(info.status, "value", str(info.status))
    return {"job_id": job_id, "status": status, "message": info.message, "entrypoint": info.entrypoint,
            "start_time": ts(info.start_time), "end_time": ts(info.end_time),
            "driver_node_id": getattr(info, "driver_node_id", None),
            "metadata": dict(info.metadata or {})}


def job_logs(client, job_id: str, address: str) -> str:
    return _job_call(client.get_job_logs, job_id, address)


def follow_logs(client, job_id: str, address: str, write: Callable[[str], Any]) -> None:
    """Stream the job's logs until it ends (Ray closes the stream at a terminal state)."""
    _job_call(client.get_job_status, job_id, address)  # a clear error for an unknown id

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except ClusterError:
        raise
    except Exception as exc:  # the websocket dropped: the dashboard went away
        raise ClusterError(f"lost the log stream of {job_id} from {address}: {_short(exc)}") from None


def wait_terminal(client, job_id: str, address: str, timeout_s: float = 120.0, poll_s: float = 1.0) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or timeout: its current status)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = _job_call(client.get_job_status, job_id, address)
        status = getattr(status, "value", str(status))
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(poll_s)


def stop(client, job_id: str, address: str) -> bool:
    """Ask Ray to stop the job (SIGTERM to the driver, SIGKILL after a grace period)."""
    return bool(_job_call(client.stop_job, job_id, address))
