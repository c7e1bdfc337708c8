"""A law-guided search's replay (`query.search_replay`) cached next to fit.json, so that `propose`,
`status` and the API do not replay the whole search on every question (4-10 s of refits on a
hundred-trial sweep).

The live sweep writes it at its end from its own search (`query.save_live_search`: its laws, the reason it
ended), so the first question after a sweep does not replay either; a replay only rebuilds it when the
store, the spec or the code changed since (`source` in the file says which wrote it).

The cache file `search_replay.json` holds what the replay answers -- why the search ended, the trials it
would start next -- the planner state its lr/batch advice reads (`Planner.advice_state`) and the factors its L(N, D)
fit applied to its WSD branches' losses (`loss_factors`, which the proposals' fit applies too), as plain JSON:
numbers, lists and the project's own dataclasses by name; never code (no pickle: a sweep directory's
files are data). It is keyed by everything a replay depends on: the spec, every ended trial with its
last report, the trials started and not ended, and the source of the `orchestrator` package. A cache is
written only when the restored advice answers exactly as the replayed planner's does; a file that is
missing, stale, unreadable or unwritable only means a replay.

    >>> import numpy as np
    >>> from orchestrator.core.laws.hparams import LrLaw
    >>> state = {"law": LrLaw(0.1, -0.3, 0.05), "cells": (3, 4), "cov": np.eye(2), "checks": [{"reach": 1.5}]}
    >>> back = decode(json.loads(json.dumps(encode(state))))
    >>> back["law"], back["cells"], back["cov"].tolist(), back["checks"]
    (LrLaw(coef=0.1, N_exp=-0.3, D_exp=0.05), (3, 4), [[1.0, 0.0], [0.0, 1.0]], [{'reach': 1.5}])
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)

CACHE_FILE = "search_replay.json"
FORMAT = 2  # 2: the loss factors of the search's WSD branches
_PACKAGE = Path(__file__).resolve().parents[1]  # the whole orchestrator package
_OWN = "orchestrator."  # the only modules whose classes a cache may name


def code_version() -> str:
    """sha256 of every module of the `orchestrator` package (a changed search must not read an old cache)."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def replay_key(spec_json: str, ended: dict[str, Optional[dict[str, Any]]], started: set[str]) -> str:
    """The key of a replay: the spec, each ended trial's last report, the trials started and not ended, the code.

    >>> a = replay_key("{}", {"t1": {"eval_loss": 2.5}}, set())
    >>> a == replay_key("{}", {"t1": {"eval_loss": 2.5}}, set()), a == replay_key("{}", {"t1": {"eval_loss": 2.4}}, set())
    (True, False)
    """
    doc = {"format": FORMAT, "spec": spec_json, "ended": ended, "started": sorted(started), "code": code_version()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode()).hexdigest()


def encode(value: Any) -> Any:
    """`value` as JSON: numbers, strings, lists, tuples, str-keyed dicts, numpy arrays and scalars, and
    dataclasses or plain objects of the `orchestrator` package; TypeError for anything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.ndarray):
        return {"__array__": [encode(v) for v in value.ravel().tolist()], "shape": list(value.shape),
                "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return {"__scalar__": encode(value.item()), "dtype": value.dtype.str}
    if isinstance(value, (list, tuple)):
        items = [encode(v) for v in value]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a dict with keys that are not strings")
        return {"__dict__": {k: encode(v) for k, v in value.items()}}
    cls = type(value)
    if not cls.__module__.startswith(_OWN):
        raise TypeError(f"cannot cache a {cls.__module__}.{cls.__qualname__}")
    name = f"{cls.__module__}:{cls.__qualname__}"
    if dataclasses.is_dataclass(value):
        return {"__dataclass__": name, "fields": {f.name: encode(getattr(value, f.name))
                                                  for f in dataclasses.fields(value)}}
    if not hasattr(value, "__dict__") or hasattr(value, "__slots__"):
        raise TypeError(f"cannot cache a {name}")
    return {"__object__": name, "state": {k: encode(v) for k, v in vars(value).items()}}


def decode(value: Any) -> Any:
    """The inverse of `encode`."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__float__" in value:
        return float(value["__float__"])
    if "__array__" in value:
        return np.array([decode(v) for v in value["__array__"]], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
    if "__scalar__" in value:
        return np.dtype(value["dtype"]).type(decode(value["__scalar__"]))
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: decode(v) for k, v in value["__dict__"].items()}
    if "__dataclass__" in value:
        cls = _own_class(value["__dataclass__"])
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{value['__dataclass__']} is not a dataclass")
        return cls(**{k: decode(v) for k, v in value["fields"].items()})
    if "__object__" in value:
        obj = object.__new__(_own_class(value["__object__"]))
        obj.__dict__.update({k: decode(v) for k, v in value["state"].items()})
        return obj
    raise ValueError(f"not an encoded value: keys {sorted(value)}")


def _own_class(name: str) -> type:
    """A class of the `orchestrator` package by `module:qualname` (nothing else is ever imported)."""
    module, _, qualname = name.partition(":")
    if not module.startswith(_OWN) or not qualname or "." in qualname:
        raise TypeError(f"not a class of this package: {name}")
    cls = getattr(importlib.import_module(module), qualname)
    if not isinstance(cls, type):
        raise TypeError(f"not a class: {name}")
    return cls


def _path(sweep_dir: Optional[Path]) -> Optional[Path]:
    return None if sweep_dir is None else Path(sweep_dir) / CACHE_FILE


