"""`python -m orchestrator.app.api supervise SWEEP_DIR`: run one sweep's supervisor (`supervisor.supervise`)."""
import sys

from .supervisor import supervise

if len(sys.argv) == 3 and sys.argv[1] == "supervise":
    sys.exit(supervise(sys.argv[2]))
sys.exit("usage: python -m orchestrator.app.api supervise SWEEP_DIR")
