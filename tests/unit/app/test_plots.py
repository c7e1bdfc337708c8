"""Sweep figures: the right artists, the right numbers on them, and PNG output."""
from __future__ import annotations

import io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from orchestrator.app.plots import group_by_compute, isoflop_curves, loss_vs_compute, predicted_vs_observed
from orchestrator.app.plots.loss_vs_compute import CURVES_LABEL

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _chinchilla(N, D):
    # Hoffmann et al. (2022) Approach 3 parameters, a known smooth surface for the figures.
    return 1.69 + 406.4 / N**0.34 + 410.7 / D**0.28


def _png(fig: Figure, tmp_path, name: str) -> bytes:
    path = tmp_path / name
    fig.savefig(path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    return data


def test_loss_vs_compute_artists_and_png(tmp_path):
    sizes = [1e6, 4e6, 1.6e7]
    runs = [{"C": 6 * n * d, "loss": _chinchilla(n, d), "N": n}
            for n in sizes for d in (2e8, 8e8, 3.2e9)]
    fc = np.logspace(15, 19, 30)
    mid = 1.69 + 10 * fc ** -0.15
    frontier = {"C": fc, "mid": mid, "low": mid - 0.02, "high": mid + 0.02}
    proposals = [{"budget": 1e19, "predicted_loss": 2.3, "interval": [2.25, 2.36]},
                 {"budget": 1e20, "predicted_loss": 2.2, "interval": [2.1, 2.3]}]
    fig = loss_vs_compute(runs, frontier, proposals)
    ax = fig.axes[0]
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == len(sizes)  # one colour per N
    for sc, n in zip(scatters, sizes):
        xy = sc.get_offsets()
        assert len(xy) == 3
        np.testing.assert_allclose(np.sort(xy[:, 0]), 6 * n * np.array([2e8, 8e8, 3.2e9]))
    assert len(set(tuple(sc.get_facecolor()[0]) for sc in scatters)) == len(sizes)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    frontier_line = [ln for ln in ax.lines if ln.get_label() == "frontier L*(C)"]
    assert len(frontier_line) == 1
    np.testing.assert_allclose(frontier_line[0].get_ydata(), mid)
    errbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errbars) == 1
    np.testing.assert_allclose(errbars[0].lines[0].get_xdata(), [1e19, 1e20])
    assert ax.get_xscale() == "log"
    _png(fig, tmp_path, "lvc.png")


def test_loss_vs_compute_without_frontier_accepts_arrays(tmp_path):
    fig = loss_vs_compute({"flops": [1e15, 2e15, 3e15], "final_loss": [3.0, 2.9, 2.8],
                           "n_params": [1e6, 1e6, 2e6]})
    ax = fig.axes[0]
    assert len([c for c in ax.collections if isinstance(c, PathCollection)]) == 2
    assert not ax.lines and not ax.containers
    _png(fig, tmp_path, "plain.png")


def test_loss_vs_compute_missing_column_names_it():
    with pytest.raises(KeyError, match="'N'"):
        loss_vs_compute([{"C": 1.0, "loss": 2.0}])


def test_group_by_compute_tolerates_rounding():
    C = [1e18, 1.02e18, 3e18, 2.97e18, 1e19]
    assert group_by_compute(C).tolist() == [0, 0, 1, 1, 2]


def test_isoflop_curves_vertex_at_true_optimum(tmp_path):
    # Exact parabolas in ln N with known vertices: the marked minimum must sit on them.
    budgets = {1e18: (math.log(3e7), 2.6), 1e19: (math.log(1e8), 2.3)}
    N, D, L, C = [], [], [], []
    for c, (x0, l0) in budgets.items():
        for n in np.exp(np.linspace(x0 - 1.5, x0 + 1.5, 5)):
            N.append(n)
            D.append(c / (6 * n))
            L.append(l0 + 0.05 * (math.log(n) - x0) ** 2)
            C.append(c * (1 + 0.01 * (len(N) % 2)))  # budgets realised only approximately
    fig = isoflop_curves(N, D, L, C, fits=True)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"parabola in ln N", "its minimum: N_opt at that C"} <= set(labels)
    assert len([t for t in labels if t.startswith("C = ") and t.endswith(" FLOPs")]) == 2
    # N_opt(C): the two minima and the power law through them (N_opt = 3e7 at 1e18, 1e8 at 1e19: a = log10(10/3))
    ax_opt = fig.axes[1]
    assert any(t.get_text().endswith(f"C^{math.log10(1e8 / 3e7):.2f} (fit to the minima)")
               for t in ax_opt.get_legend().get_texts())
    assert len([c for c in ax.collections if isinstance(c, PathCollection)]) == 2
    curves = [ln for ln in ax.lines if ln.get_marker() in ("None", None, "")]
    vertices = [ln for ln in ax.lines if ln.get_marker() == "v"]
    assert len(curves) == 2 and len(vertices) == 2
    got = sorted((v.get_xdata()[0], v.get_ydata()[0]) for v in vertices)
    want = sorted((math.exp(x0), l0) for x0, l0 in budgets.values())
    np.testing.assert_allclose(got, want, rtol=1e-6)
    _png(fig, tmp_path, "iso.png")


