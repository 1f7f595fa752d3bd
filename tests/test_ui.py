"""`tp ui` end to end (issue 19): a real `tp ui` subprocess serving 300 synthetic finished runs, a damaged one, a job queue,
a model registry and one run that a real `tp train` writes while the tests watch it in headless Chromium (Playwright).
One server and one live run are shared by the module; screenshots of every page land in tests/artifacts/ui/ (and in
$TP_ARTIFACTS/ui when set)."""
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, TP, check_run_dir, data_overrides, run_tp
from test_dashboard_browser import chromium, stop

ARTIFACTS = REPO / "tests" / "artifacts" / "ui"
N_RUNS = 300
LRS = (0.0003, 0.001, 0.003, 0.01, 0.03)


def start_ui(cwd, *args, env=None):
    "`tp ui --port 0 ...` in cwd; (process, URL it printed)."
    proc = subprocess.Popen([str(TP), "ui", "--port", "0", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, **(env or {})})
    line = proc.stdout.readline()
    if not line.startswith("tp ui: http://"):
        stop(proc); pytest.fail(f"tp ui did not start: {line}{proc.stdout.read()[-2000:]}")
    return proc, line.split(": ", 1)[1].strip()


def get(url, headers=None, timeout=30):
    "(status, body, headers) of a GET."
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e: return e.code, e.read().decode(), dict(e.headers)


def raw_status(url, path):
    "The status of a GET whose path is sent exactly as written (no client-side normalisation of .. or %2e)."
    host, port = url.split("//")[1].split("/")[0].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request("GET", path); r = c.getresponse(); r.read(); c.close()
    return r.status


SKIP = {"step", "epoch", "time", "samples", "epoch_time_s", "data_wait_s"}
NOT_METRIC = {"loss", "lr", "grad_norm", "samples_per_s", "data_wait_share"}


def drawn(split, key):
    "Whether the run page draws this value in its loss, metrics or LR chart (the page's own rule, restated)."
    if key in SKIP: return False
    return key in ("loss", "lr") or (split != "test" and key not in NOT_METRIC and not key.startswith("time_"))


