"""Extrapolation-first law selection: fit every candidate L(N, D) form, backtest it, weight by backtest.

``fit_auto(N, D, loss, U=None)`` fits each candidate form (`candidates.candidate_forms`) and two
backtests per form, refitted on a subset and scored on the runs left out:

- **largest size**: fit every model size but the largest, predict the largest;
- **largest compute decade**: fit the runs with C = 6ND <= C_max/10, predict the rest.

A form's score is the mean over the backtests of the RMS log error (≈ relative error) of those
predictions, on the same backtests for every form (one a form cannot run is imputed:
`score_on_common_backtests`). Weights are ``w_f ∝ exp(-n_params_f - (ln(score_f/score_min)/0.28)^2/2)`` (forms
with a clearly worse backtest get little; near ties share, and nested forms that backtest alike go to the simpler);
the form with the largest weight is *the* form (``.form``), and predictions average the forms'
log predictions by weight. ``selection["reason"]``
says which form won and by how much.

Prediction intervals mix, in proportion to the weights, each form's bootstrap replicates
(parameter uncertainty) plus two calibrated terms in log space: the run-to-run noise (RMS of the
form's residuals) and a misspecification term ``sqrt(tau0^2 + tau^2 distance^2)``,
where distance is the number of decades beyond the fitted runs (in N, D or C, whichever is largest)
and (tau0, tau) fit whatever part of the form's backtest errors its own noise and parameter
uncertainty (delta method) do not explain. So they are prediction intervals for a new run's loss
that include form uncertainty, not only the sampling error of one form.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> N = np.repeat(np.geomspace(2e7, 4e8, 5), 4); D = N * np.tile([5.0, 20, 80, 320], 5)
>>> L = 1.8 + 480 * N**-0.35 + 2100 * D**-0.35
>>> fit = fit_auto(N, D, L * np.exp(rng.normal(0, 0.003, N.size)), bootstrap=20,
...                forms=("chinchilla", "equal-exponent"))
>>> fit.form in ("chinchilla", "equal-exponent")
True
>>> loss, lo, hi = fit.predict_interval([1.4e9], [2.8e10])
>>> bool(lo[0] < loss[0] < hi[0])
True

Long because fitting, backtesting and weighting the forms and the queries on the weighted fit (intervals,
frontier band, held-out predictions, warnings) are one family over `FormFit` and `AutoFit`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .bootstrap import resample_weights, size_groups
from .chinchilla import budget_key
from .diagnostics import design_warnings
from .candidates import candidate_forms
from .forms import Form, KaplanEForm, PowerSumForm, batch_lm, grid_frontier, inputs, subset
from .objectives import DEFAULT_DELTA
from .result import FitResult, ResultView, jsonable
from .table import validate_arrays

DEFAULT_BOOTSTRAP = 100  # replicates per form with weight: enough for 90 % intervals, ~0.1 s per form
# weight ∝ exp(-OCCAM * n_params - (ln(score / best score) / SCORE_SD)^2 / 2): a score is an RMS of
# held-out errors from about a dozen effectively independent runs, known to ~1/sqrt(2n) ≈ 20 %; the
# log *ratio* of two such scores is then uncertain by 0.2·√2 ≈ 0.28 (1.2x worse -> 0.80, 1.5x ->
# 0.36, 2x -> 0.05; the first version used 0.2, the sd of one score, and averaged too little: on the
# over-training benchmark its mixture's worst error was 7.8 % on the Chinchilla points against
# 7.5 % with √2, planted worlds unchanged; benchmarks/overtraining.py). AIC's price of one e-fold per
# parameter sends nested forms that backtest alike to the simpler one. Measured on planted worlds
# (tests/unit/core/laws/test_law_selection.py): every form recovered.
SCORE_SD = 0.2 * math.sqrt(2.0)
OCCAM = 1.0
MIN_WEIGHT = 0.01  # forms below this share get no replicates (their weight goes to the others)
DRAWS = 4000  # predictive draws for a mixture quantile
UNRELIABLE = 0.05  # warn when the chosen form's backtest RMS log error exceeds this
BIN_WIDTH = 0.25  # decades per extrapolation-distance bin in backtest reports
BACKTESTS = ("largest_size", "largest_compute_decade")


# ----------------------------------------------------------------------------- backtests


def _distance(X: dict, box: tuple[float, float, float]) -> np.ndarray:
    """Decades beyond the fitted runs: max(0, log10 N/N_max, log10 D/D_max, log10 C/C_max)."""
    lN, lD, lC = box
    d = np.maximum.reduce([np.zeros_like(X["logN"]), X["logN"] - lN, X["logD"] - lD,
                           X["logN"] + X["logD"] - lC])
    return d / math.log(10.0)


def _box(X: dict) -> tuple[float, float, float]:
    return float(X["logN"].max()), float(X["logD"].max()), float((X["logN"] + X["logD"]).max())


def residual_scale(r: np.ndarray, n_params: int) -> float:
    """Scale of log residuals: RMS inflated by sqrt(n / (n - p)) for the fitted parameters.

    (The RMS, not a robust MAD: a MAD of a few dozen residuals, or the smaller of the two, is biased
    low and made the intervals under-cover at long extrapolations.)

    >>> round(residual_scale(np.array([0.01, -0.01, 0.01, -0.01]), n_params=2), 5)  # RMS 0.01 times sqrt(4 / 2)
    0.01414
    """
    r = np.asarray(r, float)
    n = len(r)
    rms = float(np.sqrt(np.mean(r**2)))
    return max(rms * math.sqrt(n / max(n - n_params, 1)), 1e-6)


def backtest_masks(N: np.ndarray, D: np.ndarray) -> dict[str, np.ndarray]:
    """Training masks of the two backtests (True = fitted); a backtest is absent when it cannot be formed.

    >>> N = np.repeat(np.geomspace(2e7, 4e8, 5), 4); D = N * np.tile([5.0, 20, 80, 320], 5)
    >>> L = (1.8 + 480 * N**-0.35 + 2100 * D**-0.35) * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
    >>> {k: int(m.sum()) for k, m in backtest_masks(N, D).items()}  # runs fitted in each backtest
    {'largest_size': 16, 'largest_compute_decade': 17}
    """
    groups = size_groups(N)
    out = {}
    if len(np.unique(groups)) >= 2:
        out["largest_size"] = groups != groups.max()
    C = 6.0 * N * D
    train = C <= C.max() / 10.0
    if train.any() and not train.all():
        out["largest_compute_decade"] = train
    return out


def run_backtest(form: Form, X: dict, logL: np.ndarray, train: np.ndarray, *, loss_fn: str = "huber",
                 delta: float = DEFAULT_DELTA) -> dict[str, Any]:
    """Fit ``form`` on the ``train`` rows, predict the others; errors overall and by distance.

    Also returns what calibrates intervals: per held-out run its log error, extrapolation distance and
    the variance the fit's own noise and parameter uncertainty (delta method) would explain.

    >>> N = np.repeat(np.geomspace(2e7, 4e8, 5), 4); D = N * np.tile([5.0, 20, 80, 320], 5)
    >>> L = (1.8 + 480 * N**-0.35 + 2100 * D**-0.35) * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
    >>> form = candidate_forms(N, D, names=["chinchilla"])[0]
    >>> bt = run_backtest(form, inputs(N, D), np.log(L), backtest_masks(N, D)["largest_size"])
    >>> bt["n_train"], bt["n_test"], round(bt["max_abs_rel_error"], 3)  # the largest size predicted within 1 %
    (16, 4, 0.01)
    """
    test = ~train
    Xtr, Xte = subset(X, train), subset(X, test)
    theta, f = form.fit(Xtr, logL[train], loss_fn, delta)
    lp_tr, Jtr = form.jac(theta[None, :], Xtr)
    lp_te, Jte = form.jac(theta[None, :], Xte)
    sigma = residual_scale(lp_tr[0] - logL[train], form.n_params)
    J = Jtr[0]
    cov = sigma**2 * np.linalg.pinv(J.T @ J, rcond=1e-12)
    v = np.einsum("ij,jk,ik->i", Jte[0], cov, Jte[0])
    e = lp_te[0] - logL[test]
    rel = np.expm1(e)
    dist = _distance(Xte, _box(Xtr))
    bins = []
    top = math.floor(dist.max() / BIN_WIDTH) if len(dist) else 0
    for i in range(top + 1):
        m = (dist >= i * BIN_WIDTH) & ((dist < (i + 1) * BIN_WIDTH) | (i == top))
        if m.any():
            bins.append({"decades_low": i * BIN_WIDTH, "decades_high": (i + 1) * BIN_WIDTH, "n": int(m.sum()),
                         **_errors(rel[m], e[m])})
    return {
        "n_train": int(train.sum()), "n_test": int(test.sum()),
        "max_train_N": float(Xtr["N"].max()), "max_train_C": float(6 * np.exp(_box(Xtr)[2])),
        "max_distance_decades": float(dist.max()),
        **_errors(rel, e),
        "by_distance": bins,
        "params": form.natural(theta),
        "_calib": {"e": e, "v": np.maximum(v, 0.0), "d": dist, "sigma": sigma},
    }


def _errors(rel: np.ndarray, logerr: np.ndarray) -> dict[str, float]:
    return {"mean_abs_rel_error": float(np.mean(np.abs(rel))), "max_abs_rel_error": float(np.max(np.abs(rel))),
            "bias_rel": float(np.mean(rel)), "rmse_log": float(np.sqrt(np.mean(logerr**2)))}


def score_on_common_backtests(fits: Sequence["FormFit"]) -> list[str]:
    """Score every fitted form on the same backtests, every one that some form ran; returns their names.

    Forms are ranked by the log ratio of their scores, so each score must cover the same held-out runs.
    A backtest a form cannot run (its training set has fewer than n_params + 2 runs, or its fit failed)
    is imputed, not skipped: in log space, score = form effect + backtest effect, the form's mean over the
    backtests it ran plus how much harder the missing backtest was than those for the forms that ran
    every one (mean log ratio). Skipping it judged the form on the easier backtests alone; dropping the
    backtest for every form threw away the evidence that told the others apart (docs/fitting.md).
    Forms that ran no backtest get NaN (weight 0); with no form that ran every backtest there is nothing
    to impute from, and the ground is the backtests every form ran. Imputed values: ``f.imputed``.

    >>> from types import SimpleNamespace as NS
    >>> a = NS(theta=1, backtests={"size": {"rmse_log": 0.01}, "decade": {"rmse_log": 0.04}})
    >>> b = NS(theta=1, backtests={"size": {"rmse_log": 0.02}})  # too many parameters for "decade"
    >>> score_on_common_backtests([a, b]), a.score, round(b.score, 6), round(b.imputed["decade"], 6)
    (['decade', 'size'], 0.025, 0.05, 0.08)
    """
    ran = [(f, {k: bt["rmse_log"] for k, bt in f.backtests.items() if "rmse_log" in bt})
           for f in fits if f.theta is not None]
    names = {k for _, r in ran for k in r}
    full = [r for _, r in ran if len(r) == len(names)]
    if not full and names:  # nothing to impute from: the backtests every form with a backtest ran
        names = set.intersection(*(set(r) for _, r in ran if r))
    ground = [k for k in BACKTESTS if k in names] + sorted(names - set(BACKTESTS))
    for f, r in ran:
        f.imputed = {}
        if full and r:
            for b in set(ground) - set(r):
                gap = np.mean([math.log(g[b]) - np.mean([math.log(g[k]) for k in r]) for g in full])
                f.imputed[b] = float(math.exp(np.mean([math.log(v) for v in r.values()]) + gap))
        f.score = _score_on(f, ground)
    return ground


def _score_on(f: "FormFit", ground: Sequence[str]) -> float:
    """Mean RMS log error of the form over the backtests ``ground`` (run or imputed); NaN when one is neither."""
    imputed = getattr(f, "imputed", {})
    have = [f.backtests[k]["rmse_log"] if "rmse_log" in f.backtests.get(k, {}) else imputed[k]
            for k in ground if "rmse_log" in f.backtests.get(k, {}) or k in imputed]
    return float(np.mean(have)) if ground and len(have) == len(ground) else math.nan


def misspecification(backtests: dict[str, dict]) -> tuple[float, float]:
    """(tau0, tau1): the log error of held-out runs that noise and parameter error do not explain.

    Non-negative least squares of e^2 - sigma^2 - v = tau0^2 + tau1^2 d^2 over every held-out run
    of the form's backtests (d: decades beyond the fitted runs): a floor of misfit everywhere plus
    a part that grows with extrapolation distance.

    >>> N = np.repeat(np.geomspace(2e7, 4e8, 5), 4); D = N * np.tile([5.0, 20, 80, 320], 5)
    >>> L = (1.8 + 480 * N**-0.35 + 2100 * D**-0.35) * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
    >>> form = candidate_forms(N, D, names=["chinchilla"])[0]
    >>> bts = {k: run_backtest(form, inputs(N, D), np.log(L), m) for k, m in backtest_masks(N, D).items()}
    >>> [round(t, 4) for t in misspecification(bts)]  # a 0.6 % floor of unexplained error, none growing
    [0.0057, 0.0]
    """
    from scipy.optimize import nnls

    rows, y = [], []
    for bt in backtests.values():
        c = bt.get("_calib")
        if c is None:
            continue
        rows.append(np.column_stack([np.ones_like(c["d"]), c["d"] ** 2]))
        y.append(c["e"] ** 2 - c["sigma"] ** 2 - c["v"])
    if not rows:
        return 0.0, 0.0
    A, b = np.concatenate(rows), np.concatenate(y)
    if np.ptp(A[:, 1]) < 1e-8:  # no spread in distance: a floor only
        return math.sqrt(max(float(np.mean(b)), 0.0)), 0.0
    coef, _ = nnls(A, b)
    return math.sqrt(coef[0]), math.sqrt(coef[1])


# ----------------------------------------------------------------------------- fitted forms


@dataclass
class FormFit:
    """One candidate form fitted to all the runs, with its backtests, score, weight and replicates."""

    form: Form
    theta: Optional[np.ndarray] = None
    objective: float = math.nan
    sigma: float = math.nan
    backtests: dict[str, dict] = field(default_factory=dict)
    score: float = math.nan
    tau: float = 0.0  # misspecification per decade beyond the data (log scale)
    tau0: float = 0.0  # misspecification floor (log scale)
    imputed: dict[str, float] = field(default_factory=dict)  # backtest -> RMS log error imputed for the score
    weight: float = 0.0
    samples: Optional[np.ndarray] = None
    error: Optional[str] = None

    @property
    def name(self) -> str:
        """The form's name."""
        return self.form.name

    @property
    def params(self) -> dict[str, float]:
        """Named parameters of the full fit."""
        return self.form.natural(self.theta) if self.theta is not None else {}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: parameters, score, weight, backtests (without calibration internals)."""
        bts = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in self.backtests.items()}
        return {"n_params": self.form.n_params, "params": self.params, "objective": self.objective,
                "residual_scale": self.sigma, "score_rmse_log": self.score, "weight": self.weight,
                "misspecification_floor": self.tau0,
                "misspecification_per_decade": self.tau, "backtests": bts, "imputed_backtests": self.imputed,
                **({"error": self.error} if self.error else {})}


class AutoLaw:
    """The selected law: forms' log predictions averaged by weight; predict and frontier like ChinchillaLaw."""

    def __init__(self, fits: Sequence[FormFit], n_min: Optional[float] = None):
        self.fits = [f for f in fits if f.weight > 0 and f.theta is not None]
        self.n_min = n_min  # the frontier's smallest N (the smallest model the family can build)

    def log_predict(self, N, D, U=None) -> np.ndarray:
        """Weighted mean of the forms' log predictions (shape of N, D broadcast)."""
        X = inputs(N, D, U)
        out = 0.0
        for f in self.fits:
            out = out + f.weight * f.form.log_predict(f.theta[None, :], X)[0]
        return np.asarray(out)

    def predict(self, N, D, U=None) -> np.ndarray:
        """Predicted loss at (N, D) (U unique tokens; None = no repetition)."""
        return np.exp(self.log_predict(N, D, U))

    def bagged_log_predict(self, N, D, U=None) -> np.ndarray:
        """Weighted mean over forms of the median over each form's bootstrap replicates of its log
        prediction (bagging); a form without replicates contributes its fit."""
        X = inputs(N, D, U)
        out = 0.0
        for f in self.fits:
            reps = f.samples if f.samples is not None and len(f.samples) else f.theta[None, :]
            out = out + f.weight * np.median(f.form.log_predict(reps, X), axis=0)
        return np.asarray(out)

    @property
    def params(self) -> dict[str, float]:
        """Parameters of the form with the largest weight."""
        return max(self.fits, key=lambda f: f.weight).params

    def frontier(self, C, flops="6ND") -> dict[str, np.ndarray]:
        """Compute-optimal N_opt, D_opt, loss_opt, tokens_per_param at budgets C (numerical)."""
        res = grid_frontier(lambda n, d: np.atleast_2d(self.log_predict(n, d)), C, flops, self.n_min)
        return {k: v[0] for k, v in res.items()}


