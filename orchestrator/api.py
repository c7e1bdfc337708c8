"""The HTTP query API: submit sweeps and read their status, fits, laws and proposals (FastAPI).

A server manages a ROOT directory of sweeps; a sweep is a subdirectory `ROOT/<name>` holding
`spec.yaml` and the observation store (`store/`), its id is the directory name (= spec name).
`POST /sweeps` validates a spec and starts `scalesweep run` on it as a background process
through a small supervisor (`python -m orchestrator.api supervise DIR`) that records the
controller's exit code in `controller.json`, so a restarted server still knows how a sweep
ended. Reads never write: fits are recomputed from the store and cached per store version.

Endpoints, auth and errors are documented in docs/api.md.
"""
from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import yaml
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from trainers.worlds import bundled_worlds

from .laws.result import jsonable

log = logging.getLogger("orchestrator.api")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_TOKEN_ENV = "SCALESWEEP_API_TOKEN"
TOKEN_HEADER = "X-Scalesweep-Token"
CONTROLLER_FILE = "controller.json"
LOG_FILE = "controller.log"
MAX_BODY_BYTES = 1 << 20  # a spec is a few hundred bytes; anything near this is abuse
MAX_RANGE_COUNT = 10_000  # {min, max, count} ranges: larger counts would stall validation
MAX_BUDGETS = 32
MAX_BOOTSTRAP = 2000
MAX_TRIALS = 20_000  # grid trials of a submitted spec: validation plans each (~50 us), the sweep runs each
CACHE_SIZE = 128
_SWEEP_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")  # a spec name, never hidden, never "." or ".."


class ApiConfigError(ValueError):
    """A server configuration that must not start (e.g. a public bind without a token)."""


