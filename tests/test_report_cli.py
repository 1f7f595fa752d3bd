"""`tp report` end to end: from a run and from a checkpoint, one self-contained HTML file with every
section and no external script, opened in headless Chromium: plots render, no console error, no request."""
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


def test_report_renders_in_a_browser_offline(trained):
    from playwright.sync_api import sync_playwright
    cwd, run_dir = trained
    if not (run_dir / "report.html").exists(): assert run_tp("report", "--run", run_dir, cwd=cwd).returncode == 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda req: requests.append(req.url) if not req.url.startswith(("file:", "data:", "blob:")) else None)
        page.goto((run_dir / "report.html").as_uri())
        page.wait_for_function("document.querySelectorAll('div.plotly-graph-div').length > 0")
        divs = page.locator("div.plotly-graph-div")
        assert divs.count() >= 4
        for i in range(divs.count()): assert divs.nth(i).locator("svg").count() > 0, f"plot {i} did not render"
        artifacts = REPO / "tests" / "artifacts"; artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        browser.close()
    assert errors == [] and requests == []
