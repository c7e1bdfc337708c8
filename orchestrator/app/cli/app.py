"""The `scalesweep` Typer application; command modules register on `app`."""
from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

app = typer.Typer(
    name="scalesweep",
    help="Scaling-law sweeps on Ray: run, fit, propose.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

USAGE_ERROR = 2  # bad spec / bad table / bad arguments: nothing was started


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print `error: message` to stderr and exit with `code` (2 = bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(doc: Any) -> None:
    """Write one JSON document to stdout."""
    json.dump(doc, sys.stdout, indent=2, sort_keys=False, allow_nan=False)
    sys.stdout.write("\n")
