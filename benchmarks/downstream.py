"""Downstream accuracy of Pythia 2.8B, 6.9B and 12B predicted from the models up to 1.4B.

    python -m benchmarks.downstream [--suite standard|deduped] [--bootstrap 200] [--json OUT] [--protocols]
    python -m benchmarks.downstream --coverage [--reps 200] [--bootstrap 100]

Data: the Pythia zero-shot evaluations (tests/data/pythia_evals/zero_shot.csv; lm-evaluation-
harness results of the Pythia paper). Fitted: the checkpoints (step 0 excluded; see each method
for warm-up) of the five models up to 1.4B (70M, 160M, 410M, 1B, 1.4B; non-embedding N; D = tokens seen). Predicted: the final
checkpoints (step 143,000, 300B tokens) of 2.8B, 6.9B and 12B — 2.1x to 9.4x the largest fitted N.
Error = predicted − observed accuracy, in points. Intervals: 90 %, whole model sizes as the unit (the
checkpoints of one run are not independent draws): the CR2 interval of ``fit_downstream(cluster=True)``
(orchestrator/core/laws/cr2.py); "cover" counts the held-out points inside the interval of the law's
mean, "pred." inside the prediction interval (the law's half-width and the fit's residual quantiles
in quadrature: the scatter of single evaluations).

Methods (``orchestrator.core.laws.downstream``):
- ``latent-sigmoid`` (the default of ``scalesweep fit-downstream`` without a loss column):
  acc = chance + (1 − chance)·σ(c0 − A/N^α − B/D^β): a sigmoid of a latent L(N, D) loss,
  fitted on the accuracies alone of the checkpoints after Pythia's 1,430-step warm-up (no
  L(N, D) law describes a model in warm-up), chance fixed at the task's (1/choices; 0 for lambada);
- ``lambada-sigmoid`` / ``lambada-exponential``: the two-step law through the only loss the
  evaluations measure, LAMBADA's log-perplexity (for lambada its own task loss; for the others a
  shared intermediate, as Gadre et al. use a validation loss): step 1 Chinchilla L(N, D) on the
  checkpoints after Pythia's 1,430-step warm-up, step 2 the sigmoid (Bhagia et al.) or the
  exponential (Gadre et al.) link on every checkpoint.

Also: backtests by model size for ``latent-sigmoid`` — fit up to 410M, 1B or 1.4B and predict
every larger final checkpoint — errors against the extrapolation factor N / max fitted N.

``--protocols`` (both suites, the four tasks with signal, each of VARIANTS): the nested backtests
(fits and targets <= 1.4B: the data a fitting choice may be tuned on) and the far ones (fit <= 410M
/ 1B, predict 8-21x larger), with error, 90 % intervals and how many held-out points they cover.

``--coverage``: planted truth for the latent fit and its robust defaults (no Pythia data): a known
two-step law (:data:`PLANTED`) sampled with binomial noise at every checkpoint, fitted back without
its loss; how often the 90 % intervals at a larger model cover the truth, over 3-6 model sizes,
benchmark sizes (noise) and extrapolation distances (tests/unit/core/laws/test_downstream_coverage.py asserts
the first row and the 4-size one); and the two-step fit (:data:`TWO_STEP`, loss measured) with
sizes as the unit.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.core.laws.downstream import backtest, fit_downstream
from orchestrator.core.laws.table import read_table

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "pythia_evals" / "zero_shot.csv"
# Non-embedding parameters (Pythia paper). The standard 1B's evaluations are filed as pythia-1b-bf16.
N_NONEMB = {"70m": 18_915_328, "160m": 85_056_000, "410m": 302_311_424, "1b": 805_736_448,
            "1.4b": 1_208_602_624, "2.8b": 2_517_652_480, "6.9b": 6_444_163_072, "12b": 11_327_027_200}
# 1/choices for multiple choice; lambada is a free completion (0). wsc: 2 choices.
CHANCE = {"lambada_openai": 0.0, "piqa": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25, "sciq": 0.25,
          "winogrande": 0.5, "logiqa": 0.25, "wsc": 0.5}
SIGNAL_TASKS = ("lambada_openai", "piqa", "arc_easy", "sciq")
OTHER_TASKS = ("arc_challenge", "winogrande", "logiqa", "wsc")
FIT_MAX_N = N_NONEMB["1.4b"]
FINAL_STEP = 143_000
WARMUP_STEPS = 1_430  # 1 % of 143,000: Pythia's linear warm-up
METHODS = ("latent-sigmoid", "lambada-sigmoid", "lambada-exponential")
# Far extrapolation (issue 18: 10-20x the largest fitted model): fit up to the key, predict the final
# checkpoints of the values (8.3x, 21x; 8.0x, 14x). Nested: fits and targets both <= 1.4B, the
# sizes of the golden fit, so a choice made on them never looks at 2.8B-12B.
FAR = {"410m": ("2.8b", "6.9b"), "1b": ("6.9b", "12b")}
NESTED = {"410m": ("1b", "1.4b"), "1b": ("1.4b",)}
# The fitting variants compared (keyword arguments of fit_downstream).
# "uniform" is the fit before issue 18's robustness work; "default" what fit_downstream does now
# (checkpoints weighted by tokens, saturated rows of small models left out).
VARIANTS: dict[str, dict[str, Any]] = {"uniform": {"checkpoint_weights": "uniform", "saturation_sigma": 0},
                                       "tokens": {"checkpoint_weights": "tokens", "saturation_sigma": 0},
                                       "default": {}}


# Planted truth for --coverage: task loss E + A/N^alpha + B/D^beta, accuracy chance + (1 - chance) / (1 + exp(k (L - L0))).
PLANTED = dict(E=1.8, A=75.0, B=500.0, alpha=0.3, beta=0.3, k=4.0, L0=2.425, chance=0.25)
PLANTED_SIZES = (2e7, 5e7, 1.2e8, 3e8, 8e8)
PLANTED_D = (3e9, 3e11)  # first and final checkpoint of every size
# (label, resample whole sizes, checkpoints per size, target N / largest planted N, model sizes, benchmark items).
# Sizes other than 5 are spaced evenly in log over the same span (2e7-8e8).
COVERAGE_CASES = (("5 sizes, 8 ckpt, 4x, 1k items", True, 8, 4.0, 5, 1000),
                  ("5 sizes, 8 ckpt, 10x, 1k items", True, 8, 10.0, 5, 1000),
                  ("5 sizes, 8 ckpt, 20x, 1k items", True, 8, 20.0, 5, 1000),
                  ("5 sizes, 4 ckpt, 4x, 1k items", True, 4, 4.0, 5, 1000),
                  ("5 sizes, 8 ckpt, 4x, 300 items", True, 8, 4.0, 5, 300),
                  ("5 sizes, 8 ckpt, 4x, 10k items", True, 8, 4.0, 5, 10_000),
                  ("3 sizes, 8 ckpt, 4x, 1k items", True, 8, 4.0, 3, 1000),
                  ("4 sizes, 8 ckpt, 4x, 1k items", True, 8, 4.0, 4, 1000),
                  ("4 sizes, 8 ckpt, 4x, 10k items", True, 8, 4.0, 4, 10_000),
                  ("6 sizes, 8 ckpt, 4x, 1k items", True, 8, 4.0, 6, 1000),
                  ("6 sizes, 8 ckpt, 10x, 10k items", True, 8, 10.0, 6, 10_000),
                  ("rows: 5 sizes, 8 ckpt, 4x, 1k items", False, 8, 4.0, 5, 1000),
                  ("rows: 5 sizes, 4 ckpt, 4x, 1k items", False, 4, 4.0, 5, 1000))


def planted_accuracy(N, D):
    """The planted law's accuracy at (N, D)."""
    t = PLANTED
    L = t["E"] + t["A"] / np.asarray(N) ** t["alpha"] + t["B"] / np.asarray(D) ** t["beta"]
    return t["chance"] + (1 - t["chance"]) / (1 + np.exp(t["k"] * (L - t["L0"])))


