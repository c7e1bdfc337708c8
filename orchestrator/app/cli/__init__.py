"""The `scalesweep` command line. Each command group lives in its own module."""
from __future__ import annotations

import typer

from .app import app


def get_app() -> typer.Typer:
    """The application with every command group registered."""
    from . import curve_commands, downstream_commands, fit_commands, hparam_commands, serve_commands, sweep_commands  # noqa: F401
    from . import query_commands  # noqa: F401  (after sweep_commands: status, propose listed after run, resume)
    from . import report_commands  # noqa: F401
    from . import job_commands  # noqa: F401  (after query_commands: submit/logs/stop listed after status)

    return app


def main() -> None:
    """Entry point of the `scalesweep` console script."""
    from ..quick_exit import skip_final_gc

    skip_final_gc()  # a sweep's controller or the API server ends seconds sooner
    get_app()()
