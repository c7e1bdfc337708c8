"""A sweep's one-page report: the spec, what ran, what was stopped and why, the laws with their intervals
and backtests, the proposals, the figures and the warnings, as one self-contained HTML file (PNGs
embedded, and written beside it) that `scalesweep report` also logs to the sweep's MLflow parent run.

The text is the sweep's record (fit.json, the store); the figures are drawn from a refit of the same
store with the spec's fit settings (the figures need the fitted law itself, which fit.json does not hold).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from .sweep_summary import BACKTESTS, LOSS_UNIT, backtests, hparam_formulas, proposals_table, warnings

REPORT_DIR = "report"  # under the sweep directory, and the artifact folder on the parent run
FIGURE_ORDER = ("loss_vs_compute", "isoflop", "backtest", "lr_bowls", "batch_bowls", "pruner", "wsd_branches")
CAPTIONS = {
    "loss_vs_compute": "Final loss of every run against its compute, each size's fitted curve, the frontier with its band, "
                       "the backtest's held-out runs and the proposals (stars) with the extrapolation beyond the largest run shaded.",
    "isoflop": "IsoFLOP view: the runs at each compute level several sizes share (or read off each size's curve), a "
               "parabola in ln N through each level and its minimum where a size on each side brackets it, the fitted law "
               "along each level; beside it the compute-optimal N against C: the minima with N_opt = k·C^a fitted to them, "
               "the law's N*(C) and the proposals' N* with their intervals.",
    "backtest": "Backtests: each held-out cell's observed loss against the loss a fit without it predicted, with that "
                "fit's interval; the title counts how many observations the intervals cover.",
    "lr_bowls": "Learning-rate bowls: final loss against lr in each (N, D) cell, one line per batch; the dashed line is "
                "the fitted lr*(N, D) where a law could be fitted.",
    "batch_bowls": "Batch bowls: final loss against batch in each cell, one line per lr; the dashed line is batch*(D).",
    "pruner": "The pruner's decisions: where each stopped trial was stopped, the final loss it was predicted to reach and, "
              "for a simulated world, the loss it would have reached.",
    "wsd_branches": "WSD branching: each trunk's curve and the cooldown branches forked from its checkpoints.",
}


@dataclass
class Report:
    """What `build_report` wrote: the HTML page, the PNGs beside it, and where it was logged."""

    html_path: Path
    figures: dict[str, Path] = field(default_factory=dict)
    mlflow_run: Optional[str] = None
    mlflow_error: Optional[str] = None


def build_report(sweep_dir: str | Path, out_dir: Optional[str | Path] = None, *, log_to_mlflow: bool = True,
                 bootstrap: Optional[int] = None) -> Report:
    """Write SWEEP_DIR/report/index.html (and plots/*.png beside it); log the folder to the parent run."""
    from .plots.evidence import sweep_figures
    from .query import SweepData, sweep_fit
    from ..config.spec import load_spec
    from ..io.store import ObservationStore, spent_flops

    sweep_dir = Path(sweep_dir)
    spec_text = (sweep_dir / "spec.yaml").read_text()
    spec = load_spec(sweep_dir / "spec.yaml")
    if spec.sweep_dir() != sweep_dir.resolve():  # a moved sweep follows its directory (its MLflow store too)
        spec = spec.model_copy(update={"output_dir": str(sweep_dir.resolve())})
    store = ObservationStore(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir / REPORT_DIR
    (out / "plots").mkdir(parents=True, exist_ok=True)
    trials = store.trials()
    last = store.last_reports()
    data = SweepData.read(store)  # the one query path (fit.json, `scalesweep propose`, the API)
    points = data.points
    fit = sweep_fit(data, spec, spec.budget.targets, bootstrap=bootstrap) if points else None
    fit_json = sweep_dir / "fit.json"
    doc = json.loads(fit_json.read_text()) if fit_json.is_file() else (fit.to_json() if fit is not None else {})
    figures = sweep_figures(spec, store, fit, points) if fit is not None else {}
    pngs: dict[str, bytes] = {}
    paths = {}
    for name in sorted(figures, key=lambda n: FIGURE_ORDER.index(n) if n in FIGURE_ORDER else len(FIGURE_ORDER)):
        buf = io.BytesIO()
        figures[name].savefig(buf, format="png", dpi=110)
        pngs[name] = buf.getvalue()
        paths[name] = out / "plots" / f"{name}.png"
        paths[name].write_bytes(pngs[name])
    spent = {tid: spent_flops(r["flops"], trials[tid]["config"] or {}) for tid, r in last.items()
             if tid in trials and r["flops"] == r["flops"]}
    page = render_html(spec.name, str(sweep_dir.resolve()), spec_text, trials, last, spent, doc, pngs,
                       hparam_laws(trials, store, spec.fit.level), not_run(spec, trials, data))
    report = Report(out / "index.html", paths)
    report.html_path.write_text(page)
    if log_to_mlflow:
        report.mlflow_run, report.mlflow_error = _log_to_parent(sweep_dir, spec.tracking_uri(), out)
    return report


def _log_to_parent(sweep_dir: Path, tracking_uri: str, folder: Path) -> tuple[Optional[str], Optional[str]]:
    """Log `folder` as the parent run's `report/` artifacts: (run id, None) or (None, why not)."""
    state = sweep_dir / "sweep.json"
    run_id = json.loads(state.read_text()).get("mlflow_parent_run") if state.is_file() else None
    if not run_id:
        return None, "no MLflow parent run recorded in sweep.json"
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri).log_artifacts(run_id, str(folder), REPORT_DIR)
    except Exception as exc:  # noqa: BLE001 -- the report on disk stands without MLflow; say why
        return None, f"{type(exc).__name__}: {exc}"
    return run_id, None


def render_html(name: str, where: str, spec_text: str, trials: Mapping[str, Mapping[str, Any]],
                last: Mapping[str, Mapping[str, Any]], spent: Mapping[str, float], doc: Mapping[str, Any],
                pngs: Mapping[str, bytes], hparams: Optional[Mapping[str, Any]] = None,
                unrun: Optional[Mapping[str, Any]] = None) -> str:
    """The page, from the sweep's record: pure (no I/O), so a test can read what it says. `hparams`: the
    fitted lr*(N, D) and batch*(D) laws (`hparam_laws`), None where none fits.
    `unrun`: the grid trials that never started (`not_run`).

    >>> page = render_html("s", "/d", "name: s", {}, {}, {}, {"law": None, "proposals": []}, {})
    >>> "No law was fitted" in page and "<h2>Warnings</h2>" in page
    True
    """
    e = html.escape
    counts: dict[str, int] = {}
    for rec in trials.values():
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
    ws = warnings(doc)
    parts = [f"<h1>Sweep {e(name)}</h1>",
             f"<p class=meta>{e(where)} · report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>",
             _verdict(doc, ws),
             "<h2>What ran</h2>", _what_ran(trials, last, spent, counts), _unrun(unrun),
             "<h2>Stopped early, diverged or failed, and why</h2>", _ended(trials, last),
             "<h2>Laws</h2>", _laws(doc), _hparams(hparams),
             "<h2>Proposals</h2>", _proposals(doc),
             "<h2>Warnings</h2>", ("<ul>" + "".join(f"<li>{e(w)}</li>" for w in ws) + "</ul>") if ws else "<p>None.</p>",
             "<h2>Figures</h2>"]
    for fig, data in pngs.items():
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(f"<figure id='{e(fig)}'><img alt='{e(fig)}' src='{src}'><figcaption><b>{e(fig)}</b>: "
                     f"{e(CAPTIONS.get(fig, ''))} <a href='plots/{e(fig)}.png'>PNG</a></figcaption></figure>")
    if not pngs:
        parts.append("<p>No figures: no trial finished.</p>")
    parts += ["<h2>Spec</h2>", f"<details><summary>spec.yaml</summary><pre>{e(spec_text)}</pre></details>"]
    return _PAGE.format(title=e(f"scalesweep report: {name}"), body="\n".join(parts))


def _g(x: Any, fmt: str = ".4g") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else "–"


def _n(x: Any) -> str:
    return f"{round(x):,}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _table(header: list[str], rows: list[list[str]], numeric: Optional[set[int]] = None) -> str:
    """An HTML table; cells are escaped here; the `numeric` columns (default: all but the first) align right."""
    e = html.escape
    numeric = set(range(1, len(header))) if numeric is None else numeric
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{e(str(c))}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _verdict(doc: Mapping[str, Any], ws: list[str]) -> str:
    """The sweep's conclusion in two lines: the chosen law and each target's optimum."""
    law = doc.get("law")
    if not law:
        return "<div class=verdict><p>No law was fitted (see the warnings).</p></div>"
    lines = [f"Chosen law: <b>{html.escape(str(law.get('form')))}</b>, fitted on {law.get('n_points')} (N, D) cells."]
    for p in doc.get("proposals") or []:
        iv = (p.get("intervals") or {}).get("loss_opt") or {}
        band = f" [{_g(iv.get('low'))}, {_g(iv.get('high'))}] ({_g(iv.get('level'), '.0%')})" if iv else ""
        out = p.get("extrapolation_decades")
        lines.append(f"At C = {_g(p['budget'], '.3g')} FLOPs: N* = {_n(p['N'])} params, D* = {_n(p['D'])} tokens, "
                     f"predicted loss {_g(p.get('predicted_loss'))}{band} {LOSS_UNIT}"
                     + (f", {_g(out, '.1f')} decades beyond the largest run" if _g(out) != "–" and out > 0 else "") + ".")
    lines.append(f"{len(ws)} warning(s)." if ws else "No warnings.")
    return "<div class=verdict>" + "".join(f"<p>{x}</p>" for x in lines) + "</div>"


def _what_ran(trials, last, spent, counts) -> str:
    """Trial counts by status, compute spent, and per model size: trials, states, best final loss."""
    by_n: dict[float, dict[str, Any]] = {}
    for tid, rec in trials.items():
        c = rec["config"] or {}
        row = by_n.setdefault(float(c.get("N") or math.nan), {"n": 0, "best": math.inf, "flops": 0.0})
        row["n"] += 1
        row[rec["status"]] = row.get(rec["status"], 0) + 1
        row["flops"] += spent.get(tid, 0.0)
        loss = (last.get(tid) or {}).get("eval_loss")
        if rec["status"] == "finished" and loss is not None and math.isfinite(loss):
            row["best"] = min(row["best"], loss)
    states = sorted(counts)
    rows = [[_n(n), str(r["n"])] + [str(r.get(s, 0)) for s in states] + [f"{r['flops']:.3g}", _g(r["best"])]
            for n, r in sorted(by_n.items())]
    total = sum(spent.values())
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials"
    return (f"<p>{len(trials)} trials: {html.escape(summary)}; {total:.3g} FLOPs spent (a WSD branch counts from its "
            "branch point).</p>" + _table(["N (params)", "trials"] + states + ["FLOPs spent", f"best final loss ({LOSS_UNIT})"], rows))


def not_run(spec: Any, trials: Mapping[str, Any], data: Any = None) -> dict[str, Any]:
    """The spec's grid trials with no record in the store: how many, and how many are branches of a trunk
    the pruner stopped (a branch starts from its trunk's checkpoint, so it cannot run); for a law-guided
    search read from `data` (`query.SweepData`), whether it is done (`done`: why) or which trials it would
    start next (`next_trials`)."""
    from ..config.trials import plan_grid
    from .query import search_replay

    grid = plan_grid(spec)
    missing = [t for t in grid if t.trial_id not in trials]
    behind = sum(1 for t in missing if t.branch_of and (trials.get(t.branch_of) or {}).get("status") != "finished")
    out = {"grid": len(grid), "missing": len(missing), "behind_stopped_trunk": behind, "strategy": spec.search.strategy}
    replay = search_replay(data, spec) if data is not None else None
    if replay is not None:
        out.update(done=replay.done, next_trials=replay.next_trials)
    return out


def _unrun(unrun: Optional[Mapping[str, Any]]) -> str:
    if not unrun or not unrun["missing"]:
        return ""
    why = []
    if unrun["behind_stopped_trunk"]:
        why.append(f"{unrun['behind_stopped_trunk']} are WSD branches of a trunk that did not finish "
                   "(a branch starts from its trunk's checkpoint)")
    if unrun["strategy"] != "grid":
        why.append(f"the {unrun['strategy']} search runs only the trials that teach most about the targets")
        if unrun.get("done"):
            why.append(f"it ended: {unrun['done']}")
        elif unrun.get("next_trials") is not None:
            why.append(f"it had not ended: a resume starts {len(unrun['next_trials'])} trial(s) next "
                       f"({', '.join(unrun['next_trials'][:3])}{', ...' if len(unrun['next_trials']) > 3 else ''})")
    rest = "; ".join(why) or "the sweep ended (or was stopped) before them"
    return (f"<p>{unrun['missing']} of the grid's {unrun['grid']} trials never started: {html.escape(rest)}.</p>")


def _ended(trials, last) -> str:
    """Every trial that did not finish, with where it ended and the reason recorded with it."""
    rows = []
    order = {"stopped": 0, "diverged": 1, "failed": 2}  # the pruner's decisions first
    for tid, rec in sorted(trials.items(), key=lambda kv: (order.get(kv[1]["status"], 3), kv[0])):
        if rec["status"] in ("finished", "running", "planned"):
            continue
        c, s = rec["config"] or {}, rec["summary"] or {}
        step = (last.get(tid) or {}).get("step")
        rows.append([tid, rec["status"], _n(c.get("N")), _n(c.get("D")), _g(c.get("lr"), ".3g"), _n(c.get("batch")),
                     "–" if step is None else str(step), str(s.get("reason") or "–")])
    if not rows:
        return "<p>Every trial that started ran to its planned tokens.</p>"
    return _table(["trial", "status", "N (params)", "D (tokens)", "lr", "batch (tokens)", "last step", "reason"], rows,
                  numeric={2, 3, 4, 5, 6})


def _laws(doc: Mapping[str, Any]) -> str:
    """The L(N, D) law: form, why, parameters with intervals; the backtests of the chosen form."""
    law = doc.get("law")
    if not law:
        return "<p>No law was fitted.</p>"
    e = html.escape
    out = [f"<p><b>L(N, D): {e(str(law.get('form')))}</b>, fitted on {law.get('n_points')} (N, D) cells (the best run of "
           f"each); objective {_g(law.get('objective'))}.</p>"]
    reason = (law.get("selection") or {}).get("reason")
    if reason:
        out.append(f"<p>Why this form: {e(str(reason))}</p>")
    ivs = law.get("intervals") or {}
    rows = []
    for p, v in (law.get("params") or {}).items():
        iv = ivs.get(p) if isinstance(ivs.get(p), Mapping) else {}
        rows.append([p, _g(v), f"[{_g(iv.get('low'))}, {_g(iv.get('high'))}]" if iv else "–",
                     _g(iv.get("level"), ".0%") if iv else "–"])
    out.append(_table(["parameter", "value", "interval", "level"], rows))
    bts = backtests(doc)
    if bts:
        out.append("<p>Backtests: the law refitted without the held-out runs predicts them.</p>")
        out.append(_table(["held out", "cells", "mean abs. error", "worst", "decades beyond the fit"],
                          [[BACKTESTS.get(k, k), str(bt.get("n_test", "–")), _g(bt.get("mean_abs_rel_error"), ".2%"),
                            _g(bt.get("max_abs_rel_error"), ".2%"), _g(bt.get("max_distance_decades"), ".2f")]
                           for k, bt in bts.items()]))
    return "".join(out)


def hparam_laws(trials: Mapping[str, Mapping[str, Any]], store: Any, level: float = 0.9) -> Optional[dict[str, Any]]:
    """lr*(N, D) and batch*(D) fitted on the sweep's finished and diverged runs (`query.hparam_laws`:
    parameters and their intervals at `level`, as the API and the summary give them), None when no law fits."""
    from .plots.evidence import hparam_runs
    from .query import hparam_laws as fit_laws

    return fit_laws(hparam_runs(dict(trials), store), level)[0]


def _hparams(hparams: Optional[Mapping[str, Any]]) -> str:
    if not hparams:
        return ("<p><b>lr*(N, D), batch*(D)</b>: not fitted (each law needs cells that tried at least three "
                "learning rates and three batches).</p>")
    formulas = hparam_formulas(hparams)
    out = (f"<p><b>Hyperparameter laws</b> ({html.escape(hparams.get('method', ''))}, on the finished and diverged "
           f"runs): {html.escape(formulas['lr'])}; {html.escape(formulas['batch'])}.</p>")
    rows = []
    for group in ("lr", "batch"):
        for p, v in hparams[group].items():
            if p == "intervals":
                continue
            iv = hparams[group]["intervals"].get(p)
            rows.append([f"{group}.{p}", _g(v), f"[{_g(iv['low'])}, {_g(iv['high'])}]" if iv else "–",
                         _g(iv["level"], ".0%") if iv else "–"])
    return out + _table(["parameter", "value", "interval", "level"], rows)


def _proposals(doc: Mapping[str, Any]) -> str:
    """One row per target budget, with the intervals where the fit has them."""
    t = proposals_table(doc)
    if not t["data"]:
        return "<p>No proposals.</p>"
    rows = []
    for row in t["data"]:
        r = dict(zip(t["columns"], row))

        def band(lo: str, hi: str, fmt=_n) -> str:
            return f"[{fmt(r[lo])}, {fmt(r[hi])}]" if r[lo] is not None else "–"

        rows.append([f"{r['budget C (FLOPs)']:.3g}", _n(r["N (params)"]), band("N low", "N high"), _n(r["D (tokens)"]),
                     band("D low", "D high"), _g(r["tokens/param"], ".3g"), _g(r["lr"], ".3g"), _n(r["batch (tokens)"]),
                     _g(r[f"predicted loss ({LOSS_UNIT})"]), band("loss low", "loss high", _g),
                     _g(r["interval level"], ".0%"), _g(r["extrapolation (decades)"], ".2f")])
    return _table(["budget C (FLOPs)", "N* (params)", "N interval", "D* (tokens)", "D interval", "tokens/param", "lr",
                   "batch (tokens)", f"predicted loss ({LOSS_UNIT})", "loss interval", "level",
                   "decades beyond the largest run"], rows)


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 1.5em auto; padding: 0 1em; color: #222; }}
h1 {{ margin-bottom: 0; }} .meta {{ color: #666; margin-top: .2em; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }}
.verdict {{ background: #f3f6fa; border-left: 4px solid #3b6ea5; padding: .4em 1em; }}
table {{ border-collapse: collapse; font-size: 12.5px; margin: .5em 0; }}
th, td {{ border: 1px solid #ddd; padding: 3px 7px; vertical-align: top; }} th {{ background: #f5f5f5; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
figure {{ margin: 1.2em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }} figcaption {{ color: #444; }}
pre {{ background: #f7f7f7; padding: .6em; overflow-x: auto; }}
</style></head>
<body>
{body}
</body></html>
"""
