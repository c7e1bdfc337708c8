"""The files of a sweep's results on its parent run: JSON documents, tables, texts and figures,
written at call time (figures in the caller's thread: matplotlib is not thread-safe) and
uploaded later by the queue as owned artifacts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .layout import plain
from .ops import LogArtifact


def table_name(name: str) -> str:
    """The file name of a table artifact (`tables/<name>.json`)."""
    return name if name.endswith(".json") else f"{name}.json"


def result_artifacts(new_file: Callable[[str], Path], json_artifacts: Mapping[str, Any], figures: Mapping[str, Any],
                     tables: Optional[Mapping[str, Mapping[str, list]]] = None,
                     texts: Optional[Mapping[str, str]] = None) -> list[LogArtifact]:
    """Write the files and return their uploads to the parent run, in this order: `results/`
    JSON, `tables/` (mlflow.log_table's pandas "split" layout), texts at the root, `plots/` PNGs."""
    out: list[LogArtifact] = []

    def add(name: str, text: str, directory: Optional[str]) -> None:
        path = new_file(name)
        path.write_text(text)
        out.append(LogArtifact(None, str(path), directory, owned=True))

    for name, obj in json_artifacts.items():
        add(table_name(name), json.dumps(plain(obj), indent=2, default=str, allow_nan=False), "results")
    for name, table in (tables or {}).items():
        doc = {"columns": list(table["columns"]), "data": plain([list(r) for r in table["data"]])}
        add(table_name(name), json.dumps(doc, default=str, allow_nan=False), "tables")
    for name, text in (texts or {}).items():
        add(name, text, None)
    for name, fig in figures.items():
        path = new_file(name if name.endswith(".png") else f"{name}.png")
        fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
        out.append(LogArtifact(None, str(path), "plots", owned=True))
    return out
