"""The final loss of a running trial from its logged prefix, with an interval that widens honestly.

With completed runs of the same model size, the curve law is fitted on them (every parameter
shared: runs of one size differ only in schedule) and the running trial only contributes a
run-specific offset, the mean log-residual of the second half of its prefix (runs differ by
seed and data order, which shifts the curve as a whole). Without completed runs, the law is
fitted on the prefix alone with the annealing shape held at typical published values and
the annealing amplitude taken from a small ensemble of plausible values.

The interval (at ``level``) combines, in log space:
- parameter uncertainty: the spread of the final loss over block-bootstrap refits;
- offset noise: the standard error of the prefix offset, inflated for lag-1 autocorrelation;
- model error: ``model_error`` (a relative 1-sigma error of the law when nothing of the run is
  observed, default 0.4 %, about the multi-power law's worst error across schedules) scaled by
  the unobserved fraction of the run's steps, combined with ``change_error`` (10 %) of the
  loss change the law still predicts between the last logged step and the end (doubled when
  no completed run is known);
- drift: the trend of the prefix residuals, extrapolated over the remaining steps (a run the
  law tracks badly gets a wide interval).
Less observed ⇒ larger offset SE, larger unobserved fraction, longer drift extrapolation.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from scipy.stats import norm

from .annealing import AnnealingLaw
from .curve_law import CurveLaw, _block_resample
from .curves import Curve, Schedule, per_step_schedule

LAWS = {"multipower": "MultiPowerLaw", "annealing": "AnnealingLaw"}
DEFAULT_MODEL_ERROR = 0.004
DEFAULT_CHANGE_ERROR = 0.1  # relative error of the loss change the law still predicts
DROP_FRACTIONS = (0.015, 0.03, 0.06)  # loss drop of a full anneal, relative to the current loss


class FinalLoss(NamedTuple):
    """A predicted final loss and its interval."""

    estimate: float
    low: float
    high: float


def make_law(law: str, **kw) -> CurveLaw:
    """A curve law by name (``multipower`` or ``annealing``).

    >>> type(make_law("multipower", n_boot=5)).__name__, type(make_law("annealing")).__name__
    ('MultiPowerLaw', 'AnnealingLaw')
    """
    from .multipower import MultiPowerLaw

    if law == "multipower":
        return MultiPowerLaw(**kw)
    if law == "annealing":
        return AnnealingLaw(**kw)
    raise ValueError(f"unknown curve law {law!r}; choose one of {', '.join(LAWS)}")


def predict_final(
    prefix_steps: np.ndarray,
    prefix_loss: np.ndarray,
    full_lr_schedule: Schedule | tuple[np.ndarray, np.ndarray],
    completed: Sequence[Curve] | CurveLaw = (),
    law: str = "multipower",
    level: float = 0.9,
    final_step: int | None = None,
    warmup_steps: int | None = None,
    model_error: float = DEFAULT_MODEL_ERROR,
    change_error: float = DEFAULT_CHANGE_ERROR,
    n_boot: int = 20,
    seed: int = 0,
) -> FinalLoss:
    """(estimate, low, high) of a run's loss at its last scheduled step from its logged prefix.

    >>> step = np.arange(20, 1001, 20.0)
    >>> truth = make_law("annealing"); truth.theta = np.array([2.0, 0.5, 0.5, 1.0])  # planted L0, A, alpha, C
    >>> const, cosine, linear = (1e-3 * np.ones(50), 1e-3 * (0.55 + 0.45 * np.cos(np.pi * step / 1000)),
    ...                          1e-3 * (1 - 0.9 * step / 1000))
    >>> done = [Curve(step, lr, truth.predict(step, lr)) for lr in (const, cosine)]  # completed runs
    >>> run = truth.predict(step, linear)  # a running trial, seen up to step 500 of 1000
    >>> est, low, high = predict_final(step[:25], run[:25], (step, linear), completed=done, law="annealing", n_boot=5)
    >>> round(est, 3) == round(float(run[-1]), 3), bool(low < run[-1] < high)
    (True, True)
    """
    schedule = _as_schedule(full_lr_schedule, warmup_steps)
    T = int(final_step) if final_step is not None else schedule.last_step
    steps = np.asarray(prefix_steps, dtype=np.float64)
    loss = np.asarray(prefix_loss, dtype=np.float64)
    keep = (steps >= schedule.warmup_end) & np.isfinite(loss) & (loss > 0) & (steps <= T)
    steps, loss = steps[keep], loss[keep]
    if steps.size < 4:
        raise ValueError("predict_final needs at least 4 post-warmup prefix points")
    z = norm.ppf(0.5 + level / 2)

    if isinstance(completed, CurveLaw):
        fitted = completed
    elif len(completed):
        fitted = make_law(law, n_boot=n_boot, seed=seed).fit(list(completed))
    else:
        fitted = None

    if fitted is not None:
        thetas = [fitted.theta] + list(fitted.bootstrap_thetas())
        d_prefix = fitted.design(schedule, steps)
        d_final = fitted.design(schedule, np.array([T], dtype=np.float64))
        finals, resid0 = [], None
        for i, th in enumerate(thetas):
            r = np.log(loss) - np.log(fitted._model(th, d_prefix, jac=False)[0])
            off = float(np.mean(r[len(r) // 2:]))
            finals.append(float(np.log(fitted._model(th, d_final, jac=False)[0][0])) + off)
            if i == 0:
                resid0 = r
                remaining = abs(finals[0] - off - float(np.log(fitted._model(th, d_prefix, jac=False)[0][-1])))
        log_est, log_draws, extra_model = finals[0], np.array(finals[1:]), 1.0
    else:
        log_est, log_draws, resid0, remaining = _prefix_only(law, schedule, steps, loss, T, n_boot, seed)
        extra_model = 2.0  # no completed run: the law's shape is a guess, not a fit

    sd_param = float(np.std(log_draws)) if log_draws.size > 1 else 0.0
    tail = resid0[len(resid0) // 2:] - np.mean(resid0[len(resid0) // 2:])
    sd_off = _mean_se(tail)
    frac_unseen = max(0.0, 1.0 - (steps[-1] / T))
    # The law's error grows with what is still to come: unseen steps, and above all the loss
    # change still predicted (a WSD run seen only in its stable phase has its whole cooldown ahead).
    sd_model = extra_model * float(np.hypot(model_error * frac_unseen, change_error * remaining))
    drift = _drift(steps, resid0) * max(0.0, T - steps[-1])
    half = z * float(np.sqrt(sd_param**2 + sd_off**2 + sd_model**2)) + abs(drift)
    return FinalLoss(float(np.exp(log_est)), float(np.exp(log_est - half)), float(np.exp(log_est + half)))


def _as_schedule(full: Schedule | tuple[np.ndarray, np.ndarray], warmup_steps: int | None) -> Schedule:
    if isinstance(full, Schedule):
        return full
    step, lr = full
    return per_step_schedule(np.asarray(step, dtype=np.float64), np.asarray(lr, dtype=np.float64), warmup_steps)


def _mean_se(r: np.ndarray) -> float:
    """Standard error of the mean of an autocorrelated series (AR(1) effective sample size)."""
    n = len(r)
    if n < 3:
        return float(np.std(r)) if n else 0.0
    sd = float(np.std(r, ddof=1))
    rho = float(np.corrcoef(r[:-1], r[1:])[0, 1]) if sd > 0 else 0.0
    rho = min(max(rho if np.isfinite(rho) else 0.0, 0.0), 0.95)
    n_eff = n * (1 - rho) / (1 + rho)
    return sd / np.sqrt(max(n_eff, 1.0))


def _drift(steps: np.ndarray, r: np.ndarray) -> float:
    """Slope (per step) of the second half of the prefix's log-residuals: how the law drifts off."""
    h = len(r) // 2
    s, y = steps[h:], r[h:]
    if len(s) < 3 or np.ptp(s) == 0:
        return 0.0
    slope = np.polyfit(s, y, 1)[0]
    return float(slope)


