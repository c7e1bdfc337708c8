"""Screenshots of a sweep in the MLflow UI, taken by a real headless Chromium: what a researcher sees.

    python -m benchmarks.screenshots SWEEP_DIR [--out results/screenshots] [--report]

Starts `mlflow ui` on the sweep's tracking store (loopback, a free port), then opens with
`chromium --headless --screenshot` the experiment's runs table, the parent run's overview, its
summary.md, its report (`--report` writes it first with `scalesweep report`) and each of its
plots/ artifacts; prints a table of the screenshots and writes them, with a JSON index, under --out.
Needs the Debian packages chromium (and chromium-driver): `apt-get install -y chromium chromium-driver`.
Not a test: it shows, it does not assert.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_ui(tracking_uri: str, log: Path, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`mlflow ui` on loopback in its own process group; returns it and its URL once /health answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"mlflow ui did not come up: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    """End the UI's process group (uvicorn workers included)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def screenshot(chromium: str, url: str, path: Path, size: tuple[int, int] = (1440, 1800), wait_ms: int = 20000) -> bool:
    """One page rendered by headless Chromium into `path` (a fresh profile each time); True if written."""
    with tempfile.TemporaryDirectory(prefix="scalesweep-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={wait_ms}", f"--screenshot={path}", url]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180, check=False)
    return path.is_file() and path.stat().st_size > 0


def main(argv: list[str] | None = None) -> dict:
    """Take the screenshots; print a table and return (and write) their index."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("results") / "screenshots")
    ap.add_argument("--report", action="store_true", help="write the sweep's report first (scalesweep report)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from orchestrator.spec import load_spec

    if not Path(args.chromium).is_file():
        raise SystemExit("no chromium: apt-get install -y chromium chromium-driver")
    sweep = args.sweep_dir.resolve()
    spec = load_spec(sweep / "spec.yaml")
    if spec.sweep_dir() != sweep:
        spec = spec.model_copy(update={"output_dir": str(sweep)})
    if args.report:
        from orchestrator.report import build_report

        build_report(sweep)
    run_id = json.loads((sweep / "sweep.json").read_text())["mlflow_parent_run"]
    uri = spec.tracking_uri()
    client = MlflowClient(uri)
    exp = client.get_run(run_id).info.experiment_id
    artifacts = []
    stack = [None]
    while stack:
        for a in client.list_artifacts(run_id, stack.pop()):
            (stack.append(a.path) if a.is_dir else artifacts.append(a.path))
    args.out.mkdir(parents=True, exist_ok=True)
    run_page = f"#/experiments/{exp}/runs/{run_id}"
    pages = {"runs_table": (f"#/experiments/{exp}", (1600, 1000)),
             "parent_run": (run_page, (1440, 2200)),
             "summary_md": (f"{run_page}/artifactPath/summary.md", (1440, 1800))}
    if "report/index.html" in artifacts:
        pages["report"] = (f"{run_page}/artifactPath/report/index.html", (1440, 2400))
    for a in sorted(artifacts):
        if a.startswith("plots/") and a.endswith(".png"):
            pages[a[len("plots/"):-4]] = (f"{run_page}/artifactPath/{a}", (1440, 1200))
    proc, base = start_mlflow_ui(uri, args.out / "mlflow-ui.log")
    shots = {}
    try:
        for name, (frag, size) in pages.items():
            path = (args.out / f"{name}.png").resolve()
            path.unlink(missing_ok=True)
            t0 = time.monotonic()
            ok = screenshot(args.chromium, f"{base}/{frag}", path, size)
            shots[name] = {"url": f"{base}/{frag}", "path": str(path) if ok else None,
                           "seconds": round(time.monotonic() - t0, 1)}
    finally:
        stop(proc)
    doc = {"sweep_dir": str(sweep), "parent_run": run_id, "experiment_id": exp, "screenshots": shots}
    (args.out / "screenshots.json").write_text(json.dumps(doc, indent=2))
    width = max(len(n) for n in shots)
    print(f"{'page'.ljust(width)}  seconds  screenshot")
    for name, s in shots.items():
        print(f"{name.ljust(width)}  {s['seconds']:7.1f}  {s['path'] or 'FAILED'}")
    return doc


if __name__ == "__main__":
    main()