def test_isoflop_minimum_only_where_the_lowest_run_is_bracketed():
    # at 1e18 the lowest loss is the smallest size's: the parabola's vertex (ln N = 0.69 of 0..3) lies inside
    # the sizes, but nothing on the smaller side says the loss turns up there, so no minimum is drawn
    N = list(np.exp([0.0, 1, 2, 3])) * 2
    C = [1e18] * 4 + [1e19] * 4
    L = [1.0, 1.02, 1.03, 1.2] + [1.1, 1.0, 1.02, 1.2]
    assert 0 < -np.polyfit(np.log(N[:4]), L[:4], 2)[1] / (2 * np.polyfit(np.log(N[:4]), L[:4], 2)[0]) < 3
    fig = isoflop_curves(N, [1] * 8, L, C, fits=True)
    vertices = [ln for ln in fig.axes[0].lines if ln.get_marker() == "v"]
    assert len(vertices) == 1 and 1 < vertices[0].get_xdata()[0] < math.exp(2)  # the 1e19 level's


def test_isoflop_curves_with_given_coefficients():
    N = [1e6, 2e6, 4e6, 1e7, 2e7, 4e7]
    C = [1e17] * 3 + [1e18] * 3
    L = [3.0, 2.9, 2.95, 2.7, 2.6, 2.65]
    fits = {1e17: [0.1, -2 * 0.1 * math.log(2e6), 0.1 * math.log(2e6) ** 2 + 2.9]}
    fig = isoflop_curves(N, [1] * 6, L, C, fits=fits)
    ax = fig.axes[0]
    vertices = [ln for ln in ax.lines if ln.get_marker() == "v"]
    assert len(vertices) == 1  # only the budget with given coefficients gets a curve
    assert vertices[0].get_xdata()[0] == pytest.approx(2e6)
    with pytest.raises(ValueError):
        isoflop_curves([1, 2], [1], [1, 2], [1, 2])


def test_predicted_vs_observed(tmp_path):
    obs = np.array([3.0, 2.5, 2.0, float("nan")])
    pred = np.array([3.03, 2.5, 1.98, 2.0])
    fig = predicted_vs_observed(obs, pred, labels=["a", "b", "c", "d"])
    ax = fig.axes[0]
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == 1 and len(scatters[0].get_offsets()) == 3  # NaN row left out
    (diag,) = [ln for ln in ax.lines if ln.get_label() == "y = x"]
    np.testing.assert_allclose(diag.get_xdata(), diag.get_ydata())
    mare = np.mean([0.03 / 3.0, 0.0, 0.02 / 2.0])
    assert f"{100 * mare:.2f} %" in ax.get_title()
    assert sorted(t.get_text() for t in ax.texts) == ["a", "b", "c"]
    _png(fig, tmp_path, "pvo.png")