@dataclass
class AutoFit(ResultView):
    """Result of `fit_auto`: the chosen form, every candidate's fit and backtests, and the mixture law."""

    law: AutoLaw
    form: str
    fits: list[FormFit]
    result: FitResult
    selection: dict[str, Any]
    box: tuple[float, float, float]
    level: float = 0.9
    seed: int = 0

    @property
    def weights(self) -> dict[str, float]:
        """Form name -> weight (sums to 1)."""
        return {f.name: f.weight for f in self.fits}

    def to_json(self) -> dict:
        """The FitResult's JSON document, with the chosen ``form`` and the ``selection``."""
        doc = self.result.to_json()
        doc["form"] = self.form
        doc["selection"] = jsonable(self.selection)
        return doc

    def predictive_draws(self, N, D, U=None, n_draws: int = DRAWS) -> np.ndarray:
        """Draws of log loss for new runs at (N, D), shape (n_draws, n): the mixture over forms."""
        X = inputs(N, D, U)
        dist = _distance(X, self.box)
        rng = np.random.default_rng(self.seed + 7919)
        parts = []
        for f, k in zip(self.law.fits, _allocate(self.law.fits, n_draws)):
            if k == 0:
                continue
            reps = f.samples if f.samples is not None and len(f.samples) else f.theta[None, :]
            m = f.form.log_predict(reps, X)  # (K, n)
            rows = m[np.arange(k) % len(reps)]
            scale = np.sqrt(f.sigma**2 + f.tau0**2 + (f.tau * dist) ** 2)
            parts.append(rows + scale * rng.standard_normal(rows.shape))
        return np.concatenate(parts, axis=0)

    def predict_interval(self, N, D, U=None, level: float = 0.9, point: str = "fit"):
        """(loss, low, high) arrays: point prediction and central ``level`` prediction interval for new runs.

        ``point="fit"`` predicts with the forms' fits (`AutoLaw.predict`); ``"bagged"`` with the median of
        their bootstrap replicates (`AutoLaw.bagged_log_predict`; benchmarks/overtraining.py measures both).

        >>> N = np.repeat(np.geomspace(2e7, 4e8, 5), 4); D = N * np.tile([5.0, 20, 80, 320], 5)
        >>> L = (1.8 + 480 * N**-0.35 + 2100 * D**-0.35) * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
        >>> fit = fit_auto(N, D, L, forms=("equal-exponent",), bootstrap=20)
        >>> truth = 1.8 + 480 * 4e9**-0.35 + 2100 * 8e10**-0.35  # 10x beyond the largest fitted size
        >>> [round(float(fit.predict_interval([4e9], [8e10], point=p)[0][0] / truth - 1), 4)
        ...  for p in ("fit", "bagged")]
        [0.0022, 0.0018]
        """
        if point not in ("fit", "bagged"):
            raise ValueError(f"point must be 'fit' or 'bagged', got {point!r}")
        draws = self.predictive_draws(N, D, U)
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        loss = self.law.predict(N, D, U) if point == "fit" else np.exp(self.law.bagged_log_predict(N, D, U))
        return loss, np.exp(lo), np.exp(hi)


