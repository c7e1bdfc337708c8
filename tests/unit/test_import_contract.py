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
