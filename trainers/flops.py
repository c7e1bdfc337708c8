"""Training FLOPs per token: `orchestrator.core.family` counts them (6·N, or Chinchilla's exact
count) without torch; re-exported here for the trainers. `realised(config)`: a trial config's
FLOPs per token and parameter counts, as the planner counts a planned trial's
(`orchestrator.core.planning.design.plan_trial`): the one unit of every report's and plan's FLOPs.

>>> from trainers.model import shape_for
>>> flops_per_token(shape_for(53_440, "llama"), 128)  # 6·N
320640.0
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.core.family import flops_per_token, training_flops  # noqa: F401
from orchestrator.core.family import BYTE_VOCAB, count_params, family_sizes, shape_for

if TYPE_CHECKING:
    from trainers.contract import TrialConfig


def realised(config: "TrialConfig") -> tuple[float, int, int]:
    """(training FLOPs per token, non-embedding and total parameters) of the model the family realises
    for `config.n_params` (the byte vocabulary, as the planner counts). Beyond the family's largest
    member no model realises it (a simulated world at a scale no plan reaches): 6·n_params per token.

    >>> from trainers.contract import TrialConfig
    >>> realised(TrialConfig("t", n_params=53_440, tokens=1, lr=1e-3, batch_tokens=128, family="llama"))
    (320640.0, 53440, 86208)
    """
    family_sizes(config.family)  # an unknown family fails here, as in the real trainer
    try:
        shape = shape_for(int(config.n_params), config.family)
    except ValueError:
        return 6.0 * float(config.n_params), int(config.n_params), int(config.n_params)
    counts = count_params(shape, BYTE_VOCAB, config.seq_len)
    return flops_per_token(shape, config.seq_len, BYTE_VOCAB, config.exact_flops), counts.non_embedding, counts.total