def _allocate(fits: Sequence[FormFit], n: int) -> list[int]:
    """Draws per form in proportion to its weight (largest remainders)."""
    w = np.array([f.weight for f in fits], float)
    raw = w / w.sum() * n
    k = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - k))[: n - k.sum()]:
        k[i] += 1
    return list(k)


def _weights(scores: np.ndarray, n_params: np.ndarray) -> np.ndarray:
    ok = np.isfinite(scores)
    w = np.zeros_like(scores)
    if not ok.any():
        return w
    best = scores[ok].min()
    z = np.log(np.maximum(scores[ok], 1e-9) / max(best, 1e-9)) / SCORE_SD
    w[ok] = np.exp(-0.5 * z**2 - OCCAM * (n_params[ok] - n_params[ok].min()))
    w /= w.sum()
    w[w < MIN_WEIGHT] = 0.0
    return w / w.sum()


AUTO_LAW = "auto"  # the law name (spec `fit.law`, `scalesweep fit --law`) that lets `fit_auto` choose the form


def forms_of(law: str) -> Optional[list[str]]:
    """`fit_auto`'s `forms` for a law name: None (every candidate, chosen by backtest) for "auto", else that form.

    >>> forms_of("auto"), forms_of("kaplan")
    (None, ['kaplan'])
    """
    return None if law == AUTO_LAW else [law]


