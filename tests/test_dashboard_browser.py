"""The live dashboard in a real JupyterLab, in headless Chromium: the shipped template (`tp notebooks path dashboard`)
is opened and run (Run > Run All Cells) before the training starts, so it first says what it waits for; then a real
`tp train` (slowed per batch) writes its run directory and the page's plots gain points tick after tick, the status
reaches "completed" and the plot finally holds one marker per metric value in metrics.jsonl."""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from conftest import REPO, TP, data_overrides, free_port

JUPYTER = Path(sys.executable).with_name("jupyter")
TEMPLATE = REPO / "training_pipeline" / "notebooks" / "dashboard.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"
POINTS = ".tp-dashboard .scatterlayer path.point"  # plotly draws one SVG path per marker


def chromium():
    "Chromium's path; installed with apt-get when missing (as root), else the test is skipped, loudly."
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
            try: subprocess.run(cmd, capture_output=True, timeout=300)
            except subprocess.TimeoutExpired: break
        path = shutil.which("chromium")
    if path is None:
        reason = "SKIPPED THE BROWSER DASHBOARD TEST: chromium is missing and apt-get could not install it"
        warnings.warn(reason); print(reason, file=sys.stderr)
        pytest.skip(reason)
    return path


def stop(proc, timeout=10):
    "End a process started here with its whole session (jupyter's kernels, the training), by its id."
    if proc is None or proc.poll() is not None: return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try: os.killpg(proc.pid, sig)
        except ProcessLookupError: return
        try: proc.wait(timeout); return
        except subprocess.TimeoutExpired: pass


def expected_points(run_dir):
    "One marker per (trace, row): train rows give loss, accuracy and lr; val rows loss and accuracy."
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = {"train": ("loss", "accuracy", "lr"), "val": ("loss", "accuracy")}
    drawn = lambda k, v: isinstance(v, (int, float)) and (v > 0 or k != "lr")  # the LR axis is logarithmic
    return sum(drawn(k, r.get(k)) for r in rows for k in keys.get(r["split"], ()))


def start_lab(tmp_path, root):
    "JupyterLab on a free port of 127.0.0.1 with a token, serving root, its config and runtime files in tmp_path; (process, url, token)."
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt")}
    lab = subprocess.Popen([str(JUPYTER), "lab", "--allow-root", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
                            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0"],
                           cwd=root, env=env, stdout=open(tmp_path / "lab.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while True:
        if lab.poll() is not None or time.monotonic() > deadline:
            stop(lab); pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
        try: urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2); return lab, base, token
        except OSError: time.sleep(0.3)


def start_kernel(base, token, path):
    "Start the notebook's python3 kernel session through the REST API, so the page attaches to it (no kernel dialog)."
    req = urllib.request.Request(f"{base}/api/sessions?token={token}", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"path": path, "name": path, "type": "notebook", "kernel": {"name": "python3"}}).encode())
    with urllib.request.urlopen(req, timeout=60) as r: assert r.status == 201, r.status


def wait_attached(page, base, token, path, timeout=60):
    "Wait until the page's websocket is connected to the notebook's idle kernel (the server counts connections)."
    dialog, deadline = page.locator(".jp-Dialog .jp-mod-accept"), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dialog.count(): dialog.first.click()  # a kernel dialog during start-up: accept the notebook's own kernel
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10) as r: sessions = json.load(r)
        kernels = [s["kernel"] for s in sessions if s["path"] == path]
        if kernels and kernels[0]["connections"] >= 1 and kernels[0]["execution_state"] == "idle": return
        time.sleep(0.3)
    raise AssertionError(f"the page did not connect to the kernel: {sessions}")


def run_dashboard(page, start_training, runs):
    "Run all cells, start the training, sample (points, status) until completed; return (samples, final points, expected, bar style)."
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    # the training has not started yet: the dashboard says what it waits for
    waiting, dialog, deadline = page.locator(".tp-dashboard .tp-waiting"), page.locator(".jp-Dialog .jp-mod-accept"), time.monotonic() + 45
    while not waiting.count() and time.monotonic() < deadline:
        if dialog.count(): dialog.first.click()  # under load JupyterLab may still ask which kernel: the notebook's own
        time.sleep(0.2)
    assert "waiting for 'test'" in page.locator(".tp-waiting").inner_text()
    trainer = start_training()
    samples, deadline = [], time.monotonic() + 60  # (points on the page, status shown)
    while time.monotonic() < deadline:
        status = page.locator(".tp-dashboard .tp-status").all_inner_texts()
        samples.append((page.locator(POINTS).count(), status[0] if status else None))
        if samples[-1][1] == "completed": break
        time.sleep(0.4)
    assert samples[-1][1] == "completed", samples
    assert trainer.wait(60) == 0, "the training failed"
    want = expected_points(next((runs / "test").iterdir()))
    page.wait_for_function(f"document.querySelectorAll({POINTS!r}).length >= {want}", timeout=10_000)
    bar = page.locator(".tp-dash-run .progress-bar").first
    bar = f'{bar.get_attribute("class")} {bar.get_attribute("style")}'
    return samples, page.locator(POINTS).count(), want, bar


