"""`tp train` end to end in a subprocess: digits with the CNN, a table with the MLP, a diverging run,
bad settings, reproducibility; run directories checked against DESIGN.md and TensorBoard read back."""
import json
from pathlib import Path

import pytest

from conftest import REPO, check_run_dir, data_overrides, run_tp


def train(tmp_path, config, data_dir, *overrides):
    r = run_tp("train", "--config", REPO / "config" / config, *data_overrides(data_dir), *overrides, cwd=tmp_path)
    run_dirs = sorted((tmp_path / "runs").glob("*/*")) if (tmp_path / "runs").exists() else []
    return r, (run_dirs[-1] if run_dirs else None)


def rows(run_dir): return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_digits_cnn_trains_to_98_percent(tmp_path, prepared):
    r, run_dir = train(tmp_path, "digits.yaml", prepared("digits"))
    assert r.returncode == 0, r.stderr
    assert f"run completed: runs/digits/{run_dir.name}" in r.stdout
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and meta["world_size"] == 1 and meta["data_version"]
    assert meta["summary"]["val_accuracy"] >= 0.98, meta["summary"]
    assert meta["summary"]["test_accuracy"] >= 0.97, meta["summary"]
    check_run_dir(run_dir)
    seen = {}
    for row in rows(run_dir):
        assert (row["split"], row["step"]) not in seen, f"step {row['step']} twice in {row['split']}"
        seen[(row["split"], row["step"])] = row
    assert {s for s, _ in seen} == {"train", "val", "test"}
    assert (run_dir / "logs" / "train.log").read_text().count("epoch ") >= 5


def test_tensorboard_scalars_read_back(tmp_path, prepared):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    r, run_dir = train(tmp_path, "test.yaml", prepared("digits"), "training.epochs=2")
    assert r.returncode == 0, r.stderr
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"
    acc = EventAccumulator(str(run_dir / "tensorboard")); acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "val/accuracy", "val/loss"} <= set(tags), tags
    val = [e.value for e in acc.Scalars("val/accuracy")]
    logged = [row["accuracy"] for row in rows(run_dir) if row["split"] == "val"]
    assert val == pytest.approx(logged, abs=1e-6)


def test_tabular_mlp_trains(tmp_path, prepared):
    r, run_dir = train(tmp_path, "tabular.yaml", prepared("breast_cancer"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((run_dir / "run.json").read_text())["summary"]
    assert summary["val_accuracy"] > 0.9 and summary["test_accuracy"] > 0.9, summary
    pre = json.loads((run_dir / "artifacts" / "preprocessing.json").read_text())
    assert pre["type"] == "tabular" and len(pre["feature_names"]) == 30
    check_run_dir(run_dir)


def test_diverging_run_exits_1_cleanly(tmp_path, prepared):
    r, run_dir = train(tmp_path, "tabular.yaml", prepared("breast_cancer"), "training.learning_rate=1e12",
                       "training.optimizer.type=sgd")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: training diverged: the loss is nan")
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "failed" and "diverged" in meta["error"]
    events = [json.loads(l)["event"] for l in (run_dir / "events.jsonl").read_text().splitlines()]
    assert "diverged" in events and events[-1] == "run_failed"
    check_run_dir(run_dir)


def test_same_seed_deterministic_runs_are_bitwise_equal(tmp_path, prepared):
    losses = []
    for i in range(2):
        d = tmp_path / f"r{i}"; d.mkdir()
        r, run_dir = train(d, "test.yaml", prepared("digits"), "training.deterministic=true", "training.epochs=2")
        assert r.returncode == 0, r.stderr
        losses.append([(row["split"], row["step"], row["loss"]) for row in rows(run_dir)])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("overrides,text", [
    (["training.mixed_precision=fp16"], "fp16 mixed precision needs a GPU"),
    (["model.architecture=mlp"], "mlp needs tabular features, got images"),
    (["model.num_classes=3"], "model.num_classes is 3 but the data has 10 classes"),
])
def test_bad_settings_are_one_line_exit_2(tmp_path, prepared, overrides, text):
    r, _ = train(tmp_path, "test.yaml", prepared("digits"), *overrides)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and text in r.stderr


def test_missing_data_is_reported_before_training(tmp_path):
    r = run_tp("train", "--config", REPO / "config" / "digits.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    # the config gives data.data_dir only: train and val must be under it; a test split there is optional
    assert len(lines) == 2 and all(l.startswith("error: directory not found: data/processed/") for l in lines), lines
    assert "processed/train" in lines[0] and "processed/val" in lines[1]
    assert not (tmp_path / "runs").exists()
