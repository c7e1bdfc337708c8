"""The import contract (docs/architecture.md): the pure core and the laws import only the standard
library, numpy and scipy; the packages have no import cycle.

The framework check runs in a fresh interpreter with the frameworks blocked (a meta-path finder
that refuses them, as in an environment where they are not installed), so an optional import
that a module swallows still shows, and `import orchestrator.core` must work there.

The cycle check reads the source with `ast`: an edge is an import a module runs when it is
imported (module level, class bodies, `if`/`try` blocks; not `if TYPE_CHECKING:` and not inside a
function). Importing `a.b.c` depends on the packages `a` and `a.b` as well. An import deferred
into a function may close a cycle only if it is listed in `DEFERRED_CYCLES` with its reason.
"""
from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "trainers", "cluster")
PURE = ("orchestrator/core",)  # stdlib + numpy + scipy only: laws/, planning/, pruning/ and the rest
FORBIDDEN = ("torch", "ray", "mlflow", "fastapi", "pydantic", "deepspeed", "pandas", "pyarrow", "transformers")

# Imports deferred into a function that would close an import cycle at module level:
# (importer, imported) -> why it stays. Remove an entry when its cycle goes; a new one needs a reason.
DEFERRED_CYCLES = {
    ("trainers.corpus", "trainers.builtin_bpe"): "the built-in BPE corpus builds on corpus.publish_dir; "
        "corpus dispatches format: builtin to it (and defers importing `tokenizers`)",
    ("trainers.token_files", "trainers.builtin_bpe"): "the built-in BPE corpus writes token files with "
        "token_files' readers; token_files dispatches format: builtin to it",
}


def _blocked_import(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where importing a FORBIDDEN module raises ImportError."""
    guard = (
        "import sys, importlib.abc\n"
        f"FORBIDDEN = {FORBIDDEN!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in FORBIDDEN:\n"
        "            raise ImportError(f'{name} is blocked by the import contract')\n"
        "        return None\n"
        "for m in [m for m in sys.modules if m.split('.')[0] in FORBIDDEN]:\n"
        "    del sys.modules[m]\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    return subprocess.run([sys.executable, "-c", guard + code], cwd=ROOT, capture_output=True, text=True)


def _pure_modules(bases: tuple[str, ...] = PURE, skip: tuple[str, ...] = ()) -> list[str]:
    """Module names under `bases` (package dirs), but those whose file stem is in `skip`."""
    out = []
    for base in bases:
        for p in sorted((ROOT / base).rglob("*.py")):
            if p.stem in skip:
                continue
            parts = p.relative_to(ROOT).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_core_imports_with_the_frameworks_blocked():
    r = _blocked_import("import orchestrator.core\nprint('ok')\n")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_core_and_laws_import_no_framework():
    mods = _pure_modules()
    assert "orchestrator.core.family" in mods and "orchestrator.core.laws.chinchilla" in mods
    code = ("import importlib\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & set(FORBIDDEN))\n"
            "print(','.join(bad))\n")
    r = _blocked_import(code)
    assert r.returncode == 0, f"a pure module needs a blocked framework:\n{r.stderr[-2000:]}"
    assert r.stdout.strip() == "", f"the pure modules import {r.stdout.strip()}"


def test_the_block_works():
    """The guard itself: a forbidden import fails under it (else the tests above prove nothing)."""
    r = _blocked_import("import pydantic\n")
    assert r.returncode != 0 and "blocked by the import contract" in r.stderr


# ---- import cycles ---------------------------------------------------------------------------

def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) for every module of PACKAGES."""
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = p.relative_to(ROOT).with_suffix("").parts
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, is_pkg: bool, known: set[str]) -> tuple[set[str], set[tuple[str, int]]]:
    """(modules imported when `name` is imported, {(module, line)} imported inside its functions)."""
    pkg = name if is_pkg else name.rpartition(".")[0]

    def targets(node: ast.stmt) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        return [base] + [f"{base}.{a.name}" for a in node.names]  # `from p import m` may name a module

    def ours(target: str) -> list[str]:
        # `import a.b.c` also imports a and a.b, except the importer's own parent packages: Python
        # has started those before the importer runs, so a package that imports its submodules in
        # its __init__ is not a cycle
        parts = target.split(".")
        return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                if m in known and m != name and not name.startswith(m + ".")]

    eager: set[str] = set()
    deferred: set[tuple[str, int]] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                eager.update(m for t in targets(node) for m in ours(t))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        deferred.update((m, sub.lineno) for t in targets(sub) for m in ours(t))
            elif isinstance(node, ast.If) and _type_checking(node.test):
                visit(node.orelse)  # the `if TYPE_CHECKING:` body never runs
            else:  # class bodies, if/try/with blocks run at import
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, None) or [])

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return eager, deferred


