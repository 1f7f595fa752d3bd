"""Papermill runs: the train template under papermill makes a run like `tp train`; a 2x2 `tp sweep`
makes four runs and their comparison; a failing point does not stop the others."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, check_run_dir, data_overrides, run_tp


def test_train_template_under_papermill_makes_a_valid_run(tmp_path, prepared):
    template = run_tp("notebooks", "path", "train").stdout.strip()
    overrides = json.dumps(data_overrides(prepared("digits")))
    out = tmp_path / "out.ipynb"
    r = subprocess.run([sys.executable, "-m", "papermill", template, str(out), "--no-progress-bar",
                        "-p", "config", str(REPO / "config" / "test.yaml"), "-p", "epochs", "1",
                        "-y", f"overrides: {overrides}", "-p", "output_notebook", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = next((tmp_path / "runs" / "test").iterdir())
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and meta["summary"]["epochs_completed"] == 1
    assert (run_dir / "artifacts" / "train.ipynb").exists()
    check_run_dir(run_dir)


def test_two_by_two_sweep(tmp_path, prepared):
    r = run_tp("sweep", "--config", REPO / "config" / "test.yaml", "--param", "training.learning_rate=0.003,0.01",
               "--param", "training.batch_size=32,64", "--epochs", "1", "--parallel", "2", "--out", "sw",
               *data_overrides(prepared("digits")), cwd=tmp_path)
    # data overrides are not sweep options: they belong in the config, so make one
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    cfg = tmp_path / "sweep.yaml"
    text = (REPO / "config" / "test.yaml").read_text()
    d = prepared("digits")
    cfg.write_text(text.replace("data:\n", f"data:\n  data_dir: {d}\n  train_dir: {d}/processed/train\n  val_dir: {d}/processed/val\n  test_dir: {d}/processed/test\n", 1))
    r = run_tp("sweep", "--config", cfg, "--param", "training.learning_rate=0.003,0.01", "--param", "training.batch_size=32,64",
               "--epochs", "1", "--parallel", "2", "--out", "sw", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [p["status"] for p in summary["points"]] == ["completed"] * 4
    assert len({p["run_dir"] for p in summary["points"]}) == 4
    assert len(list((tmp_path / "runs" / "test").iterdir())) == 4
    page = (tmp_path / "sw" / "compare.html").read_text()
    assert "training.learning_rate" in page and "training.batch_size" in page and page.count("Plotly.newPlot") == 1
    assert sorted(p.name for p in (tmp_path / "sw").glob("*.ipynb")) == sorted(f"{p['point']}.ipynb" for p in summary["points"])


def test_a_failing_point_is_reported_and_the_others_run(tmp_path, prepared):
    d = prepared("digits")
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text((REPO / "config" / "test.yaml").read_text().replace(
        "data:\n", f"data:\n  data_dir: {d}\n  train_dir: {d}/processed/train\n  val_dir: {d}/processed/val\n  test_dir: {d}/processed/test\n", 1))
    r = run_tp("sweep", "--config", cfg, "--param", "training.learning_rate=0.003,1e12", "--param", "training.optimizer.type=sgd",
               "--param", "model.dropout=0.0", "--epochs", "1", "--out", "sw", cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("completed") and lines[1].startswith("failed") and "diverged" in lines[1]
