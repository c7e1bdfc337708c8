"""The HTTP API bounds what a request may cost and may not choose where the server writes,
what it reads or whom it contacts (issue 16). In-process (`create_app(launch=False)`: specs
are validated and recorded, nothing is started)."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from orchestrator.app.api import EXAMPLE_SPEC, MAX_BODY_BYTES, create_app


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(tmp_path / "root", launch=False)) as c:
        yield c


def spec(**changes):
    return {**EXAMPLE_SPEC, "name": "bounded", **changes}


BAD = [
    ("count-as-string", spec(learning_rates={"min": 1e-3, "max": 1e-1, "count": "1000000"}), "count"),
    ("count-1e9", spec(learning_rates={"min": 1e-3, "max": 1e-1, "count": 1e9}), "count"),
    ("20000-seeds", spec(seeds=list(range(20000))), "seeds"),
    ("2000-seeds", spec(seeds=list(range(2000))), "seeds"),
    ("grid-over-the-server-cap", spec(seeds=list(range(1000)), learning_rates=[0.01, 0.02, 0.03, 0.04]), "grid"),
    ("list-of-20000-lrs", spec(learning_rates=[1e-3 * (1 + i / 20000) for i in range(20000)]), "learning_rates"),
    ("n-params-1e15", spec(model={"n_params": [1e15]}), "model.n_params"),
    ("bootstrap-1e9", spec(fit={"bootstrap": 10**9}), "fit.bootstrap"),
    ("tracking-uri-sqlite", spec(tracking={"uri": "sqlite:////tmp/pwned_by_api_client.db"}), "tracking.uri"),
    ("tracking-uri-http", spec(tracking={"uri": "http://169.254.169.254/"}), "tracking.uri"),
    ("artifact-location", spec(tracking={"artifact_location": "/tmp/pwned_by_api_client"}),
     "tracking.artifact_location"),
    ("store-s3", spec(store="s3://attacker-bucket/pwned"), "store"),
    ("data-etc", spec(data="/etc"), "data"),
    ("name-300", spec(name="x" * 300), "name"),
    ("world-path", spec(trainer={"backend": "simulated", "world": "/etc/hostname"}), "trainer.world"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("label,body,field", BAD, ids=[b[0] for b in BAD])
def test_refused_with_422_naming_the_field(client, tmp_path, label, body, field):
    r = client.post("/sweeps", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
    assert not any((tmp_path / "root").iterdir())  # nothing created
    assert not (tmp_path / "pwned_by_api_client.db").exists()


@pytest.mark.timeout(30)
def test_deep_json_is_422_not_500(client):
    body = '{"name": "deep", "model": ' + "[" * 900 + "]" * 900 + "}"
    r = client.post("/sweeps", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "nested" in r.json()["detail"]


def test_body_over_the_limit_is_413(client):
    body = json.dumps(spec(comment="x" * MAX_BODY_BYTES))
    r = client.post("/sweeps", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_output_dir_is_the_servers_choice(client, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    r = client.post("/sweeps", json=spec(output_dir=str(elsewhere)))
    assert r.status_code == 202, r.text
    assert (tmp_path / "root" / "bounded" / "spec.yaml").is_file() and not elsewhere.exists()


def _plant(root):
    """ROOT/planted: finished trials on a 4 x 4 (N, D) grid following a Chinchilla law."""
    import yaml

    from orchestrator.core.laws.chinchilla import ChinchillaLaw
    from orchestrator.io.store import ObservationStore

    truth = ChinchillaLaw(E=1.8172, A=19.5815, B=71.7777, alpha=0.3478, beta=0.3658)
    d = root / "planted"
    d.mkdir(parents=True)
    (d / "spec.yaml").write_text(yaml.safe_dump({
        "name": "planted", "model": {"n_params": [20_000, 60_000, 200_000, 600_000]},
        "tokens": {"values": [400_000, 1_600_000, 6_400_000, 25_600_000]}, "learning_rates": [0.01],
        "batch_sizes": [8192], "trainer": {"backend": "simulated"}, "fit": {"bootstrap": 0}, "output_dir": str(d)}))
    store = ObservationStore(d)
    for n in (20_000, 60_000, 200_000, 600_000):
        for D in (400_000, 1_600_000, 6_400_000, 25_600_000):
            tid = f"N{n}-D{D}"
            store.append(tid, {"step": 1, "tokens": D, "flops": 6.0 * n * D, "eval_loss": float(truth.predict(n, D)),
                               "done": True})
            store.set_status(tid, "finished", config={"N": n, "D": D, "lr": 0.01, "batch": 8192, "seed": 0,
                                                      "flops": 6.0 * n * D})
    store.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("budget", ["1e-300", "1e3"])
def test_a_budget_below_the_smallest_model_is_422(tmp_path, budget):
    _plant(tmp_path / "root")
    with TestClient(create_app(tmp_path / "root", launch=False)) as c:
        ok = c.get("/sweeps/planted/proposals", params={"budget": "1e15", "bootstrap": 0})
        assert ok.status_code == 200, ok.text
        r = c.get("/sweeps/planted/proposals", params={"budget": budget, "bootstrap": 0})
        assert r.status_code == 422, r.text
        assert "budget" in r.json()["detail"] and "smallest" in r.json()["detail"]


def test_a_server_tracking_uri_is_every_sweeps(tmp_path):
    import yaml

    uri = f"sqlite:///{tmp_path / 'server-mlflow.db'}"
    with TestClient(create_app(tmp_path / "root", launch=False, tracking_uri=uri)) as c:
        r = c.post("/sweeps", json=spec(tracking={"experiment": "lab"}))
        assert r.status_code == 202, r.text
        r = c.post("/sweeps", json=spec(name="other", tracking={"uri": "sqlite:////tmp/mine.db"}))
        assert r.status_code == 422 and f"sweeps track to {uri}" in r.json()["detail"]
    written = yaml.safe_load((tmp_path / "root" / "bounded" / "spec.yaml").read_text())
    assert {k: v for k, v in written["tracking"].items() if v is not None} == {"uri": uri, "experiment": "lab"}


def test_serve_refuses_a_tracking_uri_mlflow_cannot_use(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.app.cli import get_app

    r = CliRunner().invoke(get_app(), ["serve", "--root", str(tmp_path), "--tracking-uri", "foo://x"])
    assert r.exit_code == 2 and "--tracking-uri foo://x: scheme 'foo'" in r.output, r.output
