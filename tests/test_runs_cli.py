"""`tp runs list|show|compare` on real runs: a killed run shows as crashed, two runs compare into an
HTML file with overlaid curves and the config difference."""
import re
import signal
import subprocess

import pytest

from conftest import REPO, TP, data_overrides, run_tp


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, prepared):
    cwd = tmp_path_factory.mktemp("runs")
    for lr in ("0.003", "0.01"):
        r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), "training.epochs=2",
                   f"training.learning_rate={lr}", "--resume", "never", cwd=cwd)
        assert r.returncode == 0, r.stderr
    return cwd, sorted(p.name for p in (cwd / "runs" / "test").iterdir())


def test_list_and_show(two_runs):
    cwd, ids = two_runs
    r = run_tp("runs", "list", cwd=cwd)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["run_id", "experiment", "status"] and len(lines) == 3
    assert all("completed" in l for l in lines[1:])
    r = run_tp("runs", "show", ids[0], cwd=cwd)
    assert r.returncode == 0 and f"run {ids[0]} (test): completed" in r.stdout and "data_version:" in r.stdout
    r = run_tp("runs", "show", "nope", cwd=cwd)
    assert r.returncode == 2 and r.stderr.startswith("error: no run or experiment 'nope'")


def test_compare_writes_html_with_curves_and_config_diff(two_runs):
    cwd, ids = two_runs
    r = run_tp("runs", "compare", *ids, "--out", "cmp.html", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert "training.learning_rate" in r.stdout and "test_accuracy" in r.stdout
    page = (cwd / "cmp.html").read_text()
    assert page.count("Plotly.newPlot") == 1 and all(i in page for i in ids)
    assert not re.search(r"<script[^>]+src=[\"']?https?://", page)
    assert "training.learning_rate" in page


def test_killed_run_is_shown_as_crashed(tmp_path, prepared):
    cmd = [str(TP), "train", "--config", str(REPO / "config" / "test.yaml"), *data_overrides(prepared("digits")), "training.epochs=2"]
    p = subprocess.run(cmd, cwd=tmp_path, env={**__import__("os").environ, "TP_FAULT": "train:kill@20"}, capture_output=True)
    assert p.returncode == -signal.SIGKILL
    r = run_tp("runs", "list", cwd=tmp_path)
    assert r.returncode == 0 and "crashed" in r.stdout.splitlines()[1]
