"""Golden test on the public Pythia evaluations (tests/data/pythia_evals, see SOURCES.md).

Fit every checkpoint (after warm-up) of the standard models up to 1.4B, predict the final
checkpoints of 2.8B, 6.9B and 12B. The expected errors (predicted − observed, accuracy points) are
the values `python -m benchmarks.downstream` measured; see docs/downstream.md.
"""
import numpy as np
import pytest

from benchmarks.downstream import load_pythia, run_method, task_columns

# measured errors of latent-sigmoid, points: 2.8B, 6.9B, 12B
MEASURED = {
    "lambada_openai": (-1.17, 0.69, -0.28),
    "piqa": (-0.90, 0.53, 1.42),
    "arc_easy": (-2.93, -1.98, -2.70),
    "sciq": (-2.48, -2.65, -2.52),
}
MODELS = ("2.8b", "6.9b", "12b")
BOOTSTRAP = 200


@pytest.fixture(scope="module")
def data():
    return load_pythia("standard")


@pytest.fixture(scope="module")
def latent(data):
    return {task: run_method(task_columns(data, task), task, "latent-sigmoid", bootstrap=BOOTSTRAP)
            for task in MEASURED}


@pytest.mark.parametrize("task", list(MEASURED))
def test_latent_sigmoid_errors_match_the_measured_values(latent, task):
    res = latent[task]
    err = {p["model"]: p["error_points"] for p in res["points"]}
    assert sorted(err) == sorted(MODELS)
    for model, expected in zip(MODELS, MEASURED[task]):
        assert err[model] == pytest.approx(expected, abs=0.3), (task, model, err[model])
        assert abs(err[model]) < 3.0  # within 3 points at 2x-9x the largest fitted model
    assert not any("signal" in w or "monotone" in w for w in res["warnings"])


def test_interval_coverage_on_held_out_points(latent):
    covered = sum(r["covered"] for r in latent.values())
    covered_pred = sum(r["covered_prediction_interval"] for r in latent.values())
    n = sum(r["n_intervals"] for r in latent.values())
    assert n == 12
    # measured: 8/12 inside the 90 % interval of the mean, 12/12 inside the 90 % prediction interval
    assert covered >= 7
    assert covered_pred >= 11


def test_two_step_through_lambada_loss_is_measured_and_worse(data):
    """LAMBADA's own task loss (log-perplexity) through the sigmoid link: the genuine two-step."""
    res = run_method(task_columns(data, "lambada_openai"), "lambada_openai", "lambada-sigmoid", bootstrap=50)
    err = {p["model"]: p["error_points"] for p in res["points"]}
    for model, expected in zip(MODELS, (-2.93, -2.37, -4.08)):
        assert err[model] == pytest.approx(expected, abs=0.3)
    # step 1 alone (Chinchilla law on LAMBADA log-perplexity): measured errors +0.014, -0.101, -0.091 nats
    obs = {"2.8b": np.log(5.0361), "6.9b": np.log(4.4491), "12b": np.log(3.9236)}
    expected = {"2.8b": 0.014, "6.9b": -0.101, "12b": -0.091}
    for p in res["points"]:
        assert p["loss_predicted"] - obs[p["model"]] == pytest.approx(expected[p["model"]], abs=0.01)


def test_tasks_without_signal_are_flagged(data):
    for task in ("logiqa", "arc_challenge"):
        res = run_method(task_columns(data, task), task, "latent-sigmoid", bootstrap=0)
        assert any("too little signal" in w for w in res["warnings"]), task
