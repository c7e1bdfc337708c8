"""`python -m orchestrator.api supervise SWEEP_DIR`: the supervisor of one sweep's controller."""
import sys

from .supervisor import supervise

if len(sys.argv) == 3 and sys.argv[1] == "supervise":
    sys.exit(supervise(sys.argv[2]))
sys.exit("usage: python -m orchestrator.api supervise SWEEP_DIR")