def _graph() -> tuple[dict[str, set[str]], dict[str, set[tuple[str, int]]]]:
    """(eager, deferred) imports of every module: a fresh copy of the one parse (~0.4 s) the file's
    eight tests share (the sources do not change while the tests run; a test may edit its copy)."""
    eager, deferred = _parsed_graph()
    return {k: set(v) for k, v in eager.items()}, {k: set(v) for k, v in deferred.items()}


@functools.lru_cache(maxsize=1)
def _parsed_graph() -> tuple[dict[str, set[str]], dict[str, set[tuple[str, int]]]]:
    mods = _modules()
    eager, deferred = {}, {}
    for name, (path, is_pkg) in mods.items():
        eager[name], deferred[name] = _imports(name, path, is_pkg, set(mods))
    return eager, deferred


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v == goal:
            return True
        if v not in seen:
            seen.add(v)
            todo.extend(graph[v])
    return False


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]] and _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_at_module_level():
    eager, _ = _graph()
    assert "orchestrator.config.spec" in eager and "orchestrator.core.family" in eager["orchestrator.core.planning.design"]
    assert _cycles(eager) == [], "import cycles (module-level imports): " + "; ".join(
        " <-> ".join(c) for c in _cycles(eager))


def test_deferred_imports_that_hide_a_cycle_are_listed():
    eager, deferred = _graph()
    hiding = {(m, t): line for m, edges in deferred.items() for t, line in edges if _reaches(eager, t, m)}
    new = sorted(f"{m}:{line} -> {t}" for (m, t), line in hiding.items() if (m, t) not in DEFERRED_CYCLES)
    assert not new, ("an import deferred into a function hides an import cycle; break the cycle (move the "
                     "shared code down a layer) or list it in DEFERRED_CYCLES with its reason: " + ", ".join(new))
    gone = sorted(f"{m} -> {t}" for m, t in DEFERRED_CYCLES if (m, t) not in hiding)
    assert not gone, "these cycles are gone: remove them from DEFERRED_CYCLES: " + ", ".join(gone)


@pytest.mark.parametrize("module", ["orchestrator.config.spec", "orchestrator.config.trials", "orchestrator.config.planners"])
def test_spec_and_planner_do_not_import_torch(module):
    """Loading a spec and planning a grid need neither torch nor Ray (the trainers and adapters do)."""
    r = subprocess.run([sys.executable, "-c", f"import sys, {module}\n"
                        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'mlflow'})))"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"{module} imports {r.stdout.strip()}"


def test_core_imports_only_the_core():
    """orchestrator.core (laws, planning, pruning, ...) imports only stdlib, numpy, scipy and itself: no
    trainers, no spec, no other orchestrator module (the spec is converted at orchestrator.config)."""
    mods = _pure_modules()
    assert {"orchestrator.core.pruning.rules.paired", "orchestrator.core.planning.grid",
            "orchestrator.core.planning.design", "orchestrator.core.proposals"} <= set(mods)
    code = ("".join(f"import {m}\n" for m in mods) +
            "bad = sorted({m.split('.')[0] for m in sys.modules} & set(%r))\n" % ((FORBIDDEN + ("trainers", "cluster")),) +
            "ours = sorted(m for m in sys.modules if m.startswith('orchestrator.') and not m.startswith("
            "'orchestrator.core'))\n"
            "print(','.join(bad + ours))\n")
    r = _blocked_import(code)
    assert r.returncode == 0, f"a core module needs a blocked framework:\n{r.stderr[-2000:]}"
    assert r.stdout.strip() == "", f"orchestrator.core imports {r.stdout.strip()}"


# ---- the layers above the core (docs/architecture.md) ----------------------------------------

