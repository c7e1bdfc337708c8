"""`python -m orchestrator.cli`: the `scalesweep` command without the console script."""
from . import main, serve_commands  # noqa: F401  (serve registers itself until get_app() imports it)

main()
