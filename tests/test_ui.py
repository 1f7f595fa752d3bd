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


def post(url, path, body:bytes, headers:dict):
    "(status, body) of a form POST, redirects not followed."
    host, port = url.split("//")[1].split("/")[0].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request("POST", "/" + path, body, {"Content-Type": "application/x-www-form-urlencoded", **headers})
    r = c.getresponse(); text = r.read().decode(); c.close()
    return r.status, text


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


def check_seconds_per_step(rows, drawn_y):
    """The timing chart's values are the logged sums divided by the steps they cover: the steps since the previous train
    row, or since the previous epoch's end for an epoch's summary row (the one with epoch_time_s)."""
    want, spans, last, last_epoch = [], [], 0, 0
    for r in (r for r in rows if r["split"] == "train"):
        epoch_row = "epoch_time_s" in r
        steps = r["step"] - (last_epoch if epoch_row else last)
        last, last_epoch = r["step"], r["step"] if epoch_row else last_epoch
        if steps > 0 and "time_forward_s" in r: want.append(r["time_forward_s"] / steps); spans.append(steps)
    assert drawn_y == pytest.approx(want), (drawn_y[:5], want[:5])
    assert max(spans) > 1, spans  # some rows (the epochs' summaries here) cover several steps: they were divided


def shot(page, name, full_page=True):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)
    if os.environ.get("TP_ARTIFACTS"):
        out = Path(os.environ["TP_ARTIFACTS"]) / "ui"; out.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / f"{name}.png", out / f"{name}.png")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "A working directory with runs/ (300 finished runs, a damaged one, a fork, a symlink out), jobs/ (one queued job); `tp ui` serving it."
    from training_pipeline.jobs.queue import submit_command
    from training_pipeline.ui.index import synthetic_run
    root = tmp_path_factory.mktemp("ui")
    runs, rng, t0, params = root / "runs", random.Random(0), time.time() - 86400, {}
    for i in range(N_RUNS):
        exp = ("sweep-lr", "sweep-arch", "baseline")[i % 3]
        p = {"training.learning_rate": LRS[i % 5], "training.batch_size": (32, 64, 128)[i % 3], "model.dropout": round(0.1 * (i % 4), 1)}
        status = "completed" if i % 7 else rng.choice(("failed", "interrupted", "pruned"))
        synthetic_run(runs, exp, f"run-{i:04d}", p, status=status, seed=i, created=t0 + 60 * i, steps=60,
                      tags=("synthetic", exp), parent="run-0001" if i == 2 else None,
                      monitor="val_loss" if i % 10 == 1 else "val_accuracy")  # two monitored metrics: two column pairs
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
    assert {"forward", "backward", "optimizer step"} <= set(traces), traces  # the step-time breakdown, phases named
    forward = page.evaluate("document.getElementById('chart-time').data.find(t => t.name === 'forward').y")
    check_seconds_per_step(rows, forward)
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
    heads = page.eval_on_selector_all("#runs thead th",
                                      "ths => ths.map(t => [t.textContent.replace(/\\s+/g, ' ').trim(), t.title])")
    assert any(title == "training.learning_rate" for _, title in heads), heads
    for metric in ("val_accuracy", "val_loss"): assert any(h.startswith(f"best {metric}") for h, _ in heads), heads


