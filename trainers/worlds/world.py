"""A simulated ground-truth world: planted scaling laws, the loss curve they imply, and exact queries.

A world fixes, for a GPT-style family (see ``docs/worlds.md`` for every parameter):

- the optimal loss surface under the reference schedule, at the optimal lr and batch,
  ``L*(N, D) = E + A/N^alpha + B/D^beta`` (Chinchilla form);
- the hyperparameter laws ``lr*(N, D) = coef·N^N_exp·D^D_exp`` and ``batch*(D) = coef·D^D_exp``
  (tokens);
- a bowl around them: the final loss is multiplied by
  ``exp(w_lr·u² + w_batch·v² + w_cross·u·v)``, u = ln(lr/lr*), v = ln(batch/batch*), a quadratic
  in log loss (the shape the hyperparameter fitter assumes);
- divergence: a run whose lr reaches ``lr_multiple·lr*`` blows up;
- the loss curve over a run under any schedule (multi-power-law shape, Luo et al. 2025), calibrated
  so that the endpoint under the reference schedule is exactly the surface times the bowl.

The curve (noise-free), after s optimizer steps of a run with peak lr, T steps of b tokens:

    r_j      = lr_j / peak                                (schedule shape, trainers.schedules)
    S1(s)    = b · Σ_{j<s} r_j                            (forward area, in tokens at the peak lr)
    Λ(s)     = gain · Σ_{k<s} (r_{k-1} − r_k)⁺ · G(rate · r_k^(−lr_power) · (S1(s) − S1(k)) / S1(s))
    G(x)     = 1 − (1 + x)^(−power)
    L(s)     = [E + A/N^alpha + κ_T · B · S1(s)^(−beta) · (1 − Λ(s))] · bowl

Λ is the multi-power law's loss drop from lr decay, taken *relative to the data term* and with
the post-drop area measured as a fraction of the area so far, which makes the curve scale-free:
the same schedule shape gives the same relative bonus at every (N, D). κ_T is fixed so that the
reference schedule with T steps ends exactly at B·(T·b)^(−beta). The curve at step s depends only
on the lr history up to s (and κ_T ≈ constant), so a WSD run's stable phase is a constant-lr run.

Optional structure (issue 13; every field defaults to the model above, bit for bit): Kaplan-form,
N·D-interaction and data-constrained surfaces (the curve is then L*(N, tokens-equivalent of the lr
history)), lr*/batch* laws that bend, lr* that moves with the batch, an asymmetric lr bowl, a
divergence multiple that varies with N, lr that changes the curve's shape, Student-t noise and
outlier runs. docs/worlds.md documents each.

Long because it is one pydantic schema (a world's sections) with `World`'s exact queries, which read every
section.
"""
from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainers.contract import Schedule, TrialConfig
from trainers.schedules import lr_array

WORLDS_DIR = Path(__file__).resolve().parent
MAX_DROP_BINS = 512  # lr drops are grouped into at most this many bins (keeps a curve O(reports·512))