def test_dashboard_follows_a_live_run_in_jupyterlab(tmp_path, prepared):
    from playwright.sync_api import sync_playwright
    browser_path, data = chromium(), prepared("digits")
    root, runs = tmp_path / "lab", tmp_path / "runs"
    root.mkdir()
    nb = json.loads(TEMPLATE.read_text())
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    params["source"] = f'run = "test"\nruns_dir = {str(runs)!r}\ninterval = 0.25\nwait = None\n'
    (root / "dashboard.ipynb").write_text(json.dumps(nb))
    procs = {}
    def start_training():
        procs["train"] = subprocess.Popen(
            [str(TP), "train", "--config", REPO / "config" / "test.yaml", *data_overrides(data), "training.epochs=2", "logging.log_frequency=2"],
            cwd=tmp_path, env={**os.environ, "TP_FAULT": "train:sleep=0.05"},
            stdout=open(tmp_path / "train.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        return procs["train"]
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        procs["lab"], base, token = start_lab(tmp_path, root)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            start_kernel(base, token, "dashboard.ipynb")
            page.goto(f"{base}/lab/tree/dashboard.ipynb?token={token}")
            wait_attached(page, base, token, "dashboard.ipynb")
            try:
                samples, final, want, bar = run_dashboard(page, start_training, runs)
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            except BaseException:  # keep what the page showed, and the logs
                page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"), full_page=True)
                for log in ("lab.log", "train.log"):
                    if (tmp_path / log).exists(): print(f"--- {log}\n" + (tmp_path / log).read_text()[-3000:])
                raise
            finally: browser.close()
    finally:
        for proc in procs.values(): stop(proc)
    live = [n for n, s in samples if s == "running"]
    print(f"points on the page while running: {live}; final {final}; expected {want}")
    assert final == want, (final, want)  # one marker per metric value in metrics.jsonl
    assert live == sorted(live) and len({n for n in live if n > 0}) >= 3, samples  # grew over time, in several ticks, while the run was running
    assert "progress-bar-success" in bar and "width: 100%" in bar, bar
    assert not [e for e in errors if "plotly" in e.lower() or "widget" in e.lower()], errors


def test_dashboard_template_headless_waits_for_the_end(tmp_path, prepared):
    "papermill (no frontend) runs the template while a run trains: it waits for the end and keeps the final figure and summary."
    runs, out = tmp_path / "runs", tmp_path / "out.ipynb"
    trainer = subprocess.Popen([str(TP), "train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")),
                                "training.epochs=2", "logging.log_frequency=5"], cwd=tmp_path,
                               env={**os.environ, "TP_FAULT": "train:sleep=0.02"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        r = subprocess.run([str(Path(sys.executable).with_name("papermill")), str(TEMPLATE), str(out), "-p", "run", "test",
                            "-p", "runs_dir", str(runs), "-p", "interval", "0.2", "--no-progress-bar"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        assert trainer.wait(60) == 0, trainer.stderr.read()[-3000:]
    finally: stop(trainer)
    cells = json.loads(out.read_text())["cells"]
    outputs = [o for c in cells for o in c.get("outputs", [])]
    text = "".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
    assert " completed" in text and "100.0%" in text, text  # the summary printed after the wait: the run's final state
    figure = next(o["data"]["application/vnd.plotly.v1+json"] for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {}))
    rows = [json.loads(l) for l in next((runs / "test").iterdir()).joinpath("metrics.jsonl").read_text().splitlines()]
    train_loss = next(t for t in figure["data"] if t["name"].endswith("train") and t["xaxis"] == "x")
    assert train_loss["x"] == [r["step"] for r in rows if r["split"] == "train"]  # every row, not a partial view