def test_runs_table_shows_the_metrics_without_scrolling(site, browser):
    "Issue 30: at 1400x900 each run's monitored metric, named in the header, is on screen without horizontal scrolling."
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    try:
        pg.goto(site["url"])
        pg.wait_for_selector("#runs tbody tr", timeout=10_000)
        geo = pg.evaluate("""() => {
          const box = document.querySelector('.wrap-x'), text = t => t.textContent.replace(/\\s+/g, ' ').trim();
          const right = e => e ? e.getBoundingClientRect().right : null;
          return {box: box.scrollWidth - box.clientWidth, page: document.documentElement.scrollWidth - innerWidth,
                  width: innerWidth, heads: [...document.querySelectorAll('#runs th.m')].map(t => [text(t), right(t)]),
                  cells: [...document.querySelectorAll('#runs tbody tr')].map(r => right(r.querySelector('.m span'))),
                  kinds: [...document.querySelectorAll('#runs thead th')].map(t => t.className)}; }""")
        shot(pg, "runs-1400x900", full_page=False)  # what the reader sees
        pg.check("#hide-params")  # the hyperparameters can go, and come back
        hidden = pg.evaluate("[...document.querySelectorAll('#runs .p')].every(e => e.offsetParent === null)")
        pg.uncheck("#hide-params")
        assert hidden and pg.locator("#runs th.p").first.is_visible()
    finally: ctx.close()
    assert geo["box"] <= 0 and geo["page"] <= 0, geo  # no horizontal scrolling, in the table's box or the page
    named = {"best val_accuracy", "last val_accuracy", "best val_loss", "last val_loss"}
    assert named <= {h for h, _ in geo["heads"]}, geo["heads"]
    assert all(r <= geo["width"] for _, r in geo["heads"]), geo["heads"]
    assert len(geo["cells"]) > N_RUNS and all(r is not None and r <= geo["width"] for r in geo["cells"])  # each row's
    kinds = geo["kinds"]
    assert "p" in kinds and max(i for i, k in enumerate(kinds) if k == "m") < kinds.index("p"), kinds  # metrics first


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
                 "/static/ui/ui_pages.py", "/static/ui/..%2Fui.py", "/static/ui/%2e%2e%2fui_assets%2fui.css",
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
    origin = url.rstrip("/")
    for headers, why in (({}, "Origin"), ({"Origin": origin}, "_xsrf")):  # without an Origin; without the XSRF token
        status, body = post(url, "jobs/1/cancel", b"", headers)
        assert status == 403 and why in body, (headers, status, body)
    page.goto(url + "jobs")
    assert page.locator("tr[data-job='1'] .st").inner_text() == "queued"
    shot(page, "jobs")
    page.locator("tr[data-job='1'] button").click()
    page.wait_for_url(re.compile(r".*/jobs\?msg=.*"))
    assert page.locator("tr[data-job='1'] .st").inner_text() == "cancelled"
    from training_pipeline.jobs.commands import read_jobs
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


# ---- hostile run directories (issue 31): tests/corpus/ui/README.md lists the cases, built here at test time ----------

CANARY = "CANARY-4f1d9e07-never-shown"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))  # 10^9 values in < 1 KB
HUGE = "1" + "0" * 23  # 10^23