def coverage(reps: int = 200, bootstrap: int = 100, cluster: bool = True, checkpoints: int = 8,
             target_N: float = 3.2e9, level: float = 0.9, seed: int = 2000, sizes: int = 5,
             items: int = 1000) -> dict[str, Any]:
    """Replicate: draw an ``items``-item benchmark at every checkpoint of ``sizes`` model sizes from :data:`PLANTED`,
    fit the latent law with fit_downstream's defaults (no loss column), predict ``target_N`` at the final D; count
    how often the interval covers the true accuracy and the prediction interval covers a fresh evaluation of the
    target."""
    grid = np.array(PLANTED_SIZES) if sizes == len(PLANTED_SIZES) else np.geomspace(PLANTED_SIZES[0],
                                                                                    PLANTED_SIZES[-1], sizes)
    N = np.repeat(grid, checkpoints)
    D = np.tile(np.geomspace(*PLANTED_D, checkpoints), len(grid))
    p = planted_accuracy(N, D)
    a_t = float(planted_accuracy(target_N, PLANTED_D[1]))
    stderr = np.sqrt(p * (1 - p) / items)  # what a harness reports (acc_stderr): the saturation rule's scale
    cover = cover_measured = left_out = 0
    errors, widths, settings = [], [], set()
    for r in range(reps):
        rng = np.random.default_rng(seed + r)
        acc = rng.binomial(items, p) / items
        measured = rng.binomial(items, a_t) / items  # one evaluation of the target model
        fit = fit_downstream(N, D, acc, chance=PLANTED["chance"], bootstrap=bootstrap, cluster=cluster, seed=r,
                             level=level, acc_stderr=None if items == 1000 else stderr)
        extra = fit.result.extra
        settings.add((fit.law, extra["checkpoint_weights"], extra["saturation_sigma"]))
        left_out += extra["n_saturated"]
        pred = fit.predict([target_N], [PLANTED_D[1]])
        cover += bool(pred["low"][0] <= a_t <= pred["high"][0])
        cover_measured += bool(pred["pred_low"][0] <= measured <= pred["pred_high"][0])
        errors.append(pred["acc"][0] - a_t)
        widths.append(pred["high"][0] - pred["low"][0])
    return {"reps": reps, "bootstrap": bootstrap, "cluster": cluster, "checkpoints": checkpoints, "sizes": sizes,
            "items": items, "target_N": target_N, "true_acc": a_t, "coverage": cover / reps,
            "prediction_coverage": cover_measured / reps, "rows_left_out": left_out,
            "bias_points": 100 * float(np.mean(errors)), "sd_points": 100 * float(np.std(errors)),
            "mean_width_points": 100 * float(np.mean(widths)), "settings": sorted(settings)}


