"""Every malformed spec is refused before anything starts: exit status 2, one message naming the
field (or file) in the user's words, no traceback, no hang, nothing written.

Each case is (id, how to break the spec, a substring the message must hold). A case breaks
either the parsed spec (a function of the dict and the temp dir) or the file itself (a function
returning the file's bytes). `scalesweep validate` runs in-process through Typer's CliRunner;
the cases marked `run` go through `scalesweep run`, which must refuse them the same way before
it starts Ray. The machine is pinned to 2 CPUs and no GPU (`local_capacity`), whatever runs the
tests.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.app.cli import get_app

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "simulated.yaml"
SECRET = "hunter2-secret-value"
# pydantic's own vocabulary: none of it may reach a user
INTERNALS = ("function-after", "LogRange", "list[float]", "validation error for", "pydantic", "union_tag", "instance of",
             "after validation",
             "Traceback", "SweepSpec")


def base() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def put(dotted: str, value):
    """A mutation setting `dotted` (a.b.c) to `value`."""
    def mutate(d: dict, tmp: Path) -> None:
        keys = dotted.split(".")
        cur = d
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
            if not isinstance(cur, dict):
                raise AssertionError(f"{k} is not a section")
        cur[keys[-1]] = value
    return mutate


def drop(key: str):
    def mutate(d: dict, tmp: Path) -> None:
        d.pop(key)
    return mutate


def raw(text_or_bytes):
    """The spec file's whole content."""
    def make(tmp: Path) -> bytes:
        v = text_or_bytes(tmp) if callable(text_or_bytes) else text_or_bytes
        return v if isinstance(v, bytes) else v.encode()
    make.raw = True
    return make


def world_file(content: str):
    """A simulated world pointing at a file holding `content` (a secret the message must not quote)."""
    def mutate(d: dict, tmp: Path) -> None:
        p = tmp / "world.yaml"
        p.write_text(content)
        d["trainer"] = {"backend": "simulated", "world": str(p)}
    return mutate


def a_file(key: str, sub: str = ""):
    """`key` set to a plain file (or a path through one)."""
    def mutate(d: dict, tmp: Path) -> None:
        p = tmp / "plain.txt"
        p.write_text("not a directory\n")
        d[key] = str(p / sub) if sub else str(p)
    return mutate


def dir_without_shards(d: dict, tmp: Path) -> None:
    (tmp / "shards" / "train").mkdir(parents=True)
    d["data"] = str(tmp / "shards")


def tracking_through_file(d: dict, tmp: Path) -> None:
    p = tmp / "plain.txt"
    p.write_text("x\n")
    d["tracking"] = {"uri": f"sqlite:///{p}/mlflow.db"}


def other_sweep_in_dir(d: dict, tmp: Path) -> None:
    other = base()
    other["output_dir"] = d["output_dir"]
    other["learning_rates"] = [0.02]
    sweep = Path(d["output_dir"])
    (sweep / "store").mkdir(parents=True)
    (sweep / "spec.yaml").write_text(yaml.safe_dump(other))


def foreign_files_in_dir(d: dict, tmp: Path) -> None:
    sweep = Path(d["output_dir"])
    sweep.mkdir(parents=True)
    (sweep / "thesis.tex").write_text("mine\n")


def nested(depth: int) -> str:
    return "name: x\nmodel: " + "[" * depth + "]" * depth + "\n"


def deep_mapping(depth: int) -> str:
    text = yaml.safe_dump(base())
    inner = "1"
    for _ in range(depth):
        inner = "{a: " + inner + "}"
    return text + f"pruning: {inner}\n"


def laughs() -> str:
    lines = ['a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]']
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\nname: x\n"


def big_list(key: str, n: int):
    def make(tmp: Path) -> str:
        d = base()
        d["output_dir"] = str(tmp / "sweep")
        d.pop(key, None)
        values = ", ".join(f"{1e-4 * (1 + i / n):.9g}" for i in range(n))
        return yaml.safe_dump(d) + f"{key}: [{values}]\n"
    return make


LONG = "x" * 300

