"""The pure core imports only the standard library, numpy and scipy; the package has no import cycle."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "ray", "mlflow", "fastapi", "pydantic", "deepspeed", "pandas", "pyarrow")


def test_core_imports_no_framework():
    core = sorted(p.stem for p in (ROOT / "orchestrator" / "core").glob("*.py") if p.stem != "__init__")
    code = ("import sys\n" + "".join(f"import orchestrator.core.{m}\n" for m in core) +
            f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"orchestrator.core imports {out.stdout.strip()}"


PRUNING_ADAPTERS = ("boundary",)  # the one module of the package that reads the trainer contract


def test_pruning_rules_are_pure():
    """orchestrator.pruning (but its boundary) imports only stdlib, numpy, scipy, orchestrator.core and .laws."""
    pkg = ROOT / "orchestrator" / "pruning"
    mods = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in pkg.rglob("*.py")
                  if p.stem not in PRUNING_ADAPTERS)
    mods = [m[:-len(".__init__")] if m.endswith(".__init__") else m for m in mods]
    assert "orchestrator.pruning.rules.paired" in mods
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods) +
            "bad = sorted({m.split('.')[0] for m in sys.modules} & set(%r))\n" % ((FORBIDDEN + ("trainers",)),) +
            "ours = sorted(m for m in sys.modules if m.startswith('orchestrator.') and not m.startswith("
            "('orchestrator.core', 'orchestrator.laws', 'orchestrator.pruning')))\n"
            "print(','.join(bad + ours))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"orchestrator.pruning imports {out.stdout.strip()}"
