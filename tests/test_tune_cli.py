"""`tp tune` end to end with the real `tp train` trials: the issue's digits search (6 trials, then 2 more in the same
study), 2-process CPU trials with the same parameters on both ranks and a pruned trial stopping both, trials as jobs
with a SIGKILLed trial retried from its checkpoint, a tuner killed mid-trial continued by the next `tp tune`, and bad
searches refused with one line and exit 2 before any trial."""
import json
import os
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, TP, run_tp, wait_for

LR_BATCH = ["--param", "training.learning_rate=loguniform(1e-4,3e-2)", "--param", "training.batch_size=choice(32,64)"]


def digits_config(tmp_path, data_dir, name="digits.yaml", base="digits.yaml"):
    "A user's copy of a shipped config pointing at the prepared data (trials must not depend on the working directory)."
    import yaml
    raw = yaml.safe_load((REPO / "config" / base).read_text())
    d = Path(data_dir)
    raw["data"].update(data_dir=str(d), train_dir=f"{d}/processed/train", val_dir=f"{d}/processed/val", test_dir=f"{d}/processed/test")
    cfg = tmp_path / name
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def runs_of(cwd, experiment):
    return {p.parent.name: json.loads(p.read_text()) for p in (Path(cwd) / "runs" / experiment).glob("*/run.json")}