def shot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if os.environ.get("TP_ARTIFACTS"):
        out = Path(os.environ["TP_ARTIFACTS"]) / "ui"; out.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / f"{name}.png", out / f"{name}.png")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "A working directory with runs/ (300 finished runs, a damaged one, a fork, a symlink out), jobs/ (one queued job); `tp ui` serving it."
    from training_pipeline.jobs import submit_command
    from training_pipeline.ui import synthetic_run
    root = tmp_path_factory.mktemp("ui")
    runs, rng, t0, params = root / "runs", random.Random(0), time.time() - 86400, {}
    for i in range(N_RUNS):
        exp = ("sweep-lr", "sweep-arch", "baseline")[i % 3]
        p = {"training.learning_rate": LRS[i % 5], "training.batch_size": (32, 64, 128)[i % 3], "model.dropout": round(0.1 * (i % 4), 1)}
        status = "completed" if i % 7 else rng.choice(("failed", "interrupted", "pruned"))
        synthetic_run(runs, exp, f"run-{i:04d}", p, status=status, seed=i, created=t0 + 60 * i, steps=60, tags=("synthetic", exp),
                      parent="run-0001" if i == 2 else None)
        params[f"run-{i:04d}"] = p
    synthetic_run(runs, "baseline", "broken-run", status="damaged", created=t0)
    (runs / "baseline" / "run-0005" / "report.html").write_text("<!doctype html><h1>report of run-0005</h1>")
    outside = root / "outside"
    synthetic_run(outside, "x", "secret-run")
    (outside / "x" / "secret-run" / "report.html").write_text("secret")
    os.symlink(outside / "x" / "secret-run", runs / "baseline" / "linked-out")  # a symlink out of runs/: never served
    submit_command([sys.executable, "-c", "pass"], root / "jobs", name="queued-job")
    proc, url = start_ui(root, "--runs-dir", "runs", "--jobs-dir", "jobs", "--models-dir", "models", "--allow-actions")
    yield {"root": root, "runs": runs, "url": url, "params": params, "proc": proc}
    stop(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    path = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def context(browser):
    "One browser context for the module: plotly.js (4.6 MB) is fetched and compiled once, then cached."
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    pg.close()


def test_synthetic_runs_follow_the_run_directory_contract(site):
    for rid in ("run-0001", "run-0002"): check_run_dir(next(site["runs"].glob(f"*/{rid}")))


def test_live_run_page_draws_growing_curves(site, page, context, prepared, tmp_path):
    "A real `tp train` (slowed per batch) starts after the page's server: its page's curves gain points while it trains, without a reload."
    config = tmp_path / "digits.yaml"
    shutil.copy(REPO / "config" / "digits.yaml", config)
    trainer = subprocess.Popen([str(TP), "train", "--config", str(config), *data_overrides(prepared("digits")), "training.epochs=2",
                                "training.batch_size=128", "logging.log_frequency=1", "validation.early_stopping.enabled=false"], cwd=site["root"],
                               env={**os.environ, "TP_FAULT": "train:sleep=0.15"}, stdout=open(tmp_path / "train.log", "w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, run = time.monotonic() + 60, None
        while run is None and time.monotonic() < deadline and trainer.poll() is None:
            runs = json.loads(get(site["url"] + "api/runs?experiment=digits&status=running")[1])["runs"]
            run = runs[0] if runs else None
            time.sleep(0.3)
        assert run, "the live run never showed as running:\n" + (tmp_path / "train.log").read_text()[-2000:]
        table = context.new_page()  # the runs table, open while the run trains: its row follows the run without a reload
        table.goto(site["url"] + "?experiment=digits")
        assert table.locator(f"tr[data-run='digits/{run['run_id']}'] .st").inner_text() == "running"
        table.evaluate("window.__sameDocument = 7")
        page.goto(f"{site['url']}runs/digits/{run['run_id']}")
        page.wait_for_function("document.getElementById('chart-loss').data !== undefined", timeout=20_000)
        page.evaluate("window.__sameDocument = 42")  # gone if the page ever reloads
        count = ("['chart-loss','chart-metrics','chart-lr'].map(id => (document.getElementById(id).data || [])"
                 ".reduce((n, t) => n + t.x.length, 0)).reduce((a, b) => a + b, 0)")
        samples, deadline = [], time.monotonic() + 90
        while time.monotonic() < deadline:
            samples.append((page.evaluate(count), page.locator("#status").inner_text()))
            if samples[-1][1] != "running" or trainer.poll() is not None: break
            time.sleep(0.5)
        assert trainer.wait(90) == 0, (tmp_path / "train.log").read_text()[-3000:]
        page.wait_for_function("document.getElementById('status').textContent === 'completed'", timeout=15_000)
        time.sleep(1.5)  # the last metrics poll after the end
        final = page.evaluate(count)
        shot(page, "run")
        table.wait_for_function(f"document.querySelector(\"tr[data-run='digits/{run['run_id']}'] .st\").textContent === 'completed'",
                                timeout=15_000)
        assert table.evaluate("window.__sameDocument") == 7
        table.close()
    except BaseException:
        shot(page, "run-failure"); raise
    finally: stop(trainer)
    live = [n for n, s in samples if s == "running"]
    print(f"points while running: {live}; final {final}")
    assert page.evaluate("window.__sameDocument") == 42, "the page reloaded"
    assert live == sorted(live) and len({n for n in live if n > 0}) >= 3, samples  # grew, in several steps, while training
    rows = [json.loads(l) for l in next((site["runs"] / "digits").iterdir()).joinpath("metrics.jsonl").read_text().splitlines()]
    want = sum(drawn(r["split"], k) for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    assert final == want, (final, want)  # every value of metrics.jsonl drawn once
    traces = page.evaluate("document.getElementById('chart-time').data.map(t => t.name)")
    assert "train time_forward_s" in traces, traces  # the step-time breakdown the trainer logs
    assert not page.errors, page.errors
    site["live"] = run["run_id"]


def test_runs_table_lists_every_run_fast(site, page):
    t = time.monotonic()
    page.goto(site["url"])
    page.wait_for_selector("#runs tbody tr", timeout=10_000)
    ids = set(page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run.split('/')[1])"))
    took = time.monotonic() - t
    assert {f"run-{i:04d}" for i in range(N_RUNS)} <= ids and took < 10, (len(ids), took)
    assert "linked-out" not in ids and "secret-run" not in ids
    shot(page, "runs")
    # the damaged run is there, as damaged, with its problem in the tooltip
    badge = page.locator("tr[data-run='baseline/broken-run'] .st")
    assert badge.inner_text() == "damaged" and "run.json" in badge.get_attribute("title")
    # key params are the columns whose values differ
    heads = page.eval_on_selector_all("#runs thead th", "ths => ths.map(t => t.innerText)")
    assert any("training.learning_rate" in h for h in heads) and any("best val_accuracy" in h for h in heads), heads


def test_filters_live_in_the_url(site, page):
    q = "training.learning_rate < 0.002 and model.dropout >= 0.2"
    page.goto(site["url"] + "?" + urllib.parse.urlencode({"experiment": "sweep-lr", "q": q, "sort": "training.learning_rate", "order": "asc"}))
    ids = page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run.split('/')[1])")
    want = {r for r, p in site["params"].items() if int(r[4:]) % 3 == 0 and p["training.learning_rate"] < 0.002 and p["model.dropout"] >= 0.2}
    assert set(ids) == want and want, (sorted(ids), sorted(want))
    assert page.input_value("input[name=q]") == q
    shot(page, "runs-filtered")
    page.fill("input[name=q]", "training.learning_rate <")
    page.click("form.filters button")
    page.wait_for_selector("#error")
    assert "bad filter" in page.inner_text("#error") and "training.learning_rate" in page.url
    page.goto(site["url"] + "?status=pruned")
    statuses = set(page.eval_on_selector_all("#runs tbody tr .st", "s => s.map(x => x.innerText)"))
    assert statuses == {"pruned"}, statuses


def test_api_runs_answers_fast(site):
    get(site["url"] + "api/runs")  # the index is warm after the first request
    t = time.monotonic()
    status, body, _ = get(site["url"] + "api/runs")
    took = time.monotonic() - t
    res = json.loads(body)
    assert status == 200 and took < 2, took
    assert res["total"] >= N_RUNS + 1 and len(res["runs"]) == res["count"]
    broken = next(r for r in res["runs"] if r["run_id"] == "broken-run")
    assert broken["status"] == "damaged" and "run.json" in broken["problems"]
    r4 = next(r for r in res["runs"] if r["run_id"] == "run-0005")
    assert r4["best"] is not None and r4["last"] is not None and r4["monitor"] == "val_accuracy"
    status, body, _ = get(site["url"] + "api/runs/baseline/broken-run")
    assert status == 200 and json.loads(body)["run"]["status"] == "damaged"
    status, body, _ = get(site["url"] + "api/runs?q=" + urllib.parse.quote("nonsense <"))
    assert status == 400 and "bad filter" in json.loads(body)["error"]
    print(f"/api/runs with {res['total']} runs: {took:.3f} s")


def test_damaged_run_page_still_renders(site, page):
    page.goto(site["url"] + "runs/baseline/broken-run")
    assert "damaged: run.json" in page.inner_text("main")
    assert not page.errors, page.errors


def test_compare_draws_overlay_and_parallel_coordinates(site, page):
    page.goto(site["url"] + "compare?runs=run-0003,sweep-lr/run-0006")
    page.wait_for_function("document.getElementById('parcoords').data !== undefined", timeout=15_000)
    overlay = page.evaluate("[0,1,2,3].map(n => document.getElementById('overlay-' + n).data.length)")
    assert overlay == [2, 2, 2, 2], overlay
    par = page.evaluate("(({type, dimensions}) => ({type, labels: dimensions.map(d => d.label)}))(document.getElementById('parcoords').data[0])")
    assert par["type"] == "parcoords" and {"training.learning_rate", "best val_accuracy"} <= set(par["labels"]), par
    diff = page.eval_on_selector_all("#config-diff tbody tr td:first-child", "tds => tds.map(t => t.innerText)")
    assert "training.learning_rate" in diff and "training.epochs" not in diff, diff  # only the keys that differ
    shot(page, "compare")
    assert not page.errors, page.errors


def test_paths_outside_the_directories_are_404(site):
    url = site["url"]
    assert get(url + "runs/baseline/run-0005/report.html")[0] == 200
    assert "sandbox" in get(url + "runs/baseline/run-0005/report.html")[2]["Content-Security-Policy"]
    for path in ("/runs/%2e%2e/%2e%2e/report.html", "/runs/baseline/..%2F..%2Foutside/report.html", "/runs/../../etc/passwd",
                 "/runs/baseline/%2e%2e/report.html", "/runs/baseline/linked-out", "/runs/baseline/linked-out/report.html",
                 "/api/runs/baseline/linked-out", "/api/runs/%2e%2e/baseline", "/api/runs/baseline/run-0005/metrics/../../../../etc/passwd",
                 "//etc/passwd", "/etc/passwd", "/static/../../training_pipeline/ui.py", "/static/%2e%2e/ui.py",
                 "/runs/baseline/run-0005/config.yaml", "/runs/baseline/run-0005/run.json", "/jobs/jobs.db", "/models/registry.db",
                 "/" + str(site["runs"] / "baseline" / "run-0005" / "run.json")):
        assert raw_status(url, path) == 404, path


def test_token_required_when_not_on_loopback(site):
    proc, url = start_ui(site["root"], "--runs-dir", "runs", "--jobs-dir", "jobs", "--host", "0.0.0.0")
    try:
        token = re.search(r"\?token=(\S+)$", url).group(1)
        assert len(token) >= 30
        base = url.split("?")[0]
        assert get(base)[0] == 403 and get(base + "api/runs")[0] == 403 and get(base + "static/plotly.min.js")[0] == 403
        assert get(base + "api/runs?token=wrong")[0] == 403
        status, _, headers = get(url)
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert get(base + "api/runs", {"Cookie": cookie})[0] == 200  # the cookie replaces the token
        assert get(base + "api/runs", {"Authorization": f"token {token}"})[0] == 200
        # read-only (no --allow-actions): no action buttons, and a POST that passes the XSRF check is still refused
        status, body, _ = get(base + "jobs", {"Cookie": cookie})
        assert status == 200 and "queued-job" in body and "<button>cancel</button>" not in body
        req = urllib.request.Request(base + "jobs/1/cancel", data=b"_xsrf=abc123", method="POST", headers={"Cookie": f"{cookie}; _xsrf=abc123"})
        try: urllib.request.urlopen(req, timeout=10); raise AssertionError("a read-only server accepted a POST")
        except urllib.error.HTTPError as e: assert e.code == 403 and "read-only" in e.read().decode(), e.code
    finally: stop(proc)


def test_jobs_and_models_pages_and_actions(site, page):
    "The queue and the registry as pages; with --allow-actions (the module's server) cancel and promote are XSRF-checked POSTs."
    root, url = site["root"], site["url"]
    try:  # a POST without the XSRF token is refused
        urllib.request.urlopen(urllib.request.Request(url + "jobs/1/cancel", data=b"", method="POST"), timeout=10)
        raise AssertionError("a POST without an XSRF token was accepted")
    except urllib.error.HTTPError as e: assert e.code == 403 and "_xsrf" in e.read().decode(), e.code
    page.goto(url + "jobs")
    assert page.locator("tr[data-job='1'] .st").inner_text() == "queued"
    shot(page, "jobs")
    page.locator("tr[data-job='1'] button").click()
    page.wait_for_url(re.compile(r".*/jobs\?msg=.*"))
    assert page.locator("tr[data-job='1'] .st").inner_text() == "cancelled"
    from training_pipeline.jobs_commands import read_jobs
    assert read_jobs(root / "jobs")[0]["state"] == "cancelled"
    live = site.get("live") or next(p.name for p in (site["runs"] / "digits").iterdir())
    reg = run_tp("models", "register", f"runs/digits/{live}", "--models-dir", "models", cwd=root)
    assert reg.returncode == 0, reg.stderr
    page.goto(url + "models")
    row = page.locator("tr[data-model='digits:1']")
    assert row.count() == 1 and row.locator(f"a[href='/runs/digits/{live}']").count() == 1  # lineage to the run
    page.select_option("tr[data-model='digits:1'] select", "production")
    row.locator("button").click()
    page.wait_for_url(re.compile(r".*/models\?msg=.*"))
    assert "production" in page.locator("tr[data-model='digits:1']").inner_text()
    shot(page, "models")
    assert not page.errors, page.errors
