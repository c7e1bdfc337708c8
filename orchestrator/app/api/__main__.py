"""`python -m orchestrator.app.api supervise SWEEP_DIR`: run one sweep's supervisor (`supervisor.supervise`)."""
import sys

from ..quick_exit import skip_final_gc
from .supervisor import supervise

skip_final_gc()  # the server waits for this process at its shutdown: no last collection of its imports

if len(sys.argv) == 3 and sys.argv[1] == "supervise":
    sys.exit(supervise(sys.argv[2]))
sys.exit("usage: python -m orchestrator.app.api supervise SWEEP_DIR")
