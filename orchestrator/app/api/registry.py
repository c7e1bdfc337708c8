"""The sweeps under a server's ROOT: lookup, creation, and cached answers of the query service.

A sweep is a subdirectory `ROOT/<name>` holding `spec.yaml` and the observation store; its id
is the directory name (= spec name). Reads never write: every answer comes from
`orchestrator.app.query` (the path the CLI and the controller's summary use too), cached per store
version; this module only maps the query's errors onto HTTP statuses.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from .. import query
from ...core.laws.result import jsonable
from .auth import DEFAULT_TOKEN_ENV
from .schemas import ApiError, links
from .submission import SWEEP_ID, validated_spec
from .supervisor import LOG_FILE, STOP_GRACE_S, Supervisor, update_controller

CACHE_SIZE = 128


def store_version(sweep_dir: Path) -> tuple:
    """Changes whenever the store gains a part (parts are immutable; compaction renames), wherever its
    parts live: `<sweep_dir>/store`, or the object-store prefix its `store/LOCATION` names."""
    from ...io.store import LOCATION_FILE
    from ...io.store_location import StoreLocation

    out = []
    try:
        uri = (sweep_dir / "store" / LOCATION_FILE).read_text().strip()
    except OSError:
        uri = ""
    loc = StoreLocation(uri) if uri else None
    for sub in ("observations", "trials"):
        try:
            if loc is not None:
                names = [p.rsplit("/", 1)[-1] for p in loc.parts(sub)]
            else:
                names = [e.name for e in os.scandir(sweep_dir / "store" / sub) if e.name.startswith("part-")]
        except OSError:  # a store not written yet, a bucket out of reach: nothing new to read
            names = []
        out.append((len(names), max(names, default="")))
    return tuple(out)


def spec_summary(spec) -> dict[str, Any]:
    """What GET /sweeps/{id} shows of a spec: its grid and budget."""
    from ...config.trials import plan_grid

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


def _answer(sweep_id: str, ask: Callable[[], Any]) -> Any:
    """The query's answer, or its error as an HTTP status (409: not fittable yet; 422: bad budget)."""
    try:
        return ask()
    except query.NotFitted as exc:
        raise ApiError(409, f"sweep {sweep_id!r}: {exc}") from None
    except query.BadBudget as exc:
        raise ApiError(422, str(exc)) from None


class SweepRegistry:
    """The sweeps under ROOT: creation, controller processes, cached reads and fits."""

    def __init__(self, root: Path, *, launch: bool = True, tracking_uri: Optional[str] = None,
                 token_env: str = DEFAULT_TOKEN_ENV, store: Optional[str] = None):
        self.root = Path(root).resolve()
        self.tracking_uri = tracking_uri  # the server's MLflow for every sweep; None = each sweep's own SQLite
        self.store = store  # the server's object-store prefix: sweep X's store at <store>/X; None = in its directory
        self.root.mkdir(parents=True, exist_ok=True)
        self.launch = launch
        self.supervisor = Supervisor(token_env)
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    # ---- lookup ---------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Ids of every sweep under ROOT (directories with a spec.yaml), sorted."""
        out = []
        for e in os.scandir(self.root):
            if e.is_dir() and SWEEP_ID.match(e.name) and (Path(e.path) / "spec.yaml").is_file():
                out.append(e.name)
        return sorted(out)

    def dir(self, sweep_id: str) -> Path:
        """The directory of a known sweep, else ApiError 404."""
        if not SWEEP_ID.match(sweep_id) or not (self.root / sweep_id / "spec.yaml").is_file():
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
        from ...config.spec import SpecError, load_spec

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
        spec = validated_spec(data, self.root, self.tracking_uri, self.store)
        sweep_dir = self.root / spec.name
        try:
            sweep_dir.mkdir()
        except FileExistsError:
            raise ApiError(409, f"a sweep named {spec.name!r} already exists") from None
        tmp = sweep_dir / ".spec.yaml.tmp"
        tmp.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        os.replace(tmp, sweep_dir / "spec.yaml")
        if self.launch:
            self.supervisor.start(spec.name, sweep_dir)
        else:
            update_controller(sweep_dir, launched=False, created_at=time.time())
        return spec.name

    def shutdown(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the sweeps this server started (gracefully, then at once, then their leftovers by force)."""
        self.supervisor.shutdown(grace_s)

    # ---- status ---------------------------------------------------------------------
    def controller_state(self, sweep_id: str) -> tuple[str, Optional[int], Optional[dict[str, Any]]]:
        """(status, exit_code, controller record) of a sweep."""
        return self.supervisor.state(sweep_id, self.dir(sweep_id))

    def store_summary(self, sweep_id: str) -> dict[str, Any]:
        """Trial state counts and FLOPs spent, cached per store version."""
        d = self.dir(sweep_id)
        if not (d / "store").is_dir():
            return {"trials": {}, "flops_spent": 0.0}

        def make():
            st = query.status(d)
            return {"trials": st["counts"], "flops_spent": st["flops_spent"]}

        return self._cached(("summary", sweep_id, store_version(d)), make)

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
            ctrl_doc = {k: ctrl.get(k) for k in ("pid", "launched", "created_at", "finished_at", "exit_code", "reason",
                                                 "stop_requested", "stop_reason", "stop_signal", "hard_stop_requested")
                        if ctrl.get(k) is not None}
            ctrl_doc["log"] = LOG_FILE
        return {"id": sweep_id, "status": status, "exit_code": code, **self.store_summary(sweep_id),
                "links": links(sweep_id), "controller": ctrl_doc,
                "spec": spec_summary(spec) if spec is not None else None, "spec_error": spec_error,
                "fit": fit}

    # ---- fits -----------------------------------------------------------------------
    def data(self, sweep_id: str) -> query.SweepData:
        """The fit's inputs from the sweep's store (cached per store version)."""
        from ...io.store import ObservationStore

        d = self.dir(sweep_id)
        if not (d / "store").is_dir():
            return query.SweepData([], [], [])
        return self._cached(("data", sweep_id, store_version(d)), lambda: query.SweepData.read(ObservationStore(d)))

    def proposals(self, sweep_id: str, budgets: list[float], bootstrap: Optional[int]) -> list[dict[str, Any]]:
        """Compute-optimal proposals for each budget (cached per store version)."""
        d = self.dir(sweep_id)
        data = self.data(sweep_id)
        spec, _ = self.spec(sweep_id)  # a broken spec (None) must not block reading the data: defaults

        def make():
            try:
                return jsonable(query.propose(data, spec, budgets, bootstrap).proposals)
            except query.QueryError as exc:
                return exc  # cached too: the same store and budgets give the same refusal

        key = ("propose", sweep_id, store_version(d), tuple(budgets), bootstrap)
        answer = self._cached(key, make)
        return _answer(sweep_id, lambda: _raise(answer))

    def laws(self, sweep_id: str, bootstrap: Optional[int]) -> dict[str, Any]:
        """The L(N, D) fit and the hyperparameter laws (cached per store version)."""
        d = self.dir(sweep_id)
        data = self.data(sweep_id)
        spec, _ = self.spec(sweep_id)
        if not data.points:  # not cached: cheap, and the sweep may finish a trial any moment
            return _answer(sweep_id, lambda: query.laws(data, spec, bootstrap))
        return self._cached(("laws", sweep_id, store_version(d), bootstrap), lambda: query.laws(data, spec, bootstrap))


def _raise(answer: Any) -> Any:
    if isinstance(answer, Exception):
        raise answer
    return answer