def fit_auto(
    N, D, loss, U=None, *,
    forms: Optional[Sequence[str]] = None,
    e_prior: Optional[float] = None,
    loss_fn: str = "huber",
    delta: float = DEFAULT_DELTA,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    cluster: bool = False,
    seed: int = 0,
    budgets: Sequence[float] = (),
    level: float = 0.9,
    flops="6ND",
    n_min: Optional[float] = None,
) -> AutoFit:
    """Fit the candidate forms, backtest each, weight them by backtest error; intervals from the mixture.

    ``forms`` restricts the candidates (names in `candidates.FORMS`; one name = that law with its
    backtests and calibrated intervals). ``bootstrap`` replicates per form with weight (0: intervals
    from noise and misspecification only, no parameter uncertainty). Budgets give the frontier and
    its intervals keyed by `budget_key`. U (unique tokens) adds the data-constrained form. ``n_min``
    bounds the frontier's N from below (the smallest model that can be built).

    >>> N = np.repeat(np.geomspace(2e7, 4e8, 5), 4); D = N * np.tile([5.0, 20, 80, 320], 5)
    >>> L = (1.8 + 480 * N**-0.35 + 2100 * D**-0.35) * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
    >>> fit = fit_auto(N, D, L, forms=("chinchilla", "equal-exponent"), bootstrap=20, budgets=[1e21])
    >>> fit.form, sorted(fit.intervals["budgets"]["1e+21"])  # the planted law has alpha = beta
    ('equal-exponent', ['D_opt', 'N_opt', 'loss_opt', 'tokens_per_param'])
    """
    cols = {"N": N, "D": D, "loss": loss, **({"U": U} if U is not None else {})}
    cols = validate_arrays(cols, min_rows=1)
    N, D, L = cols["N"], cols["D"], cols["loss"]
    U = cols.get("U")
    X = inputs(N, D, U)
    logL = np.log(L)
    cands = candidate_forms(N, D, U, e_prior=e_prior, names=forms)
    masks = backtest_masks(N, D)
    warnings: list[str] = []
    fits: list[FormFit] = []
    for form in cands:
        ff = FormFit(form)
        fits.append(ff)
        if len(L) < form.n_params + 1:
            ff.error = f"{len(L)} run(s): {form.name} has {form.n_params} parameters"
            continue
        try:
            ff.theta, ff.objective = form.fit(X, logL, loss_fn, delta)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            ff.error = str(exc)
            continue
        ff.sigma = residual_scale(form.log_predict(ff.theta[None, :], X)[0] - logL, form.n_params)
        for name, train in masks.items():
            if train.sum() < form.n_params + 2:
                continue
            try:
                ff.backtests[name] = run_backtest(form, X, logL, train, loss_fn=loss_fn, delta=delta)
            except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
                ff.backtests[name] = {"error": str(exc)}
        ff.tau0, ff.tau = misspecification(ff.backtests)  # a form's own intervals: every backtest it ran
    fitted = [f for f in fits if f.theta is not None]
    if not fitted:
        raise ValueError("no candidate form could be fitted: " + "; ".join(f"{f.name}: {f.error}" for f in fits))
    common = score_on_common_backtests(fits)
    scores = np.array([f.score for f in fits])
    if np.isfinite(scores).any():
        w = _weights(scores, np.array([f.form.n_params for f in fits], float))
        rule = "backtest"
    else:  # too few runs to hold any out: in-sample, and say so
        warnings.append("too few runs or sizes to backtest: the form is chosen in-sample (lowest objective per "
                        "parameter), and intervals carry no misspecification term")
        per = np.array([f.objective / max(len(L) - f.form.n_params, 1) if f.theta is not None else np.inf
                        for f in fits])
        w = (per == per.min()).astype(float)
        rule = "in-sample"
    for f, wf in zip(fits, w):
        f.weight = float(wf)
    # Ties (equal weight within 1e-9) go to the form with fewer parameters.
    chosen = max(fitted, key=lambda f: (round(f.weight, 9), -f.form.n_params))
    pinned = {f.name: pinned_parameters(f, L, X) for f in fitted}
    fallback = None
    if pinned[chosen.name]:
        chosen, fallback = _fall_back(fits, chosen, pinned, rule, L)
        warnings.append(fallback["message"])
    rng_seed = seed
    groups = size_groups(N) if cluster else None
    for i, f in enumerate(fits):
        if f.weight > 0 and bootstrap and bootstrap > 0:
            Wb = resample_weights(len(L), int(bootstrap), np.random.default_rng(rng_seed + i), groups)
            f.samples, _ = batch_lm(f.form, f.theta, X, logL, Wb, loss_fn=loss_fn, delta=delta)
    box = _box(X)
    law = AutoLaw(fits, n_min)
    if fallback and "common_backtests" in fallback:
        common = fallback.pop("common_backtests")
    selection = _selection(fits, chosen, rule, common)
    selection.update(identified=not pinned[chosen.name], pinned={k: v for k, v in pinned.items() if v},
                     fallback=fallback and {k: v for k, v in fallback.items() if k != "message"})
    warnings += design_warnings(N, D, chosen.form.n_term, chosen.form.d_term)
    if math.isfinite(chosen.score) and chosen.score > UNRELIABLE:
        warnings.append(f"the chosen form's backtest error is {chosen.score:.1%} (RMS): extrapolation is unreliable")
    for f in fits:
        if f.error:
            warnings.append(f"{f.name} not fitted: {f.error}")
    result = FitResult(law="auto", params=chosen.params, objective=chosen.objective, n_points=len(L), loss=loss_fn,
                       warnings=warnings,
                       extra={"form": chosen.name, "weights": {f.name: f.weight for f in fits},
                              "bootstrap": int(bootstrap or 0), "cluster": bool(cluster), "seed": int(seed),
                              "level": level, "flops": flops if isinstance(flops, str) else "exact",
                              "intervals": "prediction: form mixture x bootstrap x "
                                           "(noise + tau0 + tau * decades beyond data)"})
    fit = AutoFit(law, chosen.name, fits, result, selection, box, level, seed)
    result.intervals = {**param_intervals(chosen, level),
                        **(_intervals(fit, list(budgets), level, flops) if budgets else {})}
    return fit


