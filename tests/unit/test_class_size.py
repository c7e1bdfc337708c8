"""No class of the orchestrator does five jobs: none is longer than MAX_CLASS_LINES (issue 15: a class that
grows past it is split by concept, as `LawGuidedPlanner` was into `law_state`, `choice` and `cell_start`)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_CLASS_LINES = 300  # from `class` to its last line, docstrings and comments included


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