class ApiError(Exception):
    """A request that cannot be answered: HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


# ------------------------------------------------------------------------------------- models


class ErrorBody(BaseModel):
    """Every error response: a human-readable `detail` (plus `errors` for request validation)."""

    detail: str
    errors: Optional[list[dict[str, Any]]] = None


class Links(BaseModel):
    """Where to read a sweep."""

    self: str
    proposals: str
    laws: str


class SweepCreated(BaseModel):
    """Answer to POST /sweeps."""

    id: str
    status: str
    links: Links


class SweepSummary(BaseModel):
    """One sweep in GET /sweeps."""

    id: str
    status: str = Field(description="running | finished | failed | not_started | unmanaged")
    exit_code: Optional[int] = None
    trials: dict[str, int] = Field(description="number of trials per state")
    flops_spent: float = Field(description="sum over trials of the last reported training FLOPs")
    links: Links


class SweepDetail(SweepSummary):
    """GET /sweeps/{id}: the summary plus the controller, the spec summary and the latest fit."""

    controller: Optional[dict[str, Any]] = None
    spec: Optional[dict[str, Any]] = None
    spec_error: Optional[str] = None
    fit: Optional[dict[str, Any]] = Field(None, description="fit.json of the sweep (written when it ends), if any")


class Proposal(BaseModel):
    """A compute-optimal config for one budget C with predicted loss and intervals."""

    model_config = ConfigDict(extra="allow")
    budget: float
    N: float
    D: float
    lr: float
    batch: float
    predicted_loss: float
    intervals: dict[str, Any]
    resources: Optional[dict[str, Any]] = Field(
        None, description="resource plan of (N, D, batch) on the spec's device (cluster/resources.py): device, "
                          "workers, zero_stage, micro_batch, grad_accum, activation_checkpointing, memory_gib per "
                          "device, memory breakdown (bytes), device_hours, step_time_s, reason; or an error")
    task_metrics: Optional[dict[str, Any]] = Field(
        None, description="when the sweep evaluated tasks (eval.tasks): per task, the accuracy predicted at (N, D): "
                          "acc, interval (of the law's mean), prediction_interval (of one evaluation), loss (the "
                          "task loss used), law, warnings (docs/downstream.md)")


class LawsDoc(BaseModel):
    """GET /sweeps/{id}/laws: the fitted L(N, D) and, when fittable, lr*(N, D) and batch*(D)."""

    law: Optional[dict[str, Any]] = Field(description="Chinchilla L(N, D): params, intervals, warnings; null if not fitted")
    cells: list[dict[str, Any]]
    warnings: list[str]
    hparams: Optional[dict[str, Any]] = None
    hparams_reason: Optional[str] = None
    n_trials: int


EXAMPLE_SPEC = {  # a simulated sweep that runs in about a minute on a laptop
    "name": "example",
    "model": {"n_params": [20000, 50000, 120000]},
    "tokens": {"per_param": [10, 20]},
    "learning_rates": [0.01],
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 50},
    "budget": {"targets": [1e13]},
}

_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 409, 413, 415, 422)}


# ------------------------------------------------------------------------------ auth and bind


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: Optional[str]) -> None:
    """Refuse a non-loopback bind without a token (raises ApiConfigError)."""
    if not is_loopback(host) and not token:
        raise ApiConfigError(
            f"binding to {host} exposes the API beyond this machine; set a token in the environment "
            f"variable named by --token-env (default {DEFAULT_TOKEN_ENV}) or bind to {DEFAULT_HOST}"
        )


def _token_ok(request: Request, token: bytes) -> bool:
    given = None
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
    if given is None:
        given = request.headers.get(TOKEN_HEADER)
    if given is None:
        return False
    # Starlette decodes header bytes as latin-1; re-encoding gives the bytes the client sent.
    return secrets.compare_digest(given.encode("latin-1", "replace"), token)


# --------------------------------------------------------------------------- controller file


@contextlib.contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    """An exclusive lock for read-modify-write of controller.json (server and supervisor)."""
    with open(sweep_dir / ".controller.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_controller(sweep_dir: Path) -> Optional[dict[str, Any]]:
    """The sweep's controller record, or None when no server started it."""
    try:
        doc = json.loads((sweep_dir / CONTROLLER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def update_controller(sweep_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into controller.json atomically."""
    with _locked(sweep_dir):
        doc = read_controller(sweep_dir) or {}
        doc.update(fields)
        tmp = sweep_dir / f".{CONTROLLER_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, sweep_dir / CONTROLLER_FILE)
    return doc


def _pid_alive(pid: int, sweep_dir: Path) -> bool:
    """Whether `pid` is still our supervisor for this sweep (not a zombie, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else: check the command line below
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True  # no procfs (macOS): trust kill(0)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and "supervise" in cmdline and str(sweep_dir) in cmdline


# ------------------------------------------------------------------------------------ registry


def _store_version(sweep_dir: Path) -> tuple:
    """Changes whenever the store gains a part (parts are immutable; compaction renames)."""
    out = []
    for sub in ("observations", "trials"):
        try:
            names = [e.name for e in os.scandir(sweep_dir / "store" / sub) if e.name.startswith("part-")]
        except OSError:
            names = []
        out.append((len(names), max(names, default="")))
    return tuple(out)


def _spec_summary(spec) -> dict[str, Any]:
    from .planner import plan_grid

    trials = plan_grid(spec)
    return {
        "name": spec.name,
        "sizes": spec.model.sizes(),
        "tokens": spec.tokens.model_dump(mode="json"),
        "learning_rates": spec.lrs(),
        "batch_sizes": spec.batches(),
        "seeds": list(spec.seeds),
        "schedule": spec.schedule.kind,
        "trainer": spec.trainer.model_dump(mode="json"),
        "targets": list(spec.budget.targets),
        "total_flops_cap": spec.budget.total_flops,
        "grid_trials": len(trials),
        "grid_flops": sum(t.flops for t in trials),
    }


def _too_large_ranges(data: Any, path: str = "spec") -> Optional[str]:
    """The first {min, max, count} range with an absurd count (it would stall validation)."""
    if isinstance(data, dict):
        count = data.get("count")
        if isinstance(count, str):  # "1000000" validates as a count too
            try:
                count = float(count)
            except ValueError:
                count = None
        if isinstance(count, (int, float)) and not isinstance(count, bool) and count > MAX_RANGE_COUNT:
            return f"{path}.count: at most {MAX_RANGE_COUNT} values per range, got {count!r}"
        for k, v in data.items():
            found = _too_large_ranges(v, f"{path}.{k}" if path != "spec" else str(k))
            if found:
                return found
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found = _too_large_ranges(v, f"{path}[{i}]")
            if found:
                return found
    return None


class SweepRegistry:
    """The sweeps under ROOT: creation, controller processes, cached reads and fits."""

    def __init__(self, root: Path, *, launch: bool = True, tracking_uri: Optional[str] = None):
        self.root = Path(root).resolve()
        self.tracking_uri = tracking_uri  # the server's MLflow for every sweep; None = each sweep's own SQLite
        self.root.mkdir(parents=True, exist_ok=True)
        self.launch = launch
        self._procs: dict[str, subprocess.Popen] = {}
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    # ---- lookup ---------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Ids of every sweep under ROOT (directories with a spec.yaml), sorted."""
        out = []
        for e in os.scandir(self.root):
            if e.is_dir() and _SWEEP_ID.match(e.name) and (Path(e.path) / "spec.yaml").is_file():
                out.append(e.name)
        return sorted(out)

    def dir(self, sweep_id: str) -> Path:
        """The directory of a known sweep, else ApiError 404."""
        if not _SWEEP_ID.match(sweep_id) or not (self.root / sweep_id / "spec.yaml").is_file():
            raise ApiError(404, f"no sweep {sweep_id!r} under this server's root")
        return self.root / sweep_id

    def _cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = make()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return value

    def spec(self, sweep_id: str):
        """(spec, None) or (None, message) for a sweep's recorded spec."""
        from .spec import SpecError, load_spec

        d = self.dir(sweep_id)
        try:
            mtime = (d / "spec.yaml").stat().st_mtime_ns
        except OSError:
            mtime = 0

        def make():
            try:
                return load_spec(d / "spec.yaml"), None
            except SpecError as exc:
                return None, str(exc)

        return self._cached(("spec", sweep_id, mtime), make)

    # ---- create ---------------------------------------------------------------------
    def create(self, data: Any) -> str:
        """Validate a spec, create ROOT/<name> and start its controller; returns the id."""
        from .spec import SpecError, parse_spec

        if not isinstance(data, dict):
            raise ApiError(422, f"spec: the body must be a JSON object of spec fields, got {type(data).__name__}")
        from .spec import _shape_problem

        # depth, list lengths and size first (iteratively): the walks below recurse
        big = _shape_problem(data) or _too_large_ranges(data)
        if big:
            raise ApiError(422, f"invalid spec\n  {big}")
        name = data.get("name")
        if isinstance(name, str) and name.startswith("."):
            raise ApiError(422, "invalid spec\n  name: must not start with '.' (reserved for the server's own files)")
        world = data.get("trainer", {}).get("world") if isinstance(data.get("trainer"), dict) else None
        if world is not None and world not in bundled_worlds():
            # A path would make the server read (and quote in its errors) any file it can see.
            raise ApiError(422, f"invalid spec\n  trainer.world: the API accepts the bundled worlds only "
                                f"({', '.join(bundled_worlds())}); run a world file with the CLI")
        # The client never chooses where the server writes, what it reads or whom it contacts:
        # the sweep goes to ROOT/<name> (a client's output_dir is ignored), tracks to the SQLite
        # store inside it and trains on the built-in corpus.
        tracking = data.get("tracking")
        if isinstance(tracking, dict) and tracking.get("uri") is not None:
            where = (f"sweeps track to {self.tracking_uri}" if self.tracking_uri
                     else "each sweep tracks to the MLflow store in its own directory")
            raise ApiError(422, f"invalid spec\n  tracking.uri: set by the server ({where}); leave it out")
        if isinstance(tracking, dict) and tracking.get("artifact_location") is not None:
            raise ApiError(422, "invalid spec\n  tracking.artifact_location: set by the server; leave it out")
        if data.get("data", "builtin") != "builtin":
            raise ApiError(422, "invalid spec\n  data: the API trains on the built-in corpus only; run a dataset "
                                "directory with the CLI")
        backend = data.get("trainer", {}).get("backend") if isinstance(data.get("trainer"), dict) else None
        if backend in ("command", "python"):
            # Validating would import the client's module or probe its program on the server; running
            # it would execute it. A user's own trainer runs through the CLI (or `scalesweep submit`).
            raise ApiError(422, f"invalid spec\n  trainer.backend: the API does not run your own trainer "
                                f"({backend}); use the CLI: scalesweep run SPEC")
        data = dict(data)
        data.pop("output_dir", None)
        if self.tracking_uri:
            data["tracking"] = {**(tracking if isinstance(tracking, dict) else {}), "uri": self.tracking_uri}
        if isinstance(name, str) and _SWEEP_ID.match(name):
            data["output_dir"] = str(self.root / name)
        try:
            spec = parse_spec(data, "spec", max_trials=MAX_TRIALS)
        except SpecError as exc:
            raise ApiError(422, str(exc)) from None
        except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
            # A validator that failed to turn bad input into a SpecError: still the client's
            # input, so 422 — but logged with its traceback because the spec module should say it.
            log.warning("spec validation raised %s instead of SpecError", type(exc).__name__, exc_info=True)
            raise ApiError(422, f"spec: invalid spec: {exc}") from None
        if not _SWEEP_ID.match(spec.name):
            raise ApiError(422, f"invalid spec\n  name: {spec.name!r} cannot be a sweep id")
        sweep_dir = self.root / spec.name
        try:
            sweep_dir.mkdir()
        except FileExistsError:
            raise ApiError(409, f"a sweep named {spec.name!r} already exists") from None
        spec_path = sweep_dir / "spec.yaml"
        tmp = sweep_dir / ".spec.yaml.tmp"
        tmp.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        os.replace(tmp, spec_path)
        if self.launch:
            self._start(spec.name, sweep_dir)
        else:
            update_controller(sweep_dir, launched=False, created_at=time.time())
        return spec.name

    def _start(self, sweep_id: str, sweep_dir: Path) -> None:
        cmd = [sys.executable, "-m", "orchestrator.api", "supervise", str(sweep_dir)]
        update_controller(sweep_dir, launched=True, created_at=time.time(), command=cmd)
        try:
            with open(sweep_dir / LOG_FILE, "ab") as logf:
                # A new session: stopping the server (Ctrl-C) leaves running sweeps alone.
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                        cwd=sweep_dir, start_new_session=True, env=_child_env())
        except OSError as exc:
            update_controller(sweep_dir, reason=f"could not start the controller: {exc}", finished_at=time.time())
            raise
        self._procs[sweep_id] = proc
        update_controller(sweep_dir, pid=proc.pid)

    # ---- status ---------------------------------------------------------------------
    def controller_state(self, sweep_id: str) -> tuple[str, Optional[int], Optional[dict[str, Any]]]:
        """(status, exit_code, controller record) of a sweep."""
        d = self.dir(sweep_id)
        proc = self._procs.get(sweep_id)
        if proc is not None:
            proc.poll()  # reap: a finished child must not linger as a zombie
        doc = read_controller(d)
        if doc is None:
            return "unmanaged", None, None
        if not doc.get("launched"):
            return "not_started", None, doc
        code = doc.get("exit_code")
        if code is None and doc.get("pid") is None and doc.get("reason"):
            return "failed", None, doc  # the controller could not be started at all
        if code is not None:
            return ("finished" if code == 0 else "failed"), int(code), doc
        pid = doc.get("pid")
        if proc is not None and proc.returncode is None:
            return "running", None, doc
        if proc is None and isinstance(pid, int) and _pid_alive(pid, d):
            return "running", None, doc
        if proc is not None and proc.returncode is not None:
            # The supervisor records the code before exiting; re-read in case we raced it.
            doc = read_controller(d) or doc
            code = doc.get("exit_code", proc.returncode)
            return ("finished" if code == 0 else "failed"), int(code), doc
        if pid is None:
            return "running", None, doc  # between mkdir and Popen of a concurrent request
        return "failed", None, {**doc, "reason": "the controller exited without recording an exit code"}

    def store_summary(self, sweep_id: str) -> dict[str, Any]:
        """Trial state counts and FLOPs spent, cached per store version."""
        from .store import ObservationStore

        d = self.dir(sweep_id)
        if not (d / "store").is_dir():
            return {"trials": {}, "flops_spent": 0.0}

        def make():
            store = ObservationStore(d)
            counts: dict[str, int] = {}
            for rec in store.trials().values():
                counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            spent = sum(row["flops"] for row in store.last_reports(finite="flops").values())
            return {"trials": counts, "flops_spent": float(spent)}

        return self._cached(("summary", sweep_id, _store_version(d)), make)

    def summary(self, sweep_id: str) -> dict[str, Any]:
        """The GET /sweeps row of one sweep."""
        status, code, _ = self.controller_state(sweep_id)
        return {"id": sweep_id, "status": status, "exit_code": code, **self.store_summary(sweep_id),
                "links": links(sweep_id)}

    def detail(self, sweep_id: str) -> dict[str, Any]:
        """GET /sweeps/{id}."""
        d = self.dir(sweep_id)
        status, code, ctrl = self.controller_state(sweep_id)
        spec, spec_error = self.spec(sweep_id)
        fit = None
        try:
            fit = json.loads((d / "fit.json").read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            fit = {"error": f"fit.json unreadable: {exc}"}
        ctrl_doc = None
        if ctrl is not None:
            ctrl_doc = {k: ctrl.get(k) for k in ("pid", "launched", "created_at", "finished_at", "exit_code", "reason")
                        if ctrl.get(k) is not None}
            ctrl_doc["log"] = LOG_FILE
        return {"id": sweep_id, "status": status, "exit_code": code, **self.store_summary(sweep_id),
                "links": links(sweep_id), "controller": ctrl_doc,
                "spec": _spec_summary(spec) if spec is not None else None, "spec_error": spec_error,
                "fit": fit}

    # ---- fits -----------------------------------------------------------------------
    def _points(self, sweep_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(finished points, diverged trial configs) from the store."""
        from .store import ObservationStore, diverged_configs, final_points

        d = self.dir(sweep_id)
        if not (d / "store").is_dir():
            return [], []

        def make():
            store = ObservationStore(d)
            return final_points(store), diverged_configs(store)

        return self._cached(("points", sweep_id, _store_version(self.dir(sweep_id))), make)

    def _task_rows(self, sweep_id: str, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The finished trials' final task metrics (empty when the sweep evaluated no task)."""
        from .store import ObservationStore, final_task_points

        d = self.dir(sweep_id)
        return self._cached(("task_rows", sweep_id, _store_version(d)),
                            lambda: final_task_points(ObservationStore(d), points))

    def _fit_settings(self, sweep_id: str, bootstrap: Optional[int]) -> dict[str, Any]:
        from .proposals import fit_settings

        spec, _ = self.spec(sweep_id)
        return fit_settings(spec, bootstrap)  # a broken spec (None) must not block reading the data: defaults

    def proposals(self, sweep_id: str, budgets: list[float], bootstrap: Optional[int]) -> list[dict[str, Any]]:
        """Compute-optimal proposals for each budget (cached per store version)."""
        from .laws.table import TableError
        from .proposals import fit_and_propose

        d = self.dir(sweep_id)
        points, diverged = self._points(sweep_id)
        if not points:
            raise ApiError(409, f"sweep {sweep_id!r} has no finished trial yet; nothing to fit")
        settings = self._fit_settings(sweep_id, bootstrap)
        spec, _ = self.spec(sweep_id)
        task_rows = self._task_rows(sweep_id, points)

        def make():
            from .planner import proposal_resources

            resources = proposal_resources(spec) if spec is not None else None
            try:
                return fit_and_propose(points, budgets, **settings,
                                       resources=resources, diverged=diverged,
                                       family=spec.model.family if spec is not None else "gpt", task_rows=task_rows)
            except (ValueError, TableError, ArithmeticError) as exc:
                # e.g. a budget whose optimal N lies beyond the model family: the input's fault.
                log.warning("proposal for budgets %s failed", budgets, exc_info=True)
                return exc

        fit = self._cached(("propose", sweep_id, _store_version(d), tuple(budgets), settings["bootstrap"]), make)
        if isinstance(fit, Exception):
            raise ApiError(422, f"budget: cannot propose for {budgets}: {fit}")
        if fit.fit is None:
            raise ApiError(409, f"sweep {sweep_id!r}: L(N, D) not fitted: {'; '.join(fit.warnings)}")
        beyond = [p["budget"] for p in fit.proposals if p["shape"] is None]
        if beyond:  # the model family has no member that large: not a config anyone can run
            raise ApiError(422, f"budget: {beyond[0]:.3g} FLOPs puts N* beyond the model family's largest member")
        from trainers.model import family_sizes

        smallest = family_sizes(spec.model.family if spec is not None else "gpt")[0]
        # Nor that small: the frontier stops at the smallest member, and a budget that leaves it fewer
        # tokens than parameters (C < 6·N_min²) is arithmetic, not a proposal.
        below = [p for p in fit.proposals if not (p["N"] >= smallest / 1.1 and p["D"] >= p["N"])]
        if below:
            raise ApiError(422, f"budget: {below[0]['budget']:.3g} FLOPs is below what the model family's smallest "
                                f"member (N={smallest}) can use: at least {6.0 * smallest**2:.3g} FLOPs")
        return jsonable(fit.proposals)

    def laws(self, sweep_id: str, bootstrap: Optional[int]) -> dict[str, Any]:
        """The L(N, D) fit and the hyperparameter laws (cached per store version)."""
        from .proposals import fit_and_propose

        d = self.dir(sweep_id)
        points, diverged = self._points(sweep_id)
        if not points:
            raise ApiError(409, f"sweep {sweep_id!r} has no finished trial yet; nothing to fit")
        settings = self._fit_settings(sweep_id, bootstrap)
        boot, level, seed = settings["bootstrap"], settings["level"], settings["seed"]

        def make():
            fit = fit_and_propose(points, [], **settings)
            hp, reason = _fit_hparams(points, diverged, boot, level, seed)
            return jsonable({"law": fit.fit.to_json() if fit.fit is not None else None, "cells": fit.cells,
                             "warnings": fit.warnings, "hparams": hp, "hparams_reason": reason,
                             "n_trials": len(points)})

        return self._cached(("laws", sweep_id, _store_version(d), boot), make)


def _fit_hparams(points: list[dict[str, Any]], diverged: list[dict[str, Any]], bootstrap: int, level: float,
                 seed: int) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """lr*(N, D) and batch*(D) from the cells with enough runs, or (None, why not)."""
    from .laws.hparams import MIN_CELL_RUNS, HparamError, fit_hparams

    from .core.cells import assign_cells

    runs = [*points, *(c for c in diverged if all(k in c for k in ("N", "D", "lr", "batch")))]
    rows = [(r["N"], cell.D, r["lr"], r["batch"], r["loss"] if i < len(points) else math.nan, i >= len(points))
            for i, (r, cell) in enumerate(zip(runs, assign_cells(runs)))]
    per_cell: dict[tuple, int] = {}
    for r in rows:
        if not r[5]:
            per_cell[(r[0], r[1])] = per_cell.get((r[0], r[1]), 0) + 1
    # Cells still filling up (a running sweep) are left out rather than failing the whole fit.
    full = {k for k, n in per_cell.items() if n >= MIN_CELL_RUNS}
    rows = [r for r in rows if (r[0], r[1]) in full]
    if len(full) < 2:
        return None, (f"{len(full)} (N, D) cell(s) with at least {MIN_CELL_RUNS} finished runs "
                      f"(lr x batch); the hyperparameter laws need several such cells")
    cols = list(zip(*rows))
    try:
        fit = fit_hparams(cols[0], cols[1], cols[2], cols[3], cols[4], diverged=cols[5],
                          bootstrap=bootstrap, level=level, seed=seed)
    except HparamError as exc:
        return None, str(exc)
    return fit.to_json(), None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child must import this checkout's packages even when the server was started elsewhere.
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop(DEFAULT_TOKEN_ENV, None)  # the sweep has no business holding the API token
    return env


def links(sweep_id: str) -> dict[str, str]:
    """URLs of a sweep's resources."""
    base = f"/sweeps/{sweep_id}"
    return {"self": base, "proposals": f"{base}/proposals", "laws": f"{base}/laws"}


# ----------------------------------------------------------------------------------------- app


def _finite_schema(obj: Any) -> Any:
    """A JSON schema without non-finite numbers (pydantic emits `default: inf`; JSON has no inf)."""
    if isinstance(obj, dict):
        return {k: _finite_schema(v) for k, v in obj.items()
                if not (isinstance(v, float) and not math.isfinite(v))}
    if isinstance(obj, list):
        return [_finite_schema(v) for v in obj]
    return obj


def _spec_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(SweepSpec request schema, its component definitions) for the OpenAPI document."""
    from .spec import SweepSpec

    schema = _finite_schema(SweepSpec.model_json_schema(ref_template="#/components/schemas/{model}"))
    defs = schema.pop("$defs", {})
    return schema, defs


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


Budget = Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]],
                   Query(min_length=1, max_length=MAX_BUDGETS, description="target compute budget C in FLOPs (repeatable)")]
Bootstrap = Annotated[Optional[int], Query(ge=0, le=MAX_BOOTSTRAP,
                                           description="bootstrap resamples; default: the spec's fit.bootstrap")]


def create_app(root: str | Path, *, token: Optional[str] = None, launch: bool = True,
               tracking_uri: Optional[str] = None) -> FastAPI:
    """The API over the sweeps in `root`; `launch=False` validates and records specs but starts nothing.
    `tracking_uri`: the MLflow every submitted sweep tracks to (None: each sweep's own SQLite store)."""
    registry = SweepRegistry(Path(root), launch=launch, tracking_uri=tracking_uri)
    token_bytes = token.encode("utf-8") if token else None
    spec_schema, spec_defs = _spec_schema()

    app = FastAPI(
        title="scalesweep",
        version="1",
        description="Scaling-law sweeps: submit specs, read status, fitted laws and compute-optimal proposals.",
    )
    app.state.registry = registry

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if token_bytes is not None and not _token_ok(request, token_bytes):
            return JSONResponse({"detail": f"missing or wrong token: send 'Authorization: Bearer <token>' "
                                           f"or '{TOKEN_HEADER}: <token>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), custom_encoder={float: lambda v: v if math.isfinite(v) else str(v)})
        errors = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in errors]
        return JSONResponse({"detail": _validation_message(errors), "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; list every route's.
            allowed = set()
            for route in app.router.routes:
                match, _ = route.matches({**request.scope, "method": "GET"})
                if match != Match.NONE and getattr(route, "methods", None):
                    allowed |= set(route.methods)
            headers["Allow"] = ", ".join(sorted(allowed))
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        # A real bug: full traceback in the server log, an id the client can quote.
        ref = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s %s", ref, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error (ref {ref}); see the server log"}, status_code=500)

    @app.post("/sweeps", status_code=202, response_model=SweepCreated, responses=_ERRORS,
              summary="Submit a sweep spec and start it",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": spec_schema, "example": EXAMPLE_SPEC}}}})
    async def submit(request: Request) -> dict[str, Any]:
        """Validate the spec (JSON, the YAML spec's fields), create ROOT/<name> and start the sweep.

        `output_dir` is ignored: the sweep is always written to ROOT/<name>.
        """
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype and ctype != "application/json" and not ctype.endswith("+json"):
            raise ApiError(415, f"send the spec as application/json, not {ctype}")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ApiError(422, f"body: not valid JSON: {exc}") from None
        sweep_id = await run_in_threadpool(registry.create, data)
        status = "running" if launch else "not_started"
        return {"id": sweep_id, "status": status, "links": links(sweep_id)}

    @app.get("/sweeps", response_model=list[SweepSummary], responses=_ERRORS, summary="List sweeps")
    def list_sweeps() -> list[dict[str, Any]]:
        """Every sweep under the root: status, trial state counts, FLOPs spent."""
        out = []
        for sid in registry.ids():
            try:
                out.append(registry.summary(sid))
            except ApiError:
                continue  # removed while listing
        return out

    @app.get("/sweeps/{sweep_id}", response_model=SweepDetail, responses=_ERRORS, summary="One sweep")
    def get_sweep(sweep_id: str) -> dict[str, Any]:
        """Status (controller and trials), FLOPs spent, spec summary and the latest fit.json."""
        return registry.detail(sweep_id)

    @app.get("/sweeps/{sweep_id}/proposals", response_model=list[Proposal], responses=_ERRORS,
             summary="Compute-optimal proposals")
    def get_proposals(sweep_id: str, budget: Budget, bootstrap: Bootstrap = None) -> list[dict[str, Any]]:
        """(N*, D*, lr, batch, predicted loss, intervals) for each budget, from the finished trials."""
        return registry.proposals(sweep_id, [float(b) for b in budget], bootstrap)

    @app.get("/sweeps/{sweep_id}/laws", response_model=LawsDoc, responses=_ERRORS, summary="Fitted laws")
    def get_laws(sweep_id: str, bootstrap: Bootstrap = None) -> dict[str, Any]:
        """L(N, D) with intervals; lr*(N, D) and batch*(D) when the trials allow (else a reason)."""
        return registry.laws(sweep_id, bootstrap)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = default_openapi()
            doc.setdefault("components", {}).setdefault("schemas", {}).update(spec_defs)
            if token_bytes is not None:
                doc["components"]["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "token": {"type": "apiKey", "in": "header", "name": TOKEN_HEADER},
                }
                doc["security"] = [{"bearer": []}, {"token": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve(root: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: Optional[str] = None,
          log_level: str = "info", tracking_uri: Optional[str] = None) -> None:
    """Run the API with uvicorn until interrupted (refuses a public bind without a token)."""
    import uvicorn

    check_bind(host, token)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    app = create_app(root, token=token, tracking_uri=tracking_uri)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=True)


# ---------------------------------------------------------------------------------- supervisor


def supervise(sweep_dir: str | Path) -> int:
    """Run `scalesweep run` on the sweep's spec and record its exit code in controller.json."""
    sweep_dir = Path(sweep_dir).resolve()
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(sweep_dir / "spec.yaml"), "--no-progress"]
    child = subprocess.Popen(cmd, cwd=sweep_dir)
    update_controller(sweep_dir, controller_pid=child.pid, started_at=time.time())

    def forward(signum, frame):  # stopping the supervisor stops the sweep
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    update_controller(sweep_dir, exit_code=code, finished_at=time.time())
    return code


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(supervise(sys.argv[2]))
    sys.exit("usage: python -m orchestrator.api supervise SWEEP_DIR")