CASES = [
    # ---- the file itself
    ("utf16-bom", raw("name: x\n".encode("utf-16")), "UTF-16"),
    ("utf16-no-bom", raw("name: x\n".encode("utf-16-le")), "UTF-16"),
    ("latin1", raw(b"name: caf\xe9\n"), "not UTF-8"),
    ("binary", raw(bytes(range(128, 256)) * 4), "not UTF-8"),
    ("empty-file", raw(""), "must be a mapping"),
    ("top-level-list", raw("- a\n- b\n"), "must be a mapping"),
    ("top-level-scalar", raw("hello\n"), "must be a mapping"),
    ("bad-yaml", raw("name: [unclosed\n"), "not valid YAML"),
    ("tabs-yaml", raw("name: x\n\tmodel: 1\n"), "not valid YAML"),
    ("deep-flow-nesting", raw(nested(20000)), "nest"),
    ("deep-mapping", raw(deep_mapping(40)), "nested more than"),
    ("billion-laughs", raw(laughs()), "values in the document"),
    ("huge-file", raw("# " + "x" * (300 * 1024) + "\n"), "larger than"),
    ("list-of-20000-lrs", raw(big_list("learning_rates", 20000)), "learning_rates: 20,000 values"),
    ("list-of-20000-seeds", raw(lambda tmp: big_list("seeds", 1)(tmp).rsplit("seeds:", 1)[0]
                                + "seeds: [" + ", ".join(str(i) for i in range(20000)) + "]\n"), "seeds"),
    ("duplicate-key", raw("name: x\nname: y\n"), "spec"),
    # ---- name
    ("name-missing", drop("name"), "name: Field required"),
    ("name-empty", put("name", ""), "name: empty name"),
    ("name-dotdot", put("name", ".."), "name:"),
    ("name-dot", put("name", "."), "name:"),
    ("name-hidden", put("name", ".hidden"), "name:"),
    ("name-dash", put("name", "-rf"), "name:"),
    ("name-slash", put("name", "a/b"), "name:"),
    ("name-space", put("name", "my sweep"), "name:"),
    ("name-newline", put("name", "a\nb"), "name:"),
    ("name-300-chars", put("name", LONG), "name: 300 characters"),
    ("name-int", put("name", 123), "name:"),
    ("name-list", put("name", ["a"]), "name:"),
    # ---- unknown fields
    ("unknown-top", put("learning_rate", [1e-3]), "learning_rate: unknown field"),
    ("unknown-nested", put("model.width", 3), "model.width: unknown field"),
    ("unknown-range-key", put("learning_rates", {"min": 1e-3, "max": 1e-2, "count": 3, "step": 2}),
     "learning_rates.step: unknown field"),
    # ---- model
    ("model-missing", drop("model"), "model: Field required"),
    ("model-list", put("model", [1, 2]), "model:"),
    ("n-params-fraction", put("model.n_params", [0.4]), "model.n_params: 0.4 is less than one parameter"),
    ("n-params-1e15", put("model.n_params", [1e15]), "model.n_params: 1e+15 is beyond"),
    ("n-params-1e300", put("model.n_params", [1e300]), "model.n_params"),
    ("n-params-collapse", put("model.n_params", [20000.2, 20000.4]), "model.n_params: 20000.2 and 20000.4 give the same model"),
    ("n-params-same-member", put("model.n_params", [10, 20]), "give the same model"),
    ("n-params-empty", put("model.n_params", []), "model.n_params: empty list"),
    ("n-params-negative", put("model.n_params", [-1, 20000]), "model.n_params"),
    ("n-params-nan", put("model.n_params", [float("nan")]), "model.n_params"),
    ("n-params-inf", put("model.n_params", [float("inf")]), "model.n_params"),
    ("n-params-string", put("model.n_params", "big"), "model.n_params: expected a list of numbers or a range"),
    ("n-params-scalar", put("model.n_params", 20000), "model.n_params: expected a list"),
    ("n-params-list-of-strings", put("model.n_params", ["a"]), "model.n_params[0]"),
    ("range-count-1e9", put("model.n_params", {"min": 1e4, "max": 1e5, "count": 1e9}), "model.n_params.count"),
    ("range-count-string", put("model.n_params", {"min": 1e4, "max": 1e5, "count": "1000000"}), "model.n_params.count"),
    ("range-count-zero", put("model.n_params", {"min": 1e4, "max": 1e5, "count": 0}), "model.n_params.count"),
    ("range-count-fraction", put("model.n_params", {"min": 1e4, "max": 1e5, "count": 2.5}), "model.n_params.count"),
    ("range-reversed", put("model.n_params", {"min": 1e6, "max": 1e4, "count": 3}), "model.n_params: max (10000) is smaller"),
    ("range-min-zero", put("model.n_params", {"min": 0, "max": 1e4, "count": 3}), "model.n_params.min"),
    ("range-missing-keys", put("model.n_params", {"min": 1e4}), "model.n_params.max"),
    ("range-inf-max", put("model.n_params", {"min": 1e4, "max": float("inf"), "count": 3}), "model.n_params.max"),
    ("family-unknown", put("model.family", "mamba"), "model.family"),
    ("seq-len-zero", put("model.seq_len", 0), "model.seq_len"),
    ("seq-len-huge", put("model.seq_len", 10**9), "model.seq_len"),
    ("seq-len-text", put("model.seq_len", "long"), "model.seq_len"),
    # ---- tokens
    ("tokens-missing", drop("tokens"), "tokens: Field required"),
    ("tokens-both", put("tokens.values", [1e6]), "tokens: give exactly one"),
    ("tokens-neither", put("tokens", {}), "tokens: give exactly one"),
    ("tokens-empty", put("tokens.per_param", []), "tokens"),
    ("tokens-negative", put("tokens.per_param", [-5]), "tokens"),
    ("tokens-count-1e9", put("tokens.per_param", {"min": 1, "max": 100, "count": 1e9}), "tokens.per_param.count"),
    ("tokens-values-fraction", put("tokens", {"values": [0.4]}), "tokens.values: 0.4 is less than one token"),
    ("tokens-values-collapse", put("tokens", {"values": [1000000.2, 1000000.4]}), "tokens.values"),
    ("tokens-too-many-steps", put("tokens", {"values": [1e30]}), "tokens:"),
    ("tokens-below-batch", put("tokens", {"values": [100]}), "tokens: 100 tokens"),
    # ---- learning rates
    ("lrs-missing", drop("learning_rates"), "learning_rates: Field required"),
    ("lrs-count-1e9", put("learning_rates", {"min": 1e-4, "max": 1e-2, "count": 1e9}), "learning_rates.count"),
    ("lrs-count-1e6", put("learning_rates", {"min": 1e-4, "max": 1e-2, "count": 1000000}), "learning_rates.count"),
    ("lrs-count-string", put("learning_rates", {"min": 1e-4, "max": 1e-2, "count": "1000000"}), "learning_rates.count"),
    ("lrs-empty", put("learning_rates", []), "learning_rates: empty list"),
    ("lrs-zero", put("learning_rates", [0]), "learning_rates"),
    ("lrs-negative", put("learning_rates", [1e-3, -1e-3]), "learning_rates"),
    ("lrs-nan", put("learning_rates", [float("nan")]), "learning_rates"),
    ("lrs-text", put("learning_rates", "fast"), "learning_rates: expected a list"),
    ("lrs-duplicate", put("learning_rates", [1e-3, 1e-3]), "learning_rates: duplicate"),
    ("lrs-same-6-digits", put("learning_rates", [0.01, 0.0100000001]), "learning_rates:"),
    ("lrs-null", put("learning_rates", None), "learning_rates"),
    # ---- batch sizes
    ("batch-zero", put("batch_sizes", [0]), "batch_sizes"),
    ("batch-below-seq", put("batch_sizes", [64]), "batch_sizes: 64 tokens is smaller than one sequence"),
    ("batch-same-sequences", put("batch_sizes", [8192, 8200]), "batch_sizes: 8192 and 8200"),
    ("batch-count-1e9", put("batch_sizes", {"min": 1024, "max": 8192, "count": 1e9}), "batch_sizes.count"),
    # ---- grid size
    ("grid-too-large", put("learning_rates", {"min": 1e-4, "max": 1e-2, "count": 10000}), "grid:"),
    ("seeds-2000", put("seeds", list(range(2000))), "seeds"),
    # ---- schedule
    ("schedule-kind", put("schedule.kind", "linear"), "schedule.kind"),
    ("schedule-warmup-1.5", put("schedule.warmup", 1.5), "schedule.warmup"),
    ("schedule-warmup-negative", put("schedule.warmup", -0.1), "schedule.warmup"),
    ("schedule-decay-2", put("schedule.decay", 2), "schedule.decay"),
    ("schedule-overfull", put("schedule", {"warmup": 0.6, "decay": 0.6}), "schedule: warmup + decay exceed 1"),
    ("schedule-branch-cosine", put("schedule", {"kind": "cosine", "branch": True}), "schedule.branch"),
    # ---- eval
    ("eval-every-zero", put("eval.every", 0), "eval.every"),
    ("eval-every-text", put("eval.every", "often"), "eval.every"),
    ("eval-tokens-1e12", put("eval.tokens", 10**12), "eval.tokens"),
    # ---- seeds
    ("seeds-empty", put("seeds", []), "seeds: empty list"),
    ("seeds-duplicate", put("seeds", [0, 0]), "seeds: duplicate"),
    ("seeds-negative", put("seeds", [-1]), "seeds[0]"),
    ("seeds-2-to-40", put("seeds", [2**40]), "seeds[0]"),
    ("seeds-text", put("seeds", ["a"]), "seeds[0]"),
    ("seeds-scalar", put("seeds", 5), "seeds"),
    ("seed-negative", put("seed", -1), "seed:"),
    ("seed-2-to-64", put("seed", 2**64), "seed:"),
    # ---- budget
    ("budget-below-smallest", put("budget.total_flops", 1e6), "budget.total_flops"),
    ("budget-negative", put("budget.total_flops", -1), "budget.total_flops"),
    ("budget-inf", put("budget.total_flops", float("inf")), "budget.total_flops"),
    ("targets-below-smallest", put("budget.targets", [1e6]), "budget.targets"),
    ("targets-negative", put("budget.targets", [-1]), "budget.targets"),
    ("targets-100", put("budget.targets", [1e15 * (1 + i) for i in range(100)]), "budget.targets"),
    ("flops-mode", put("budget.flops", "approx"), "budget.flops"),
    # ---- resources (the machine is 2 CPUs, no GPU)
    ("zero-stage-5", put("resources.zero_stage", 5), "resources.zero_stage"),
    ("workers-zero", put("resources.workers", 0), "resources.workers"),
    ("workers-1e6", put("resources.workers", 10**6), "resources.workers"),
    ("threads-64-on-2-cores", put("resources.threads", 64), "resources.threads: a trial needs 1 worker(s) x 64"),
    ("threads-zero", put("resources.threads", 0), "resources.threads"),
    ("workers-times-threads", put("resources", {"workers": 2, "threads": 2}), "resources.threads"),
    ("use-gpu-without-gpu", put("resources.use_gpu", True), "resources.use_gpu: a trial needs 1 GPU(s)"),
    ("gpu-device-without-gpu", put("resources.device", "h100-80gb"), "resources.use_gpu"),
    ("device-unknown", put("resources.device", "tpu"), "resources.device"),
    ("device-cpu-with-gpu", put("resources", {"device": "cpu", "use_gpu": True}), "resources.device"),
    ("plan-unknown", put("resources.plan", "magic"), "resources.plan"),
    ("resources-shorthand-unknown", put("resources", "automatic"), "resources"),
    ("max-concurrent-zero", put("resources.max_concurrent", 0), "resources.max_concurrent"),
    ("micro-batch-zero", put("resources.micro_batch", 0), "resources.micro_batch"),
    ("device-memory-negative", put("resources.device_memory_gb", -1), "resources.device_memory_gb"),
    ("rule-workers-zero", put("resources.rules", [{"workers": 0}]), "resources.rules[0].workers"),
    ("rule-stage-9", put("resources.rules", [{"zero_stage": 9}]), "resources.rules[0].zero_stage"),
    ("rules-not-a-list", put("resources.rules", "x"), "resources.rules"),
    # ---- tracking
    ("tracking-unknown-scheme", put("tracking.uri", "foo://bar/baz"), "tracking.uri: scheme 'foo'"),
    ("tracking-gopher", put("tracking.uri", "gopher://example.org/x"), "tracking.uri"),
    ("tracking-sqlite-two-slashes", put("tracking.uri", "sqlite://x.db"), "tracking.uri"),
    ("tracking-empty", put("tracking.uri", ""), "tracking.uri: empty URI"),
    ("tracking-under-proc", put("tracking.uri", "sqlite:////proc/self/x.db"), "tracking.uri"),
    ("tracking-through-a-file", tracking_through_file, "tracking.uri"),
    ("experiment-empty", put("tracking.experiment", ""), "tracking.experiment"),
    ("experiment-300", put("tracking.experiment", LONG), "tracking.experiment"),
    ("experiment-control", put("tracking.experiment", "a\x07b"), "tracking.experiment"),
    # ---- fit
    ("fit-bootstrap-1e9", put("fit.bootstrap", 10**9), "fit.bootstrap"),
    ("fit-bootstrap-float-1e9", put("fit.bootstrap", 1e9), "fit.bootstrap"),
    ("fit-bootstrap-negative", put("fit.bootstrap", -1), "fit.bootstrap"),
    ("fit-level-1.5", put("fit.level", 1.5), "fit.level"),
    ("fit-loss", put("fit.loss", "l2"), "fit.loss"),
    ("fit-law", put("fit.law", "power"), "fit.law"),
    # ---- trainer and worlds
    ("backend-unknown", put("trainer.backend", "jax"), "trainer.backend"),
    ("world-unknown", put("trainer.world", "nowhere"), "trainer.world"),
    ("world-empty", put("trainer.world", ""), "trainer.world"),
    ("world-secret-field", world_file(f"truth:\n  E: {SECRET}\n"), "trainer.world"),
    ("world-secret-scalar", world_file(f"{SECRET}\n"), "trainer.world"),
    ("world-secret-bad-yaml", world_file(f"a: [{SECRET}\n"), "trainer.world"),
    ("world-secret-unknown-key", world_file(f"{SECRET}: 1\n"), "trainer.world"),
    ("world-directory", lambda d, tmp: d.update(trainer={"backend": "simulated", "world": str(tmp)}), "trainer.world"),
    # ---- search and pruning
    ("strategy-unknown", put("search.strategy", "random"), "search.strategy"),
    ("search-bootstrap-1e9", put("search.bootstrap", 10**9), "search.bootstrap"),
    ("search-bootstrap-5", put("search.bootstrap", 5), "search.bootstrap"),
    ("search-min-fit-cells-4", put("search.min_fit_cells", 4), "search.min_fit_cells"),
    ("search-max-trials-zero", put("search.max_trials", 0), "search.max_trials"),
    ("search-prune-band", put("search.prune_band", 0.5), "search.prune_band"),
    ("pruning-margin-negative", put("pruning.margin", -1), "pruning.margin"),
    ("pruning-margin-inf", put("pruning.margin", float("inf")), "pruning.margin"),
    ("pruning-level-1", put("pruning.level", 1), "pruning.level"),
    ("pruning-n-boot-1e9", put("pruning.n_boot", 10**9), "pruning.n_boot"),
    ("pruning-frontier-bootstrap-1e9", put("pruning.frontier_bootstrap", 10**9), "pruning.frontier_bootstrap"),
    ("pruning-seed-negative", put("pruning.seed", -1), "pruning.seed"),
    ("pruning-divergence-1", put("pruning.divergence_factor", 1), "pruning.divergence_factor"),
    # ---- checkpoints
    ("checkpoints-text", put("checkpoints", "yes"), "checkpoints"),
    ("checkpoints-every-zero", put("checkpoints.every", 0), "checkpoints.every"),
    ("checkpoints-failures-1e6", put("checkpoints.max_failures", 10**6), "checkpoints.max_failures"),
    ("branch-without-checkpoints", put("checkpoints.enabled", False), None),  # replaced below
    # ---- paths
    ("data-missing", put("data", "/nonexistent/shards"), "data: /nonexistent/shards is not a directory"),
    ("data-file", a_file("data"), "data:"),
    ("data-no-shards", dir_without_shards, "data:"),
    ("data-proc", put("data", "/proc/self"), "data:"),
    ("data-empty", put("data", ""), "data"),
    ("output-dir-file", a_file("output_dir"), "output_dir:"),
    ("output-dir-through-file", a_file("output_dir", "sub"), "output_dir:"),
    ("output-dir-proc", put("output_dir", "/proc/sweeps"), "output_dir:"),
    ("output-dir-sys", put("output_dir", "/sys/kernel/x"), "output_dir:"),
    ("output-dir-empty", put("output_dir", ""), "output_dir"),
    ("output-dir-nul", put("output_dir", "a\x00b"), "output_dir"),
    ("output-dir-5000-chars", put("output_dir", "/tmp/" + "d/" * 2500), "output_dir: 5005 characters"),
    ("output-dir-long-component", put("output_dir", "/tmp/" + "d" * 300), "output_dir"),
    ("tracking-long-component", put("tracking.uri", "sqlite:////tmp/" + "d" * 300 + "/x.db"), "tracking.uri"),
    # ---- `run` into a directory that is not this sweep's
    ("run-other-sweep-dir", other_sweep_in_dir, "output_dir:"),
    ("run-foreign-dir", foreign_files_in_dir, "output_dir:"),
]
CASES = [c for c in CASES if c[2] is not None]
# the real trainer splits each batch over its workers and micro-batches: checked before launch
CASES += [
    ("deepspeed-uneven-split", lambda d, tmp: d.update(trainer={"backend": "deepspeed"}, resources={"workers": 3}),
     "batch_sizes: 8192 tokens = 64 sequences do not split evenly across 3 workers"),
    ("deepspeed-micro-batch", lambda d, tmp: d.update(trainer={"backend": "deepspeed"}, resources={"micro_batch": 3}),
     "resources.micro_batch: 3 does not divide"),
]
CASES.append(("branch-without-checkpoints",
              lambda d, tmp: d.update(schedule={"branch": True}, checkpoints={"enabled": False}), "schedule.branch"))
