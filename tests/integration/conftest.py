"""Shared helpers of the integration tests."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from orchestrator.app.api import EXAMPLE_SPEC
from orchestrator.config.spec import load_spec, parse_spec

# The API's example spec (a simulated sweep of 6 trials that ends in seconds), for the API and
# submission tests.
SIM_SPEC = {**EXAMPLE_SPEC, "name": "sim", "fit": {"bootstrap": 20}}

# Ray Train's controller polls a multi-worker trial's workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
# (default 2 s): it takes their reports then (and a rank's report waits for that, see
# trainable._train_report), and notices a dead worker or the run's end only then. Set before any Ray
# starts here, so every Ray process these tests start (in-process, `ray start`, `scalesweep run`)
# inherits it, and Train passes it on to its controller and workers: the same polls, 10x as often.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def pytest_collection_modifyitems(items):
    """Every test here is an integration test, marked or not (`pytest -m "not integration"` runs
    the unit tests alone)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


# ---------------------------------------------------------------- one local Ray instance for in-process sweeps
# Starting and stopping a local Ray instance costs ~9 s of CPU (~20 s on a loaded machine); the
# in-process sweeps of consecutive tests share one through the `local_ray` fixture. It is reused
# only when it has the CPUs asked for and every CPU is free again (a failed sweep that left trials
# holding CPUs gets a fresh instance), and it is shut down before any test that does not ask for
# it, so a test that calls `ray.init` itself (or starts a CLI with its own cluster) finds none.
# Ray's workers inherit the driver's environment as it was when the instance started: a test that
# changed the environment (S3 credentials its trials must see) gets a fresh instance.
_SHARED_RAY: dict = {}
# Not compared: read by the driver only (the controller passes the report delay to trials in their
# config), or set in the driver's own environment by libraries it imports (scikit-learn, MLflow,
# tensorboardX); any other change starts a fresh instance (a restart too many, never a stale one).
_DRIVER_ONLY_ENV = ("PYTEST_CURRENT_TEST", "SCALESWEEP_REPORT_DELAY_S", "KMP_DUPLICATE_LIB_OK", "_MLFLOW_",
                    "CRC32C_SW_MODE")


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_DRIVER_ONLY_ENV)}


def _shared_ray_usable(num_cpus: int, timeout: float = 30.0) -> bool:
    import ray

    if not ray.is_initialized() or _SHARED_RAY.get("gcs") != ray.get_runtime_context().gcs_address:
        return False
    if _SHARED_RAY.get("env") != _worker_env():
        return False
    if ray.cluster_resources().get("CPU") != num_cpus:
        return False
    deadline = time.monotonic() + timeout  # a sweep's ended trials release their CPUs within moments
    while ray.available_resources().get("CPU", 0) < num_cpus:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _stop_shared_ray() -> None:
    import ray

    if _SHARED_RAY:
        _SHARED_RAY.clear()
        ray.shutdown()


@pytest.fixture(scope="session")
def local_ray():
    """`local_ray(num_cpus=2)`: make sure the session's shared local Ray instance (dashboard on, as
    `scalesweep run` starts it) runs with `num_cpus` CPUs, all free; the controller then uses it."""
    import ray

    def ensure(num_cpus: int = 2) -> None:
        if _shared_ray_usable(num_cpus):
            return
        _stop_shared_ray()
        ray.shutdown()
        ray.init(num_cpus=num_cpus, include_dashboard=True, log_to_driver=False)
        _SHARED_RAY.update(gcs=ray.get_runtime_context().gcs_address, env=_worker_env())

    yield ensure
    _stop_shared_ray()