def test_loss_vs_compute_shows_the_evidence(tmp_path):
    """Each size's fitted curve, the runs the fit used, the backtest's held-out runs, the band level,
    units on the axes and the extrapolation region."""
    sizes = [1e6, 4e6]
    runs = [{"C": 6 * n * d, "loss": _chinchilla(n, d) + 0.05 * k, "N": n, "used": k == 0}
            for n in sizes for d in (2e8, 8e8) for k in (0, 1)]
    curves = {n: {"C": 6 * n * np.geomspace(1e8, 1e9, 20), "loss": _chinchilla(n, np.geomspace(1e8, 1e9, 20))}
              for n in sizes}
    heldout = [{"C": 6 * 1.6e7 * 8e8, "loss": _chinchilla(1.6e7, 8e8), "predicted": _chinchilla(1.6e7, 8e8) * 1.01,
                "interval": [2.0, 2.5]}]
    fc = np.logspace(15, 19, 30)
    mid = 1.69 + 10 * fc ** -0.15
    fig = loss_vs_compute(runs, {"C": fc, "mid": mid, "low": mid - 0.02, "high": mid + 0.02},
                          [{"budget": 1e19, "predicted_loss": 2.3}], curves=curves, heldout=heldout, level=0.9)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "frontier 90% band" in labels
    assert CURVES_LABEL in labels and "runs in the fit (best per cell)" in labels
    assert "backtest: held out, observed" in labels
    assert "predicted by the fit without it, 90% interval (mean |error| 1 %)" in labels
    assert [t.get_text() for t in ax.texts if t.get_text().endswith(" %")] == ["+1.0 %"]
    assert any(t.startswith("extrapolation") for t in labels)
    assert "FLOPs" in ax.get_xlabel() and "nats" in ax.get_ylabel()
    per_size = [ln for ln in ax.lines if ln.get_color() != "black" and len(ln.get_xdata()) == 20]
    assert len(per_size) == len(sizes)
    # each curve in its size's colour: the colour of that size's runs
    scatters = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label().startswith("N = ")]
    assert [tuple(ln.get_color()) for ln in per_size] == [tuple(c.get_facecolor()[0]) for c in scatters]
    hollow = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())
              and len(c.get_facecolors()) == 0]
    assert sum(len(c.get_offsets()) for c in hollow) >= 4  # the runs not in the fit (+ held out)
    _png(fig, tmp_path, "evidence.png")


# ----------------------------------------------------------------------------- a recorded sweep's figures
# tests/data/sweep_plots: the store and spec of a real sweep (simulated `tiny` world, WSD branches, the pruner
# on, 5 learning rates x 3 batches per cell; see its spec.yaml). The figures are drawn from its rows and a fit
# of them, as at the end of a sweep, and each is checked for what it must show.

DATA = Path(__file__).resolve().parents[2] / "data"
SWEEP = DATA / "sweep_plots"


def _recorded_sweep(tmp_path_factory, recording: Path):
    """A recorded sweep's spec, store, fit and figures, as at the end of the sweep."""
    from orchestrator.app.plots.evidence import sweep_figures
    from orchestrator.config.fitting import fit_settings
    from orchestrator.core.proposals import fit_and_propose
    from orchestrator.config.spec import load_spec
    from orchestrator.io.store import ObservationStore, diverged_configs, final_points

    where = tmp_path_factory.mktemp("sweep") / recording.name
    shutil.copytree(recording, where)
    spec = load_spec(where / "spec.yaml").model_copy(update={"output_dir": str(where)})
    store = ObservationStore(where)
    points = final_points(store)
    fit = fit_and_propose(points, spec.budget.targets, **fit_settings(spec), diverged=diverged_configs(store))
    return spec, store, fit, sweep_figures(spec, store, fit, points)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return _recorded_sweep(tmp_path_factory, SWEEP)


def _legend(container) -> list[str]:
    legends = [container.get_legend()] if hasattr(container, "get_legend") else container.legends
    return [t.get_text() for lg in legends if lg is not None for t in lg.get_texts()]


def _units(ax, x_unit: str, y_unit: str) -> None:
    assert x_unit in ax.get_xlabel() and y_unit in ax.get_ylabel(), (ax.get_xlabel(), ax.get_ylabel())


def test_every_figure_of_the_recorded_sweep_is_drawn_and_renders(recorded):
    *_, figures = recorded
    assert set(figures) == {"loss_vs_compute", "isoflop", "backtest", "lr_bowls", "batch_bowls", "pruner", "wsd_branches"}
    for name, fig in figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=30)  # a small render: that Agg draws it, not how it looks
        assert buf.getvalue().startswith(PNG_MAGIC), name


def test_recorded_loss_vs_compute_states_units_and_band_level(recorded):
    spec, _, _, figures = recorded
    ax = figures["loss_vs_compute"].axes[0]
    _units(ax, "FLOPs", "nats/token")
    labels = _legend(ax)
    assert f"frontier {spec.fit.level:.0%} band" in labels
    assert {"N = 19,800 params", "proposals", "runs in the fit (best per cell)"} <= set(labels)


