"""Screenshots of a sweep in the MLflow UI, taken by a real headless Chromium: what a researcher sees.

    python -m benchmarks.screenshots SWEEP_DIR [--out results/screenshots] [--report] [--docs docs/img] [--only PAGE]

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


def start_mlflow_ui(tracking_uri: str, log: Path, timeout: float = 300.0) -> tuple[subprocess.Popen, str]:
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
      // wait_text "re:PATTERN": a regular expression (a count that must not be 0, say)
      const text = s.wait_text && s.wait_text.startsWith('re:') ? new RegExp(s.wait_text.slice(3)) : s.wait_text;
      if (text) await page.getByText(text, { exact: false }).first().waitFor({ timeout: 180000 });
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


DOCS_PAGES = ("trials_view", "summary_md", "parent_run", "isoflop")
DOCS_WIDTH = 1000
# MLflow 3.17's assistant panel is open on a fresh profile and takes the page's right quarter: the docs'
# copies keep the left part (the runs table or the run page).
DOCS_KEEP = 0.74


DOCS_HEIGHT = {"summary_md": 1500}  # px of the docs' copy; default 900 (summary.md runs down to its proposals)


def docs_copy(src: Path, dst: Path, max_height: int = 900) -> int:
    """A small copy of a screenshot for the docs: the assistant panel cut off, DOCS_WIDTH wide, at most
    `max_height` px tall, 256 colours; its size in bytes."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        im = im.crop((0, 0, int(im.width * DOCS_KEEP), im.height))
        scale = DOCS_WIDTH / im.width
        im = im.resize((DOCS_WIDTH, int(im.height * scale)), Image.LANCZOS)
        im = im.crop((0, 0, im.width, min(im.height, max_height)))
        im.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(dst, optimize=True)
    return dst.stat().st_size


def main(argv: list[str] | None = None) -> dict:
    """Take the screenshots; print a table and return (and write) their index."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("results") / "screenshots")
    ap.add_argument("--report", action="store_true", help="write the sweep's report first (scalesweep report)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--docs", type=Path, default=None, metavar="DIR",
                    help=f"also write small copies of {', '.join(DOCS_PAGES)} there (docs/img: docs/mlflow.md shows them)")
    ap.add_argument("--only", action="append", default=None, metavar="PAGE",
                    help="take only this page (repeatable: runs_table, trials_view, parent_run, summary_md, report, "
                         "or a plot's name such as isoflop)")
    args = ap.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from orchestrator.config.spec import load_spec

    if not Path(args.chromium).is_file():
        raise SystemExit("no chromium: apt-get install -y chromium chromium-driver")
    sweep = args.sweep_dir.resolve()
    spec = load_spec(sweep / "spec.yaml")
    if spec.sweep_dir() != sweep:
        spec = spec.model_copy(update={"output_dir": str(sweep)})
    if args.report:
        from orchestrator.app.report import build_report

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
    from orchestrator.io.tracking.layout import VIEW_TAG_PREFIX, view_key

    # (name, URL fragment, viewport, text to wait for, full page)
    # a runs table is loaded when it counts its runs (its title and filters show before the rows)
    pages = [("runs_table", f"#/experiments/{exp}/runs", (1600, 1000), r"re:^[1-9]\d* matching runs", False)]
    view = client.get_experiment(exp).tags.get(VIEW_TAG_PREFIX + view_key(spec.name))
    if view is not None:  # the sweep's saved view: loaded when its best trial's row shows
        state = json.loads(view)
        best = client.search_runs([exp], state["searchFilter"], max_results=1,
                                  order_by=[f"{state['orderByKey']} {'ASC' if state['orderByAsc'] else 'DESC'}"])
        pages.append(("trials_view", f"#/experiments/{exp}/runs?viewStateShareKey={view_key(spec.name)}",
                      (1600, 1000), best[0].info.run_name if best else "eval_loss", False))
    pages += [("parent_run", run_page, (1440, 1800), "useful_work_fraction", True),
              ("summary_md", f"{run_page}/artifactPath/summary.md", (1440, 2000), "Proposals", False)]
    if "report/index.html" in artifacts:
        pages.append(("report", f"{run_page}/artifactPath/report/index.html", (1440, 1600), "index.html", False))
    for a in sorted(artifacts):
        if a.startswith("plots/") and a.endswith(".png"):
            pages.append((a[len("plots/"):-4], f"{run_page}/artifactPath/{a}", (1440, 1100), a.split("/")[-1], False))
    if args.only:
        pages = [p for p in pages if p[0] in args.only]
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
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        for name in DOCS_PAGES:
            if (shots.get(name) or {}).get("path"):
                dst = args.docs / f"mlflow-{name.replace('_', '-')}.png"
                shots[name]["docs"] = {"path": str(dst), "bytes": docs_copy(Path(shots[name]["path"]), dst,
                                                                            DOCS_HEIGHT.get(name, 900))}
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