# The two-step law of tests/unit/core/laws/test_downstream_coverage.py (task loss measured): Chinchilla loss with 1 % noise on
# one run per (N, tokens/param 5-80), sigmoid link, 1,000-item benchmark; predicted at 4x the largest N, 20 tokens/param.
TWO_STEP = dict(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37, k=4.0, L0=2.75, chance=0.25)
TWO_STEP_CASES = (("two-step: 5 sizes, sizes as unit", True, 5), ("two-step: 4 sizes, sizes as unit", True, 4))


def two_step_world(sizes: int = 5) -> dict[str, Any]:
    """The planted world of :func:`coverage_two_step`: rows ``N``, ``D`` (``sizes`` sizes over 2e7-4e8 x 5-80 tokens
    per parameter), their true loss ``L_true`` and accuracy ``acc_true``, the ``target`` (4x the largest N, 80 tokens
    per parameter) and its true loss ``L_t`` and accuracy ``a_t``."""
    t = TWO_STEP
    grid = np.array([2e7, 5e7, 1e8, 2e8, 4e8]) if sizes == 5 else np.geomspace(2e7, 4e8, sizes)
    N = np.repeat(grid, 5)
    D = N * np.tile([5, 10, 20, 40, 80], sizes)
    law = lambda n, d: t["E"] + t["A"] / n ** t["alpha"] + t["B"] / d ** t["beta"]  # noqa: E731
    link = lambda L: t["chance"] + (1 - t["chance"]) / (1 + np.exp(t["k"] * (L - t["L0"])))  # noqa: E731
    target = (4 * grid[-1], 80 * grid[-1])
    L_t = float(law(*target))
    return {"N": N, "D": D, "L_true": law(N, D), "acc_true": link(law(N, D)), "target": target, "L_t": L_t,
            "a_t": float(link(L_t))}