# layer -> the orchestrator modules (prefixes) its modules may import, at module level or in a function.
# `core` <- `config`, `io` <- `adapters` <- `app` (DESIGN.md "Layout"); `trainers` and `cluster` use
# only the core's arithmetic (model family, memory model) besides the trial contract.
LAYERS = {
    "orchestrator.core": ("orchestrator.core",),
    "orchestrator.config": ("orchestrator.core", "orchestrator.config",
                            "orchestrator.io.store_location"),  # the spec checks its store's URI
    "orchestrator.io": ("orchestrator.core", "orchestrator.io"),
    "orchestrator.adapters": ("orchestrator.core", "orchestrator.config", "orchestrator.io", "orchestrator.adapters"),
    "orchestrator.app": ("orchestrator.core", "orchestrator.config", "orchestrator.io", "orchestrator.adapters",
                         "orchestrator.app"),
    "trainers": ("orchestrator.core",),
    "cluster": ("orchestrator.core",),
}


def _upward_imports(eager: dict[str, set[str]], deferred: dict[str, set[tuple[str, int]]]) -> list[str]:
    """`module -> target` for every import of an orchestrator module its layer may not import."""
    bad = []
    for name in sorted(eager):
        layer = next((lay for lay in LAYERS if name == lay or name.startswith(lay + ".")), None)
        if layer is None:
            continue
        for target in sorted(eager[name] | {t for t, _ in deferred[name]}):
            allowed = any(target.startswith(p) or p.startswith(target + ".") for p in LAYERS[layer])  # or its package
            if target.startswith("orchestrator") and not allowed:
                bad.append(f"{name} -> {target}")
    return bad


def test_every_orchestrator_module_has_a_layer():
    """The package is its five layers (no module at the top of orchestrator/ outside them)."""
    eager, _ = _graph()
    loose = sorted(m for m in eager if m.startswith("orchestrator.")
                   and not any(m == lay or m.startswith(lay + ".") for lay in LAYERS))
    assert not loose, "modules outside the layers core/config/io/adapters/app: " + ", ".join(loose)


def test_the_layers_import_only_the_layers_below():
    """core imports only core; config and io import neither adapters nor app; adapters (the Ray Tune
    code) never import the app (session, query, cli, api); trainers and cluster only the core."""
    eager, deferred = _graph()
    assert {"orchestrator.config.spec", "orchestrator.io.store", "orchestrator.io.tracking.tracker",
            "orchestrator.adapters.tune.callback", "orchestrator.app.session", "orchestrator.app.cli"} <= set(eager)
    bad = _upward_imports(eager, deferred)
    assert not bad, "a module imports a layer above its own: " + ", ".join(bad)


@pytest.mark.parametrize("edge", [("orchestrator.core.cells", "orchestrator.config.spec"),
                                  ("orchestrator.io.store", "orchestrator.adapters.tune.callback"),
                                  ("orchestrator.adapters.tune.callback", "orchestrator.app.progress"),
                                  ("orchestrator.config.trials", "orchestrator.app.query")])
def test_the_layer_check_finds_a_planted_upward_import(edge):
    """The check itself: an upward edge planted in the real graph is reported (else the test above proves nothing)."""
    eager, deferred = _graph()
    importer, target = edge
    eager[importer] = eager[importer] | {target}
    assert f"{importer} -> {target}" in _upward_imports(eager, deferred)


def test_config_and_io_import_no_ray():
    """The spec, its conversions, the store and the tracking load without Ray or torch (MLflow itself
    brings FastAPI)."""
    mods = _pure_modules(("orchestrator/config", "orchestrator/io"))
    code = ("".join(f"import {m}\n" for m in mods) + "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", "import sys\n" + code +
                        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch'})))"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["ok"], f"config/ or io/ imports {r.stdout.split()[1:]}"


def test_building_the_cli_loads_no_law_and_no_framework():
    """`scalesweep CMD` builds the whole app first: the command modules defer the laws (scipy) and the
    frameworks into the command functions, so a command pays only for what it uses (propose on a
    replay-cache hit, status, --help)."""
    heavy = FORBIDDEN + ("scipy",)
    r = subprocess.run([sys.executable, "-c", "import sys, orchestrator.app.cli\n"
                        "assert orchestrator.app.cli.get_app().registered_commands\n"
                        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "", f"building the CLI imports {r.stdout.strip()}"
