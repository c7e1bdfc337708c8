"""No class of the orchestrator does five jobs: none is longer than MAX_CLASS_LINES (issue 15: a class that
grows past it is split by concept, as `LawGuidedPlanner` was into `law_state`, `choice` and `cell_start`).
No module of the package is longer than MAX_FILE_LINES unless its docstring says why, in a line that starts
"Long because" (one schema, one family of laws on one fitting core, ...); `app/session.py` was split by job."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_CLASS_LINES = 300  # from `class` to its last line, docstrings and comments included
MAX_FILE_LINES = 400  # a module's lines, all of them
PACKAGES = ("orchestrator", "trainers", "cluster")
REASON = "Long because"


def _classes(paths: list[Path], root: Path = ROOT) -> list[tuple[int, str]]:
    """(lines, "path:Class") of every class defined in `paths` (relative to `root`), nested classes included."""
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                out.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.name}"))
    return out


def test_no_class_over_the_limit():
    classes = _classes(sorted((ROOT / "orchestrator").rglob("*.py")))
    assert any(name.endswith(":LawGuidedPlanner") for _, name in classes)  # the walk sees the package
    big = sorted((n, name) for n, name in classes if n > MAX_CLASS_LINES)
    assert not big, "classes over %d lines (split them by concept): %s" % (
        MAX_CLASS_LINES, ", ".join(f"{name} ({n})" for n, name in big))


def test_the_measure_counts_a_class_to_its_last_line(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("class A:\n    x = 1\n\n    def f(self):\n        return 2\n\n\ny = 3\n")
    assert _classes([path], tmp_path) == [(5, "m.py:A")]


def _long_without_reason(paths: list[Path], root: Path = ROOT) -> list[tuple[int, str]]:
    """(lines, path) of every module in `paths` over MAX_FILE_LINES whose docstring has no line starting REASON."""
    out = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n <= MAX_FILE_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(line.strip().startswith(REASON) for line in doc.splitlines()):
            out.append((n, str(path.relative_to(root))))
    return out


def test_no_long_file_without_a_reason():
    paths = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    assert any(p.name == "spec.py" and len(p.read_text().splitlines()) > MAX_FILE_LINES for p in paths)  # one is long
    bad = sorted(_long_without_reason(paths), reverse=True)
    assert not bad, "modules over %d lines with no '%s ...' line in their docstring (split them, or say why): %s" % (
        MAX_FILE_LINES, REASON, ", ".join(f"{name} ({n})" for n, name in bad))


def test_the_file_rule_needs_the_reason_in_the_docstring(tmp_path):
    body = "x = 1\n" * MAX_FILE_LINES
    short = tmp_path / "short.py"
    short.write_text('"""Short."""\n' + "x = 1\n" * (MAX_FILE_LINES - 1))
    bare = tmp_path / "bare.py"
    bare.write_text('"""A module."""\n# Long because a comment is not the docstring\n' + body)
    said = tmp_path / "said.py"
    said.write_text('"""A module.\n\nLong because it is one schema.\n"""\n' + body)
    assert _long_without_reason([short, bare, said], tmp_path) == [(MAX_FILE_LINES + 2, "bare.py")]