def shared_ray_address(local_ray, num_cpus: int = 2) -> str:
    """The address (for RAY_ADDRESS) of the session's shared local Ray instance, started (`local_ray`)
    with `num_cpus` CPUs, all free: a `scalesweep` process given it runs its sweep there as on any
    cluster it joins, instead of starting and stopping a local one of its own (~9 s of CPU)."""
    import ray

    local_ray(num_cpus)
    return ray.get_runtime_context().gcs_address


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A test that does not ask for `local_ray` finds no shared instance running, nor the shared
    two-node cluster (`loopback_cluster`) unless it asks for that."""
    names = getattr(item, "fixturenames", ())
    if "local_ray" not in names:
        _stop_shared_ray()
    if "loopback_cluster" not in names:
        _stop_shared_cluster()


def run_real_sweep(root: Path, data: dict, name: str, num_cpus: int = 2, local_ray=None):
    """Write `data` as ROOT/spec.yaml, run it through the real controller on a local Ray cluster
    of `num_cpus` CPUs (sweep dir ROOT/NAME); return (spec, outcome). With the `local_ray`
    fixture: on the session's shared instance; without: on a fresh one, shut down after (or on the
    Ray this process is already connected to, left up)."""
    import ray

    from orchestrator.app.session import run_sweep

    data = dict(data, output_dir=str(root / name))
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    if local_ray is not None:
        local_ray(num_cpus)
        return spec, run_sweep(spec, str(spec_path), show_progress=False)
    own = not ray.is_initialized()  # a Ray this process already runs (a test's own cluster) stays up
    if own:
        ray.init(num_cpus=num_cpus, include_dashboard=True, log_to_driver=False)
    try:
        outcome = run_sweep(spec, str(spec_path), show_progress=False)
    finally:
        if own:
            ray.shutdown()
    return spec, outcome


# A small simulated sweep that several files only read (test_sweep_view.py, test_report.py): run
# once per session, not once per file. 18 trials: 3 sizes x 2 token counts x 3 learning rates.
VIEW_SPEC = {
    "name": "view",
    "model": {"n_params": [20000, 50000, 120000]},
    # two token counts: too few to identify the D term, so the fit warns (the warning must show)
    "tokens": {"values": [400000, 1600000]},
    # 2.0 is past the tiny world's divergence threshold: those trials diverge (a distinct outcome)
    "learning_rates": [0.01, 0.03, 2.0],
    "batch_sizes": [8192],
    "trainer": {"backend": "simulated", "world": "tiny"},
    "eval": {"every": 50},
    "budget": {"targets": [1e13, 1e14]},
    "fit": {"bootstrap": 20},
}


@pytest.fixture(scope="session")
def viewed_sweep(tmp_path_factory, local_ray):
    """VIEW_SPEC run with `scalesweep run`, then `scalesweep resume` (a second refit), on the
    session's 2-CPU local Ray instance (`local_ray`): the sweep dir, the two commands' output, the
    root, the parsed spec and the MLflow parent run. Readers may add files (a report), never change
    what is there."""
    from typer.testing import CliRunner

    from orchestrator.app.cli import get_app

    root = tmp_path_factory.mktemp("view")
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({**VIEW_SPEC, "output_dir": str(root / "view")}))
    runner, app = CliRunner(), get_app()
    local_ray(2)
    run = runner.invoke(app, ["run", str(spec_path), "--no-progress"])
    assert run.exit_code == 0, run.output
    resumed = runner.invoke(app, ["resume", str(root / "view"), "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    sweep_dir = root / "view"
    return {"dir": sweep_dir, "run": run.stdout, "resumed": resumed.stdout, "root": root,
            "spec": load_spec(sweep_dir / "spec.yaml"),
            "parent_run": json.loads((sweep_dir / "sweep.json").read_text())["mlflow_parent_run"]}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` subprocess on loopback, killable and restartable."""

    def __init__(self, db: Path, artifacts: Path, port: int, log: Path):
        self.cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                    f"sqlite:///{db}", "--artifacts-destination", str(artifacts),
                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> float:
        t0 = time.monotonic()
        with open(self.log, "ab") as out:
            # Own session: the server spawns uvicorn workers; killpg takes them all.
            # Job execution off: MLflow 3 otherwise starts a job runner (one more process importing
            # MLflow, ~8 s of CPU) that no test uses; the server takes half as long to come up.
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        while time.monotonic() - t0 < timeout:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.kill()  # a server still starting would outlive the test (with MLflow's job runner: ~100 processes)
        raise RuntimeError(f"mlflow server did not come up: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


# ---------------------------------------------------------------- a real two-node Ray cluster on loopback
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


# The cluster uses Ray's token authentication (the default of Ray 2.6x clusters) with its own
# token; the CLI gets the token only (not RAY_AUTH_MODE) and must use it by itself.
TOKEN = secrets.token_hex(16)


def _env(**extra: str) -> dict[str, str]:
    drop = ("RAY_ADDRESS", "SCALESWEEP_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job driver's `python` is the venv's
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_TOKEN"] = TOKEN
    env.update(extra)
    return env


def _get_json(url: str):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _state(address: str, kind: str, **filters: str) -> list[dict]:
    """Ray's State API over HTTP (`/api/v0/nodes`, `/api/v0/actors`), filtered by equality."""
    query = [("limit", "1000"), ("detail", "1")]
    for key, value in filters.items():
        query += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
    doc = _get_json(f"{address}/api/v0/{kind}?{urllib.parse.urlencode(query)}")
    return doc["data"]["result"]["result"]


# A lost node (its raylet refuses connections) is declared dead after ~period x threshold = 5 s,
# not Ray's 15 s; the timeout stays generous for a live but loaded node.
FAST_HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "10000",
                     "RAY_health_check_failure_threshold": "5"}
_SHARED_CLUSTER: dict = {}


def _stop_shared_cluster() -> None:
    if _SHARED_CLUSTER:
        _SHARED_CLUSTER.pop("cluster").stop()


@pytest.fixture(scope="session")
def loopback_cluster(tmp_path_factory):
    """`loopback_cluster()`: the session's two-node `LoopbackCluster` (FAST_HEALTH_CHECK on the head),
    both nodes alive. Consecutive tests that ask for it share it (test_submit.py, then
    test_node_loss.py, in scripts/test.sh's order): a start costs ~10 s of CPU. A test that leaves it
    with one node (a lost node) makes the next one start a fresh cluster; one that does not ask for
    it finds it stopped."""

    def ensure() -> LoopbackCluster:
        c = _SHARED_CLUSTER.get("cluster")
        if c is not None:
            try:
                if len(c.alive_nodes()) == 2:
                    return c
            except Exception:  # noqa: BLE001 -- its head is gone: a fresh cluster
                pass
            _stop_shared_cluster()
        # The class of the module the test files import (`tests.integration.conftest`): pytest loads
        # this file a second time as `conftest`, whose TOKEN is another one than their helpers send.
        from tests.integration.conftest import LoopbackCluster as cluster_class

        _SHARED_CLUSTER["cluster"] = cluster_class(tmp_path_factory.mktemp("cluster"), head_env=FAST_HEALTH_CHECK)
        return _SHARED_CLUSTER["cluster"]

    yield ensure
    _stop_shared_cluster()


class LoopbackCluster:
    """A head and a worker node, each its own `ray start --block` process group.

    `cpus` per node; `head_env`: extra environment of the head (e.g. Ray's `RAY_health_check_*`
    settings, so that a lost node is noticed in seconds). Other sessions may run Ray on the same
    machine: use it under `flock /tmp/scalesweep-ray.lock`.
    """

    def __init__(self, root: Path, cpus: int = 1, head_env: dict[str, str] | None = None):
        self.cpus, self.head_env = cpus, dict(head_env or {})
        # Short: Ray's unix sockets live under it (108-byte path limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ssr", dir="/tmp"))
        self.root = root
        self.ports = ports = _free_ports(7)
        self.gcs_port, self.dashboard_port = ports[0], ports[1]
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        try:
            self._start_nodes()
        except BaseException:
            self.stop()
            raise

    def _start_nodes(self) -> None:
        ports = self.ports
        # One temp dir per node, as on separate machines: nodes sharing one would share its
        # runtime_resources/, and one node's runtime-env GC would delete the other's working dirs.
        common = ["--num-gpus=0", "--node-ip-address=127.0.0.1", "--object-store-memory=150000000",
                  "--disable-usage-stats", "--block"]
        self._start("head", ["--head", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
                             "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--num-cpus={self.cpus}",
                             f"--ray-client-server-port={ports[2]}", f"--dashboard-agent-listen-port={ports[3]}",
                             f"--dashboard-agent-grpc-port={ports[4]}", f"--metrics-export-port={ports[5]}",
                             f"--runtime-env-agent-port={ports[6]}", f"--temp-dir={self.temp_dir / 'h'}", *common],
                    **self.head_env)
        self._wait(lambda: _get_json(f"{self.address}/api/version"), "head's dashboard")
        # The worker's ports are picked just before it starts, and a worker that does not join is
        # started once more on fresh ports: on a loaded machine (CI's other test process starts Ray
        # clusters too) a port picked earlier can be taken meanwhile, and the raylet never registers.
        for attempt in range(2):
            ports = _free_ports(4)
            self._start("worker", [f"--address=127.0.0.1:{self.gcs_port}", f"--num-cpus={self.cpus}",
                                   '--resources={"worker_node": 1}', f"--dashboard-agent-listen-port={ports[0]}",
                                   f"--dashboard-agent-grpc-port={ports[1]}", f"--metrics-export-port={ports[2]}",
                                   f"--runtime-env-agent-port={ports[3]}", f"--temp-dir={self.temp_dir / 'w'}",
                                   *common])
            try:
                self._wait(lambda: len(self.alive_nodes()) == 2 or None, "two alive nodes")
                return
            except (RuntimeError, TimeoutError):
                if attempt:
                    raise
                worker = self.procs.pop()
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                    try:
                        worker.wait(30)
                    except subprocess.TimeoutExpired:
                        pass
                try:
                    os.killpg(worker.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _start(self, name: str, args: list[str], **env: str) -> None:
        log = self.root / f"ray-{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen([str(BIN / "ray"), "start", *args], stdout=out, stderr=subprocess.STDOUT,
                                               # a loaded machine (CI runs two test processes) can take
                                               # more than Ray's 60 s to register a raylet: `ray start`
                                               # then exits 1 ("GCS cannot find the node")
                                               env=_env(RAY_AUTH_MODE="token", RAY_raylet_start_wait_time_s="300",
                                                        **env), start_new_session=True))

    def _wait(self, probe, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"`ray start` exited ({p.returncode}) while waiting for {what}:\n"
                                       + "\n".join(log.read_text()[-3000:] for log in self.logs))
            try:
                if probe():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.25)
        raise TimeoutError(f"no {what} after {timeout}s")

    def alive_nodes(self) -> list[dict]:
        return _state(self.address, "nodes", state="ALIVE")

    def worker_raylet(self):
        """The worker node's raylet process (psutil), found by the worker's own temp dir."""
        import psutil

        mark = str(self.temp_dir / "w")
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmd = proc.info["cmdline"] or []
            if cmd and os.path.basename(cmd[0]) == "raylet" and any(mark in a for a in cmd):
                return proc
        return None

    def stop(self) -> None:
        """Stop exactly the processes this cluster started (never `ray stop`: it kills every Ray on the machine)."""
        import psutil

        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
        # 3 s for all of them, then SIGKILL below: a node whose raylet was killed sits out any
        # wait (CI: 30 s in test_node_loss's teardown, 10 s when it was the limit) and nothing of
        # it is read any more.
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        # Anything left (workers of the raylets, agents) carries our temp dir or ports in its command line.
        marks = (str(self.temp_dir), f"127.0.0.1:{self.gcs_port}")
        leftovers = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid != os.getpid() and any(m in cmd for m in marks):
                leftovers.append(proc)
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
