"""Online pruning: stop a trial whose final loss cannot matter, stop diverging runs.

Pure (standard library, numpy, scipy, `orchestrator.core`, `orchestrator.core.laws`): the Tune adapter
(`orchestrator.adapters.tune.scheduler`) and the spec/contract boundary (`orchestrator.config.pruning`)
live outside it. One idea per module:

- `config`: the knobs (`PruneConfig`, frozen; the spec's ``pruning`` section converted once);
- `meta`: what the pruner knows of a trial's plan (`TrialMeta`);
- `decision`: a rule's `Verdict`, the pruner's `Decision`;
- `rule`: the `Rule` protocol (one method, ``check``) and `Patient` (stop on consecutive votes);
- `rules/`: one rule per file -- `divergence`, `paired` (a peer of the same cell), `law` (the
  predicted final loss vs the frontier and the cell's best) -- and their registry `RULES`;
- `history`: every trial's curve, the finals, completed curves per (size, schedule family), rebuilt
  from store rows;
- `pairstat`, `calibration`: the paired statistic and its conformal calibration;
- `frontier`: the L(N, D) frontier fitted on the finished trials;
- `pruner`: `Pruner`, the rules over one history.

How to add a rule: docs/architecture-pruning.md.
"""
from .config import PruneConfig
from .decision import CONTINUE, DIVERGED, STOP, Decision, Verdict
from .history import Completed, History, TrialState, completed_from_rows
from .meta import LR_REF, TrialMeta
from .pruner import Pruner, default_rules
from .rule import Patient, Rule
from .rules import RULES

__all__ = ["PruneConfig", "TrialMeta", "Decision", "Verdict", "Pruner", "Rule", "Patient", "RULES", "History",
           "TrialState", "Completed", "completed_from_rows", "default_rules", "CONTINUE", "STOP", "DIVERGED",
           "LR_REF"]