def strict_json(text):
    "json.loads that refuses NaN and Infinity: what a browser's JSON.parse accepts."
    def refuse(constant): raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def build_hostile(runs):
    "runs/hostile/<case> for the cases of tests/corpus/ui/README.md, and runs/fine/ok-1, ok-2; {case: its reason}."
    import yaml
    from training_pipeline.ui.index import synthetic_run
    for i in (1, 2): synthetic_run(runs, "fine", f"ok-{i}", {"training.learning_rate": 0.01 * i}, seed=i, steps=40)
    make = lambda name, **kw: synthetic_run(runs, "hostile", name, steps=40, **kw)
    (make("alias-bomb") / "config.yaml").write_text(ALIAS_BOMB)
    (make("alias-strings") / "config.yaml").write_text(f"a: &a {'x' * 500_000}\nb: [{', '.join(['*a'] * 19_000)}]\n")
    edit_json(make("wrong-types") / "run.json", created=5, planned_steps="many", pid=10 ** 23, tags={"a": 1})
    with open(make("bad-lines") / "metrics.jsonl", "a") as f:
        f.write('[1, 2]\n"text"\n42\nnull\n{"step": "x", "split": "val", "accuracy": NaN}\n')
        f.write('{"step": 1e999, "loss": -Infinity}\n')
    with open(runs / "hostile" / "bad-lines" / "events.jsonl", "a") as f:
        f.write('{"time": NaN, "event": "alert", "rule": "nan", "message": "NaN", "value": Infinity}\n[]\n')
        f.write('{"time": 1e400, "event": "x"}\n')
    (make("deep-json") / "run.json").write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    r = make("fifo-metrics"); (r / "metrics.jsonl").unlink(); os.mkfifo(r / "metrics.jsonl")
    r = make("symlinked-config"); (r / "config.yaml").unlink()
    (r / "config.yaml").symlink_to(runs.parent / "outside.yaml")
    (runs.parent / "outside.yaml").write_text(f"password: {CANARY}\n")
    with open(make("long-line") / "metrics.jsonl", "a") as f:  # one 9 MB line, then 120,000 rows: 16 MB in all
        f.write('{"note": "' + "x" * (9 << 20) + '"}\n')
        f.writelines(json.dumps({"step": 100 + i, "split": "train", "loss": 1.0}) + "\n" for i in range(120_000))
    r = make("old-version", params={"storage.options.client_kwargs.aws_session_token": CANARY})  # before redaction
    command = ["tp", "train", "--config", "c.yaml", f"storage.options.secret={CANARY}", "--password", CANARY,
               "--runs-dir", f"s3://AKIA:{CANARY}@bucket/runs"]
    edit_json(r / "run.json", command=command, env={"AWS_SECRET_ACCESS_KEY": CANARY})
    with open(r / "events.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "event": "alert", "rule": "upload", "token": CANARY,
                            "message": f"upload to s3://user:{CANARY}@bucket/x failed"}) + "\n")
    cfg = yaml.safe_load((r / "config.yaml").read_text())
    assert cfg["storage"]["options"]["client_kwargs"]["aws_session_token"] == CANARY  # the secret is really on disk
    return {"alias-bomb": "past 20,000 values", "alias-strings": "expands past", "wrong-types": "created is int", "bad-lines": "unreadable line",
            "deep-json": "nested too deep", "fifo-metrics": "not a regular file", "symlinked-config": "symbolic link",
            "long-line": "unreadable line"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    "`tp ui --allow-actions` over the hostile corpus, with one queued job (a target for POSTs)."
    from training_pipeline.jobs.queue import submit_command
    root = tmp_path_factory.mktemp("hostile")
    reasons = build_hostile(root / "runs")
    submit_command([sys.executable, "-c", "pass"], root / "jobs", name="target")
    proc, url = start_ui(root, "--runs-dir", "runs", "--jobs-dir", "jobs", "--models-dir", "models", "--allow-actions")
    yield {"root": root, "url": url, "proc": proc, "reasons": reasons}
    stop(proc)


def timed_get(url, limit_s=5.0, max_bytes=4 << 20):
    "(status, body) of a GET that must answer within `limit_s` with at most `max_bytes`."
    t = time.monotonic()
    status, body, _ = get(url, timeout=60)
    took = time.monotonic() - t
    assert took < limit_s and len(body.encode()) <= max_bytes, (url[-80:], round(took, 2), len(body))
    return status, body


def test_hostile_runs_are_damaged_rows_never_500s(hostile):
    url = hostile["url"]
    timed_get(url + "api/runs", limit_s=30)  # the first request waits for the index's first build
    status, body = timed_get(url)
    assert status == 200 and "ok-1" in body and "ok-2" in body, status
    runs = {r["run_id"]: r for r in strict_json(timed_get(url + "api/runs?summary=1")[1])["runs"]}
    for case, reason in hostile["reasons"].items():
        row = runs[case]
        assert row["status"] == "damaged" and reason in json.dumps(row["problems"]), (case, row["problems"])
        assert f"data-run='hostile/{case}'" in body and "st-damaged" in body  # a row of the table, with its id
    assert "created is int" in body  # the reason is on the page, not only in a tooltip
    assert runs["ok-1"]["status"] == "completed" and runs["bad-lines"]["best"] is not None  # good rows count
    for case in list(hostile["reasons"]) + ["old-version"]:
        for path in (f"runs/hostile/{case}", f"runs/hostile/{case}?partial=details", f"api/runs/hostile/{case}",
                     f"api/runs/hostile/{case}/metrics", f"compare?runs=hostile/{case},fine/ok-1"):
            status, text = timed_get(url + path)
            assert status == 200, (path, status, text[:300])
            if path.startswith("api/"): strict_json(text)
    assert hostile["proc"].poll() is None and get(url)[0] == 200  # still serving
    import psutil
    rss = psutil.Process(hostile["proc"].pid).memory_info().rss
    assert rss < 1 << 30, rss  # the alias bomb once took the server to 3.3 GB


def test_hostile_long_metrics_are_served_in_chunks(hostile):
    "A 16 MB metrics.jsonl with a 9 MB line: answers bounded, `more` until the end, the rows once, the long line out."
    url, offset, rows, answers = hostile["url"] + "api/runs/hostile/long-line/metrics", 0, 0, 0
    while True:
        j = strict_json(timed_get(f"{url}?offset={offset}")[1])
        rows += len(j["rows"]); offset = j["offset"]; answers += 1
        if not j["more"]: break
    assert rows >= 120_000 and answers > 2, (rows, answers)


def test_out_of_range_numbers_are_400(hostile):
    url = hostile["url"]
    for path in (f"api/runs/hostile/bad-lines/metrics?offset={HUGE}", "api/runs/hostile/bad-lines/metrics?offset=-1",
                 f"api/runs/hostile/bad-lines/metrics?inode={HUGE}", "api/runs/hostile/bad-lines/metrics?offset=1e3",
                 f"api/runs?limit={HUGE}", "api/runs?limit=0", f"?limit={HUGE}",
                 "compare?runs=" + ",".join(["fine/ok-1"] * 30),
                 "api/runs?cols=" + ",".join(f"k{i}" for i in range(60))):
        status, body = timed_get(url + path)
        assert status == 400, (path, status, body[:200])
        if path.startswith("api/"): assert strict_json(body)["status"] == 400
    status, body = get(url + "api/runs/hostile/" + HUGE)[:2]
    assert status == 404  # an id is a name: one that does not exist
    cookie, token = xsrf_of(url)
    headers = {"Cookie": cookie, "Origin": url.rstrip("/")}
    assert post(url, f"jobs/{HUGE}/cancel", f"_xsrf={token}".encode(), headers)[0] == 400
    assert get(url)[0] == 200


def xsrf_of(url):
    "(cookie header, form token) from the jobs page, as a browser gets them."
    with urllib.request.urlopen(url + "jobs", timeout=30) as r:
        cookie, text = r.headers["Set-Cookie"].split(";")[0], r.read().decode()
    return cookie, re.search(r'name="_xsrf" value="([^"]+)"', text).group(1)


def test_forged_and_cross_origin_actions_are_403(hostile):
    url, origin = hostile["url"], hostile["url"].rstrip("/")
    for made_up in ("abc123", "2|00000000|deadbeef|1700000000", "x" * 24 + ".0"):  # the same value as cookie and field
        status, body = post(url, "jobs/1/cancel", f"_xsrf={made_up}".encode(),
                            {"Cookie": f"tp-ui-xsrf={made_up}; _xsrf={made_up}", "Origin": origin})
        assert status == 403 and "XSRF" in body, (made_up, status, body[:200])
    cookie, token = xsrf_of(url)
    good = f"_xsrf={token}".encode()
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Referer": "http://evil.example/page"},
                    {"Origin": origin.replace("127.0.0.1", "localhost")}, {}):
        status, body = post(url, "jobs/1/cancel", good, {"Cookie": cookie, **headers})
        assert status == 403, (headers, status)
    from training_pipeline.jobs.commands import read_jobs
    assert read_jobs(hostile["root"] / "jobs")[0]["state"] == "queued"  # nothing happened
    assert post(url, "jobs/1/cancel", good, {"Cookie": cookie, "Referer": url + "jobs"})[0] == 302  # the page: done
    assert read_jobs(hostile["root"] / "jobs")[0]["state"] == "cancelled"


