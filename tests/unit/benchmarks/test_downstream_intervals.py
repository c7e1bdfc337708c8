"""benchmarks/downstream_intervals.py: its CR2 pieces agree with each other and with a straight line's known
values, and one replication of each kind of setting yields every method's interval."""
import numpy as np

from benchmarks import downstream_intervals as di


def _line():
    """y = 1 + x through 5 clusters of 4 rows (x = 0..4), predicted at x = 8."""
    x = np.repeat([0.0, 1.0, 2.0, 3.0, 4.0], 4)
    g = np.repeat(np.arange(5), 4)
    y = 1 + x + np.random.default_rng(1).normal(0.0, 0.1, 20)
    X = np.stack([np.ones(20), x], axis=1)
    theta = np.linalg.lstsq(X, y, rcond=None)[0]
    return X, y - X @ theta, g


def test_cr2_of_a_straight_line():
    X, r, g = _line()
    se, df, crit, (rt,) = di.cr2([di.block(X, r, g)], [np.array([1.0, 8.0])], np.unique(g), exact_draws=20_000)
    # The values of the CR2 implementation of commit ef8b6ce (its doctest): t(4) would be 2.13, t(1.82) 3.13.
    assert round(df, 2) == 1.82 and round(crit, 1) == 2.7
    # Transformed residuals are larger than the raw ones (the fit shrinks residuals, most at high leverage).
    assert np.sum(rt ** 2) > np.sum(r ** 2)


def test_batched_cr2_matches_one_at_a_time():
    X, r, g = _line()
    rng = np.random.default_rng(0)
    Xs = X[None] * rng.uniform(0.5, 2.0, (3, 20, 1))
    rs = r[None] * rng.uniform(0.5, 2.0, (3, 20))
    c = rng.normal(size=(3, 2))
    shape = rng.uniform(0.5, 1.5, 20)
    batch = di.cr2_se_batch([di.block_batch(Xs, rs, g, np.ones(20), shape)], [c], np.unique(g))
    one = [di.cr2([di.block(Xs[i], rs[i], g, None, shape)], [c[i]], np.unique(g))[0] for i in range(3)]
    assert np.allclose(batch, one, rtol=1e-10)


def test_every_method_gives_an_interval():
    di.KINDS[:] = ["wild", "wild2", "param"]
    s = di.run_latent("5 sizes", 8, 4.0, 5, 1000, reps=1, B=19, level=0.9, exact_draws=500)
    t = di.run_two_step("two-step", 5, reps=1, B=19, level=0.9, exact_draws=500)
    for m in di.methods():
        assert s[f"acc.{m}"]["width_points"] > 0 and t[f"acc.{m}"]["width_points"] > 0, m
        assert t[f"loss.{m}"]["width_points"] > 0, m