def coverage_two_step(reps: int = 200, bootstrap: int = 100, cluster: bool = True, sizes: int = 5,
                      level: float = 0.9, seed: int = 1000) -> dict[str, Any]:
    """How often the 90 % intervals of the two-step fit (loss column given) cover the true accuracy and loss at 4x
    the largest of ``sizes`` model sizes (2e7-4e8)."""
    t = TWO_STEP
    w = two_step_world(sizes)
    N, D, L_true, target, L_t, a_t = (w[k] for k in ("N", "D", "L_true", "target", "L_t", "a_t"))
    cover_acc = cover_loss = 0
    widths = []
    for r in range(reps):
        rng = np.random.default_rng(seed + r)
        L = L_true * np.exp(rng.normal(0.0, 0.01, len(N)))
        acc = rng.binomial(1000, w["acc_true"]) / 1000
        fit = fit_downstream(N, D, acc, loss=L, chance=t["chance"], bootstrap=bootstrap, cluster=cluster, seed=r,
                             level=level)
        p = fit.predict([target[0]], [target[1]])
        cover_acc += bool(p["low"][0] <= a_t <= p["high"][0])
        cover_loss += bool(p["loss_low"][0] <= L_t <= p["loss_high"][0])
        widths.append(p["high"][0] - p["low"][0])
    return {"reps": reps, "sizes": sizes, "cluster": cluster, "true_acc": a_t, "coverage": cover_acc / reps,
            "loss_coverage": cover_loss / reps, "mean_width_points": 100 * float(np.mean(widths))}


def run_coverage(reps: int = 200, bootstrap: int = 100) -> dict[str, Any]:
    """Every case of :data:`COVERAGE_CASES` and :data:`TWO_STEP_CASES`."""
    out = {label: coverage(reps, bootstrap, cluster, checkpoints, ratio * PLANTED_SIZES[-1], sizes=sizes, items=items)
           for label, cluster, checkpoints, ratio, sizes, items in COVERAGE_CASES}
    out.update({label: coverage_two_step(reps, bootstrap, cluster, sizes) for label, cluster, sizes in TWO_STEP_CASES})
    return out


def load_pythia(suite: str = "standard", path: Path = DATA) -> dict[str, np.ndarray]:
    """The evaluations of one suite as columns: model (size name), N, D, step, task, acc, acc_stderr, ppl."""
    t = read_table(path)
    names = np.asarray(t["model"]).astype(str)
    size = []
    for name in names:
        s = name.removeprefix("pythia-")
        if suite == "deduped":
            size.append(s.removesuffix("-deduped") if s.endswith("-deduped") else None)
        elif suite == "standard":
            s = "1b" if s == "1b-bf16" else s
            size.append(None if s.endswith("-deduped") else s)
        else:
            raise ValueError(f"unknown suite {suite!r}; choose standard or deduped")
    keep = np.array([s is not None for s in size])
    size = np.array([s for s in size if s is not None])
    out = {"model": size, "N": np.array([float(N_NONEMB[s]) for s in size]),
           "D": np.asarray(t["tokens"], np.float64)[keep], "step": np.asarray(t["step"], np.float64)[keep].astype(int),
           "task": np.asarray(t["task"]).astype(str)[keep], "acc": np.asarray(t["acc"], np.float64)[keep],
           "acc_stderr": np.asarray(t["acc_stderr"], np.float64)[keep], "ppl": np.asarray(t["ppl"], np.float64)[keep]}
    return out


