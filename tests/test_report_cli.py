"""`tp report` end to end: from a run and from a checkpoint, one self-contained HTML file with every
section and no external script, opened in headless Chromium: plots render, no console error, no request."""
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, data_overrides, run_tp

SECTIONS = ("Summary", "Learning curves", "Evaluation on the test split", "Data", "Events and alerts", "Checkpoints",
            "Configuration", "Lineage and environment")


@pytest.fixture
def trained(short_run): return short_run


def assert_offline_report(path):
    page = Path(path).read_text()
    for section in SECTIONS: assert f">{section}<" in page, section
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", page), "an external resource is referenced"
    return page


def test_report_from_a_run(trained):
    cwd, run_dir = trained
    r = run_tp("report", "--run", run_dir, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"report: {run_dir / 'report.html'}", f"executed notebook: {run_dir / 'report.ipynb'}"]
    page = assert_offline_report(run_dir / "report.html")
    assert "accuracy" in page and "Most confidently misclassified" in page
    executed = json.loads((run_dir / "report.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and str(run_dir) in "".join(injected[0]["source"])
    assert not list(run_dir.glob(".report*")), "temporary files left behind"


@pytest.mark.parametrize("which", ["step", "best"])
def test_report_from_a_checkpoint(trained, prepared, tmp_path, which):
    cwd, run_dir = trained
    ckpt = sorted((run_dir / "checkpoints").glob("step-*"))[-1] if which == "step" else run_dir / "checkpoints" / "best_model.safetensors"
    out = tmp_path / "r.html"
    r = run_tp("report", "--checkpoint", ckpt, "--data-dir", prepared("digits"), "--out", out, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert_offline_report(out)
    assert (tmp_path / "r.ipynb").exists()


def test_report_bad_inputs(trained, tmp_path):
    cwd, run_dir = trained
    evil = tmp_path / "best_model.pt"
    evil.write_bytes(b"\x80\x04K\x01.")  # a pickle
    r = run_tp("report", "--checkpoint", evil, cwd=cwd)
    assert r.returncode == 2 and "is a pickle" in r.stderr and "Traceback" not in r.stderr
    r = run_tp("report", "--run", tmp_path / "nowhere", cwd=cwd)
    assert r.returncode == 2 and r.stderr.startswith("error: not a run directory")
    r = run_tp("report", "--checkpoint", run_dir / "checkpoints" / "best_model.safetensors", "--data-dir", tmp_path, cwd=cwd)
    assert r.returncode == 2 and "no test split" in r.stderr


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed and could not be installed here (.ci/test installs it with apt-get)")
    return path


def open_offline(path, screenshot=None):
    "Open a report in headless Chromium: (plots, plots that rendered, console errors, requests that left the file)."
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda req: requests.append(req.url) if not req.url.startswith(("file:", "data:", "blob:")) else None)
        page.goto(Path(path).as_uri())
        page.wait_for_function("document.querySelectorAll('div.plotly-graph-div').length > 0")
        divs = page.locator("div.plotly-graph-div")
        rendered = sum(divs.nth(i).locator("svg").count() > 0 for i in range(divs.count()))
        if screenshot:
            artifacts = REPO / "tests" / "artifacts"; artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / screenshot), full_page=True)
        count = divs.count()
        browser.close()
    return count, rendered, errors, requests


def test_report_renders_in_a_browser_offline(trained):
    cwd, run_dir = trained
    if not (run_dir / "report.html").exists(): assert run_tp("report", "--run", run_dir, cwd=cwd).returncode == 0
    plots, rendered, errors, requests = open_offline(run_dir / "report.html", "report.png")
    assert plots >= 4 and rendered == plots, (plots, rendered)
    assert errors == [] and requests == []


@pytest.fixture(scope="module")
def tips_run(tmp_path_factory):
    "(cwd, run dir) of a short regression run on plotly's tips table (target `tip`), prepared and trained with the CLI."
    import plotly
    cwd = tmp_path_factory.mktemp("tips")
    plotly.data.tips().to_csv(cwd / "tips.csv", index=False)
    r = run_tp("prepare", "--source", "tips.csv", "--target", "tip", "--task", "regression", "--data-dir", "data", cwd=cwd)
    assert r.returncode == 0 and "regression" in r.stdout, r.stderr
    r = run_tp("train", "--config", REPO / "config" / "tabular.yaml", *data_overrides(cwd / "data"), "data.dataset=tips",
               "experiment.name=tips", "training.task=regression", "model.architecture=mlp", "training.epochs=6",
               "training.learning_rate=0.01", "checkpointing.monitor_metric=val_rmse", "checkpointing.mode=min", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd, next((cwd / "runs" / "tips").iterdir())


def stored_rmse(run_dir, name):
    "RMSE of a run's stored test predictions, computed here from the raw outputs."
    from safetensors.numpy import load_file
    t = load_file(str(run_dir / "artifacts" / "predictions" / f"{name}.safetensors"))
    return float(((t["outputs"].reshape(-1) - t["targets"].reshape(-1).astype("float64")) ** 2).mean() ** 0.5)


def test_report_of_a_regression_run(tips_run):
    cwd, run_dir = tips_run
    r = run_tp("report", "--run", run_dir, cwd=cwd)
    assert r.returncode == 0, r.stderr
    page = assert_offline_report(run_dir / "report.html")
    for text in ("RMSE", "MAE", "R²", "predicted vs true", "residual vs predicted", "residual histogram", "Regression target per split"):
        assert text in page, text
    summary = json.loads((run_dir / "run.json").read_text())["summary"]
    final = json.loads((run_dir / "artifacts" / "predictions" / "test_final.json").read_text())
    rmse = stored_rmse(run_dir, "test_final")
    assert rmse == pytest.approx(summary["test_rmse"], rel=1e-5)  # the stored outputs are those the logged metric came from
    assert f"{rmse:.4g}" in page and f"test, {final['weights']}" in page
    if (run_dir / "artifacts" / "predictions" / "test_best.json").exists():
        best = json.loads((run_dir / "artifacts" / "predictions" / "test_best.json").read_text())
        assert best["weights"].startswith("best checkpoint step-") and html.escape(best["weights"]) in page
        assert f"{stored_rmse(run_dir, 'test_best'):.4g}" in page
    assert "Per class" not in page and "confusion matrix" not in page  # nothing of a classifier
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        plots, rendered, errors, requests = open_offline(run_dir / "report.html", "report-regression.png")
        assert plots >= 4 and rendered == plots and errors == [] and requests == [], (plots, rendered, errors, requests)


def test_regression_report_from_the_run_directory_alone(tips_run, tmp_path):
    cwd, run_dir = tips_run
    (cwd / "data").rename(tmp_path / "data-moved")  # no prepared data, and the model is not rebuilt: the stored predictions suffice
    try:
        r = run_tp("report", "--run", run_dir, "--out", tmp_path / "alone.html", cwd=cwd)
    finally: (tmp_path / "data-moved").rename(cwd / "data")
    assert r.returncode == 0, r.stderr
    page = assert_offline_report(tmp_path / "alone.html")
    assert f"{stored_rmse(run_dir, 'test_final'):.4g}" in page and "residual vs predicted" in page
