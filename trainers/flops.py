"""Training FLOPs per token: `orchestrator.core.family` counts them (6·N, or Chinchilla's exact
count) without torch; re-exported here for the trainers.

>>> from trainers.model import shape_for
>>> flops_per_token(shape_for(53_440, "llama"), 128)  # 6·N
320640.0
"""
from __future__ import annotations

from orchestrator.core.family import flops_per_token, training_flops  # noqa: F401