def param_intervals(f: FormFit, level: float = 0.9) -> dict[str, dict[str, float]]:
    """Central `level` intervals of a form's natural parameters: quantiles over its bootstrap
    replicates, estimate = the full fit's value ({} without replicates). A parameter constant over
    the replicates (held fixed by the form, or on its bound in every one) gets none. They are
    conditional on the form; the budget intervals mix the forms.

    >>> N = np.repeat(np.geomspace(2e7, 4e8, 5), 4); D = N * np.tile([5.0, 20, 80, 320], 5)
    >>> L = (1.8 + 480 * N**-0.35 + 2100 * D**-0.35) * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
    >>> fit = fit_auto(N, D, L, forms=("chinchilla",), bootstrap=50)
    >>> sorted(fit.intervals)  # the parameters' intervals (no budgets asked)
    ['A', 'B', 'E', 'alpha', 'beta']
    >>> iv = fit.intervals["beta"]; bool(iv["low"] < 0.35 < iv["high"]), iv["level"]  # planted beta = 0.35
    (True, 0.9)
    """
    if f.theta is None or f.samples is None or len(f.samples) < 2:
        return {}
    rows = [f.form.natural(t) for t in np.asarray(f.samples)]
    q = [(1 - level) / 2, (1 + level) / 2]
    out: dict[str, dict[str, float]] = {}
    for name, est in f.params.items():
        v = np.array([r.get(name, math.nan) for r in rows], np.float64)
        v = v[np.isfinite(v)]
        if len(v) < 2 or np.ptp(v) == 0:
            continue
        lo, hi = np.quantile(v, q)
        out[name] = {"estimate": float(est), "low": float(lo), "high": float(hi), "level": level}
    return out