def _check_curves_and_backtest(ax, fit, level: float) -> None:
    """The loss-vs-compute evidence against the fit: one curve per observed size in that size's colour, on
    the law along D; the largest size's cells held out, predicted by a fit of the chosen form that did
    not see them (refitted here on the other cells), with the interval and the error marked."""
    from orchestrator.core.laws.selection import fit_auto

    labels = _legend(ax)
    N, D, L = (np.array([c[k] for c in fit.cells]) for k in ("N", "D", "loss"))
    sizes = sorted(set(N))
    scatters = {float(c.get_label().split(" = ")[1].split()[0].replace(",", "")): tuple(c.get_facecolor()[0])
                for c in ax.collections if isinstance(c, PathCollection) and c.get_label().startswith("N = ")}
    assert sorted(scatters) == pytest.approx(sizes, rel=1e-3)
    curves = [ln for ln in ax.lines if ln.get_label().startswith("_") and len(ln.get_xdata()) == 30]
    assert len(curves) == len(sizes) and CURVES_LABEL in labels
    for ln in curves:
        n = next(n for n, colour in scatters.items() if colour == tuple(ln.get_color()))  # the size of its colour
        C = ln.get_xdata()
        np.testing.assert_allclose(ln.get_ydata(), fit.fit.law.predict(np.full_like(C, n), C / (6 * n)), rtol=1e-9)
    # the backtest: the largest size's cells, boxed where they were observed
    largest = N == N.max()
    (boxes,) = [c for c in ax.collections if c.get_label().startswith("backtest: ")]
    assert boxes.get_label() == f"backtest: N = {N.max():,.0f} held out, observed"
    np.testing.assert_allclose(sorted(boxes.get_offsets()[:, 1]), sorted(L[largest]))
    (pred,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)
               and c.get_label().startswith("predicted by the fit without it")]
    assert f"{level:.0%} interval" in pred.get_label()
    x, y = pred.lines[0].get_xdata(), pred.lines[0].get_ydata()
    np.testing.assert_allclose(sorted(x), sorted(6 * N[largest] * D[largest]))
    alone = fit_auto(N[~largest], D[~largest], L[~largest], forms=(fit.fit.form,), bootstrap=0)
    order = np.argsort(x)
    want = alone.law.predict(N[largest], D[largest])[np.argsort(6 * N[largest] * D[largest])]
    np.testing.assert_allclose(y[order], want, rtol=1e-6)  # the same fit (the full fit is 0.3-1 % away)
    (bars,) = pred.lines[2]  # each prediction's interval
    assert len(bars.get_segments()) == largest.sum()
    obs = L[largest][np.argsort(6 * N[largest] * D[largest])]
    errors = sorted(t.get_text() for t in ax.texts if t.get_text().endswith(" %") and "dec." not in t.get_text())
    assert errors == sorted(f"{100 * (p / o - 1):+.1f} %" for p, o in zip(y[order], obs))
    mean = 100 * np.mean(np.abs(y[order] / obs - 1))
    assert pred.get_label().endswith(f"(mean |error| {mean:.2g} %)")


def test_recorded_loss_vs_compute_draws_each_size_curve_and_the_held_out_size(recorded):
    spec, _, fit, figures = recorded
    _check_curves_and_backtest(figures["loss_vs_compute"].axes[0], fit, spec.fit.level)


def test_demo_loss_vs_compute_draws_each_size_curve_and_the_held_out_size(tmp_path):
    """The demo's recorded final points (tests/data/demo, a real DeepSpeed run of examples/tiny.yaml)."""
    import csv

    from orchestrator.app.plots.evidence import loss_vs_compute_figure
    from orchestrator.config.fitting import fit_settings
    from orchestrator.core.proposals import fit_and_propose
    from orchestrator.config.spec import load_spec

    root = Path(__file__).resolve().parents[3]
    spec = load_spec(root / "examples" / "tiny.yaml")
    with (root / "tests" / "data" / "demo" / "final_points.csv").open() as fh:
        points = [{**r, **{k: float(r[k]) for k in ("N", "D", "D_nominal", "lr", "batch", "loss")}}
                  for r in csv.DictReader(fh)]
    fit = fit_and_propose(points, spec.budget.targets, **fit_settings(spec))
    fig = loss_vs_compute_figure(fit, spec, points)
    ax = fig.axes[0]
    _units(ax, "FLOPs", "nats/token")
    assert f"frontier {spec.fit.level:.0%} band" in _legend(ax)
    _check_curves_and_backtest(ax, fit, spec.fit.level)
    _png(fig, tmp_path, "demo_lvc.png")