class WorldError(ValueError):
    """A world file or a world query that cannot be used: the message names the field or input."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Pos = Field(gt=0)
NonNeg = Field(ge=0)


class Interaction(_Section):
    """An N·D interaction term of the loss surface: + coef / (N^N_exp · D^D_exp)."""

    coef: float = Pos
    N_exp: float = Pos
    D_exp: float = Pos


class Repetition(_Section):
    """Data-constrained training (Muennighoff et al. 2023): only `unique_tokens` are fresh.

    D tokens count as D' = U + U·R_D_star·(1 − exp(−R/R_D_star)), R = max(D/U − 1, 0) epochs
    beyond the first, so repeated tokens are worth less and less.
    """

    unique_tokens: float = Pos
    R_D_star: float = Field(default=15.387756, gt=0)  # the authors' fit (orchestrator.core.laws.data_constrained)


class LossSurface(_Section):
    """L*(N, D): the final loss under the reference schedule at lr*, batch* (docs/worlds.md).

    form chinchilla (default): E + A/N^alpha + B/D^beta.  form kaplan: E + [(A/N^alpha)^(1/beta) +
    (B/D^beta)^(1/beta)]^beta (Kaplan et al. 2020, eq. 1.5, with an irreducible E). Optional: an
    N·D `interaction` term, and `repetition` (D replaced by its data-constrained value D').
    """

    E: float = Pos
    A: float = Pos
    B: float = Pos
    alpha: float = Pos
    beta: float = Pos
    form: Literal["chinchilla", "kaplan"] = "chinchilla"
    interaction: Optional[Interaction] = None
    repetition: Optional[Repetition] = None

    @property
    def plain(self) -> bool:
        """Chinchilla form with no extra term: the closed-form frontier holds."""
        return self.form == "chinchilla" and self.interaction is None and self.repetition is None


class LrLawParams(_Section):
    """lr*(N, D) = coef · N^N_exp · D^D_exp · exp(N_quad·ln²(N/ref_N) + D_quad·ln²(D/ref_D)) (peak lr).

    With `batch_exp`, the bowl's centre at batch b is lr*(N, D) · (b / batch*(D))^batch_exp.
    """

    coef: float = Pos
    N_exp: float
    D_exp: float
    N_quad: float = 0.0  # a law that bends: curvature of ln lr* in ln N about ref_N
    D_quad: float = 0.0
    ref_N: float = Field(default=1.0, gt=0)
    ref_D: float = Field(default=1.0, gt=0)
    batch_exp: float = 0.0  # lr* moves with the run's batch beyond the bowl's cross term

    @property
    def bent(self) -> bool:
        return self.N_quad != 0.0 or self.D_quad != 0.0


class BatchLawParams(_Section):
    """batch*(D) = coef · D^D_exp · exp(D_quad·ln²(D/ref_D)) (global batch in tokens)."""

    coef: float = Pos
    D_exp: float
    D_quad: float = 0.0
    ref_D: float = Field(default=1.0, gt=0)


class Bowl(_Section):
    """Final loss × exp(w·u² + batch_width·v² + cross·u·v), u, v = log offsets from lr*, batch*.

    w = lr_width below lr* (u < 0) and lr_width_above above it (default: the same, symmetric).
    """

    lr_width: float = Pos
    batch_width: float = Pos
    cross: float = 0.0
    lr_width_above: Optional[float] = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _convex(self) -> "Bowl":
        for name, w in (("lr_width", self.lr_width), ("lr_width_above", self.lr_width_above)):
            if w is not None and 4.0 * w * self.batch_width <= self.cross**2:
                raise ValueError(
                    f"cross={self.cross} makes the bowl non-convex: needs cross² < 4·{name}·batch_width "
                    f"= {4.0 * w * self.batch_width:.3g}")
        return self


class Divergence(_Section):
    """A run diverges once its lr reaches m(N)·lr*; its loss is non-finite blowup_steps later.

    m(N) = lr_multiple, or with N_exp ≠ 0, 1 + (lr_multiple − 1)·(N/ref_N)^N_exp (always > 1).
    """

    lr_multiple: float = Field(gt=1)
    blowup_steps: int = Field(ge=1)
    N_exp: float = 0.0  # negative: larger models diverge closer to their lr*
    ref_N: float = Field(default=1.0, gt=0)


class Curve(_Section):
    """Multi-power-law shape of the lr-decay bonus (see the module docstring), and the loss ceiling."""

    anneal_gain: float = Pos
    anneal_rate: float = Pos
    anneal_power: float = Pos
    anneal_lr_power: float = NonNeg
    max_loss: float = Pos  # loss at initialisation (≈ ln vocab); the curve saturates below it
    # lr changes the curve's shape, not only its level: × exp(−lr_shape·u·h(s)), u = ln(lr/lr*),
    # h(s) = (1 − S1(s)/S1(T))^lr_shape_power; a high lr is ahead early, a low one behind, the end unchanged.
    lr_shape: float = Field(default=0.0, ge=0)
    lr_shape_power: float = Field(default=1.0, gt=0)


class ReferenceSchedule(_Section):
    """The schedule under which the loss surface holds (the trial contract's Schedule)."""

    kind: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup: float = Field(default=0.05, ge=0, lt=1)
    decay: float = Field(default=0.2, ge=0, le=1)
    final_lr_frac: float = Field(default=0.1, ge=0, le=1)

    def to_schedule(self) -> Schedule:
        """As the contract's Schedule."""
        return Schedule(kind=self.kind, warmup=self.warmup, decay=self.decay, final_lr_frac=self.final_lr_frac)


class Noise(_Section):
    """Relative noise: seed-to-seed offset, per-step train loss, per-evaluation eval loss."""

    seed: float = NonNeg  # std of a per-trial relative offset of the whole curve
    train: float = NonNeg  # std of one step's train loss (relative) at ref_tokens tokens per step
    eval: float = NonNeg  # std of one evaluation (relative) over ref_tokens validation tokens
    ref_tokens: float = Pos  # the token count at which `train` and `eval` hold (std ∝ 1/√tokens)
    tail_df: Optional[float] = Field(default=None, gt=2)  # Student-t draws (same std) instead of normal
    outlier_prob: float = Field(default=0.0, ge=0, le=1)  # chance a trial is an outlier run
    outlier_scale: float = Field(default=0.02, ge=0)  # its curve × (1 + outlier_scale·Exp(1))


class Throughput(_Section):
    """Simulated time: a step takes 6·N·batch/flops_per_s + step_overhead_s seconds."""

    flops_per_s: float = Pos
    step_overhead_s: float = NonNeg


class World(_Section):
    """A planted ground truth: laws, bowl, divergence, curve shape, noise and speed (docs/worlds.md)."""

    name: str
    description: str = ""
    loss: LossSurface
    lr: LrLawParams
    batch: BatchLawParams
    bowl: Bowl
    divergence: Divergence
    curve: Curve
    reference_schedule: ReferenceSchedule = ReferenceSchedule()
    noise: Noise
    throughput: Throughput

    # ------------------------------------------------------------------ laws
    def loss_star(self, N: Any, D: Any) -> Any:
        """L*(N, D): the final loss under the reference schedule at lr*, batch*."""
        p = self.loss
        if p.plain:
            return p.E + p.A * np.power(N, -p.alpha) + p.B * np.power(D, -p.beta)
        if p.repetition is not None:  # D' < D once the unique tokens are repeated
            U, R_star = p.repetition.unique_tokens, p.repetition.R_D_star
            R = np.maximum(np.asarray(D, dtype=np.float64) / U - 1.0, 0.0)
            D = np.where(R > 0, U + U * R_star * (1.0 - np.exp(-R / R_star)), D)
        n_term = p.A * np.power(N, -p.alpha)
        d_term = p.B * np.power(D, -p.beta)
        if p.form == "kaplan":  # [(A/N^α)^(1/β) + (B/D^β)^(1/β)]^β = [(Nc/N)^(α/β) + Dc/D]^β
            reducible = np.power(np.power(n_term, 1.0 / p.beta) + np.power(d_term, 1.0 / p.beta), p.beta)
        else:
            reducible = n_term + d_term
        if p.interaction is not None:
            i = p.interaction
            reducible = reducible + i.coef * np.power(N, -i.N_exp) * np.power(D, -i.D_exp)
        return p.E + reducible

    def lr_star(self, N: Any, D: Any, batch: Any = None) -> Any:
        """The optimal peak learning rate at (N, D) (at `batch` when lr* depends on it; default batch*)."""
        q = self.lr
        out = q.coef * np.power(N, q.N_exp) * np.power(D, q.D_exp)
        if q.bent:
            out = out * np.exp(q.N_quad * np.log(np.divide(N, q.ref_N)) ** 2
                               + q.D_quad * np.log(np.divide(D, q.ref_D)) ** 2)
        if q.batch_exp != 0.0 and batch is not None:
            out = out * np.power(np.divide(batch, self.batch_star(D)), q.batch_exp)
        return out

    def batch_star(self, D: Any) -> Any:
        """The optimal global batch in tokens for D training tokens."""
        q = self.batch
        out = q.coef * np.power(D, q.D_exp)
        if q.D_quad != 0.0:
            out = out * np.exp(q.D_quad * np.log(np.divide(D, q.ref_D)) ** 2)
        return out

    def bowl_factor(self, N: Any, D: Any, lr: Any, batch: Any) -> Any:
        """The multiplicative loss penalty of (lr, batch) away from (lr*, batch*) at (N, D)."""
        u = np.log(lr / self.lr_star(N, D, batch))
        v = np.log(batch / self.batch_star(D))
        b = self.bowl
        w = b.lr_width if b.lr_width_above is None else np.where(u > 0, b.lr_width_above, b.lr_width)
        return np.exp(w * u * u + b.batch_width * v * v + b.cross * u * v)

    def lr_multiple(self, N: Any) -> Any:
        """m(N): a run whose lr reaches m(N)·lr* diverges."""
        d = self.divergence
        if d.N_exp == 0.0:
            return d.lr_multiple
        return 1.0 + (d.lr_multiple - 1.0) * np.power(np.divide(N, d.ref_N), d.N_exp)

    def lr_limit(self, N: float, D: float, batch: Optional[float] = None) -> float:
        """The lr at which a run at (N, D, batch) diverges: m(N)·lr*(N, D, batch)."""
        return float(self.lr_multiple(N) * float(self.lr_star(N, D, batch)))

    def diverges(self, N: float, D: float, lr: float, batch: Optional[float] = None) -> bool:
        """Whether a run with peak lr diverges at (N, D) (and `batch`, when lr* depends on it)."""
        return bool(lr >= self.lr_limit(N, D, batch))

    def without_noise(self) -> "World":
        """The same world with every noise term zero (its runs end exactly at `true_loss`)."""
        return self.model_copy(update={"noise": Noise(seed=0.0, train=0.0, eval=0.0,
                                                      ref_tokens=self.noise.ref_tokens)})

    # ------------------------------------------------------------------ ground truth
    def true_loss(self, N: float, D: float, lr: float, batch: float,
                  schedule: Optional[Schedule] = None, seq_len: Optional[int] = None) -> float:
        """Noise-free expected final loss of a run (inf if it diverges); D is rounded up to whole steps."""
        N, D, lr, batch = _positive(N=N, D=D, lr=lr, batch=batch)
        b = _step_tokens(batch, seq_len)
        T = max(1, math.ceil(D / b))
        if self.diverges(N, T * b, lr, b):
            return math.inf
        sched = schedule or self.reference_schedule.to_schedule()
        return float(self.curve_at(N, lr, b, T, sched, np.array([T]))[0])

    def optimum(self, C: float) -> dict[str, float]:
        """The true compute-optimal (N, D, lr, batch, loss) at C = 6·N·D FLOPs, reference schedule.

        Closed form for a plain Chinchilla surface; otherwise `optimum_numeric` (a grid over log N,
        then bounded minimisation).
        """
        (C,) = _positive(C=C)
        if not self.loss.plain:
            return self.optimum_numeric(C)
        N = self._chinchilla_n_star(C)
        D = C / (6.0 * N)
        return {"N": float(N), "D": float(D), "lr": float(self.lr_star(N, D)),
                "batch": float(self.batch_star(D)), "loss": float(self.loss_star(N, D)), "C": float(C)}

    def _chinchilla_n_star(self, C: float) -> float:
        # Closed form (Hoffmann et al. 2022, eq. 4): at lr*, batch* the bowl is 1 and the
        # reference schedule ends on L*, so the frontier is that of E + A/N^a + B/D^b.
        p = self.loss
        G = (p.alpha * p.A / (p.beta * p.B)) ** (1.0 / (p.alpha + p.beta))
        a = p.beta / (p.alpha + p.beta)
        return G * (C / 6.0) ** a

    def optimum_numeric(self, C: float, bounds: tuple[float, float] = (1e-6, 1e6)) -> dict[str, float]:
        """The optimum by minimisation over log N of L*(N, C/6N) (a check on the closed form).

        `bounds` multiply the Chinchilla-part closed-form N*; for a surface that is not plain
        Chinchilla a grid of 4001 points over that range picks the basin first.
        """
        from scipy.optimize import minimize_scalar

        (C,) = _positive(C=C)
        guess = math.log(self._chinchilla_n_star(C))
        lo, hi = guess + math.log(bounds[0]), guess + math.log(bounds[1])
        f = lambda x: float(self.loss_star(math.exp(x), C / (6.0 * math.exp(x))))
        if not self.loss.plain:
            xs = np.linspace(lo, hi, 4001)
            ys = np.asarray(self.loss_star(np.exp(xs), C / (6.0 * np.exp(xs))), dtype=np.float64)
            i = int(np.nanargmin(ys))
            lo, hi = xs[max(i - 1, 0)], xs[min(i + 1, xs.size - 1)]
        r = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
        N = math.exp(r.x)
        D = C / (6.0 * N)
        return {"N": N, "D": D, "lr": float(self.lr_star(N, D)), "batch": float(self.batch_star(D)),
                "loss": float(r.fun), "C": float(C)}

    def regret(self, config: Union[TrialConfig, Mapping[str, Any]], C: float) -> float:
        """true_loss(config) / optimum(C).loss − 1 (inf for a config that diverges)."""
        if isinstance(config, TrialConfig):
            N, D, lr, b, s, q = (config.n_params, config.tokens, config.lr, config.batch_tokens,
                                 config.schedule, config.seq_len)
        else:
            c = dict(config)
            N, D, lr = c["N"], c["D"], c["lr"]
            b = c.get("batch", c.get("batch_tokens"))
            s, q = c.get("schedule"), c.get("seq_len")
            if isinstance(s, Mapping):
                s = Schedule(**s)
        return self.true_loss(N, D, lr, b, s, q) / self.optimum(C)["loss"] - 1.0

    # ------------------------------------------------------------------ the curve
    def curve_at(self, N: float, lr: float, step_tokens: float, T: int, schedule: Schedule,
                 steps: np.ndarray, r: Optional[np.ndarray] = None) -> np.ndarray:
        """Noise-free loss after each of `steps` (1..T) optimizer steps of a T-step run (no divergence).

        `r` (the schedule's lr / peak per step) may be passed when the caller already has it.
        """
        if r is None:
            r = lr_array(T, 1.0, schedule)
        steps = np.asarray(steps, dtype=np.int64)
        if steps.size and (steps.min() < 1 or steps.max() > T):
            raise WorldError(f"steps must lie in 1..{T}")
        data = _data_term(r, steps, self.loss.beta, self.curve) * self._kappa(T)  # κ_T·(S1/b)^(−beta)·(1 − Λ), per token unit
        p = self.loss
        D_seen = T * step_tokens
        if p.plain:
            base = p.E + p.A * N ** (-p.alpha) + p.B * step_tokens ** (-p.beta) * data
        else:
            # The surface at the tokens-equivalent of the lr history so far: for the plain form
            # L*(N, b·X) with X = data^(−1/β) is exactly the line above.
            base = self.loss_star(N, step_tokens * np.power(data, -1.0 / p.beta))
        loss = base * self.bowl_factor(N, D_seen, lr, step_tokens)
        if self.curve.lr_shape > 0.0:
            u = math.log(lr / float(self.lr_star(N, D_seen, step_tokens)))
            cum = np.cumsum(r)
            h = np.power(np.maximum(1.0 - cum[steps - 1] / cum[-1], 0.0), self.curve.lr_shape_power)
            loss = loss * np.exp(-self.curve.lr_shape * u * h)
        return self._saturate(loss)

    def _kappa(self, T: int) -> float:
        """κ_T: makes the reference schedule with T steps end at (T)^(−beta) in step-token units."""
        return _kappa_cached(self._curve_key(), T)

    def _curve_key(self) -> tuple:
        c, s = self.curve, self.reference_schedule
        return (self.loss.beta, c.anneal_gain, c.anneal_rate, c.anneal_power, c.anneal_lr_power,
                s.kind, s.warmup, s.decay, s.final_lr_frac)

    def _saturate(self, loss: np.ndarray) -> np.ndarray:
        """Identity below 0.8·max_loss, then a smooth (C¹) approach to max_loss (early-training losses)."""
        top = self.curve.max_loss
        knee = 0.8 * top
        span = top - knee
        return np.where(loss <= knee, loss, knee + span * np.tanh((loss - knee) / span))

    def fingerprint(self) -> str:
        """A short hash of every parameter (recorded with benchmark results).

        Optional fields at their defaults are left out, so a world written before they existed
        keeps its fingerprint.
        """
        return hashlib.sha256(self.model_dump_json(exclude=self._defaulted()).encode()).hexdigest()[:12]

    def document(self) -> dict[str, Any]:
        """The world's parameters as a world file holds them (`world_from_dict` reads it back), the
        optional fields that sit at their defaults left out (docs/worlds.md)."""
        return self.model_dump(exclude=self._defaulted())

    def _defaulted(self) -> dict[str, set[str]]:
        """The optional (issue 13) fields that sit at their defaults, as a pydantic `exclude`."""
        out: dict[str, set[str]] = {}
        for section, names in _OPTIONAL_FIELDS.items():
            sec = getattr(self, section)
            default = type(sec).model_fields
            hit = {n for n in names if getattr(sec, n) == default[n].default}
            if hit:
                out[section] = hit
        return out


# Fields added after the first worlds were written (optional structure, docs/worlds.md).
_OPTIONAL_FIELDS = {
    "loss": ("form", "interaction", "repetition"),
    "lr": ("N_quad", "D_quad", "ref_N", "ref_D", "batch_exp"),
    "batch": ("D_quad", "ref_D"),
    "bowl": ("lr_width_above",),
    "divergence": ("N_exp", "ref_N"),
    "curve": ("lr_shape", "lr_shape_power"),
    "noise": ("tail_df", "outlier_prob", "outlier_scale"),
}


def _data_term(r: np.ndarray, steps: np.ndarray, beta: float, c: "Curve") -> np.ndarray:
    """(S1(s)/b)^(−beta)·(1 − Λ(s)) for each s in steps, from the lr fractions r."""
    cum = np.concatenate(([0.0], np.cumsum(r)))  # cum[s] = S1(s)/b
    S = cum[steps]
    lam = _anneal(r, cum, steps, c)
    return S ** (-beta) * (1.0 - lam)


def _anneal(r: np.ndarray, cum: np.ndarray, steps: np.ndarray, c: "Curve") -> np.ndarray:
    """Λ(s): the multi-power loss drop (relative to the data term) from lr decreases before s."""
    drop = np.zeros_like(r)
    drop[1:] = np.maximum(r[:-1] - r[1:], 0.0)
    k = np.flatnonzero(drop)
    if k.size == 0:
        return np.zeros(steps.shape)
    w = drop[k]
    rk = r[k]
    start = cum[k]  # S1 before step k
    if k.size > MAX_DROP_BINS:  # group neighbouring drops; each bin acts at its drop-weighted centre
        edges = np.linspace(0, k.size, MAX_DROP_BINS + 1).astype(np.int64)
        sums = np.add.reduceat(w, edges[:-1])
        rk = np.add.reduceat(w * rk, edges[:-1]) / sums
        start = np.add.reduceat(w * start, edges[:-1]) / sums
        k = np.add.reduceat(w * k, edges[:-1]) / sums
        w = sums
    S = cum[steps][:, None]
    after = np.maximum(S - start[None, :], 0.0) / S
    x = c.anneal_rate * rk[None, :] ** (-c.anneal_lr_power) * after
    G = 1.0 - (1.0 + x) ** (-c.anneal_power)
    G = np.where(k[None, :] < steps[:, None], G, 0.0)
    return c.anneal_gain * (G @ w)


@lru_cache(maxsize=4096)
def _kappa_cached(key: tuple, T: int) -> float:
    beta, gain, rate, power, lr_power, kind, warmup, decay, final = key
    curve = Curve.model_construct(anneal_gain=gain, anneal_rate=rate, anneal_power=power,
                                  anneal_lr_power=lr_power, max_loss=1.0)
    r = lr_array(T, 1.0, Schedule(kind=kind, warmup=warmup, decay=decay, final_lr_frac=final))
    end = _data_term(r, np.array([T]), beta, curve)[0]
    if not end > 0:
        raise WorldError("curve.anneal_gain is too large: the reference schedule's decay bonus "
                         "exceeds the whole data term (needs anneal_gain·Σdrops·G < 1)")
    return float(T ** (-beta) / end)


def _positive(**values: float) -> tuple[float, ...]:
    out = []
    for name, v in values.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise WorldError(f"{name} must be a number, got {v!r}") from None
        if not (math.isfinite(f) and f > 0):
            raise WorldError(f"{name} must be positive and finite, got {v!r}")
        out.append(f)
    return tuple(out)


def _step_tokens(batch: float, seq_len: Optional[int]) -> float:
    """Tokens per optimizer step: the batch rounded down to whole sequences (as the real trainer does)."""
    if seq_len is None:
        return float(batch)
    if batch < seq_len:
        raise WorldError(f"batch={batch} tokens must hold at least one sequence of seq_len={seq_len}")
    return float((int(batch) // seq_len) * seq_len)


def bundled_worlds() -> list[str]:
    """Names of the worlds shipped in trainers/worlds/."""
    return sorted(p.stem for p in WORLDS_DIR.glob("*.yaml"))


def load_world(path_or_name: Union[str, Path, World]) -> World:
    """A World from a bundled name ("chinchilla", "tiny") or a YAML file; errors name the bad field."""
    if isinstance(path_or_name, World):
        return path_or_name
    p = Path(path_or_name)
    if not p.suffix and not p.exists():
        p = WORLDS_DIR / f"{path_or_name}.yaml"
        if not p.exists():
            raise WorldError(f"no world named {str(path_or_name)!r}; bundled: {', '.join(bundled_worlds())}"
                             " (or pass a YAML file)")
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise WorldError(f"world file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:  # a directory, unreadable, binary
        raise WorldError(f"world file {str(p)!r} cannot be read: {e.__class__.__name__}") from None
    except yaml.YAMLError as e:
        raise WorldError(f"world file {str(p)!r} is not valid YAML: {e}") from None
    return world_from_dict(raw, source=str(p))


def world_from_dict(raw: Any, source: str = "<dict>") -> World:
    """Validate a parsed world document; the error lists every bad field by its dotted path."""
    if not isinstance(raw, dict):
        raise WorldError(f"{source}: a world must be a mapping of fields, got {type(raw).__name__}")
    try:
        world = World.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "<world>"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] == "missing":
                msg = "required field is missing"
            lines.append(f"  {loc}: {msg}" + (f" (got {err['input']!r})" if err["type"] not in
                                              ("missing", "extra_forbidden") else ""))
        raise WorldError(f"{source}: invalid world:\n" + "\n".join(lines)) from None
    world._kappa(1000)  # fail now, not mid-sweep, if the curve cannot be calibrated
    return world
