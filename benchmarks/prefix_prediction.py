"""Final loss of a 72,000-step run from its prefix: error vs the fraction observed, per law.

    python -m benchmarks.prefix_prediction [--json OUT]

Data: the multi-power-law curves (tests/data/multipowerlaw, 25M and 100M; Luo et al. 2025).
Known: the same size's completed 24,000-step runs (cosine_24000, constant_24000, wsdcon_9), on
which each curve law is fitted once. Predicted: the final loss of cosine_72000 and constant_72000
from their first 10 % … 90 % of steps, by ``laws.final_loss.predict_final`` with the multi-power
and the annealing law (the prefix contributes the run's offset), and by a plain power law
L = E + A·t^(−a) fitted to the prefix alone (what a schedule-blind extrapolation gives).
Error = |predicted − realised| / realised at the run's last logged step.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit

from orchestrator.core.laws.curves import Curve
from orchestrator.core.laws.final_loss import make_law, predict_final

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "multipowerlaw"
TRAIN = ("cosine_24000", "constant_24000", "wsdcon_9")
TARGETS = ("cosine_72000", "constant_72000")
FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 10))
WARMUP = 2160


def power_law_final(step: np.ndarray, loss: np.ndarray, final_step: float) -> float:
    """Fit L = E + A·t^(−a) to the prefix; the prediction at ``final_step``."""
    f = lambda t, E, A, a: E + A * np.power(t, -a)
    p0 = (0.9 * loss.min(), loss[0] * step[0] ** 0.3, 0.3)
    try:
        p, _ = curve_fit(f, step, loss, p0=p0, bounds=([0, 0, 1e-3], [loss.min(), np.inf, 3.0]), maxfev=20000)
    except RuntimeError:
        return float("nan")
    return float(f(final_step, *p))


def run() -> dict:
    """Every (size, target, fraction) for the three predictors."""
    rows = []
    for size in ("25", "100"):
        train = [Curve.from_file(DATA / f"csv_{size}" / f"{n}.csv", warmup_steps=WARMUP) for n in TRAIN]
        laws = {name: make_law(name, n_boot=10).fit(train) for name in ("multipower", "annealing")}
        for target in TARGETS:
            c = Curve.from_file(DATA / f"csv_{size}" / f"{target}.csv", warmup_steps=WARMUP)
            final, T = float(c.loss[-1]), float(c.step[-1])
            for frac in FRACTIONS:
                k = int(np.searchsorted(c.step, frac * T, side="right"))
                row = {"size": f"{size}M", "target": target, "fraction": frac, "final": final}
                for name, law in laws.items():
                    fl = predict_final(c.step[:k], c.loss[:k], (c.step, c.lr), completed=law, law=name)
                    row[name] = abs(fl.estimate - final) / final
                    row[f"{name}_covered"] = bool(fl.low <= final <= fl.high)
                    row[f"{name}_width"] = (fl.high - fl.low) / fl.estimate
                post = c.step[:k] >= WARMUP
                row["power_law"] = abs(power_law_final(c.step[:k][post], c.loss[:k][post], T) - final) / final
                rows.append(row)
    return {"rows": rows, "train": list(TRAIN), "targets": list(TARGETS)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    out = run()
    print("relative error of the predicted final loss (interval width at 90 %, * = realised value outside it)")
    print(f"{'size':<6}{'target':<16}{'observed':>9}{'multipower':>20}{'annealing':>20}{'power law':>11}")
    for r in out["rows"]:
        mp = f"{r['multipower']:.2%} ({r['multipower_width']:.1%}){'' if r['multipower_covered'] else '*'}"
        an = f"{r['annealing']:.2%} ({r['annealing_width']:.1%}){'' if r['annealing_covered'] else '*'}"
        print(f"{r['size']:<6}{r['target']:<16}{r['fraction']:>9.0%}{mp:>20}{an:>20}{r['power_law']:>11.2%}")
    for name in ("multipower", "annealing", "power_law"):
        worst = max(r[name] for r in out["rows"] if r["fraction"] >= 0.3)
        print(f"worst error from 30 % observed, {name}: {worst:.2%}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
