"""`tests/unit/` is laid out like the source: each folder of unit tests names a package of the
project (`core/laws/` tests `orchestrator/core/laws/`, `trainers/` tests `trainers/`), so a module's
tests are found where the module is. Only the checks of the whole tree sit at the top."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "tests" / "unit"
TOP_PACKAGES = ("trainers", "cluster", "benchmarks")  # packages beside orchestrator/
WHOLE_TREE = {"test_import_contract.py", "test_class_size.py", "test_architecture_docs.py", "test_layout.py"}


def _source_of(folder: Path) -> Path:
    rel = folder.relative_to(UNIT)
    return ROOT / rel if rel.parts[0] in TOP_PACKAGES else ROOT / "orchestrator" / rel


def test_every_test_folder_names_a_package():
    folders = {p.parent for p in UNIT.rglob("test_*.py")} - {UNIT}
    assert folders, "no test folder found"
    wrong = sorted(str(f.relative_to(UNIT)) for f in folders if not (_source_of(f) / "__init__.py").exists())
    assert not wrong, f"test folders that name no package of the project: {wrong}"


def test_only_whole_tree_checks_sit_at_the_top():
    top = {p.name for p in UNIT.glob("test_*.py")}
    assert top == WHOLE_TREE, f"put these under the folder of the package they test: {sorted(top - WHOLE_TREE)}"