def _selection(fits: list[FormFit], chosen: FormFit, rule: str, common: Sequence[str] = ()) -> dict[str, Any]:
    ranked = sorted([f for f in fits if f.theta is not None], key=lambda f: -f.weight)
    if len(ranked) == 1:
        bt = f"backtest RMS log error {chosen.score:.2%}" if math.isfinite(chosen.score) else "no backtest possible"
        reason = f"{chosen.name}: the only candidate ({bt})"
    elif rule == "backtest":
        scores = ", ".join(f"{f.name} {f.score:.2%} ({f.form.n_params} params)" if math.isfinite(f.score)
                           else f"{f.name} n/a" for f in ranked)
        mix = ", ".join(f"{f.name} {f.weight:.2f}" for f in ranked if f.weight > 0)
        best = min((f for f in ranked if math.isfinite(f.score)), key=lambda f: f.score)
        why = ("lowest backtest error" if best is chosen else
               f"largest weight: backtest error within reach of {best.name}'s with fewer parameters")
        ground = " and ".join(_BACKTEST_WORDS.get(k, k) for k in common)
        reason = (f"{chosen.name}: {why} (score = mean over {ground} (a backtest a form could not run: imputed) "
                  f"of the RMS log error: {scores}); "
                  f"weights ∝ exp(-(ln(score/best)/{SCORE_SD:g})²/2) x e^-{OCCAM:g} per parameter: {mix}")
    else:
        reason = f"{chosen.name}: no backtest possible, lowest in-sample objective per degree of freedom"
    return {"chosen": chosen.name, "rule": rule, "reason": reason, "common_backtests": list(common),
            "candidates": {f.name: f.summary() for f in fits}}


_BACKTEST_WORDS = {"largest_size": "leave-largest-size-out", "largest_compute_decade": "leave-largest-compute-decade-out"}


