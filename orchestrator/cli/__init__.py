"""The `scalesweep` command line. Each command group lives in its own module."""
from __future__ import annotations

from .app import app


def main() -> None:
    """Entry point of the `scalesweep` console script."""
    # Imported here so that `scalesweep --help` stays importable even if an optional
    # heavy dependency of one group is slow to import; each module registers on `app`.
    from . import curve_commands, fit_commands, hparam_commands, sweep_commands  # noqa: F401

    app()
