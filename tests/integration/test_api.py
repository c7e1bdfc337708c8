"""The HTTP API over loopback with real servers (`python -m orchestrator.app.cli serve` subprocesses).

Two kinds of data: a sweep submitted through POST /sweeps with the simulated backend (a real
Ray Tune run in the server's child process, ~1 min, checked at the end of the module), and a
sweep directory planted through the ObservationStore whose finished trials follow a known
Chinchilla law and known lr*/batch* laws, so the fits the API serves can be checked against
the truth.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from orchestrator.core.laws.chinchilla import ChinchillaLaw
from orchestrator.io.store import ObservationStore
from tests.integration.conftest import SIM_SPEC, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOKEN_ENV = "SCALESWEEP_API_TOKEN"

# The planted truth: the tiny world's L(N, D) and Step-Law hyperparameter laws (trainers/worlds/tiny.yaml).
TRUTH = ChinchillaLaw(E=1.8172, A=19.5815, B=71.7777, alpha=0.3478, beta=0.3658)
LR = (1.79, -0.713, 0.307)  # lr* = c · N^a · D^b
BATCH = (0.58, 0.571)  # batch* = c · D^d (tokens)
BOWL = 0.05  # loss penalty per (log-unit)^2 away from (lr*, batch*)
SIZES = [20_000, 60_000, 200_000, 600_000]
TOKENS = [400_000, 1_600_000, 6_400_000, 25_600_000]
LR_FACTORS = [0.5, 1.0, 2.0]
BATCH_FACTORS = [1.0, 2.0]
TARGET = 1e15  # one decade beyond the largest planted cell (C = 9.2e13)


def _env(token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if token is not None:
        env[TOKEN_ENV] = token
    return env


def _serve_cmd(root: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "orchestrator.app.cli", "serve", "--root", str(root), "--host", host,
            "--port", str(port), "--log-level", "warning"]


class Server:
    """A `scalesweep serve` subprocess on a free loopback port."""

    def __init__(self, root: Path, token: str | None = None):
        for _ in range(3):  # a free port can be taken between probing and binding: retry
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.log = root.parent / f"server-{self.port}.log"
            self.proc = subprocess.Popen(_serve_cmd(root, "127.0.0.1", self.port), env=_env(token),
                                         stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, cwd=root.parent)
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

    def _wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                httpx.get(self.url + "/openapi.json", timeout=2.0)
                return True
            except httpx.TransportError:
                time.sleep(0.2)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _plant(root: Path) -> dict:
    """ROOT/planted: finished trials on a 4 x 4 (N, D) grid x 3 lr x 2 batch following the truth."""
    d = root / "planted"
    d.mkdir()
    spec = {"name": "planted", "model": {"n_params": SIZES}, "tokens": {"values": TOKENS},
            "learning_rates": [0.01, 0.03], "batch_sizes": [8192], "trainer": {"backend": "simulated"},
            "budget": {"targets": [TARGET]}, "fit": {"bootstrap": 40}, "output_dir": str(d)}
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    store = ObservationStore(d)
    flops_total = 0.0
    for n in SIZES:
        for D in TOKENS:
            lr_star = LR[0] * n ** LR[1] * D ** LR[2]
            b_star = BATCH[0] * D ** BATCH[1]
            for fl in LR_FACTORS:
                for fb in BATCH_FACTORS:
                    lr, b = lr_star * fl, b_star * fb
                    loss = float(TRUTH.predict(n, D)) + BOWL * (math.log(fl) ** 2 + math.log(fb) ** 2)
                    tid = f"N{n}-D{D}-lr{fl}-b{fb}"
                    flops = 6.0 * n * D
                    store.append(tid, {"step": 1, "tokens": D // 2, "flops": flops / 2, "eval_loss": loss + 0.5})
                    store.append(tid, {"step": 2, "tokens": D, "flops": flops, "eval_loss": loss, "done": True})
                    store.set_status(tid, "finished", config={"N": n, "D": D, "lr": lr, "batch": b, "seed": 0,
                                                              "flops": flops})
                    flops_total += flops
    # A diverged run (censored in the hparam fit) and a running one (counted, not fitted).
    n, D = SIZES[0], TOKENS[0]
    store.append("diverged", {"step": 1, "tokens": 1000, "flops": 6.0 * n * 1000, "eval_loss": float("nan")})
    store.set_status("diverged", "diverged",
                     config={"N": n, "D": D, "lr": 8 * LR[0] * n ** LR[1] * D ** LR[2], "batch": 8192, "seed": 0})
    store.append("running", {"step": 1, "tokens": 2000, "flops": 6.0 * n * 2000, "eval_loss": 4.0})
    store.set_status("running", "running", config={"N": n, "D": D, "lr": 0.01, "batch": 8192, "seed": 0})
    store.close()
    flops_total += 6.0 * n * 1000 + 6.0 * n * 2000
    return {"flops": flops_total, "finished": len(SIZES) * len(TOKENS) * len(LR_FACTORS) * len(BATCH_FACTORS)}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("api") / "sweeps"
    r.mkdir()
    return r


@pytest.fixture(scope="module")
def planted(root) -> dict:
    info = _plant(root)
    (root / "empty").mkdir()  # a sweep with a spec and no trials yet
    (root / "empty" / "spec.yaml").write_text(yaml.safe_dump({**SIM_SPEC, "name": "empty"}))
    # Sweeps a previous server started: one whose controller exited 3, one whose supervisor died
    # without recording an exit code (its pid is a finished process's).
    for name, ctrl in (("crashed", {"launched": True, "pid": _dead_pid(), "exit_code": 3}),
                       ("vanished", {"launched": True, "pid": _dead_pid()})):
        (root / name).mkdir()
        (root / name / "spec.yaml").write_text(yaml.safe_dump({**SIM_SPEC, "name": name}))
        (root / name / "controller.json").write_text(json.dumps(ctrl))
    return info


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def server(root, planted):
    s = Server(root)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60.0) as c:
        yield c


@pytest.fixture(scope="module")
def launched(client, root, tmp_path_factory):
    """POST the simulated sweep (with an output_dir the server must ignore) as early as possible."""
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "sim"
    r = client.post("/sweeps", json={**SIM_SPEC, "output_dir": str(elsewhere)})
    yield r, elsewhere
    # The sweep outlives its server by design; a partial test run must not leave it behind.
    ctrl = json.loads((root / "sim" / "controller.json").read_text()) if r.status_code == 202 else {}
    if ctrl.get("exit_code") is None and isinstance(ctrl.get("pid"), int):
        try:
            os.kill(ctrl["pid"], signal.SIGTERM)  # the supervisor forwards it to the sweep
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------- submit


def test_submit_starts_a_sweep_under_root(launched, root, client):
    r, elsewhere = launched
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["id"] == "sim" and body["status"] == "running"
    assert body["links"]["proposals"] == "/sweeps/sim/proposals"
    written = yaml.safe_load((root / "sim" / "spec.yaml").read_text())
    assert written["output_dir"] == str((root / "sim").resolve())  # never where the client asked
    assert not elsewhere.exists()
    ctrl = json.loads((root / "sim" / "controller.json").read_text())
    assert isinstance(ctrl["pid"], int) and ctrl["launched"] is True
    assert client.get("/sweeps/sim").json()["status"] in ("running", "finished")


def test_submit_duplicate_is_409(launched, client):
    r = client.post("/sweeps", json=SIM_SPEC)
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    r = client.post("/sweeps", json={**SIM_SPEC, "name": "planted"})
    assert r.status_code == 409


@pytest.mark.parametrize("body, field", [
    ({**SIM_SPEC, "name": "bad1", "learning_rates": [-0.01]}, "learning_rates"),
    ({**SIM_SPEC, "name": "bad2", "tokens": {"per_param": [10], "values": [1e6]}}, "tokens"),
    ({**SIM_SPEC, "name": "bad3", "bogus_field": 1}, "bogus_field"),
    ({**SIM_SPEC, "name": "bad4", "trainer": {"backend": "simulated", "world": "no-such-world"}}, "trainer"),
    # a path would make the server read (and quote) any file it can see: bundled worlds only
    ({**SIM_SPEC, "name": "bad7", "trainer": {"backend": "simulated", "world": "/etc/passwd"}}, "trainer.world"),
    ({**SIM_SPEC, "name": "bad5", "model": {"n_params": {"min": 1e4, "max": 1e5, "count": 10**9}}}, "count"),
    ({**SIM_SPEC, "name": "bad/../../x"}, "name"),
    ({**SIM_SPEC, "name": ".."}, "name"),
    ({k: v for k, v in SIM_SPEC.items() if k != "model"} | {"name": "bad6"}, "model"),
])
def test_bad_spec_is_422_naming_the_field(client, root, body, field):
    r = client.post("/sweeps", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
    assert not any(p.name.startswith("bad") for p in root.iterdir())


@pytest.mark.parametrize("content, ctype, code", [
    (b"{not json", "application/json", 422),
    (b"[1, 2, 3]", "application/json", 422),
    (b"", "application/json", 422),
    (b"name: x", "text/yaml", 415),
])
def test_malformed_body_is_4xx_with_message(client, content, ctype, code):
    r = client.post("/sweeps", content=content, headers={"content-type": ctype})
    assert r.status_code == code, r.text
    assert r.json()["detail"]


# ------------------------------------------------------------------------------------ reads


def test_list_sweeps(client, planted):
    r = client.get("/sweeps")
    assert r.status_code == 200
    rows = {row["id"]: row for row in r.json()}
    assert {"planted", "empty", "sim"} <= set(rows)
    p = rows["planted"]
    assert p["trials"] == {"finished": planted["finished"], "diverged": 1, "running": 1}
    assert p["flops_spent"] == pytest.approx(planted["flops"], rel=1e-12)
    assert p["status"] == "unmanaged"  # data present, not started by a server
    assert rows["empty"]["trials"] == {} and rows["empty"]["flops_spent"] == 0.0


def test_status_of_sweeps_started_by_an_earlier_server(client):
    crashed = client.get("/sweeps/crashed").json()
    assert crashed["status"] == "failed" and crashed["exit_code"] == 3
    vanished = client.get("/sweeps/vanished").json()
    assert vanished["status"] == "failed" and vanished["exit_code"] is None
    assert "without recording an exit code" in vanished["controller"]["reason"]


def test_get_sweep_detail(client, planted):
    r = client.get("/sweeps/planted")
    assert r.status_code == 200
    doc = r.json()
    assert doc["spec"]["sizes"] == SIZES and doc["spec"]["targets"] == [TARGET]
    assert doc["trials"]["finished"] == planted["finished"]
    assert doc["flops_spent"] == pytest.approx(planted["flops"], rel=1e-12)
    assert doc["fit"] is None and doc["controller"] is None


def test_proposals_recover_the_planted_frontier(client):
    r = client.get("/sweeps/planted/proposals", params={"budget": [TARGET, 1e14], "bootstrap": 40})
    assert r.status_code == 200, r.text
    props = r.json()
    assert [p["budget"] for p in props] == [TARGET, 1e14]
    truth = TRUTH.frontier([TARGET, 1e14])
    for i, p in enumerate(props):
        assert p["N"] == pytest.approx(truth["N_opt"][i], rel=0.05)
        assert p["D"] == pytest.approx(truth["D_opt"][i], rel=0.05)
        assert p["predicted_loss"] == pytest.approx(truth["loss_opt"][i], rel=2e-3)
        # exact planted data: the bootstrap interval is (nearly) a point at the truth
        for key, val in (("N_opt", truth["N_opt"][i]), ("loss_opt", truth["loss_opt"][i])):
            iv = p["intervals"][key]
            assert iv["low"] <= iv["high"]
            assert iv["low"] == pytest.approx(val, rel=0.05) and iv["high"] == pytest.approx(val, rel=0.05)
        # lr/batch come from the nearest observed cell: the planted best of that cell
        assert p["lr"] > 0 and p["batch"] > 0
        # the resource plan of the proposal on the spec's device (default: this machine's CPU)
        res = p["resources"]
        assert res["device"].startswith("cpu") and (res.get("error") or res["workers"] >= 1)
    # same store, same query: served from the cache, identical
    again = client.get("/sweeps/planted/proposals", params={"budget": [TARGET, 1e14], "bootstrap": 40}).json()
    assert again == props


def test_laws_recover_the_planted_laws(client):
    r = client.get("/sweeps/planted/laws", params={"bootstrap": 40})
    assert r.status_code == 200, r.text
    doc = r.json()
    params = doc["law"]["params"]
    for name in ("E", "alpha", "beta"):
        assert params[name] == pytest.approx(getattr(TRUTH, name), rel=0.02), name
    assert len(doc["cells"]) == len(SIZES) * len(TOKENS)
    hp = doc["hparams"]
    assert hp is not None, doc["hparams_reason"]
    assert hp["lr"]["N_exp"] == pytest.approx(LR[1], abs=1e-6)
    assert hp["lr"]["D_exp"] == pytest.approx(LR[2], abs=1e-6)
    assert hp["lr"]["coef"] == pytest.approx(LR[0], rel=1e-5)
    assert hp["batch"]["D_exp"] == pytest.approx(BATCH[1], abs=1e-6)
    assert hp["n_diverged"] == 1


@pytest.mark.parametrize("params", [
    {}, {"budget": "0"}, {"budget": "-1e15"}, {"budget": "abc"}, {"budget": "nan"}, {"budget": "inf"},
    {"budget": ["1e15", "x"]}, {"budget": "1e15", "bootstrap": "-1"}, {"budget": "1e15", "bootstrap": "many"},
])
def test_bad_budget_is_422(client, params):
    r = client.get("/sweeps/planted/proposals", params=params)
    assert r.status_code == 422, r.text
    assert "budget" in r.json()["detail"] or "bootstrap" in r.json()["detail"]


def test_absurd_budget_is_4xx_not_500(client):
    # N* at C = 1e40 lies far beyond the model family: the client's input, not a server bug
    r = client.get("/sweeps/planted/proposals", params={"budget": "1e40", "bootstrap": 0})
    assert r.status_code == 422, r.text


def test_no_finished_trial_is_409(client):
    r = client.get("/sweeps/empty/proposals", params={"budget": 1e15})
    assert r.status_code == 409 and "no finished trial" in r.json()["detail"]
    assert client.get("/sweeps/empty/laws").status_code == 409


@pytest.mark.parametrize("path", [
    "/sweeps/nope", "/sweeps/nope/laws", "/sweeps/nope/proposals?budget=1e15", "/sweeps/..", "/sweeps/.hidden",
    "/sweeps/%2e%2e", "/no-such-route",
])
def test_unknown_is_404(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.text)
    assert r.json()["detail"]


def test_openapi_schema_lists_every_endpoint(client):
    doc = client.get("/openapi.json").json()
    assert set(doc["paths"]) == {"/sweeps", "/sweeps/{sweep_id}", "/sweeps/{sweep_id}/proposals",
                                 "/sweeps/{sweep_id}/laws"}
    assert "ModelSpec" in doc["components"]["schemas"]  # the spec's nested models are referenced
    body = doc["paths"]["/sweeps"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "name" in body["required"] and "learning_rates" in body["properties"]


# ------------------------------------------------------------------------------------- auth


def test_public_bind_without_token_refuses_to_start(root):
    r = subprocess.run(_serve_cmd(root, "0.0.0.0", free_port()), env=_env(None), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert TOKEN_ENV in r.stderr and "token" in r.stderr


def test_token_rule(root, planted):
    token = "s3cret-token-42"
    s = Server(root, token=token)
    try:
        with httpx.Client(base_url=s.url, timeout=60.0) as c:
            for path in ("/sweeps", "/sweeps/planted", "/openapi.json"):
                assert c.get(path).status_code == 401
                assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
                assert c.get(path, headers={"X-Scalesweep-Token": token + "x"}).status_code == 401
            r = c.get("/sweeps", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and "planted" in {row["id"] for row in r.json()}
            assert c.get("/sweeps/planted", headers={"X-Scalesweep-Token": token}).status_code == 200
            assert c.post("/sweeps", json={**SIM_SPEC, "name": "unauth"}).status_code == 401
            assert not (root / "unauth").exists()
            # a second server over the same root knows the first one's sweep from controller.json
            sim = c.get("/sweeps/sim", headers={"Authorization": f"Bearer {token}"}).json()
            assert sim["status"] in ("running", "finished")
    finally:
        s.stop()


# --------------------------------------------------------------- the submitted sweep finishes


def test_submitted_sweep_finishes_and_is_queryable(launched, client, root):
    deadline = time.monotonic() + 150
    doc = client.get("/sweeps/sim").json()
    while doc["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        doc = client.get("/sweeps/sim").json()
    log = (root / "sim" / "controller.log").read_text()[-3000:]
    assert doc["status"] == "finished", log
    assert doc["exit_code"] == 0
    assert doc["trials"] == {"finished": 6}
    assert doc["flops_spent"] == pytest.approx(doc["spec"]["grid_flops"], rel=0.05)
    assert doc["fit"]["law"]["params"]["E"] > 0
    props = client.get("/sweeps/sim/proposals", params={"budget": 1e13, "bootstrap": 10}).json()
    assert props[0]["budget"] == 1e13 and np.isfinite(props[0]["predicted_loss"])
    laws = client.get("/sweeps/sim/laws", params={"bootstrap": 10}).json()
    assert laws["hparams"] is None and "cell" in laws["hparams_reason"]  # one lr per cell: no lr law