def _fall_back(fits: list[FormFit], chosen: FormFit, pinned: dict[str, list[str]], rule: str,
               L: np.ndarray) -> tuple[FormFit, dict[str, Any]]:
    """The chosen form is not identified: reweight over the identified forms only and take the best.

    Forms with a parameter on a bound get weight 0 (their fit is the constrained form's, counted with
    a parameter too many); the choice goes to the identified form the backtests rank first, usually
    the nested constrained form (E = 0 on its bound -> chinchilla-fixed-E). With no identified form
    the choice stays and the message says the law is not identified.
    """
    what = "; ".join(pinned[chosen.name])
    ok = [f for f in fits if f.theta is not None and not pinned[f.name]]
    good = {f.name for f in ok}
    if not ok:
        return chosen, {"from": chosen.name, "to": None, "message": (
            f"not identified: {chosen.name} has {what}, and every candidate form has a parameter these runs do not "
            "determine: its extrapolations and proposals rest on a bound, not on the data")}
    common = score_on_common_backtests(ok) if rule == "backtest" else []  # the ground the forms compared now share
    for f in fits:  # the others reported on that ground too (they get no weight)
        if f.theta is not None and f.name not in good and common:
            f.score = _score_on(f, common)
    if common:
        scores = np.array([f.score if f.name in good else math.nan for f in fits])
        w = _weights(scores, np.array([f.form.n_params for f in fits], float))
    else:
        per = np.array([f.objective / max(len(L) - f.form.n_params, 1) if f.name in good else np.inf for f in fits])
        w = (per == per.min()).astype(float)
    for f, wf in zip(fits, w):
        f.weight = float(wf)
    new = max(ok, key=lambda f: (round(f.weight, 9), -f.form.n_params))
    return new, {"from": chosen.name, "to": new.name, "common_backtests": common, "message": (
        f"not identified: {chosen.name} has {what}; fell back to {new.name}, the best-ranked candidate whose "
        "parameters all lie inside their bounds (forms with a parameter on a bound get no weight)")}


BOUND_TOL = 1e-6  # relative distance to a bound below which a fitted parameter counts as sitting on it
VANISH = 1e-4  # a power-law term smaller than this fraction of the smallest loss at every run is not identified


def pinned_parameters(f: FormFit, L: np.ndarray, X: Optional[dict] = None) -> list[str]:
    """What of a fitted form the runs do not identify: each parameter that sits on a bound of its fit,
    and each power-law term that vanishes at every run (A or B driven to 0), in words.

    A parameter on a bound is not estimated: the data would move it further, and the form is
    then really the constrained form with that parameter held (E = 0 is the fixed-E form).

    >>> N = np.repeat([1e7, 3e7, 1e8], 3); D = np.tile([1e9, 3e9, 1e10], 3)
    >>> L = 500 * N**-0.3 + 900 * D**-0.2  # no floor: E is pinned at 0
    >>> f = FormFit(candidate_forms(N, D, names=["chinchilla"])[0])
    >>> f.theta, f.objective = f.form.fit(inputs(N, D), np.log(L), "huber", 1e-3)
    >>> pinned_parameters(f, L, inputs(N, D))
    ['E = 0 (its lower bound: no irreducible loss is seen)']
    """
    if f.theta is None:
        return []
    lmin = float(np.min(L))
    lo, hi = f.form.bounds(np.array([lmin]))
    out = []
    for name, v, a, b in zip(f.form.free_names, f.theta, lo[0], hi[0]):
        v = float(v)
        if name == "E":
            if v >= lmin * (1 - BOUND_TOL):
                out.append(f"E = {v:.4g} (the smallest observed loss: the loss is not seen flattening)")
            elif v <= BOUND_TOL * lmin:
                out.append("E = 0 (its lower bound: no irreducible loss is seen)")
            continue
        for side, edge in (("lower", a), ("upper", b)):
            if math.isfinite(edge) and abs(v - edge) <= BOUND_TOL * max(1.0, abs(edge)):
                out.append(f"{name} = {v:.4g} (its {side} bound)")
    if isinstance(f.form, PowerSumForm) and X is not None:
        p = f.params
        for term, size in (("A/N^alpha", p["A"] * X["N"] ** -p["alpha"]), ("B/D^beta", p["B"] * X["D"] ** -p["beta"])):
            if float(np.max(size)) < VANISH * lmin:
                out.append(f"{term} vanishes at every run (its coefficient is driven to 0)")
    return out


def _intervals(fit: AutoFit, budgets: list[float], level: float, flops) -> dict[str, Any]:
    """Budget optima: mixture-law estimates, intervals from the forms' replicate optima by weight."""
    est = fit.law.frontier(budgets, flops)
    n_draws = 2000
    per_form = []
    for f, k in zip(fit.law.fits, _allocate(fit.law.fits, n_draws)):
        if k == 0:
            continue
        reps = f.samples if f.samples is not None and len(f.samples) else f.theta[None, :]
        fr = grid_frontier(lambda n, d, f=f, reps=reps: f.form.log_predict(reps, inputs(n, d)), budgets, flops,
                           fit.law.n_min)
        idx = np.arange(k) % len(reps)
        per_form.append((f, {q: v[idx] for q, v in fr.items()}))
    rng = np.random.default_rng(fit.seed + 104729)
    out: dict[str, Any] = {"level": level, "budgets": {}}
    q = [(1 - level) / 2, (1 + level) / 2]
    for i, c in enumerate(budgets):
        entry = {}
        d_opt = float(_distance(inputs(est["N_opt"][i], est["D_opt"][i]), fit.box)[0])
        for key in ("N_opt", "D_opt", "tokens_per_param", "loss_opt"):
            parts = []
            for f, fr in per_form:
                v = np.log(fr[key][:, i])
                if key == "loss_opt":  # a run at the optimum: add its noise and the form's misspecification
                    v = v + math.sqrt(f.sigma**2 + f.tau0**2 + (f.tau * d_opt) ** 2) * rng.standard_normal(len(v))
                parts.append(v)
            s = np.concatenate(parts)
            lo, hi = np.exp(np.quantile(s, q))
            entry[key] = {"estimate": float(est[key][i]), "low": float(lo), "high": float(hi), "level": level}
        out["budgets"][budget_key(c)] = entry
    return out