RUN_CASES = {"run-other-sweep-dir", "run-foreign-dir"}
CASES += [("validate-other-sweep-dir", other_sweep_in_dir, "output_dir:"),
          ("validate-foreign-dir", foreign_files_in_dir, "output_dir:")]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


@pytest.fixture
def two_cpus_no_gpu(monkeypatch):
    import orchestrator.app.capacity as capacity

    monkeypatch.setattr(capacity, "local_capacity", lambda gpus=True: (2.0, 0.0))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_at_least_100_cases():
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("label,breaks,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_is_refused_before_anything_starts(tmp_path, monkeypatch, two_cpus_no_gpu, label, breaks, needle):
    monkeypatch.chdir(tmp_path)  # a spec that escaped its output_dir would write here
    spec = tmp_path / "spec.yaml"
    if getattr(breaks, "raw", False):
        spec.write_bytes(breaks(tmp_path))
    else:
        data = base()
        data["output_dir"] = str(tmp_path / "sweep")
        breaks(data, tmp_path)
        spec.write_text(yaml.safe_dump(data, allow_unicode=True))
    before = _snapshot(tmp_path)
    command = "run" if label in RUN_CASES else "validate"
    result = CliRunner().invoke(get_app(), [command, str(spec)] + (["--no-progress"] if command == "run" else []))
    out = result.output
    assert result.exit_code == 2, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught error
    assert out.startswith("error: "), out
    assert needle in out, out
    for word in INTERNALS:
        assert word not in out, out
    assert SECRET not in out
    assert len(out) < 2000, out  # a message, not a dump
    assert _snapshot(tmp_path) == before  # nothing written, nothing started


def test_the_machine_check_sees_no_gpu_when_cuda_hides_them(monkeypatch):
    from orchestrator.app.capacity import local_capacity

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cpus, gpus = local_capacity()
    assert gpus == 0 and 1 <= cpus <= os.cpu_count()


def test_the_same_spec_may_continue_its_own_directory(tmp_path):
    from orchestrator.config.spec import check_sweep_dir, parse_spec

    data = base()
    data["output_dir"] = str(tmp_path / "sweep")
    spec = parse_spec(data)
    assert check_sweep_dir(spec) is False  # new
    (tmp_path / "sweep").mkdir()
    assert check_sweep_dir(spec) is False  # empty
    (tmp_path / "sweep" / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    assert check_sweep_dir(spec) is False  # its own, nothing run yet (as the API server prepares it)
    (tmp_path / "sweep" / "sweep.json").write_text("{}")
    assert check_sweep_dir(spec) is True  # its own, with a run's state: `run` continues it


def test_token_budgets_that_round_to_one_trial_are_planned_once():
    from orchestrator.config.trials import plan_grid
    from orchestrator.config.spec import parse_spec

    data = base()
    data["tokens"] = {"values": [100000, 100001]}  # both round up to the same whole batches
    trials = plan_grid(parse_spec(data))
    assert len({t.trial_id for t in trials}) == len(trials)
