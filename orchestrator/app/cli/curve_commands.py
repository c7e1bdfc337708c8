"""`scalesweep fit-curve`: fit a schedule-aware loss-curve law to runs of one model size and predict others."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from .app import app, fail, print_json

if TYPE_CHECKING:
    from ...core.laws.curves import Curve


class CurveLawName(str, Enum):
    multipower = "multipower"
    annealing = "annealing"


class WarmupMode(str, Enum):
    actual = "actual"
    peak = "peak"
    none = "none"


@app.command("fit-curve")
def fit_curve_command(
    law: CurveLawName = typer.Option(CurveLawName.multipower, "--law", help="Curve law to fit."),
    train: list[Path] = typer.Option(..., "--train", help="Curve (CSV/Parquet: step, lr, loss) to fit; repeatable."),
    predict: Optional[list[Path]] = typer.Option(None, "--predict", help="Curve (step, lr[, loss]) to predict; repeatable."),
    warmup_steps: Optional[int] = typer.Option(
        None, "--warmup-steps", help="Warmup length when the log starts after it (default: detected from lr)."
    ),
    warmup: WarmupMode = typer.Option(WarmupMode.actual, "--warmup", help="How warmup enters S1: actual area, at peak lr, or not."),
    level: float = typer.Option(0.0, "--interval", help="Also give a bootstrap band at this level (e.g. 0.9); 0 = none."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Fit one parameter set to the --train curves (same model size) and predict the --predict curves."""
    # the laws (scipy.stats) load here, not when the app is built: other commands do not pay for them
    from ...core.laws.curves import fit_metrics
    from ...core.laws.final_loss import make_law

    if not 0.0 <= level < 1.0:
        fail(f"--interval must be in [0, 1), got {level}")
    if warmup_steps is not None and warmup_steps < 0:
        fail(f"--warmup-steps must be >= 0, got {warmup_steps}")
    train_curves = [_read(p, warmup_steps, need_loss=True) for p in train]
    predict_curves = [(p, _read(p, warmup_steps, need_loss=False)) for p in (predict or [])]
    fitted = make_law(law.value, warmup=warmup.value, seed=seed)
    try:
        fitted.fit(train_curves)
    except (ValueError, RuntimeError) as exc:
        fail(f"cannot fit {law.value} to {', '.join(map(str, train))}: {exc}")
    doc: dict[str, Any] = {
        "law": law.value,
        "params": fitted.params,
        "train": {str(p): fitted.metrics(c) for p, c in zip(train, train_curves)},
        "predictions": {},
        "metrics": {},
    }
    for path, curve in predict_curves:
        try:
            pred = fitted.predict_schedule(curve.schedule, curve.step)
        except ValueError as exc:
            fail(f"{path}: {exc}")
        entry: dict[str, Any] = {"step": curve.step.astype(int).tolist(), "loss": pred.tolist()}
        if level > 0:
            _, lo, hi = fitted.interval_schedule(curve.schedule, curve.step, level)
            entry.update(low=lo.tolist(), high=hi.tolist(), level=level)
        doc["predictions"][str(path)] = entry
        if curve.loss is not None:
            m = curve.fit_mask
            doc["metrics"][str(path)] = fit_metrics(curve.loss[m], pred[m])
    if as_json:
        print_json(doc)
        return
    typer.echo(f"{law.value} law fitted to {len(train_curves)} curve(s), {fitted.result.n_points} post-warmup points")
    for k, v in fitted.params.items():
        typer.echo(f"  {k:6s} = {v:.6g}")
    for path, m in doc["metrics"].items():
        typer.echo(
            f"  {path}: R² {m['r2']:.5f}, mean rel. error {m['mean_rel_error']:.5f}, worst {m['worst_rel_error']:.5f}"
        )
    for path, entry in doc["predictions"].items():
        if path not in doc["metrics"]:
            typer.echo(f"  {path}: final predicted loss {entry['loss'][-1]:.5f} at step {entry['step'][-1]}")


def _read(path: Path, warmup_steps: Optional[int], need_loss: bool) -> Curve:
    from ...core.laws.curves import Curve
    from ...core.laws.table import TableError

    try:
        curve = Curve.from_file(path, warmup_steps=warmup_steps, need_loss=need_loss)
        if need_loss and curve.fit_mask.sum() < 3:
            raise TableError(f"{path}: fewer than 3 rows after warmup (ends at step {curve.schedule.warmup_end})")
        return curve
    except (TableError, ValueError) as exc:
        msg = str(exc)
        fail(msg if msg.startswith(str(path)) else f"{path}: {msg}")
    raise AssertionError("unreachable")  # fail() exits


