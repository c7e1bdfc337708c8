"""A spec submitted over HTTP, checked before anything is written or started.

Beyond the spec's own validation, a client may not choose where the server writes, what it
reads or whom it contacts, and the request's cost is bounded before the spec is parsed.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

from trainers.worlds import bundled_worlds

from .schemas import MAX_RANGE_COUNT, MAX_TRIALS, ApiError

log = logging.getLogger("orchestrator.app.api")

SWEEP_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")  # a spec name, never hidden, never "." or ".."


def too_large_ranges(data: Any, path: str = "spec") -> Optional[str]:
    """The first {min, max, count} range with an absurd count (it would stall validation).

    >>> too_large_ranges({"learning_rates": {"min": 1e-4, "max": 1e-2, "count": "1000000"}})
    'learning_rates.count: at most 10000 values per range, got 1000000.0'
    """
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
            found = too_large_ranges(v, f"{path}.{k}" if path != "spec" else str(k))
            if found:
                return found
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found = too_large_ranges(v, f"{path}[{i}]")
            if found:
                return found
    return None


def validated_spec(data: Any, root: Path, tracking_uri: Optional[str], store: Optional[str] = None):
    """The submitted spec, validated, its output under ROOT/<name>, its tracking the server's and its
    store at the server's object-store prefix `store` + /<name> (None: in its directory);
    else ApiError 422 naming the field."""
    from ...config.spec import SpecError, _shape_problem, parse_spec

    if not isinstance(data, dict):
        raise ApiError(422, f"spec: the body must be a JSON object of spec fields, got {type(data).__name__}")
    # depth, list lengths and size first (iteratively): the walks below recurse
    big = _shape_problem(data) or too_large_ranges(data)
    if big:
        raise ApiError(422, f"invalid spec\n  {big}")
    name = data.get("name")
    if isinstance(name, str) and name.startswith("."):
        raise ApiError(422, "invalid spec\n  name: must not start with '.' (reserved for the server's own files)")
    trainer = data.get("trainer") if isinstance(data.get("trainer"), dict) else {}
    world = trainer.get("world")
    if world is not None and world not in bundled_worlds():
        # A path would make the server read (and quote in its errors) any file it can see.
        raise ApiError(422, f"invalid spec\n  trainer.world: the API accepts the bundled worlds only "
                            f"({', '.join(bundled_worlds())}); run a world file with the CLI")
    # The client never chooses where the server writes, what it reads or whom it contacts:
    # the sweep goes to ROOT/<name> (a client's output_dir is ignored), tracks to the SQLite
    # store inside it and trains on the built-in corpus.
    tracking = data.get("tracking")
    if isinstance(tracking, dict) and tracking.get("uri") is not None:
        where = (f"sweeps track to {tracking_uri}" if tracking_uri
                 else "each sweep tracks to the MLflow store in its own directory")
        raise ApiError(422, f"invalid spec\n  tracking.uri: set by the server ({where}); leave it out")
    if isinstance(tracking, dict) and tracking.get("artifact_location") is not None:
        raise ApiError(422, "invalid spec\n  tracking.artifact_location: set by the server; leave it out")
    if data.get("store") is not None:
        raise ApiError(422, "invalid spec\n  store: set by the server; leave it out")
    if data.get("data", "builtin") != "builtin":
        raise ApiError(422, "invalid spec\n  data: the API trains on the built-in corpus only; run a dataset "
                            "directory with the CLI")
    backend = trainer.get("backend")
    if backend in ("command", "python"):
        # Validating would import the client's module or probe its program on the server; running
        # it would execute it. A user's own trainer runs through the CLI (or `scalesweep submit`).
        raise ApiError(422, f"invalid spec\n  trainer.backend: the API does not run your own trainer "
                            f"({backend}); use the CLI: scalesweep run SPEC")
    data = dict(data)
    data.pop("output_dir", None)
    if tracking_uri:
        data["tracking"] = {**(tracking if isinstance(tracking, dict) else {}), "uri": tracking_uri}
    if isinstance(name, str) and SWEEP_ID.match(name):
        data["output_dir"] = str(root / name)
        if store:  # the server's bucket: its checkpoints and Ray files go there too (docs/cluster.md)
            data["store"] = f"{store.rstrip('/')}/{name}"
    try:
        spec = parse_spec(data, "spec", max_trials=MAX_TRIALS)
    except SpecError as exc:
        raise ApiError(422, str(exc)) from None
    except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
        # A validator that failed to turn bad input into a SpecError: still the client's
        # input, so 422 — but logged with its traceback because the spec module should say it.
        log.warning("spec validation raised %s instead of SpecError", type(exc).__name__, exc_info=True)
        raise ApiError(422, f"spec: invalid spec: {exc}") from None
    if not SWEEP_ID.match(spec.name):
        raise ApiError(422, f"invalid spec\n  name: {spec.name!r} cannot be a sweep id")
    return spec
