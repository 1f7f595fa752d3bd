"""Checkpoints, automatic resume and error recovery, end to end with the real `tp train`: kill -9 at
random moments (also inside a save), resume with --resume auto, and compare bitwise with an
uninterrupted run; corrupted-newest fallback; malicious pickles refused; rotation; retries; SIGTERM."""
import json
import os
import pickle
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TP, check_run_dir, data_overrides, run_tp

# 3 epochs of 40 batches; checkpoints every 7 steps (mostly mid-epoch), all kept so any can be compared
SETTINGS = ["training.epochs=3", "training.deterministic=true", "checkpointing.save_every_n_steps=7",
            "checkpointing.keep_last_n=3", "training.retry_backoff_s=0", "data.cache=false"]
SLOW = {"TP_FAULT": "train:sleep=0.03"}  # 30 ms per batch (~4 s of training): kills land at varied moments of the run


def cmd(data_dir, *extra):
    return [str(TP), "train", "--config", str(REPO / "config" / "test.yaml"), *data_overrides(data_dir), *SETTINGS, *extra]


def run_train(cwd, data_dir, *extra, env=None):
    return run_tp(*cmd(data_dir, *extra)[1:], cwd=cwd, env=env)


def runs(cwd): return sorted((Path(cwd) / "runs" / "test").glob("*/run.json"))


def completed_run(cwd):
    done = [p.parent for p in runs(cwd) if json.loads(p.read_text())["status"] == "completed"]
    assert len(done) == 1, [json.loads(p.read_text())["status"] for p in runs(cwd)]
    return done[0]


def final_state(run_dir):
    from training_pipeline.loop.checkpoint import load_checkpoint
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    state = load_checkpoint(run_dir / "checkpoints" / index["last"])
    return index["last"], state


def assert_bitwise_equal(a, b):
    name_a, sa = a; name_b, sb = b
    assert name_a == name_b
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]: assert torch.equal(sa["model"][k], sb["model"][k]), k
    for i, st in sa["optimizer"]["state"].items():
        for k, v in st.items(): assert torch.equal(v, sb["optimizer"]["state"][i][k]), (i, k)
    assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]
    assert sa["scheduler"] == sb["scheduler"]


def metric_rows(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["split"], r["step"], r.get("epoch_time_s") is not None) for r in rows]
    assert len(keys) == len(set(keys)), "a step appears twice in metrics.jsonl"
    return [(r["split"], r["step"], r["loss"], r["accuracy"]) for r in rows]