def test_recorded_isoflop_minima_sit_on_the_law_and_n_opt_panel(recorded):
    spec, _, fit, figures = recorded
    ax, ax_opt = figures["isoflop"].axes
    _units(ax, "parameters N", "nats/token")
    _units(ax_opt, "FLOPs", "params")
    assert {"fitted L(N, D) along each C", "its minimum N*(C)"} <= set(_legend(ax))
    assert {"fitted L(N, D): N*(C)", f"proposals N* ({spec.fit.level:.0%} interval)"} <= set(_legend(ax_opt))
    # each marked minimum is the law's compute-optimal N at that compute, to the slice's grid step (7 %)
    minima = [ln for ln in ax.lines if ln.get_marker() == "D"]
    assert minima
    for ln, note in zip(minima, [t for t in ax.texts]):
        c = float(note.get_text())
        n_opt = float(fit.fit.law.frontier([c], "6ND")["N_opt"][0])
        assert ln.get_xdata()[0] == pytest.approx(n_opt, rel=0.08)
    # the proposals' N* on the N_opt panel are the fit's proposals
    (stars,) = [c for c in ax_opt.containers if isinstance(c, ErrorbarContainer)]
    np.testing.assert_allclose(stars.lines[0].get_ydata(), [p["N"] for p in fit.proposals])


def test_recorded_per_param_sweep_draws_isoflop_slices_read_off_its_curves(recorded):
    # a per-param grid (D = 10, 20, 40 x N): no two sizes share a budget, so the slices come from the curves
    from orchestrator.app.plots.evidence import curve_points
    from orchestrator.app.plots.isoflop_slices import isoflop_slices

    _, store, _, figures = recorded
    ax = figures["isoflop"].axes[0]
    pts = curve_points(store)
    slices = isoflop_slices(pts["N"], pts["C"], pts["loss"])
    drawn = [sc for sc in ax.collections if sc.get_label().startswith("C = ")]
    assert len(drawn) == len(slices) >= 3
    for sc, s in zip(drawn, slices):
        np.testing.assert_allclose(sc.get_offsets(), np.column_stack([s["N"], s["loss"]]))
    parabolas = [ln for ln in ax.lines if ln.get_marker() in ("None", None, "") and ln.get_linestyle() == "-"]
    assert len(parabolas) == len(slices)
    # a minimum is drawn exactly where the slice's lowest point has a size on each side
    assert len([ln for ln in ax.lines if ln.get_marker() == "v"]) == sum(s["N_opt"] is not None for s in slices)


# tests/data/sweep_isoflop: a recorded isoFLOP design (sizes and token counts both doubling, so each
# anti-diagonal of the grid shares a compute level) whose levels bracket the tiny world's optimum.


@pytest.fixture(scope="module")
def isoflop_design(tmp_path_factory):
    return _recorded_sweep(tmp_path_factory, DATA / "sweep_isoflop")