def load(sweep_dir: Optional[Path], key: str, spec: Any) -> Optional[tuple[Any, list[str], Optional[str]]]:
    """(advice, next_trials, done) cached under `key` in `sweep_dir`, or None (no such cache, or stale)."""
    path = _path(sweep_dir)
    if path is None or not path.is_file():
        return None
    try:
        return _restore(json.loads(path.read_text()), key, spec)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
        log.info("search replay cache %s not used (%s: %s)", path, type(exc).__name__, exc)
        return None


class _RestoredSearch:
    """What the search's proposal rule (`search.advice.SearchRule`) asks of a search, answered from a cache:
    the lr/batch laws by a fresh planner given the cached state, and each run's loss as the search's fit
    counted it by the cached factors of its WSD branches (the fresh planner has no cells to compute them)."""

    def __init__(self, planner: Any, loss_factors: dict[str, float]):
        self.planner, self.loss_factors = planner, loss_factors

    def predict_hparams(self, N: float, D: float) -> Any:
        return self.planner.predict_hparams(N, D)

    def hparam_intervals(self, N: float, D: float, level: float = 0.9) -> Any:
        return self.planner.hparam_intervals(N, D, level)

    def loss_as_fitted(self, trial_id: str, loss: float) -> float:
        return loss * self.loss_factors.get(trial_id, 1.0)


def loss_factors(planner: Any, advice: Any) -> dict[str, float]:
    """trial id -> the factor the search's L(N, D) fit applies to that run's loss, where it is not 1 (its
    corrected WSD branches: `branches.corrected_loss` scales the loss); {} for advice without a correction."""
    if advice is None or advice.corrected_loss is None:
        return {}
    factors = {t.trial_id: advice.corrected_loss({"loss": 1.0, "trial_id": t.trial_id}) for t in planner.trials}
    return {tid: f for tid, f in factors.items() if f != 1.0}


def _restore(doc: dict[str, Any], key: str, spec: Any) -> Optional[tuple[Any, list[str], Optional[str]]]:
    """A cache document's answers, the advice from a fresh planner given the cached state (None: another key)."""
    if doc.get("format") != FORMAT or doc.get("key") != key:
        return None
    advice = None
    if doc["advice"] is not None:
        from ..core.planning import HparamAdvice
        from ..config.planners import make_planner
        from ..core.planning.search.advice import SearchRule

        planner = make_planner(spec)
        planner.restore_advice_state({name: decode(value) for name, value in doc["advice"].items()})
        advice = planner.hparam_advice()
        if advice is not None and advice.corrected_loss is not None:
            rule = SearchRule(_RestoredSearch(planner, {str(k): float(v) for k, v in doc["loss_factors"].items()}))
            advice = HparamAdvice(rule, rule.intervals, rule.corrected_loss)
    return advice, list(doc["next_trials"]), doc["done"]


def save(sweep_dir: Optional[Path], key: str, spec: Any, planner: Any, next_trials: list[str],
         done: Optional[str], source: str = "replay") -> bool:
    """Cache a `planner`'s answers under `key` (`source`: "live", the sweep's own search at its end, or
    "replay", rebuilt from the store); False (nothing written) when its advice cannot be stored as data
    or restored to the same answers, or the directory is not writable."""
    path = _path(sweep_dir)
    if path is None or not path.parent.is_dir():
        return False
    live = planner.hparam_advice()
    try:
        # the state its advice reads (`Planner.advice_state`); `_restore` below checks that it is all of it
        state = None if live is None else {name: encode(v) for name, v in (planner.advice_state() or {}).items()}
        doc = {"format": FORMAT, "key": key, "source": source, "done": done, "next_trials": list(next_trials), "advice": state,
               "loss_factors": loss_factors(planner, live)}
        text = json.dumps(doc, allow_nan=False)
        restored = _restore(json.loads(text), key, spec)
    except (TypeError, ValueError, KeyError, AttributeError, ImportError) as exc:
        log.info("search replay not cached (%s: %s)", type(exc).__name__, exc)
        return False
    if restored is None or not same_advice(live, restored[0], planner) or not same_losses(live, restored[0], planner):
        log.info("search replay not cached: its advice does not survive the round trip")
        return False
    tmp = path.with_name(f".{CACHE_FILE}.{os.getpid()}.tmp")
    try:  # written whole, then renamed: a concurrent reader sees the old file or the new one
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.info("search replay not cached (%s)", exc)
        return False
    return True


def same_advice(a: Any, b: Any, planner: Any) -> bool:
    """Whether two advices give identical lr, batch and intervals from the planner's smallest trial to
    1000x beyond its largest (where proposals ask)."""
    if a is None or b is None:
        return a is None and b is None
    N = [t.N for t in planner.trials] or [1.0]
    D = [t.D for t in planner.trials] or [1.0]
    for n in np.geomspace(min(N), max(N) * 1e3, 5):
        for d in np.geomspace(min(D), max(D) * 1e3, 5):
            if a.predict(n, d) != b.predict(n, d):
                return False
            if (a.intervals is None) != (b.intervals is None):
                return False
            if a.intervals is not None and a.intervals(n, d, 0.9) != b.intervals(n, d, 0.9):
                return False
    return True


def same_losses(a: Any, b: Any, planner: Any) -> bool:
    """Whether two advices' rules count every trial's loss alike (`corrected_loss`, when they have one)."""
    fa, fb = (x.corrected_loss if x is not None else None for x in (a, b))
    if fa is None or fb is None:
        return fa is None and fb is None
    return all(fa({"loss": 1.0, "trial_id": t.trial_id}) == fb({"loss": 1.0, "trial_id": t.trial_id})
               for t in planner.trials)