def tensorboard_steps(run_dir, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tensorboard")); acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prepared):
    "An uninterrupted run with the same settings."
    cwd = tmp_path_factory.mktemp("reference")
    r = run_train(cwd, prepared("digits"))
    assert r.returncode == 0, r.stderr
    run_dir = completed_run(cwd)
    return {"run": run_dir, "final": final_state(run_dir), "rows": metric_rows(run_dir), "tb": tensorboard_steps(run_dir)}


def kill_then_resume(cwd, data_dir, kill_after_s=None, env=None):
    "Start a run, SIGKILL it (after a delay, or by a fault injection point), resume with --resume auto."
    p = subprocess.Popen(cmd(data_dir), cwd=cwd, env={**os.environ, **(env or SLOW)},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        p.send_signal(signal.SIGKILL)
    p.wait(timeout=120)
    killed = p.returncode == -signal.SIGKILL
    r = run_train(cwd, data_dir)
    assert r.returncode == 0, r.stderr
    return killed, completed_run(cwd)


DELAYS = [round(random.Random(seed).uniform(2.0, 5.5), 2) for seed in range(2)]  # seconds after start (2 moments: CI time)


@pytest.mark.parametrize("delay", DELAYS)
def test_kill9_at_a_random_moment_then_resume_is_bitwise_equal(tmp_path, prepared, reference, delay):
    killed, run_dir = kill_then_resume(tmp_path, prepared("digits"), kill_after_s=delay)
    assert killed, "the run finished before the kill: make it slower"
    assert_bitwise_equal(final_state(run_dir), reference["final"])
    assert metric_rows(run_dir) == reference["rows"]
    assert tensorboard_steps(run_dir) == reference["tb"]
    check_run_dir(run_dir)
    if killed and any(json.loads(l)["event"] == "resumed" for l in (run_dir / "events.jsonl").read_text().splitlines()):
        assert json.loads((run_dir / "run.json").read_text())["resumed_count"] >= 1


def test_kill9_before_the_first_checkpoint_then_resume_logs_each_step_once(tmp_path, prepared, reference):
    "Killed after TensorBoard logged step 5 but before the first checkpoint (step 7): the run restarts in place from step 0."
    killed, run_dir = kill_then_resume(tmp_path, prepared("digits"), env={"TP_FAULT": "train:kill@6"})
    assert killed
    assert tensorboard_steps(run_dir) == reference["tb"]  # step 5 once, not twice
    assert metric_rows(run_dir) == reference["rows"]
    assert_bitwise_equal(final_state(run_dir), reference["final"])


@pytest.mark.parametrize("fault", ["checkpoint:between-files@3", "checkpoint:before-manifest@5", "train:kill@30"])
def test_kill9_inside_a_save_then_resume(tmp_path, prepared, reference, fault):
    killed, run_dir = kill_then_resume(tmp_path, prepared("digits"), env={"TP_FAULT": fault})
    assert killed
    events = [json.loads(l)["event"] for l in (run_dir / "events.jsonl").read_text().splitlines()]
    assert "resumed" in events
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")], "interrupted save left behind"
    assert_bitwise_equal(final_state(run_dir), reference["final"])
    assert metric_rows(run_dir) == reference["rows"]
    check_run_dir(run_dir)


def test_corrupted_newest_checkpoint_falls_back(tmp_path, prepared, reference):
    p = subprocess.run(cmd(prepared("digits")), cwd=tmp_path, env={**os.environ, "TP_FAULT": "train:kill@60"}, capture_output=True)
    assert p.returncode == -signal.SIGKILL
    run_dir = runs(tmp_path)[0].parent
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    newest = ckpts[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated, as by a failing disk
    r = run_train(tmp_path, prepared("digits"))
    assert r.returncode == 0, r.stderr
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    fallback = [e for e in events if e["event"] == "checkpoint_fallback"]
    assert fallback and fallback[0]["skipped"] == ckpts[-1].name
    resumed = [e for e in events if e["event"] == "resumed"][0]
    assert resumed["checkpoint"].endswith(ckpts[-2].name)
    assert_bitwise_equal(final_state(run_dir), reference["final"])


def test_no_good_checkpoint_is_exit_2(tmp_path, prepared):
    p = subprocess.run(cmd(prepared("digits")), cwd=tmp_path, env={**os.environ, "TP_FAULT": "train:kill@30"}, capture_output=True)
    run_dir = runs(tmp_path)[0].parent
    for ck in (run_dir / "checkpoints").glob("step-*"): (ck / "trainer.json").write_text("{}")
    r = run_train(tmp_path, prepared("digits"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "has checkpoints but none passes verification" in r.stderr


class Payload:
    "Unpickling this runs a shell command that creates a marker file."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_and_never_run(tmp_path, prepared):
    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "best_model.pt"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    r = run_train(tmp_path, prepared("digits"), "--resume", evil)
    assert r.returncode == 2 and "is a pickle, which is never loaded" in r.stderr and "Traceback" not in r.stderr
    # a pickle smuggled into a real checkpoint directory
    assert run_train(tmp_path, prepared("digits"), "training.epochs=1").returncode == 0
    ck = sorted(completed_run(tmp_path).glob("checkpoints/step-*"))[-1]
    torch.save({"x": Payload(marker)}, ck / "optimizer.bin")
    r = run_train(tmp_path, prepared("digits"), "--resume", ck)
    assert r.returncode == 2 and "optimizer.bin is a pickle" in r.stderr
    assert not marker.exists(), "the pickle payload ran"


def test_rotation_keeps_last_n_best_and_resumed_from(tmp_path, prepared):
    extra = ["checkpointing.keep_last_n=2", "checkpointing.keep_best_n=1", "checkpointing.monitor_metric=val_accuracy",
             "checkpointing.mode=max"]
    p = subprocess.run(cmd(prepared("digits"), *extra), cwd=tmp_path, env={**os.environ, "TP_FAULT": "train:kill@45"}, capture_output=True)
    assert p.returncode == -signal.SIGKILL
    r = run_train(tmp_path, prepared("digits"), *extra)
    assert r.returncode == 0, r.stderr
    run_dir = completed_run(tmp_path)
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    names = [c["name"] for c in index["checkpoints"]]
    resumed_from = index["resumed_from"]
    assert resumed_from == "step-00000042" and resumed_from in names
    last_two = names[-2:]
    assert index["best"]["name"] in names
    assert set(names) == set(last_two) | {index["best"]["name"], resumed_from}
    assert (run_dir / "checkpoints" / "best_model.safetensors").read_bytes() == \
        (run_dir / "checkpoints" / index["best"]["name"] / "model.safetensors").read_bytes()


def test_transient_failure_is_retried_from_the_checkpoint(tmp_path, prepared, reference):
    r = run_train(tmp_path, prepared("digits"), env={"TP_FAULT": "train:transient@50"})
    assert r.returncode == 0, r.stderr
    assert "retry 1/3" in r.stderr
    run_dir = completed_run(tmp_path)
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["attempt"] for e in events if e["event"] == "retry"] == [1]
    assert_bitwise_equal(final_state(run_dir), reference["final"])


def test_retries_exhausted_is_exit_1(tmp_path, prepared):
    r = run_train(tmp_path, prepared("digits"), "training.max_retries=2", env={"TP_FAULT": "train:always@20"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: training failed after 2 retries: TransientError")
    meta = json.loads(runs(tmp_path)[0].read_text())
    assert meta["status"] == "failed" and meta["error_kind"] == "transient"


def test_deterministic_failure_is_not_retried(tmp_path, prepared):
    r = run_train(tmp_path, prepared("digits"), "training.learning_rate=1e12", "training.optimizer.type=sgd",
                  "model.dropout=0.0")
    run_dir = runs(tmp_path)[0].parent
    events = [json.loads(l)["event"] for l in (run_dir / "events.jsonl").read_text().splitlines()]
    if r.returncode == 0: pytest.fail("expected the run to diverge")
    assert r.returncode == 1 and "retry" not in events and "diverged" in events


def test_sigterm_saves_and_resumes(tmp_path, prepared, reference):
    p = subprocess.Popen(cmd(prepared("digits")), cwd=tmp_path, env={**os.environ, **SLOW}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # training has started (its signal handler is in place) once it logs a row
    while not any(f.stat().st_size for f in Path(tmp_path).glob("runs/test/*/metrics.jsonl")) and time.monotonic() < deadline: time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    run_dir = runs(tmp_path)[0].parent
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    last = json.loads((run_dir / "checkpoints" / "index.json").read_text())["last"]
    assert json.loads((run_dir / "checkpoints" / last / "trainer.json").read_text())["reason"] == "preempted"
    r = run_train(tmp_path, prepared("digits"))
    assert r.returncode == 0, r.stderr
    assert_bitwise_equal(final_state(completed_run(tmp_path)), reference["final"])


def test_resume_from_a_path_starts_a_child_run(tmp_path, prepared, reference):
    r = run_train(tmp_path, prepared("digits"), "--resume", reference["run"], "training.epochs=4")
    assert r.returncode == 0, r.stderr
    child = completed_run(tmp_path)
    meta = json.loads((child / "run.json").read_text())
    assert meta["parent_run"] == reference["run"].name and child.name != reference["run"].name
    rows = metric_rows(child)
    assert min(step for _, step, _, _ in rows) > 120  # it continued from the parent's step 120


def test_sigterm_twice_to_the_process_group_with_loader_workers_is_a_clean_preemption(tmp_path, prepared):
    # Slurm and `kill -- -PGID` signal every process of the group, DataLoader workers included
    p = subprocess.Popen(cmd(prepared("digits"), "data.num_workers=2"), cwd=tmp_path, env={**os.environ, **SLOW},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(f.stat().st_size for f in (tmp_path / "runs").glob("*/*/metrics.jsonl")):  # training has begun
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGTERM)
    time.sleep(0.02)
    try: os.killpg(p.pid, signal.SIGTERM)  # the same signal again, as when a launcher forwards what Slurm sent
    except ProcessLookupError: pass
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted by SIGTERM" in err, err[-2000:]
    run_dir = runs(tmp_path)[0].parent
    last = json.loads((run_dir / "checkpoints" / "index.json").read_text())["last"]
    assert json.loads((run_dir / "checkpoints" / last / "trainer.json").read_text())["reason"] == "preempted"


def test_two_resumers_racing_on_one_crashed_run_train_it_once(tmp_path, prepared):
    # a job retried while its user restarts it by hand: both `--resume auto` the same crashed run at once
    data_dir = prepared("digits")
    crashed = run_train(tmp_path, data_dir, env={"TP_FAULT": "train:kill@10"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    procs = [subprocess.Popen(cmd(data_dir), cwd=tmp_path, env={**os.environ, **SLOW}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], [err[-1500:] for _, err in results]
    loser = next(err for code, err in results if code == 2)
    errors = [l for l in loser.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "is being trained by pid" in errors[0], loser[-1500:]
    assert "Traceback" not in loser
    assert len(runs(tmp_path)) == 1  # the loser made no run of its own
    run_dir = completed_run(tmp_path)
    metric_rows(run_dir)  # asserts that no step was logged twice
    events = [json.loads(l)["event"] for l in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events.count("resumed") == 1
