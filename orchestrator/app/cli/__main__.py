"""`python -m orchestrator.app.cli`: the `scalesweep` command without the console script."""
from . import main

main()