def test_digits_search_then_two_more_trials_in_the_same_study(tmp_path, prepared):
    cfg = digits_config(tmp_path, prepared("digits"))
    args = ["tune", "--config", cfg, *LR_BATCH, "--pruner", "median", "--parallel", "2", "training.epochs=4"]
    r = run_tp(*args, "--trials", "6", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = runs_of(tmp_path, "digits")
    assert len(runs) == 6
    for run_id, meta in runs.items():  # every trial is a run carrying its study, number and sampled values
        trial = meta["trial"]
        assert trial["study"] == "digits" and run_id.endswith(f"-t{trial['number']:04d}")
        assert set(trial["params"]) == {"training.learning_rate", "training.batch_size"}
        assert 1e-4 <= trial["params"]["training.learning_rate"] <= 3e-2 and trial["params"]["training.batch_size"] in (32, 64)
        config = (tmp_path / "runs" / "digits" / run_id / "config.yaml").read_text()
        assert f"batch_size: {trial['params']['training.batch_size']}" in config  # the run trained the sampled values
        assert meta["status"] in ("completed", "pruned")
    completed = {m["trial"]["number"]: m for m in runs.values() if m["status"] == "completed"}
    best_line = next(l for l in r.stdout.splitlines() if l.startswith("best trial "))
    best_number = int(best_line.split()[2].rstrip(":"))
    assert best_number in completed  # the best trial named is a completed one, with its run id
    assert completed[best_number]["id"] in best_line and "val_accuracy" in best_line
    def best_val_accuracy(run_id):
        rows = (tmp_path / "runs" / "digits" / run_id / "metrics.jsonl").read_text().splitlines()
        return max(json.loads(l)["accuracy"] for l in rows if json.loads(l)["split"] == "val")
    best_value = float(best_line.split("val_accuracy ")[1].split()[0])
    assert best_value == round(max(best_val_accuracy(m["id"]) for m in completed.values()), 4)
    for m in runs.values():
        if m["status"] == "pruned": assert m["summary"]["epochs_completed"] < 4  # stopped before the end, with a checkpoint
    report = Path(r.stdout.split("report: ")[1].split()[0])
    page = (tmp_path / report).read_text() if not report.is_absolute() else report.read_text()
    assert "Parallel Coordinate" in page and "Optimization History" in page and "Hyperparameter Importances" in page
    assert not re.search(r"<script[^>]*src=", page)  # plotly.js inline: the page opens offline

    r = run_tp(*args, "--trials", "8", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(runs_of(tmp_path, "digits")) == 8
    assert "study digits: 8 trials" in r.stdout and r.stdout.count(" started: ") == 2
    numbers = sorted(m["trial"]["number"] for m in runs_of(tmp_path, "digits").values())
    assert numbers == list(range(8))  # trials 6 and 7 joined the same study
    status = run_tp("tune", "--config", cfg, "--status", cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count("\ntrial ") + status.stdout.startswith("trial ") == 8, status.stdout


def test_two_process_trials_share_their_params_and_a_pruned_trial_stops_both_ranks(tmp_path, prepared):
    cfg = digits_config(tmp_path, prepared("digits"), base="test.yaml")
    common = ["tune", "--config", cfg, "--param", "model.dropout=uniform(0.0,0.5)", "--sampler", "random", "--distributed", "--gpus", "2", "--cpu",
              "--startup-trials", "1", "--warmup-epochs", "0", "training.epochs=2", "distributed.timeout_s=60", "logging.tensorboard.enabled=false"]
    r = run_tp(*common, "--trials", "1", "training.learning_rate=0.01", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # the same study with a learning rate that cannot learn: below the median of the completed trial at epoch 1, pruned there
    r = run_tp(*common, "--trials", "2", "training.learning_rate=1e-7", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trial 1 pruned" in r.stdout, r.stdout
    runs = {m["trial"]["number"]: (p, m) for p, m in runs_of(tmp_path, "test").items()}
    for number, status in ((0, "completed"), (1, "pruned")):
        run_id, meta = runs[number]
        assert meta["status"] == status and meta["world_size"] == 2
        dropout = meta["trial"]["params"]["model.dropout"]
        logs = tmp_path / "runs" / "test" / run_id / "logs"
        for rank, log in ((0, logs / "train.log"), (1, logs / "train.rank1.log")):  # both ranks trained the sampled value
            text = log.read_text()
            assert f"trial {number} of study test on process {rank}: model.dropout={dropout}" in text, (rank, text[-2000:])
            if status == "pruned": assert f"trial {number} pruned at epoch 1" in text, (rank, text[-2000:])  # both stopped there
    _, pruned = runs[1]
    assert pruned["summary"]["epochs_completed"] == 1
    checkpoints = json.loads((tmp_path / "runs" / "test" / runs[1][0] / "checkpoints" / "index.json").read_text())
    assert checkpoints["last"] == f"step-{pruned['summary']['global_step']:08d}"  # the final checkpoint of the stop


def queued_jobs(cwd):
    db = Path(cwd) / "jobs" / "jobs.db"
    if not db.exists(): return 0
    with sqlite3.connect(db, timeout=30) as c: return c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def test_trials_as_jobs_a_sigkilled_trial_is_retried_from_its_checkpoint(tmp_path, prepared):
    cfg = digits_config(tmp_path, prepared("digits"), base="test.yaml")
    tuner = subprocess.Popen([str(TP), "tune", "--config", cfg, "--param", "training.learning_rate=choice(0.003,0.01)", "--sampler", "grid",
                              "--trials", "2", "--parallel", "2", "--jobs", "--pruner", "none", "training.epochs=2",
                              "checkpointing.save_every_n_steps=7", "training.retry_backoff_s=0", "logging.tensorboard.enabled=false"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: queued_jobs(tmp_path) == 2, what="two queued trials")
        # every first attempt is SIGKILLed at step 28, just after the step-28 checkpoint; the retry resumes after it
        w = run_tp("jobs", "worker", "--slots", "2", "--backoff-s", "0", cwd=tmp_path, env={"TP_FAULT": "train:kill@28"}, timeout=300)
        assert w.returncode == 0, w.stdout + w.stderr
        out, _ = tuner.communicate(timeout=120)
    finally:
        if tuner.poll() is None: tuner.kill()
    assert tuner.returncode == 0, out
    with sqlite3.connect(tmp_path / "jobs" / "jobs.db") as c:
        jobs = c.execute("SELECT id, state, retries, run_id FROM jobs ORDER BY id").fetchall()
        outcomes = c.execute("SELECT job_id, exit_code, outcome, resume FROM attempts ORDER BY job_id, attempt").fetchall()
    assert [(state, retries) for _, state, retries, _ in jobs] == [("succeeded", 1), ("succeeded", 1)]
    assert [o[1:] for o in outcomes] == [(-9, "transient", "never"), (0, "succeeded", "auto")] * 2
    runs = runs_of(tmp_path, "test")
    for _, _, _, run_id in jobs:
        meta = runs[run_id]  # the job's run is the trial's run, continued in place
        assert meta["status"] == "completed" and meta["resumed_count"] == 1 and "trial" in meta
    assert out.count(" val_loss ") >= 2 and "study test: 2 trials (2 complete)" in out, out


def test_a_killed_tuner_is_continued_by_the_next_tp_tune(tmp_path, prepared):
    cfg = digits_config(tmp_path, prepared("digits"), base="test.yaml")
    args = ["tune", "--config", cfg, "--param", "training.learning_rate=choice(0.003)", "--trials", "1", "training.epochs=2",
            "checkpointing.save_every_n_steps=10", "logging.tensorboard.enabled=false"]
    tuner = subprocess.Popen([str(TP), *map(str, args)], cwd=tmp_path, env={**os.environ, "TP_FAULT": "train:sleep=0.05"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        index = lambda: next((tmp_path / "runs" / "test").glob("*/checkpoints/index.json"), None)
        wait_for(lambda: index() is not None, what="the trial's first checkpoint")
    finally:
        os.killpg(tuner.pid, signal.SIGKILL)  # the tuner and its trial die together, as when a node goes away
        tuner.communicate()
    r = run_tp(*args, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "continuing 1 trial(s) left running: 0" in r.stdout and "study test: 1 trials (1 complete)" in r.stdout
    (run_id, meta), = runs_of(tmp_path, "test").items()
    assert meta["status"] == "completed" and meta["resumed_count"] == 1  # the same run, from its checkpoint


@pytest.mark.parametrize("param, says", [
    ("training.learnin_rate=loguniform(1e-4,1e-2)", "did you mean 'learning_rate'"),
    ("training.learning_rate=loguniform(0,1)", "loguniform needs 0 < low"),
    ("model.dropout=int(5,1)", "int needs low <= high"),
    ("training.batch_size=choice()", "choice needs at least one value"),
    ("training.batch_size=uniform(16,64)", "batch_size must be an integer"),
])
def test_a_bad_search_is_one_line_exit_2_before_any_trial(tmp_path, prepared, param, says):
    cfg = digits_config(tmp_path, prepared("digits"), base="test.yaml")
    r = run_tp("tune", "--config", cfg, "--param", param, "--trials", "2", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()  # nothing started, no study written
