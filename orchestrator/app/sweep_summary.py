"""What a sweep's MLflow parent run shows of a fit: law metrics, the proposals table, warnings,
a markdown summary, and the useful-work fraction. Pure functions of fit.json (`SweepFit.to_json()`).

The law is logged as metrics (`law.<param>` at the refit's step), not params: params are
immutable in MLflow, so a resumed sweep's refit could not update them; metrics keep every
refit's values as a history and show the latest as the run's value.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

LOSS_UNIT = "nats/token"
BACKTESTS = {"largest_size": "leave the largest model size out",
             "largest_compute_decade": "leave the largest compute decade out"}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


HPARAM_PARAMS = {"lr": ("coef", "N_exp", "D_exp"), "batch": ("coef", "D_exp")}


def hparam_doc(fit: Any, level: float = 0.9) -> Optional[dict[str, Any]]:
    """A fitted lr*(N, D) = coef·N^N_exp·D^D_exp and batch*(D) = coef·D^D_exp (`learned_hparams(runs).fit`:
    the joint surface, `SurfaceFit`, or a per-cell fit, `HparamFit`) as JSON in the layout of the
    API's `hparams`: {"method", "lr": {coef, N_exp, D_exp, intervals}, "batch": {coef, D_exp, intervals}},
    each interval {low, high, level} where the fit has one (the surface's covariance at `level`, a per-cell
    fit's bootstrap at the level it was fitted with). None for None.

    >>> from orchestrator.core.laws.hparam_surface import SurfaceFit
    >>> from orchestrator.core.laws.hparams import BatchLaw, LrLaw
    >>> fit = SurfaceFit(LrLaw(0.5, -0.3, 0.1), BatchLaw(2.0, 0.5), 0.02, 0.01, 0.0, 60, 6, 0.003)  # no covariance
    >>> hparam_doc(fit)["lr"]
    {'coef': 0.5, 'N_exp': -0.3, 'D_exp': 0.1, 'intervals': {}}
    """
    from ..core.laws.hparam_surface import SurfaceFit  # here: the CLI's summary imports no scipy

    if fit is None:
        return None
    if isinstance(fit, SurfaceFit):
        ivs = fit.param_intervals(level)
    else:
        ivs = {f"{group}.{name}": {"low": iv.low, "high": iv.high, "level": iv.level}
               for group, named in fit.intervals.items() for name, iv in named.items()}
    out: dict[str, Any] = {"method": type(fit).__name__}
    for group, law in (("lr", fit.lr_law), ("batch", fit.batch_law)):
        out[group] = {name: float(getattr(law, name)) for name in HPARAM_PARAMS[group]}
        out[group]["intervals"] = {name: {k: float(iv[k]) for k in ("low", "high", "level")}
                                   for name in HPARAM_PARAMS[group]
                                   if (iv := ivs.get(f"{group}.{name}")) and _finite(iv["low"]) and _finite(iv["high"])}
    return out


def hparam_formulas(hp: Mapping[str, Any]) -> dict[str, str]:
    """The laws of `hparam_doc` as formulas.

    >>> hparam_formulas({"lr": {"coef": 7.66, "N_exp": -0.725, "D_exp": 0.222}, "batch": {"coef": 7.56, "D_exp": 0.404}})
    {'lr': 'lr*(N, D) = 7.66 · N^-0.725 · D^0.222', 'batch': 'batch*(D) = 7.56 · D^0.404 tokens'}
    """
    lr, b = hp["lr"], hp["batch"]
    return {"lr": f"lr*(N, D) = {lr['coef']:.3g} · N^{lr['N_exp']:.3f} · D^{lr['D_exp']:.3f}",
            "batch": f"batch*(D) = {b['coef']:.3g} · D^{b['D_exp']:.3f} tokens"}


def law_metrics(doc: Mapping[str, Any], hparams: Optional[Mapping[str, Any]] = None) -> dict[str, float]:
    """`law.<param>` (with `.low` / `.high` where the fit has an interval), the objective, the
    number of cells, and the chosen form's backtest errors, as MLflow metrics; with `hparams`
    (`hparam_doc`), `hparam.lr.<coef|N_exp|D_exp>` and `hparam.batch.<coef|D_exp>` (with `.low` / `.high`) too.

    >>> law_metrics({"law": {"params": {"E": 1.8, "alpha": 0.3}, "objective": 1e-4, "n_points": 9,
    ...                      "intervals": {"E": {"low": 1.7, "high": 1.9}}}})
    {'law.E': 1.8, 'law.E.low': 1.7, 'law.E.high': 1.9, 'law.alpha': 0.3, 'law.objective': 0.0001, 'law.n_cells': 9.0}
    """
    out: dict[str, float] = {}
    for group, names in (HPARAM_PARAMS.items() if hparams else ()):
        for name in names:
            out[f"hparam.{group}.{name}"] = float(hparams[group][name])
            iv = hparams[group]["intervals"].get(name)
            if iv:
                out[f"hparam.{group}.{name}.low"], out[f"hparam.{group}.{name}.high"] = iv["low"], iv["high"]
    law = doc.get("law")
    if not law:
        return out
    ivs = law.get("intervals") or {}
    for name, value in (law.get("params") or {}).items():
        if _finite(value):
            out[f"law.{name}"] = float(value)
        iv = ivs.get(name)
        if isinstance(iv, Mapping) and _finite(iv.get("low")) and _finite(iv.get("high")):
            out[f"law.{name}.low"], out[f"law.{name}.high"] = float(iv["low"]), float(iv["high"])
    if _finite(law.get("objective")):
        out["law.objective"] = float(law["objective"])
    if _finite(law.get("n_points")):
        out["law.n_cells"] = float(law["n_points"])
    for key, bt in backtests(doc).items():
        for stat in ("mean_abs_rel_error", "max_abs_rel_error"):
            if _finite(bt.get(stat)):
                out[f"backtest.{key}.{stat}"] = float(bt[stat])
    return out


def backtests(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The chosen form's backtests (fit.json law.selection.candidates[form].backtests)."""
    law = doc.get("law") or {}
    form = law.get("form")
    cand = ((law.get("selection") or {}).get("candidates") or {}).get(form) or {}
    return {k: v for k, v in (cand.get("backtests") or {}).items() if isinstance(v, Mapping) and "error" not in v}


def warnings(doc: Mapping[str, Any]) -> list[str]:
    """Every warning of the fit and of the sweep's proposals, each once, in order.

    >>> warnings({"law": {"warnings": ["E pinned at 0"]}, "warnings": ["E pinned at 0", "few cells"]})
    ['E pinned at 0', 'few cells']
    """
    seen: list[str] = []
    for w in list((doc.get("law") or {}).get("warnings") or []) + list(doc.get("warnings") or []):
        if w not in seen:
            seen.append(str(w))
    return seen


PROPOSAL_COLUMNS = ["budget C (FLOPs)", "N (params)", "N low", "N high", "D (tokens)", "D low", "D high",
                    "tokens/param", "lr", "batch (tokens)", f"predicted loss ({LOSS_UNIT})", "loss low", "loss high",
                    "interval level", "extrapolation (decades)"]


def proposals_table(doc: Mapping[str, Any]) -> dict[str, list]:
    """One row per budget: C, N, D (each with its interval where the fit has one, else None),
    tokens per parameter, lr, batch, predicted loss with its interval — `mlflow.log_table`'s layout.

    >>> t = proposals_table({"proposals": [{"budget": 1e14, "N": 8.4e5, "D": 2e7, "tokens_per_param": 23.5,
    ...     "lr": 0.03, "batch": 8192, "predicted_loss": 2.14, "extrapolation_decades": -1.3,
    ...     "intervals": {"loss_opt": {"low": 2.1, "high": 2.2, "level": 0.9}}}]})
    >>> dict(zip(t["columns"], t["data"][0]))["N (params)"], dict(zip(t["columns"], t["data"][0]))["loss low"]
    (840000, 2.1)
    """
    rows = []
    for p in doc.get("proposals") or []:
        ivs = p.get("intervals") or {}

        def end(key: str, side: str, cast=float):
            v = (ivs.get(key) or {}).get(side)
            return cast(round(v)) if cast is int and _finite(v) else (float(v) if _finite(v) else None)

        level = next((iv.get("level") for iv in ivs.values() if isinstance(iv, Mapping) and iv.get("level")), None)
        rows.append([float(p["budget"]), int(round(p["N"])), end("N_opt", "low", int), end("N_opt", "high", int),
                     int(round(p["D"])), end("D_opt", "low", int), end("D_opt", "high", int),
                     p.get("tokens_per_param"), p.get("lr"), None if p.get("batch") is None else int(p["batch"]),
                     p.get("predicted_loss"), end("loss_opt", "low"), end("loss_opt", "high"), level,
                     p.get("extrapolation_decades")])
    return {"columns": list(PROPOSAL_COLUMNS), "data": rows}


def useful_work_fraction(train_s: float, wall_s: float, slots: int) -> Optional[float]:
    """Seconds inside training steps (summed over trials) / (wall seconds x concurrent trial slots).

    The share of the time the sweep's slots could have spent training that they did spend
    training; at most 1 when the trials' seconds are measured in this run. None without wall time.

    >>> useful_work_fraction(360.0, 209.0, 2)
    0.861244019138756
    """
    if wall_s <= 0 or slots <= 0:
        return None
    return train_s / (wall_s * slots)


def _g(x: Any, fmt: str = ".4g") -> str:
    return format(x, fmt) if _finite(x) else "–"


def _count(x: Any) -> str:
    return f"{round(x):,}" if _finite(x) else "–"


def _interval_table(rows: Sequence[tuple[str, Any, Optional[Mapping[str, Any]]]]) -> list[str]:
    """Markdown rows of (parameter, value, interval or None); the interval column names its level when
    every interval has the same finite one.

    >>> _interval_table([("E", 1.8, {"low": 1.7, "high": 1.9, "level": 0.9}), ("A", 400.0, None)])
    ['| parameter | value | 90% interval |', '|---|---:|---|', '| E | 1.8 | [1.7, 1.9] |', '| A | 400 |  |']
    """
    levels = {iv.get("level") for *_, iv in rows if iv}
    level = f"{levels.pop():.0%} " if len(levels) == 1 and _finite(next(iter(levels), None)) else ""
    return ([f"| parameter | value | {level}interval |", "|---|---:|---|"]
            + [f"| {p} | {_g(v)} | " + (f"[{_g(iv['low'])}, {_g(iv['high'])}]" if iv else "") + " |" for p, v, iv in rows])


def summary_markdown(name: str, doc: Mapping[str, Any], statuses: Mapping[str, int],
                     work: Optional[Mapping[str, float]] = None, hparams: Optional[Mapping[str, Any]] = None) -> str:
    """A one-page markdown summary of a fit: the law and why that form, backtests, the lr*(N, D) and
    batch*(D) laws (`hparams`, from `hparam_doc`) where fitted, warnings, proposals.

    >>> md = summary_markdown("s", {"law": {"form": "kaplan", "params": {"Nc": 1e13}, "n_points": 9,
    ...     "selection": {"reason": "smallest backtest error"}, "warnings": ["flat ridge"]}, "proposals": []},
    ...     {"finished": 9})
    >>> "smallest backtest error" in md and "flat ridge" in md
    True
    """
    law = doc.get("law")
    lines = [f"# Sweep {name}", ""]
    lines.append("Trials: " + (", ".join(f"{v} {k}" for k, v in sorted(statuses.items())) or "none") + ".")
    if work and work.get("useful_work_fraction") is not None:
        lines.append(f"Useful work: {work['useful_work_fraction']:.2f} (seconds inside training steps "
                     f"{work['train_s']:.0f} s / (wall {work['wall_s']:.0f} s × {work['slots']:.0f} "
                     f"concurrent slots)).")
    lines.append("")
    if not law:
        lines += ["## No law fitted", ""]
    else:
        form = law.get("form") or law.get("law")
        lines += [f"## Law: {form}", "", f"Fitted on {law.get('n_points')} (N, D) cells; "
                  f"objective {_g(law.get('objective'))}.", ""]
        selection = law.get("selection") or {}
        reason = selection.get("reason")
        if reason:
            lines += [f"**Why this form:** {reason}", ""]
        fallback = selection.get("fallback")
        if fallback:
            what = "; ".join((selection.get("pinned") or {}).get(fallback["from"], []))
            lines += [f"**Not identified:** {fallback['from']} has {what} -> " + (
                f"falls back to {fallback['to']}." if fallback.get("to") else
                "no candidate form is identified: the proposals rest on a bound."), ""]
        elif selection.get("identified"):
            lines += [f"**Identified:** every fitted parameter of {form} lies inside its bounds.", ""]
        ivs = {p: iv for p, iv in (law.get("intervals") or {}).items()
               if isinstance(iv, Mapping) and _finite(iv.get("low")) and _finite(iv.get("high"))}
        params = law.get("params") or {}
        if any(p in ivs for p in params):  # an interval column only where the fit has intervals
            lines += _interval_table([(p, v, ivs.get(p)) for p, v in params.items()])
        else:
            lines += ["| parameter | value |", "|---|---:|"] + [f"| {p} | {_g(v)} |" for p, v in params.items()]
        lines.append("")
        bts = backtests(doc)
        if bts:
            lines += ["## Backtests (held-out runs predicted by a fit without them)", "",
                      "| held out | cells | mean abs. error | worst | decades beyond the fit |", "|---|---:|---:|---:|---:|"]
            for key, bt in bts.items():
                lines.append(f"| {BACKTESTS.get(key, key)} | {bt.get('n_test', '–')} | "
                             f"{_g(bt.get('mean_abs_rel_error'), '.2%')} | {_g(bt.get('max_abs_rel_error'), '.2%')} | "
                             f"{_g(bt.get('max_distance_decades'), '.2f')} |")
            lines.append("")
    if hparams:
        formulas = hparam_formulas(hparams)
        lines += ["## Hyperparameter laws (fitted on the sweep's runs)", "", f"{formulas['lr']}; {formulas['batch']}", ""]
        rows = [(f"{group}.{p}", hparams[group][p], hparams[group]["intervals"].get(p))
                for group, names in HPARAM_PARAMS.items() for p in names]
        if any(iv for *_, iv in rows):
            lines += _interval_table(rows) + [""]
    ws = warnings(doc)
    lines += ["## Warnings", ""] + ([f"- {w}" for w in ws] or ["None."]) + [""]
    table = proposals_table(doc)
    if table["data"]:
        lines += ["## Proposals", "", f"| budget C (FLOPs) | N (params) | D (tokens) | lr | batch (tokens) | "
                  f"predicted loss ({LOSS_UNIT}) | interval |", "|---:|---:|---:|---:|---:|---:|---|"]
        for row in table["data"]:
            r = dict(zip(table["columns"], row))
            band = (f"[{_g(r['loss low'])}, {_g(r['loss high'])}] ({_g(r['interval level'], '.0%')})"
                    if r["loss low"] is not None else "")
            lines.append(f"| {_g(r['budget C (FLOPs)'], '.3g')} | {_count(r['N (params)'])} | "
                         f"{_count(r['D (tokens)'])} | {_g(r['lr'], '.3g')} | {_count(r['batch (tokens)'])} | "
                         f"{_g(r[f'predicted loss ({LOSS_UNIT})'])} | {band} |")
        lines.append("")
    return "\n".join(lines)


def train_seconds(rows: Sequence[Mapping[str, Any]], since: float, measured: bool) -> float:
    """Seconds the trials trained in this run of the sweep (reports with wall_time >= `since`).

    `step_time_s` is cumulative per trial, so a trial's share is its last value minus its value
    at the last report before this run (a resumed sweep's earlier runs are not counted against
    this run's wall time). A simulated trainer's step times are modelled, not measured
    (`measured=False`): its share is then the span of its reports in this run.

    >>> rows = [{"trial_id": "a", "wall_time": 5.0, "step_time_s": 3.0},
    ...         {"trial_id": "a", "wall_time": 12.0, "step_time_s": 9.0},
    ...         {"trial_id": "a", "wall_time": 15.0, "step_time_s": 11.0}]
    >>> train_seconds(rows, since=10.0, measured=True), train_seconds(rows, since=10.0, measured=False)
    (8.0, 3.0)
    """
    by_trial: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("wall_time") is not None:
            by_trial.setdefault(r["trial_id"], []).append(r)
    total = 0.0
    for trial_rows in by_trial.values():
        trial_rows = sorted(trial_rows, key=lambda r: r["wall_time"])
        now = [r for r in trial_rows if r["wall_time"] >= since]
        if not now:
            continue
        if measured:
            before = [r["step_time_s"] for r in trial_rows if r["wall_time"] < since and _finite(r["step_time_s"])]
            last = next((r["step_time_s"] for r in reversed(now) if _finite(r["step_time_s"])), None)
            if last is not None:
                total += max(0.0, last - (before[-1] if before else 0.0))
        else:
            total += now[-1]["wall_time"] - now[0]["wall_time"]
    return total