def test_recorded_isoflop_design_draws_each_levels_minimum_and_the_n_opt_fit(isoflop_design):
    from orchestrator.app.plots.isoflop import group_by_compute, power_law
    from trainers.worlds.world import load_world

    spec, _, fit, figures = isoflop_design
    ax, ax_opt = figures["isoflop"].axes
    _units(ax, "(params)", "nats/token")
    _units(ax_opt, "FLOPs", "params")
    assert {"parabola in ln N", "its minimum: N_opt at that C", "fitted L(N, D) along each C"} <= set(_legend(ax))
    # every compute level three sizes share, from the fit's cells (each cell's best run): a parabola in ln N
    # through them, its minimum bracketed (the level's lowest cell has a size on each side)
    N, D, L = (np.array([c[k] for c in fit.cells]) for k in ("N", "D", "loss"))
    C = 6 * N * D
    labels = group_by_compute(C, 0.3)
    want = []
    for g in np.unique(labels):
        sel = labels == g
        if len(np.unique(N[sel])) < 3:
            continue
        order = np.argsort(N[sel])
        n, loss = N[sel][order], L[sel][order]
        assert 0 < int(np.argmin(loss)) < len(n) - 1, (n, loss)  # bracketed by the design
        a, b, _ = np.polyfit(np.log(n), loss, 2)
        want.append((float(np.exp(np.mean(np.log(C[sel])))), float(np.exp(-b / (2 * a)))))
    minima = [ln for ln in ax.lines if ln.get_marker() == "v"]
    assert len(minima) == len(want) == 3
    np.testing.assert_allclose(sorted(ln.get_xdata()[0] for ln in minima), sorted(n for _, n in want), rtol=1e-9)
    # the N_opt(C) panel: the minima and the power law fitted to them
    (dots,) = [c for c in ax_opt.collections if c.get_label() == "isoFLOP minima"]
    np.testing.assert_allclose(dots.get_offsets(), want, rtol=1e-9)
    k, a = power_law(*zip(*want))
    (line,) = [ln for ln in ax_opt.lines if ln.get_label().endswith("(fit to the minima)")]
    assert line.get_label() == f"N_opt = {k:.3g} C^{a:.2f} (fit to the minima)"
    assert {"fitted L(N, D): N*(C)", f"proposals N* ({spec.fit.level:.0%} interval)"} <= set(_legend(ax_opt))
    # scored against the world's truth (never seen by the fit): each minimum within a factor 1.5 of the
    # tiny world's compute-optimal N at that C (recorded: +2 %, +13 %, +43 %; the grid steps by 2x in N)
    world = load_world(spec.trainer.world)
    for c, n in want:
        assert 1 / 1.5 < n / world.optimum(c)["N"] < 1.5, (c, n, world.optimum(c)["N"])


_DIMENSIONLESS = ("peak learning rate lr", "accuracy (fraction correct)")  # axes whose quantity has no unit


@pytest.mark.parametrize("which", ["recorded", "isoflop_design"])
def test_every_axis_has_its_unit_and_every_band_its_level(which, request):
    """Issue 17: units on every axis, the level on every band and interval, on both recorded sweeps."""
    spec, _, _, figures = request.getfixturevalue(which)
    level = f"{spec.fit.level:.0%}"
    for name, fig in figures.items():
        for ax in fig.axes:
            if not ax.has_data():
                continue
            for label in (ax.get_xlabel(), ax.get_ylabel()):
                assert label in _DIMENSIONLESS or re.search(r"\([^)]+\)$", label), (name, label)
        for text in _legend(fig) + [t for ax in fig.axes for t in _legend(ax)]:
            if re.search(r"band|interval", text):
                assert level in text, (name, text)


def test_recorded_backtest_shows_every_held_out_cell_with_its_interval(recorded):
    from orchestrator.app.plots.evidence import BACKTEST_NAMES

    spec, _, fit, figures = recorded
    ax = figures["backtest"].axes[0]
    _units(ax, "nats/token", "nats/token")
    level = f"{spec.fit.level:.0%}"
    assert f"prediction's {level} interval" in _legend(ax)
    chosen = fit.to_json()["law"]["selection"]["candidates"][fit.fit.form]["backtests"]
    ran = {k: bt for k, bt in chosen.items() if "error" not in bt}  # a backtest with too few cells left is skipped
    assert ran and {BACKTEST_NAMES[k] for k in ran} <= set(_legend(ax))
    n_held = sum(bt["n_test"] for bt in ran.values())
    points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    assert points == n_held
    assert f"/{n_held} inside the {level} interval" in ax.get_title()