def task_columns(data: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
    """One task's rows without step 0, with LAMBADA's log-perplexity of the same checkpoint as ``loss``."""
    lam = data["task"] == "lambada_openai"
    log_ppl = {(m, s): float(np.log(p)) for m, s, p in zip(data["model"][lam], data["step"][lam], data["ppl"][lam])}
    m = (data["task"] == task) & (data["step"] > 0)
    cols = {k: v[m] for k, v in data.items()}
    cols["loss"] = np.array([log_ppl[(a, b)] for a, b in zip(cols["model"], cols["step"])])
    return cols


def run_method(cols: dict[str, np.ndarray], task: str, method: str, *, fit_max_N: float = FIT_MAX_N,
               bootstrap: int = 200, seed: int = 0, targets: tuple[str, ...] | None = None,
               **fit_kwargs: Any) -> dict[str, Any]:
    """Fit the rows with N <= fit_max_N, predict the final checkpoints of every larger model (or of
    ``targets``); ``fit_kwargs`` go to ``fit_downstream`` (e.g. ``checkpoint_weights``)."""
    train = cols["N"] <= fit_max_N * (1 + 1e-9)
    test = ~train & (cols["step"] == FINAL_STEP)
    if targets is not None:
        test &= np.isin(cols["model"], targets)
    kw: dict[str, Any] = dict(bootstrap=bootstrap, cluster=True, seed=seed, acc_stderr=cols["acc_stderr"], **fit_kwargs)
    if method == "latent-sigmoid":
        res = backtest(train, test, cols["N"], cols["D"], cols["acc"], chance=CHANCE[task], ceiling=1.0,
                       link="sigmoid", loss_rows=cols["step"] > WARMUP_STEPS, **kw)
    else:
        link = method.split("-", 1)[1]
        res = backtest(train, test, cols["N"], cols["D"], cols["acc"], loss=cols["loss"],
                       loss_rows=cols["step"] > WARMUP_STEPS, link=link,
                       chance=CHANCE[task] if link == "sigmoid" else None, ceiling=1.0, **kw)
    for p, model in zip(res["points"], cols["model"][test]):
        p["model"] = model
        p["error_points"] = 100 * (p["predicted"] - p["observed"])
        p["extrapolation"] = p["N"] / fit_max_N
    return res


def run(suite: str = "standard", bootstrap: int = 200, tasks=SIGNAL_TASKS + OTHER_TASKS) -> dict[str, Any]:
    """The golden table (every method × task) and the size backtests of latent-sigmoid."""
    data = load_pythia(suite)
    golden, sizes = [], []
    for task in tasks:
        cols = task_columns(data, task)
        for method in METHODS:
            res = run_method(cols, task, method, bootstrap=bootstrap)
            golden.append({"task": task, "method": method, "signal": task in SIGNAL_TASKS, **res})
        for cut in ("410m", "1b", "1.4b"):
            res = run_method(cols, task, "latent-sigmoid", fit_max_N=N_NONEMB[cut], bootstrap=bootstrap)
            sizes.append({"task": task, "fit_up_to": cut, "signal": task in SIGNAL_TASKS, **res})
    return {"suite": suite, "bootstrap": bootstrap, "golden": golden, "by_size": sizes}


def run_protocol(suite: str, protocol: dict[str, tuple[str, ...]], variant: str, bootstrap: int = 200,
                 tasks=SIGNAL_TASKS, seed: int = 0) -> list[dict[str, Any]]:
    """latent-sigmoid with one of VARIANTS: fit up to each key of ``protocol``, predict its targets;
    one row per (task, held-out model): error, interval, prediction interval, coverage."""
    data = load_pythia(suite)
    rows = []
    for task in tasks:
        cols = task_columns(data, task)
        for cut, targets in protocol.items():
            res = run_method(cols, task, "latent-sigmoid", fit_max_N=N_NONEMB[cut], bootstrap=bootstrap,
                             seed=seed, targets=targets, **VARIANTS[variant])
            for p in res["points"]:
                rows.append({"suite": suite, "task": task, "variant": variant, "fit_up_to": cut,
                             "n_warnings": len(res["warnings"]),
                             "covered": bool(p["low"] <= p["observed"] <= p["high"]),
                             "covered_prediction_interval": bool(p["pred_low"] <= p["observed"] <= p["pred_high"]),
                             **p})
    return rows


def protocol_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and max |error|, points within 3, and interval coverage of a protocol's rows."""
    e = np.abs([r["error_points"] for r in rows])
    return {"n": len(rows), "mean_abs_error_points": float(e.mean()), "max_abs_error_points": float(e.max()),
            "within_3_points": int((e <= 3.0).sum()), "covered": sum(r["covered"] for r in rows),
            "covered_prediction_interval": sum(r["covered_prediction_interval"] for r in rows)}


def run_protocols(bootstrap: int = 200, variants=tuple(VARIANTS)) -> dict[str, Any]:
    """The nested (<= 1.4B) and far (8-21x) protocols for both suites and every variant."""
    out: dict[str, Any] = {"bootstrap": bootstrap, "nested": {}, "far": {}}
    for name, protocol in (("nested", NESTED), ("far", FAR)):
        for variant in variants:
            rows = [r for suite in ("standard", "deduped") for r in run_protocol(suite, protocol, variant, bootstrap)]
            out[name][variant] = {"rows": rows, "summary": protocol_summary(rows)}
    return out


def _print_protocols(out: dict[str, Any]) -> None:
    for name, title in (("nested", "Nested backtests (fit and targets <= 1.4B: what a choice may be tuned on)"),
                        ("far", "Far extrapolation (fit <= 410M / 1B, predict 8-21x larger)")):
        print(f"\n{title}; latent-sigmoid; error = predicted - observed, points; 90 % intervals "
              f"({out['bootstrap']} cluster resamples)")
        variants = list(out[name])
        print(f"{'suite':8s} {'task':15s} {'fit<=':5s} {'target':6s} {'N/max':>5s} " +
              " ".join(f"{v:>26s}" for v in variants))
        rows = {v: out[name][v]["rows"] for v in variants}
        for i, r in enumerate(rows[variants[0]]):
            cells = []
            for v in variants:
                q = rows[v][i]
                mark = ("*" if q["covered"] else " ") + ("+" if q["covered_prediction_interval"] else " ")
                cells.append(f"{q['error_points']:+5.1f} [{100 * q['pred_low']:4.1f},{100 * q['pred_high']:5.1f}]{mark}"
                             f"{100 * q['observed']:5.1f}")
            print(f"{r['suite']:8s} {r['task']:15s} {r['fit_up_to']:5s} {r['model']:6s} {r['extrapolation']:5.1f} "
                  + " ".join(f"{c:>26s}" for c in cells))
        for v in variants:
            s = out[name][v]["summary"]
            print(f"  {v:8s}: mean |error| {s['mean_abs_error_points']:.2f}, max {s['max_abs_error_points']:.2f}; "
                  f"{s['within_3_points']}/{s['n']} within 3 points; {s['covered']}/{s['n']} inside the 90 % "
                  f"interval, {s['covered_prediction_interval']}/{s['n']} inside the 90 % prediction interval")
    print("  (cells: error [90 % prediction interval] observed; * inside the interval of the mean, + inside the "
          "prediction interval)")


def _print(out: dict[str, Any]) -> None:
    print(f"Pythia ({out['suite']}): fit up to 1.4B (checkpoints from step 1; latent fits from the end of warm-up), predict final 2.8B / 6.9B / 12B;"
          f" error = predicted - observed, accuracy points; 90 % cluster-bootstrap intervals ({out['bootstrap']})")
    print(f"{'task':15s} {'method':20s} {'2.8B':>6s} {'6.9B':>6s} {'12B':>6s} {'mean|e|':>7s} {'cover':>5s} {'pred.':>5s}  warnings")
    for g in out["golden"]:
        e = {p["model"]: p["error_points"] for p in g["points"]}
        print(f"{g['task']:15s} {g['method']:20s} {e['2.8b']:6.1f} {e['6.9b']:6.1f} {e['12b']:6.1f} "
              f"{g['mean_abs_error_points']:7.2f} {g['covered']:>2d}/{g['n_intervals']:<2d} "
              f"{g['covered_prediction_interval']:>2d}/{g['n_intervals']:<2d}  {len(g['warnings'])}")
    for method in METHODS:
        sel = [g for g in out["golden"] if g["method"] == method and g["signal"]]
        errs = np.array([abs(p["error_points"]) for g in sel for p in g["points"]])
        cov = sum(g["covered"] for g in sel)
        covp = sum(g["covered_prediction_interval"] for g in sel)
        print(f"  {method}, tasks with signal: mean |error| {errs.mean():.2f}, max {errs.max():.2f} points; "
              f"{cov}/{len(errs)} held-out points inside the 90 % interval, {covp}/{len(errs)} inside the "
              "90 % prediction interval")
    print("\nBacktests by model size (latent-sigmoid): error at each held-out final checkpoint, with N / max fitted N")
    for s in out["by_size"]:
        if not s["signal"]:
            continue
        pts = "  ".join(f"{p['model']}({p['extrapolation']:.1f}x) {p['error_points']:+.1f}" for p in s["points"])
        print(f"{s['task']:15s} fit <= {s['fit_up_to']:5s} {pts}")


def _print_coverage(out: dict[str, Any]) -> None:
    print(f"{'case':36s} {'true':>6s} {'covers':>7s} {'pred. covers':>12s} {'bias':>6s} {'sd':>5s} {'width':>6s} left out")
    for label, c in out.items():
        if "loss_coverage" in c:  # two-step: the loss interval's coverage instead of the prediction interval's
            print(f"{label:36s} {c['true_acc']:6.3f} {c['coverage']:7.3f} {'loss ' + format(c['loss_coverage'], '.3f'):>12s} "
                  f"{'':6s} {'':5s} {c['mean_width_points']:6.2f}")
            continue
        print(f"{label:36s} {c['true_acc']:6.3f} {c['coverage']:7.3f} {c['prediction_coverage']:12.3f} "
              f"{c['bias_points']:+6.2f} {c['sd_points']:5.2f} {c['mean_width_points']:6.2f} {c['rows_left_out']}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="standard", choices=("standard", "deduped"))
    ap.add_argument("--bootstrap", type=int, default=None, help="resamples (default 200; 100 with --coverage)")
    ap.add_argument("--json", type=Path, default=Path("results") / "downstream.json")
    ap.add_argument("--protocols", action="store_true",
                    help="only the nested and far-extrapolation backtests (both suites, every variant)")
    ap.add_argument("--coverage", action="store_true",
                    help="planted-truth interval coverage of the latent fit (--bootstrap resamples, default here 100)")
    ap.add_argument("--reps", type=int, default=200, help="replications per --coverage case")
    args = ap.parse_args(argv)
    if args.coverage:
        out = run_coverage(args.reps, 100 if args.bootstrap is None else args.bootstrap)
        _print_coverage(out)
    elif args.protocols:
        out = run_protocols(200 if args.bootstrap is None else args.bootstrap)
        _print_protocols(out)
    else:
        out = run(args.suite, 200 if args.bootstrap is None else args.bootstrap)
        _print(out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=float))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
