"""Screenshots of a sweep in the MLflow UI, taken by a real headless Chromium: what a researcher sees.

    python -m benchmarks.screenshots SWEEP_DIR [--out results/screenshots] [--report]

Starts `mlflow ui` on the sweep's tracking store (loopback, a free port) and drives the Debian
package's Chromium with playwright-core (node; installed with npm into ~/.cache/scalesweep/playwright
on first use) through the experiment's runs table, the parent run's overview, its summary.md, its
report (`--report` writes it first with `scalesweep report`) and each of its plots/ artifacts, waiting
for each page's content (the UI is a single-page app: `chromium --screenshot` alone catches its
loading skeleton). Prints a table of the screenshots and writes them, with a JSON index, under --out.
Needs chromium (`apt-get install -y chromium chromium-driver`), node and npm. Not a test: it shows,
it does not assert.
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


PLAYWRIGHT = Path.home() / ".cache" / "scalesweep" / "playwright"
DRIVER = """// node driver.js JOBS.json: one browser, one page per shot; prints one JSON line per shot
const { chromium } = require('playwright-core');
(async () => {
  const jobs = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));
  const browser = await chromium.launch({ executablePath: jobs.chromium, args: jobs.flags, headless: true });
  for (const s of jobs.shots) {
    const page = await browser.newPage({ viewport: { width: s.width, height: s.height } });
    const t0 = Date.now();
    let note = 'ok';
    try {
      await page.goto(s.url, { waitUntil: 'networkidle', timeout: 120000 });
      if (s.wait_text) await page.getByText(s.wait_text, { exact: false }).first().waitFor({ timeout: 90000 });
      await page.waitForTimeout(s.settle_ms);
    } catch (e) { note = String(e).split('\\n')[0]; }
    await page.screenshot({ path: s.path, fullPage: s.full_page });
    console.log(JSON.stringify({ name: s.name, seconds: (Date.now() - t0) / 1000, note }));
    await page.close();
  }
  await browser.close();
})();
"""


def playwright_dir() -> Path:
    """A folder with playwright-core installed (npm, once) and the driver script."""
    if not (PLAYWRIGHT / "node_modules" / "playwright-core").is_dir():
        PLAYWRIGHT.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(PLAYWRIGHT), "playwright-core"],
                       check=True, stdout=subprocess.DEVNULL)
    (PLAYWRIGHT / "driver.js").write_text(DRIVER)
    return PLAYWRIGHT


def screenshots(chromium: str, shots: list[dict], workdir: Path) -> dict[str, dict]:
    """Take `shots` ({name, url, path, width, height, wait_text, settle_ms, full_page}) in one headless
    Chromium (a fresh profile); {name: {seconds, note}}."""
    folder = playwright_dir()
    jobs = workdir / "jobs.json"
    # playwright launches Chromium with a fresh temporary profile of its own (it refuses --user-data-dir)
    jobs.write_text(json.dumps({"chromium": chromium, "flags": CHROMIUM_FLAGS, "shots": shots}))
    env = {**os.environ, "NODE_PATH": str(folder / "node_modules")}
    done = subprocess.run(["node", str(folder / "driver.js"), str(jobs)], capture_output=True, text=True,
                          env=env, timeout=300 + 240 * len(shots), check=False)
    out = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            out[rec.pop("name")] = rec
    if done.returncode != 0 and not out:
        raise RuntimeError(f"the Chromium driver failed: {done.stderr[-2000:]}")
    return out


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
    # (name, URL fragment, viewport, text to wait for, full page)
    pages = [("runs_table", f"#/experiments/{exp}/runs", (1600, 1000), spec.name, False),
             ("parent_run", run_page, (1440, 1800), "useful_work_fraction", True),
             ("summary_md", f"{run_page}/artifactPath/summary.md", (1440, 1400), "Proposals", False)]
    if "report/index.html" in artifacts:
        pages.append(("report", f"{run_page}/artifactPath/report/index.html", (1440, 1600), "index.html", False))
    for a in sorted(artifacts):
        if a.startswith("plots/") and a.endswith(".png"):
            pages.append((a[len("plots/"):-4], f"{run_page}/artifactPath/{a}", (1440, 1100), a.split("/")[-1], False))
    proc, base = start_mlflow_ui(uri, args.out / "mlflow-ui.log")
    shots = [{"name": name, "url": f"{base}/{frag}", "path": str((args.out / f"{name}.png").resolve()),
              "width": size[0], "height": size[1], "wait_text": wait, "settle_ms": 3000, "full_page": full}
             for name, frag, size, wait, full in pages]
    for s in shots:
        Path(s["path"]).unlink(missing_ok=True)
    try:
        done = screenshots(args.chromium, shots, args.out)
    finally:
        stop(proc)
    shots = {s["name"]: {"url": s["url"], "path": s["path"] if Path(s["path"]).is_file() else None,
                         **done.get(s["name"], {"note": "not taken"})} for s in shots}
    doc = {"sweep_dir": str(sweep), "parent_run": run_id, "experiment_id": exp, "screenshots": shots}
    (args.out / "screenshots.json").write_text(json.dumps(doc, indent=2))
    width = max(len(n) for n in shots)
    print(f"{'page'.ljust(width)}  seconds  screenshot")
    for name, s in shots.items():
        print(f"{name.ljust(width)}  {s.get('seconds', float('nan')):7.1f}  {s['path'] or 'FAILED'}"
              + ("" if s.get("note") == "ok" else f"  ({s.get('note')})"))
    return doc


if __name__ == "__main__":
    main()