def extrapolation_warnings(fit: AutoFit, N, D) -> list[str]:
    """A warning when rows to predict lie further beyond the fitted runs than the chosen form's backtests
    reached: there the intervals' growth with distance is itself extrapolated, and on public data the
    errors grow (`benchmarks.overtraining`: up to 7.6 % at 10-20x the largest fitted size).

    >>> N = np.repeat(np.geomspace(2e7, 4e8, 5), 4); D = N * np.tile([5.0, 20, 80, 320], 5)
    >>> L = (1.8 + 480 * N**-0.35 + 2100 * D**-0.35) * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
    >>> fit = fit_auto(N, D, L, forms=("chinchilla",), bootstrap=0)
    >>> extrapolation_warnings(fit, [1e8], [2e9])  # inside the fitted runs
    []
    >>> print(extrapolation_warnings(fit, [1e8, 8e9], [2e9, 1.6e11])[0][:75])
    1 of 2 rows to predict (rows 1) lie up to 1.40 decades beyond the fitted ru
    """
    d = _distance(inputs(np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)), fit.box)
    chosen = next((f for f in fit.fits if f.name == fit.form), None)
    if chosen is None:
        return []
    checked = max((bt.get("max_distance_decades", 0.0) for bt in chosen.backtests.values() if "error" not in bt),
                  default=0.0)
    far = np.flatnonzero(d > checked + 1e-9)
    if not far.size:
        return []
    rows = ", ".join(str(i) for i in far[:10]) + (", ..." if far.size > 10 else "")
    return [f"{far.size} of {len(d)} rows to predict (rows {rows}) lie up to {d.max():.2f} decades beyond the "
            f"fitted runs, further than the {checked:.2f} decades the {fit.form} form's backtests checked: "
            "their intervals widen by an extrapolated rate there, and at 10-20x the largest fitted size the "
            "public-data errors reach 7.6 % (docs/fitting.md)"]


def frontier_band(fit: AutoFit, C, level: float = 0.9, flops="6ND") -> dict[str, np.ndarray]:
    """The frontier L*(C) at budgets C with its central `level` band (the mixture's replicates), for plots.

    >>> N = np.repeat(np.geomspace(2e7, 4e8, 5), 4); D = N * np.tile([5.0, 20, 80, 320], 5)
    >>> L = (1.8 + 480 * N**-0.35 + 2100 * D**-0.35) * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
    >>> fit = fit_auto(N, D, L, forms=("chinchilla", "equal-exponent"), bootstrap=20)
    >>> band = frontier_band(fit, [1e20, 1e21])
    >>> from orchestrator.core.laws.chinchilla import ChinchillaLaw
    >>> truth = ChinchillaLaw(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.35).frontier(1e21)["loss_opt"][0]
    >>> bool(band["low"][1] < band["mid"][1] < band["high"][1]), bool(band["low"][1] < truth < band["high"][1])
    (True, True)
    """
    C = np.atleast_1d(np.asarray(C, dtype=np.float64))
    iv = _intervals(fit, list(C), level, flops)["budgets"]
    rows = [iv[budget_key(c)]["loss_opt"] for c in C]
    return {"C": C, "mid": np.array([r["estimate"] for r in rows]), "low": np.array([r["low"] for r in rows]),
            "high": np.array([r["high"] for r in rows])}


def heldout_predictions(fit: AutoFit, N, D, loss, backtest: str = "largest_size") -> list[dict[str, float]]:
    """The chosen form's backtest (``largest_size`` or ``largest_compute_decade``) as rows N, D, C, loss
    (observed) and predicted (by the fit that did not see them); N, D, loss are the fit's own inputs.

    >>> N = np.repeat(np.geomspace(2e7, 4e8, 5), 4); D = N * np.tile([5.0, 20, 80, 320], 5)
    >>> L = (1.8 + 480 * N**-0.35 + 2100 * D**-0.35) * np.exp(np.random.default_rng(0).normal(0, 0.003, N.size))
    >>> fit = fit_auto(N, D, L, forms=("chinchilla",), bootstrap=0)
    >>> rows = heldout_predictions(fit, N, D, L)  # the largest size, predicted by a fit on the others
    >>> len(rows), max(abs(r["predicted"] / r["loss"] - 1) for r in rows) < 0.02
    (4, True)
    """
    N, D, loss = (np.asarray(x, dtype=np.float64) for x in (N, D, loss))
    chosen = next((f for f in fit.fits if f.name == fit.form), None)
    bt = (chosen.backtests if chosen is not None else {}).get(backtest) or {}
    calib = bt.get("_calib")
    masks = backtest_masks(N, D)
    if calib is None or backtest not in masks:
        return []
    test = ~masks[backtest]
    pred = loss[test] * np.exp(calib["e"])
    return [{"N": float(n), "D": float(d), "C": 6.0 * float(n) * float(d), "loss": float(obs), "predicted": float(p)}
            for n, d, obs, p in zip(N[test], D[test], loss[test], pred)]