def _prefix_only(law_name, schedule, steps, loss, T, n_boot, seed):
    """Fit the law on the prefix alone: shape at priors, drop amplitude from an ensemble."""
    peak = float(np.max(schedule.lr[: int(steps[-1]) + 1]))
    rng = np.random.default_rng(seed)
    finals_all, points = [], {}
    for frac in DROP_FRACTIONS:
        amp = frac * float(loss[-1])
        # Coarser drop bins: the prefix-only fit runs many small refits and is a rough guess anyway.
        law = make_law(law_name, seed=seed, **({"bin_width": 128} if law_name == "multipower" else {}))
        if law_name == "multipower":
            law.eta_ref = peak
            params = {"L0": 0.9 * loss.min(), "A": 0.5, "alpha": 0.5, "B": amp / peak, "C": 2.0, "beta": 0.6, "gamma": 0.6}
            start = law.internal(params)
            fixed = {3: start[3], 4: start[4], 5: start[5], 6: start[6]}
        else:
            start = np.array([0.9 * loss.min(), 0.5, 0.5, amp * (1 - law.decay) / peak])
            fixed = {3: start[3]}
        design = law.design(schedule, steps)
        # A starting point for L0, A, alpha from a coarse alpha scan with the drop term fixed.
        law.theta = start
        theta = None
        for alpha in (0.3, 0.6):
            s = start.copy()
            s[2] = alpha
            try:
                th = law.fit_designs([design], [loss], start=s, fixed=fixed, max_nfev=100)
            except RuntimeError:
                continue
            cost = float(np.sum((np.log(law._model(th, design, False)[0]) - np.log(loss)) ** 2))
            if theta is None or cost < theta[0]:
                theta = (cost, th)
        if theta is None:
            continue
        th = theta[1]
        law.theta = th
        pred = law._model(th, design, False)[0]
        r = np.log(loss) - np.log(pred)
        final_design = law.design(schedule, np.array([T], dtype=np.float64))
        log_final = float(np.log(law._model(th, final_design, False)[0][0]))
        points[frac] = (log_final, r, abs(log_final - float(np.log(pred[-1]))))
        finals_all.append(points[frac][0])
        for _ in range(max(2, n_boot // len(DROP_FRACTIONS))):
            yb = pred * np.exp(_block_resample(r, 0.1, rng))
            try:
                tb = law.fit_designs([design], [yb], start=th, fixed=fixed, max_nfev=20)
            except RuntimeError:
                continue
            finals_all.append(float(np.log(law._model(tb, final_design, False)[0][0])))
    if not points:
        raise RuntimeError("predict_final: the prefix-only fit failed")
    est, r, remaining = points.get(DROP_FRACTIONS[1], next(iter(points.values())))
    return est, np.array(finals_all), r, remaining
