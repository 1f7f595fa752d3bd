"""Streamed data (issue 16 item 2): `tp train` with `data.in_memory: false` decodes images per sample in the loader workers;
`auto` says in one line which it chose and why, both ways; a truncated PNG in a streamed split fails the run with one line
naming the file (`data.on_bad_sample: error`) or is skipped and counted in events.jsonl (`skip`)."""
import json
import shutil

import pytest

from conftest import REPO, check_run_dir, run_tp

CONFIG = REPO / "config" / "test.yaml"


@pytest.fixture
def digits_copy(prepared, tmp_path):
    "A copy of the prepared digits data that a test may damage."
    return shutil.copytree(prepared("digits"), tmp_path / "data")


def train(cwd, data_dir, *overrides, timeout=300):
    return run_tp("train", "--config", CONFIG, f"data.data_dir={data_dir}", "training.epochs=1", *overrides, cwd=cwd, timeout=timeout)


def events(cwd):
    run_dir = next((cwd / "runs" / "test").iterdir())
    return run_dir, [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def truncate(path):
    path.write_bytes(path.read_bytes()[:60])
    return path


def test_streamed_training_with_two_workers(tmp_path, prepared):
    r = train(tmp_path, prepared("digits"), "data.in_memory=false", "data.num_workers=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data: streaming train/val/test (data.in_memory: false; decoded " in r.stdout, r.stdout
    assert "epoch 1/1" in r.stdout and "test_accuracy" in r.stdout, r.stdout
    run_dir, evs = events(tmp_path)
    check_run_dir(run_dir)
    placement = next(e for e in evs if e["event"] == "data_placement")
    assert placement["streamed"] is True and placement["splits"] == ["train", "val", "test"], placement
    assert not any(e["event"] == "bad_samples_skipped" for e in evs), evs
    assert "data: streaming" in (run_dir / "logs" / "train.log").read_text()
    # the preprocessing state is saved as for in-memory data (the whole train split fitted it: no `fitted_on`)
    pre = json.loads((run_dir / "artifacts" / "preprocessing.json").read_text())
    assert pre["type"] == "image" and len(pre["mean"]) == 1 and "fitted_on" not in pre, pre


def test_auto_keeps_small_data_in_memory(tmp_path, prepared):
    r = train(tmp_path, prepared("digits"))
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("data: "))
    assert line.startswith("data: in memory train/val/test (decoded ") and line.endswith(" MiB <= data.memory_budget_mb 1024)"), line
    assert next(e for e in events(tmp_path)[1] if e["event"] == "data_placement")["streamed"] is False


def test_truncated_png_fails_the_run_with_one_line(tmp_path, digits_copy):
    # in val: met by a loader worker, mid-run, and re-raised in the main process
    bad = truncate(sorted((digits_copy / "processed" / "val" / "4").glob("*.png"))[0])
    r = train(tmp_path, digits_copy, "data.in_memory=false", "data.num_workers=2")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0] == (f"error: truncated image ({bad}): remove it or replace it with a complete image, "
                        "or set data.on_bad_sample: skip"), lines
    assert "Traceback" not in r.stdout + r.stderr
    run_dir, _ = events(tmp_path)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


def test_truncated_pngs_are_skipped_and_counted(tmp_path, digits_copy):
    bad_train = truncate(sorted((digits_copy / "processed" / "train" / "7").glob("*.png"))[3])
    bad_val = truncate(sorted((digits_copy / "processed" / "val" / "2").glob("*.png"))[0])
    # auto with a tiny budget streams (and says why); skip replaces the bad images by the next good ones
    r = train(tmp_path, digits_copy, "data.memory_budget_mb=0.01", "data.on_bad_sample=skip", "data.num_workers=2")
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("data: "))
    assert line.startswith("data: streaming train/val/test (decoded ") and line.endswith(" MiB > data.memory_budget_mb 0.01)"), line
    run_dir, evs = events(tmp_path)
    skipped = {e["split"]: e for e in evs if e["event"] == "bad_samples_skipped"}
    assert set(skipped) == {"train", "val"}, evs
    assert (skipped["train"]["count"], skipped["train"]["files"]) == (1, [str(bad_train)]), skipped
    assert (skipped["val"]["count"], skipped["val"]["files"]) == (1, [str(bad_val)]), skipped
    check_run_dir(run_dir)
