"""The shared machinery of the schedule-aware curve laws: joint fit, prediction and bootstrap bands.

A curve law maps a learning-rate schedule to a loss curve. All curves given to one ``fit``
(runs of one model size that differ only in schedule) share every parameter. Subclasses
supply the features of a schedule at some steps (``design``), the model and its Jacobian
(``_model``), bounds and starting points; this module does the rest:

- the fit minimises the *summed* Huber loss (delta 1e-3) of log-residuals
  ``log(pred) - log(obs)`` with scipy's trust-region least squares from several starts;
- ``predict_interval`` is a moving-block residual bootstrap: log-residuals of each training
  curve are resampled in blocks (they are autocorrelated along a curve, so resampling single
  points would make the band too narrow), the law is refitted from the point estimate, and
  the band is the percentile range of the refitted predictions, widened by resampled
  residual noise so that it covers an observed loss, not only the mean curve.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.optimize import least_squares

from .curves import Curve, Schedule, fit_metrics, per_step_schedule
from .result import FitResult

HUBER_DELTA = 1e-3


class CurveLaw:
    """Base class: a loss-curve law with parameters shared by every curve of one fit."""

    name = "curve-law"
    param_names: tuple[str, ...] = ()

    def __init__(self, warmup: str = "actual", seed: int = 0, n_boot: int = 30, block_frac: float = 0.1):
        self.warmup = warmup
        self.seed = int(seed)
        self.n_boot = int(n_boot)
        self.block_frac = float(block_frac)
        self.theta: np.ndarray | None = None
        self.result: FitResult | None = None
        self._train: list[tuple[Any, np.ndarray, np.ndarray]] = []  # (design, obs, fitted pred)
        self._boot: list[np.ndarray] | None = None
        self._resid: list[np.ndarray] = []

    # -- hooks for subclasses --------------------------------------------------------------
    def design(self, schedule: Schedule, steps: np.ndarray) -> Any:  # pragma: no cover - abstract
        """The law's features of a per-step ``schedule`` at ``steps`` (subclasses build them).

        A design is what the model evaluates; build it once to fit with ``fit_designs`` (e.g. with
        some parameters held fixed) or to draw bootstrap predictions with ``bootstrap_draws``.

        >>> from orchestrator.core.laws.annealing import AnnealingLaw
        >>> from orchestrator.core.laws.curves import per_step_schedule
        >>> s = per_step_schedule([0, 10, 20, 30], [1.0, 1.0, 0.5, 0.0])  # stable, then a linear decay
        >>> d = AnnealingLaw(decay=0.0).design(s, [10, 20, 30])
        >>> d.s1.tolist(), d.s2.round(6).tolist()  # forward lr area, and the annealing area (lr dropped so far)
        ([10.0, 17.25, 19.5], [0.0, 0.5, 1.0])
        """
        raise NotImplementedError

    def _model(self, theta: np.ndarray, design: Any, jac: bool) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError  # pragma: no cover

    def _bounds(self, min_loss: float) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError  # pragma: no cover

    def _starts(self, designs: list[Any], obs: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError  # pragma: no cover

    def _prior(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Extra residuals (and their Jacobian rows) for weak priors; none by default."""
        return np.zeros(0), np.zeros((0, len(theta)))

    # -- public API ----------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, float]:
        """The fitted parameters by name."""
        self._require_fit()
        return self.named(self.theta)

    def named(self, theta: np.ndarray) -> dict[str, float]:
        """Parameters by name from an internal parameter vector."""
        return {k: float(v) for k, v in zip(self.param_names, theta)}

    def fit(self, curves: Sequence[Curve], warm: "CurveLaw | None" = None) -> "CurveLaw":
        """Fit one parameter set to all ``curves`` (post-warmup rows only); returns self.

        ``warm``: a fitted law of the same kind on similar curves (an online refit after a few
        more runs completed) whose parameters start a single local fit instead of the grid of
        starts, several times cheaper. If that fit is clearly worse than ``warm`` was on its own
        data (rms log residual over 1.5× and 1e-3 more), the full multi-start fit runs as well.
        """
        if not curves:
            raise ValueError("fit needs at least one curve")
        designs, obs = [], []
        for c in curves:
            if c.loss is None:
                raise ValueError(f"{c.name or 'curve'}: no loss column to fit")
            m = c.fit_mask
            if m.sum() < 3:
                raise ValueError(f"{c.name or 'curve'}: fewer than 3 post-warmup points to fit")
            designs.append(self.design(c.schedule, c.step[m]))
            obs.append(c.loss[m])
        if warm is not None and warm.theta is not None and warm.result is not None:
            theta = self._fit_designs(designs, obs, start=self._warm_start(warm))
            self._set_fit(designs, obs, theta)
            if self.result.extra["rms_log_residual"] <= 1.5 * warm.result.extra["rms_log_residual"] + 1e-3:
                return self
            cold = self._fit_designs(designs, obs, start_also=theta)
            self._set_fit(designs, obs, cold)
            return self
        theta = self._fit_designs(designs, obs)
        self._set_fit(designs, obs, theta)
        return self

    def _warm_start(self, warm: "CurveLaw") -> np.ndarray:
        """``warm``'s parameters in this law's internal convention (subclasses rescale)."""
        return np.array(warm.theta, dtype=np.float64)

    def fit_designs(self, designs: list[Any], obs: list[np.ndarray], start: np.ndarray | None = None,
                    fixed: dict[int, float] | None = None, max_nfev: int | None = None) -> np.ndarray:
        """Fit parameters to precomputed designs (some held ``fixed`` by index); returns theta."""
        return self._fit_designs(designs, obs, start=start, fixed=fixed, max_nfev=max_nfev)

    def predict(self, step: np.ndarray, lr: np.ndarray, warmup_steps: int | None = None) -> np.ndarray:
        """Predicted loss at ``step`` for the schedule logged as (step, lr)."""
        step = np.asarray(step, dtype=np.float64)
        return self.predict_schedule(per_step_schedule(step, lr, warmup_steps), step)

    def predict_schedule(self, schedule: Schedule, steps: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        """Predicted loss at ``steps`` under a per-step ``schedule``."""
        self._require_fit()
        steps = np.asarray(steps, dtype=np.float64)
        return self._model(self.theta if theta is None else theta, self.design(schedule, steps), jac=False)[0]

    def predict_interval(
        self, step: np.ndarray, lr: np.ndarray, level: float = 0.9, warmup_steps: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, low, high) at ``step``: a block-bootstrap prediction band at ``level``."""
        step = np.asarray(step, dtype=np.float64)
        return self.interval_schedule(per_step_schedule(step, lr, warmup_steps), step, level)

    def interval_schedule(
        self, schedule: Schedule, steps: np.ndarray, level: float = 0.9
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, low, high) at ``steps`` under a per-step ``schedule``."""
        self._require_fit()
        design = self.design(schedule, np.asarray(steps, dtype=np.float64))
        est = self._model(self.theta, design, jac=False)[0]
        draws = self.bootstrap_draws(design)
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return est, np.minimum(lo, est), np.maximum(hi, est)

    def bootstrap_draws(self, design: Any) -> np.ndarray:
        """Bootstrap predictive draws (n_boot × points) on ``design``, with residual noise."""
        thetas = self.bootstrap_thetas()
        rng = np.random.default_rng(self.seed + 1)
        pooled = np.concatenate(self._resid)
        preds = np.array([self._model(t, design, jac=False)[0] for t in thetas])
        noise = rng.choice(pooled, size=preds.shape)
        return preds * np.exp(noise)

    def bootstrap_thetas(self) -> list[np.ndarray]:
        """Parameter sets refitted on moving-block resamples of the training residuals (cached)."""
        self._require_fit()
        if self._boot is None:
            rng = np.random.default_rng(self.seed)
            thetas = []
            for _ in range(self.n_boot):
                obs_b = []
                for (design, obs, pred), r in zip(self._train, self._resid):
                    obs_b.append(pred * np.exp(_block_resample(r, self.block_frac, rng)))
                designs = [d for d, _, _ in self._train]
                thetas.append(self._fit_designs(designs, obs_b, start=self.theta, max_nfev=20))
            self._boot = thetas
        return self._boot

    def metrics(self, curve: Curve) -> dict[str, float]:
        """R², mean and worst relative error of this law on a curve's post-warmup rows."""
        m = curve.fit_mask
        pred = self.predict_schedule(curve.schedule, curve.step[m])
        return fit_metrics(curve.loss[m], pred)

    # -- internals -----------------------------------------------------------------------------
    def _require_fit(self) -> None:
        if self.theta is None:
            raise RuntimeError(f"{self.name}: call fit() first")

    def _set_fit(self, designs: list[Any], obs: list[np.ndarray], theta: np.ndarray) -> None:
        self.theta = theta
        self._train, self._resid = [], []
        for d, o in zip(designs, obs):
            pred = self._model(theta, d, jac=False)[0]
            self._train.append((d, o, pred))
            self._resid.append(np.log(o) - np.log(pred))
        self._boot = None
        r = np.concatenate(self._resid)
        self.result = FitResult(
            law=self.name,
            params=self.params,
            objective=float(_huber(r).sum()),
            n_points=int(r.size),
            extra={"warmup": self.warmup, "rms_log_residual": float(np.sqrt(np.mean(r * r)))},
        )

    def _fit_designs(self, designs, obs, start=None, fixed=None, max_nfev=None, start_also=None) -> np.ndarray:
        fixed = fixed or {}
        lo, hi = self._bounds(float(min(o.min() for o in obs)))
        free = np.array([i for i in range(len(lo)) if i not in fixed], dtype=int)
        log_obs = [np.log(o) for o in obs]

        def full(x: np.ndarray) -> np.ndarray:
            theta = np.empty(len(lo))
            theta[free] = x
            for i, v in fixed.items():
                theta[i] = v
            return theta

        # The Huber loss is applied to the data's log-residuals only, as pseudo-residuals
        # f(r) with f²/2 = huber(r); the prior's residuals stay quadratic (a Gaussian prior:
        # through the Huber loss it would be a Laplace one scaled by delta, i.e. ~nothing).
        def data_resid(x):
            return np.concatenate([
                np.log(np.maximum(self._model(full(x), d, jac=False)[0], 1e-12)) - lo_
                for d, lo_ in zip(designs, log_obs)
            ])

        def resid(x):
            return np.concatenate([_huber_pseudo(data_resid(x))[0], self._prior(full(x))[0]])

        def jac(x):
            out = []
            for d, lo_ in zip(designs, log_obs):
                p, J = self._model(full(x), d, jac=True)
                p = np.maximum(p, 1e-12)
                scale = _huber_pseudo(np.log(p) - lo_)[1]
                out.append(J[:, free] * (scale / p)[:, None])
            out.append(self._prior(full(x))[1][:, free])
            return np.vstack(out)

        starts = [start] if start is not None else self._starts(designs, obs)
        if start_also is not None:  # a converged point of another fit competes with the starts
            starts = [*starts, start_also]
        best, best_cost = None, np.inf
        for s in starts:
            x0 = np.clip(np.asarray(s, dtype=np.float64)[free], lo[free] + 1e-12, hi[free] - 1e-12)
            try:
                res = least_squares(
                    resid, x0, jac=jac, bounds=(lo[free], hi[free]), loss="linear",
                    x_scale="jac", method="trf", max_nfev=max_nfev or 400, xtol=1e-12, ftol=1e-12, gtol=1e-10,
                )
            except ValueError:  # a start where the model is undefined (e.g. negative loss)
                continue
            if np.isfinite(res.cost) and res.cost < best_cost:
                best, best_cost = res.x, res.cost
        if best is None:
            raise RuntimeError(f"{self.name}: no start converged")
        return full(best)


def _block_resample(r: np.ndarray, block_frac: float, rng: np.random.Generator) -> np.ndarray:
    """A circular moving-block resample of a residual series (keeps its autocorrelation)."""
    n = len(r)
    L = max(2, min(n, int(round(block_frac * n))))
    n_blocks = -(-n // L)
    starts = rng.integers(0, n, size=n_blocks)
    idx = (starts[:, None] + np.arange(L)[None, :]).ravel()[:n] % n
    return r[idx]


def _huber_pseudo(r: np.ndarray, delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-residuals f with f²/2 = huber(r), and df/dr."""
    a = np.abs(r)
    inner = a <= delta
    f = np.where(inner, r, np.sign(r) * np.sqrt(np.maximum(delta * (2 * a - delta), 0.0)))
    df = np.where(inner, 1.0, delta / np.maximum(np.abs(f), 1e-300))
    return f, df


def _huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