@pytest.mark.parametrize("axis, law_label", [("lr", "fitted lr*(N, D)"), ("batch", "fitted batch*(D)")])
def test_recorded_bowls_mark_the_fitted_law_in_every_cell(recorded, axis, law_label):
    from orchestrator.app.plots.evidence import hparam_runs
    from orchestrator.core.proposals import learned_hparams

    _, store, _, figures = recorded
    fig = figures[f"{axis}_bowls"]
    runs = hparam_runs(store.trials(), store)
    law = learned_hparams(runs)
    assert law is not None  # 5 lr x 3 batches per cell: the recorded sweep pins both laws
    assert law_label in _legend(fig)
    cells = {(r["N"], r["D"]) for r in runs}
    assert len(fig.axes) == len(cells) == 9
    for ax in fig.axes:
        _units(ax, "lr" if axis == "lr" else "tokens", "nats/token")
        n, d = (float(x.split(" = ")[1].split()[0].replace(",", "")) for x in ax.get_title().split(", "))
        (vline,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
        want = law(n, d)[0 if axis == "lr" else 1]
        assert vline.get_xdata()[0] == pytest.approx(want, rel=1e-6)


def test_recorded_pruner_decisions_mark_every_stop(recorded):
    _, store, _, figures = recorded
    ax = figures["pruner"].axes[0]
    _units(ax, "tokens", "nats/token")
    trials = store.trials()
    stopped = [t for t, r in trials.items() if r["status"] == "stopped"]
    diverged = [t for t, r in trials.items() if r["status"] == "diverged"]
    assert stopped, "the recorded sweep's pruner stopped trials"
    assert f"{len(stopped)} stopped early, {len(diverged)} diverged" in ax.get_title()
    stops = [ln for ln in ax.lines if ln.get_marker() == "X"]
    assert len(stops) == len(stopped)
    last = store.last_reports(finite="eval_loss")
    assert sorted(ln.get_ydata()[0] for ln in stops) == pytest.approx(sorted(last[t]["eval_loss"] for t in stopped))
    labels = _legend(ax)
    assert {"stopped here by the pruner", "its true final loss (had it run on)"} <= set(labels)
    assert any(t.startswith("its predicted final loss") for t in labels)


def test_recorded_branches_join_each_trunk_and_its_cooldowns(recorded):
    _, store, _, figures = recorded
    fig = figures["wsd_branches"]
    sizes = {r["config"]["N"] for r in store.trials().values() if r["config"]["branch_of"]}
    assert len(fig.axes) == len(sizes)
    for ax in fig.axes:
        _units(ax, "tokens", "nats/token")
        assert {"cooldown branch", "branch point (trunk checkpoint)", "branch end: an (N, D) point"} <= set(_legend(ax))
        assert any(t.startswith("trunk lr = ") for t in _legend(ax))


def test_doctests_of_the_plots_and_the_report():
    import doctest

    from orchestrator.app import report
    from orchestrator.app.plots import isoflop

    for module in (isoflop, report):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_report_page_of_the_recorded_sweep_says_what_ran_and_what_never_started(recorded):
    from orchestrator.app.report import not_run, render_html

    spec, store, fit, _ = recorded
    trials, last = store.trials(), store.last_reports()
    unrun = not_run(spec, trials)
    # 135 grid trials; 119 ran; the 16 others are branches of the 4 trunks the pruner stopped or of diverged ones
    assert unrun == {"grid": 135, "missing": 16, "behind_stopped_trunk": 16, "strategy": "grid"}
    page = render_html(spec.name, "/d", "name: plots", trials, last, {}, fit.to_json(), {}, None, unrun)
    assert "119 trials: 11 diverged, 104 finished, 4 stopped" in page
    assert "16 of the grid's 135 trials never started: 16 are WSD branches of a trunk that did not finish" in page
    assert page.count("<td>stopped</td>") == 4 and page.count("<td>diverged</td>") == 11
    assert "lr*(N, D), batch*(D)</b>: not fitted" in page  # hparams=None: said, not hidden


def test_report_page_states_the_hyperparameter_laws_with_their_intervals(recorded):
    import html

    from orchestrator.app.report import hparam_laws, render_html
    from orchestrator.app.sweep_summary import HPARAM_PARAMS, hparam_formulas

    spec, store, fit, _ = recorded
    hp = hparam_laws(store.trials(), store, spec.fit.level)
    assert hp is not None and hp["method"] == "SurfaceFit"  # 5 lr x 3 batches per cell: the joint surface fits
    page = render_html(spec.name, "/d", "", store.trials(), store.last_reports(), {}, fit.to_json(), {}, hp)
    formulas = hparam_formulas(hp)
    assert html.escape(formulas["lr"]) in page and html.escape(formulas["batch"]) in page
    level = f"{spec.fit.level:.0%}"
    for group, names in HPARAM_PARAMS.items():
        for name in names:
            iv = hp[group]["intervals"][name]
            assert iv["low"] < hp[group][name] < iv["high"]
            assert (f"<td>{group}.{name}</td><td class=num>{hp[group][name]:.4g}</td>"
                    f"<td class=num>[{iv['low']:.4g}, {iv['high']:.4g}]</td><td class=num>{level}</td>") in page
