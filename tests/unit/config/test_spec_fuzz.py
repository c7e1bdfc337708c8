"""Property: whatever value lands in whatever field of a valid spec, validation either accepts
the spec or raises `SpecError` (exit 2 in the CLI, 422 in the API): never another exception,
never a hang. Hypothesis picks the field and the value (numbers at and beyond every bound,
whatever their JSON type: strings of numbers, floats for ints, inf/NaN, nested junk)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config.spec import SpecError, parse_spec

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "simulated.yaml"
BASE = yaml.safe_load(EXAMPLE.read_text())
BASE["output_dir"] = "/nonexistent-scalesweep-fuzz/sweep"  # validation never writes; paths are checked later


def _paths(doc, prefix=()):
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    return out


FIELDS = _paths(BASE) + [(k,) for k in ("seeds", "seed", "schedule", "eval", "resources", "fit", "search", "pruning",
                                        "checkpoints", "tracking", "data")] + [
    ("resources", k) for k in ("workers", "threads", "micro_batch", "rules", "device", "use_gpu", "plan")] + [
    ("fit", "bootstrap"), ("search", "bootstrap"), ("search", "strategy"), ("pruning", "enabled"),
    ("tracking", "uri"), ("eval", "tokens"), ("model", "seq_len"), ("model", "family")]

NUMBERS = st.one_of(
    st.sampled_from([0, -1, 1, 2, 10**4, 10**6, 10**9, 2**31, 2**63, 10**30, 1e300, -1e300, 1e-300,
                     float("inf"), float("-inf"), float("nan"), 0.4, 20000.2, 1e15]),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(NUMBERS, NUMBERS.map(str), st.booleans(), st.none(),
                    st.sampled_from(["", "..", "auto", "builtin", "/proc/x", "foo://x", "sqlite:///x.db", "a" * 300]),
                    st.text(max_size=20))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.fixed_dictionaries({"min": inner, "max": inner, "count": inner}),
                            st.dictionaries(st.sampled_from(["min", "max", "count", "enabled", "x", "workers"]),
                                            inner, max_size=3)),
    max_leaves=8)


def _set(doc: dict, path: tuple, value) -> dict:
    import copy

    doc = copy.deepcopy(doc)
    cur = doc
    for k in path[:-1]:
        if not isinstance(cur.get(k), dict):
            cur[k] = {}
        cur = cur[k]
    cur[path[-1]] = value
    return doc


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(FIELDS), value=VALUES)
def test_any_value_in_any_field_is_accepted_or_a_spec_error(path, value):
    try:
        parse_spec(_set(BASE, path, value))
    except SpecError as exc:
        text = str(exc)
        assert "function-after" not in text and "LogRange" not in text and "Traceback" not in text