def test_a_short_token_is_refused(tmp_path):
    res = run_tp("ui", "--port", "0", "--token", "a", cwd=tmp_path, timeout=60)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: --token") and "16" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and not res.stdout


def test_no_secret_in_any_response(hostile):
    """A run written before secrets were redacted at the source: its canary is in run.json's command and env, in
    config.yaml and in events.jsonl; no page, API answer or filter shows it."""
    url, key = hostile["url"], "storage.options.client_kwargs.aws_session_token"
    pages = ["", "?limit=all", f"?q={urllib.parse.quote(key + ' ~ CANARY')}", "api/runs", "api/runs?summary=1",
             f"api/runs?cols={key}", f"api/runs?cols={key}&sort={key}", "runs/hostile/old-version",
             "runs/hostile/old-version?partial=details", "api/runs/hostile/old-version",
             "api/runs/hostile/old-version/metrics",
             "compare?runs=hostile/old-version,fine/ok-1", "compare?runs=hostile/old-version,hostile/symlinked-config",
             "runs/hostile/symlinked-config", "api/runs/hostile/symlinked-config", "jobs", "api/jobs", "models",
             "api/models"]
    for path in pages:
        status, body = timed_get(url + path)
        assert status == 200 and CANARY not in body and "4f1d9e07" not in body, (path, status)
    detail = strict_json(get(url + "api/runs/hostile/old-version")[1])
    assert "<redacted>" in json.dumps(detail["lineage"]["command"]) and detail["config"][key] == "<redacted>"
    assert strict_json(get(url + f"api/runs?q={urllib.parse.quote(key + ' ~ CANARY')}")[1])["count"] == 0  # no oracle
