"""What the law-guided search has learned so far, refitted whenever a cell resolves.

L(N, D) with its form chosen by how it extrapolates and its bootstrap replicates (`loss_law`), the
lr*/batch* laws (`hparam_state`), the law checks near the target (`checks`; transfer) and how many
refits in a row met the stopping rule (`stopping`). The planner (`planner.LawGuidedPlanner`) owns
one and reads its answers: the hyperparameters to run a cell at, the estimate at the targets, the
noise the acquisition assumes, and when to stop.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from . import stopping
from .config import SearchConfig
from .hparam_state import HparamLaws
from .lattice import LAW_POINT, SearchCell
from .loss_law import LossLaw, backtest_by_size, fit_loss

Points = tuple[np.ndarray, np.ndarray, np.ndarray]  # N, D, L of the searched cells (`book.CellBook.fit_points`)


class SearchLaws:
    """The search's L(N, D) fit and lr*/batch* laws (`refit` on the resolved cells), and what they answer."""

    def __init__(self, config: SearchConfig, targets: Sequence[float], seed: int):
        self.config = config
        self.targets = list(targets)
        self.seed = int(seed)
        self.fit: Optional[LossLaw] = None
        self.fit_error: Optional[str] = None  # why the last L(N, D) fit failed (None: it did not)
        self.hparams = HparamLaws(config.hparam_ridge, surface=config.transfer, hedge=bool(config.hedge))
        self.checks: list[dict[str, Any]] = []  # transfer: the law checks near the target and what they found
        self.streak = 0  # consecutive fits that met the stopping rule

    def refit(self, cells: Sequence[SearchCell], points: Points, initial_design_done: bool = True) -> Optional[str]:
        """Refit the hyperparameter laws and L(N, D) on the resolved cells (`points`: their N, D, loss);
        the reason to stop once the stopping rule has held on `stop_streak` fits in a row, else None.
        `initial_design_done` False (transfer): the rule cannot hold before the whole initial design ran."""
        self.hparams.fit([c for c in cells if c.state == "resolved" and LAW_POINT not in c.trials])
        N, D, L = points
        if len(N) < self.config.min_fit_cells:
            return None
        try:
            self.fit = fit_loss(N, D, L, bootstrap=self.config.bootstrap, seed=self.seed, targets=self.targets,
                                level=self.config.level, law=self.config.law, loss=self.config.loss)
            self.fit_error = None
        except ValueError as exc:
            self.fit, self.fit_error = None, str(exc)
            return None
        done, why = stopping.stop_rule(self.fit, self.targets, self.config)
        if not initial_design_done:
            done = False  # the laws the proposal uses come from the whole initial design
        self.streak = self.streak + 1 if done and self.identified(cells) else 0
        return why if self.streak >= self.config.stop_streak else None

    def identified(self, cells: Sequence[SearchCell]) -> bool:
        """Whether the resolved cells span `min_sizes` model sizes."""
        # With two sizes the bootstrap cannot see that A/N^alpha and E trade off: its intervals are
        # narrow and wrong, so neither pruning nor the tolerance may act on them yet.
        return len({c.key[0] for c in cells if c.state == "resolved"}) >= self.config.min_sizes

    def noise(self, points: Points) -> float:
        """Relative noise of a cell's best loss: the fit's robust residual scale, floored."""
        N, D, L = points
        return self.fit.noise(N, D, L, self.config.noise) if self.fit is not None else self.config.noise

    def predict(self, N: float, D: float) -> tuple[Optional[float], Optional[float]]:
        """lr and batch to run at (N, D): the laws learned so far (hedged lr), or (None, None)."""
        return self.hparams.predict(N, D, self.checks)

    def intervals(self, N: float, D: float, level: float = 0.9) -> Optional[dict[str, dict[str, float]]]:
        """Intervals of lr*, batch* at (N, D) (transfer's joint surface; None without one)."""
        return self.hparams.intervals(N, D, self.checks, level)

    def advice_state(self) -> dict[str, Any]:
        """What `predict` and `intervals` read: the lr*/batch* laws and the law checks that widen and hedge them."""
        return {"hparams": self.hparams, "checks": self.checks}

    def restore_advice_state(self, state: Mapping[str, Any]) -> None:
        """Take another search's `advice_state` (`predict` and `intervals` then answer as its do)."""
        self.hparams, self.checks = state["hparams"], state["checks"]

    def estimate(self) -> list[dict[str, Any]]:
        """Per target C: N*, D*, L* with intervals from the current fit, and lr*, batch* from the laws."""
        return self.fit.estimate(self.targets, self.config.level, self.predict) if self.fit else []

    def to_dict(self) -> dict[str, Any]:
        """The laws learned so far (JSON-clean): L(N, D)'s form and parameters, lr*, batch*."""
        loss = {"form": self.fit.form, "params": self.fit.params} if self.fit else None
        return {"loss": loss, **self.hparams.to_dict()}

    def backtest(self, points: Points) -> Optional[dict[str, Any]]:
        """Backtest of L(N, D) by size on the searched cells (`loss_law.backtest_by_size`)."""
        N, D, L = points
        return backtest_by_size(N, D, L, self.config.noise, law=self.config.law, loss=self.config.loss)
