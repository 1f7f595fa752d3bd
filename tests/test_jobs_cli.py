"""The job manager end to end with the real `tp jobs` and `tp train`: 4 jobs on 2 CPU slots, a job SIGKILLed
mid-run retried from its checkpoint (bitwise equal to an uninterrupted run), bad configs refused at submit, a
deterministic failure not retried, a SIGKILLed worker's job requeued by the next worker, two workers sharing a
queue, cancel with a checkpoint, queue errors, the dashboard template, and a real single-node Slurm (a job, a requeue, tp tune's
trials)."""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, TP, check_run_dir, data_overrides, run_tp, wait_for

CONFIG = REPO / "config" / "test.yaml"
# digits, 40 steps per epoch; checkpoints every 7 steps
SETTINGS = ["training.deterministic=true", "checkpointing.save_every_n_steps=7", "checkpointing.keep_last_n=2",
            "training.retry_backoff_s=0", "logging.tensorboard.enabled=false"]


def submit(cwd, data_dir, *extra, env=None):
    r = run_tp("jobs", "submit", "--config", CONFIG, *data_overrides(data_dir), *extra, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def worker(cwd, *extra, env=None, timeout=300):
    r = run_tp("jobs", "worker", "--backoff-s", "0", *extra, cwd=cwd, env=env, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def start_worker(cwd, *extra, env=None):
    return subprocess.Popen([str(TP), "jobs", "worker", "--backoff-s", "0", *extra], cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def db(cwd):
    c = sqlite3.connect(Path(cwd) / "jobs" / "jobs.db", timeout=30); c.row_factory = sqlite3.Row
    return c


def job(cwd, job_id): return dict(db(cwd).execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
def attempts(cwd, job_id): return [dict(r) for r in db(cwd).execute("SELECT * FROM attempts WHERE job_id=? ORDER BY attempt", (job_id,))]
def events(run_dir): return [json.loads(l)["event"] for l in (Path(run_dir) / "events.jsonl").read_text().splitlines()]


def metric_rows(run_dir):
    p = Path(run_dir) / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def final_weights(run_dir):
    from safetensors.torch import load_file
    index = json.loads((Path(run_dir) / "checkpoints" / "index.json").read_text())
    return index["last"], load_file(Path(run_dir) / "checkpoints" / index["last"] / "model.safetensors")


def test_four_jobs_on_two_slots_run_two_at_a_time(tmp_path, prepared):
    ids = [submit(tmp_path, prepared("digits"), f"seed={i}", "--name", f"seed{i}") for i in range(4)]
    assert ids == [1, 2, 3, 4]
    t0 = time.time()
    w = worker(tmp_path, "--slots", "2")
    took = time.time() - t0
    rows = [job(tmp_path, i) for i in ids]
    assert [r["state"] for r in rows] == ["succeeded"] * 4, w.stdout
    spans = [(a["started"], a["ended"]) for i in ids for a in attempts(tmp_path, i)]
    assert len(spans) == 4  # one attempt each
    at_once = [sum(s <= t < e for s, e in spans) for t, _ in spans]
    assert max(at_once) == 2, at_once  # never more than 2, and 2 did run together
    first = min(s for s, _ in spans)
    print(f"\n4 jobs on 2 slots: worker {took:.1f} s; timeline (s): " +
          ", ".join(f"job {i} {s - first:.1f}-{e - first:.1f}" for i, (s, e) in zip(ids, spans)))
    listed = run_tp("jobs", "list", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.count("succeeded") == 4 and "val_accuracy" in listed.stdout
    for r in rows:
        assert json.loads((Path(r["run_dir"]) / "run.json").read_text())["id"] == r["run_id"]
        assert json.loads(r["resources"])["peak_rss_mb"] > 50  # sampled while it ran
        check_run_dir(r["run_dir"])


def test_a_killed_job_is_retried_and_resumes_bitwise_equal(tmp_path, prepared):
    data = prepared("digits")
    reference = submit(tmp_path, data, *SETTINGS, "training.epochs=2", "--name", "uninterrupted")
    worker(tmp_path, "--slots", "1")
    jid = submit(tmp_path, data, *SETTINGS, "training.epochs=2", "--name", "killed")
    # SIGKILL at step 28, right after the step-28 checkpoint is committed (the checkpoint callback runs first):
    # the retry resumes after step 28, so the fault cannot fire again
    w = worker(tmp_path, "--slots", "1", env={"TP_FAULT": "train:kill@28"})
    assert job(tmp_path, reference)["state"] == "succeeded"
    j = job(tmp_path, jid)
    assert (j["state"], j["retries"], j["attempts"]) == ("succeeded", 1, 2), w.stdout
    a = attempts(tmp_path, jid)
    assert [(x["exit_code"], x["outcome"], x["resume"]) for x in a] == [(-9, "transient", "never"), (0, "succeeded", "auto")]
    run_dir = Path(j["run_dir"])
    assert "resumed" in events(run_dir) and "resumed" not in events(job(tmp_path, reference)["run_dir"])
    name, weights = final_weights(run_dir)
    ref_name, ref_weights = final_weights(job(tmp_path, reference)["run_dir"])
    assert name == ref_name and weights.keys() == ref_weights.keys()
    import torch
    for k in weights: assert torch.equal(weights[k], ref_weights[k]), k
    log = (tmp_path / "jobs" / "logs" / f"{jid}.log").read_text()
    assert "attempt 1 exited with -9" in log and "attempt 2" in log and "(resume auto)" in log
    check_run_dir(run_dir)


def test_bad_config_is_refused_at_submit_and_a_deterministic_failure_is_not_retried(tmp_path, prepared):
    data = prepared("digits")
    bad = run_tp("jobs", "submit", "--config", CONFIG, "training.epochs=zero", cwd=tmp_path)
    check = run_tp("config", "check", CONFIG, "training.epochs=zero", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr == check.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
    gpus = run_tp("jobs", "submit", "--config", CONFIG, "--gpus", "1", cwd=tmp_path)
    assert gpus.returncode == 2 and gpus.stderr.startswith("error: the job asks for 1 GPU but this machine has 0"), gpus.stderr
    missing = run_tp("jobs", "submit", "--config", tmp_path / "nope.yaml", cwd=tmp_path)
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing queued, no queue created
    jid = submit(tmp_path, data, "training.learning_rate=1e12", "training.optimizer.type=sgd", "--max-retries", "3")
    worker(tmp_path, "--slots", "1")
    j = job(tmp_path, jid)
    assert (j["state"], j["retries"], j["attempts"], j["exit_code"]) == ("failed", 0, 1, 1)
    assert "diverged" in j["error"]
    shown = run_tp("jobs", "show", str(jid), cwd=tmp_path)
    assert shown.returncode == 0 and "failed" in shown.stdout and "diverged" in shown.stdout


def test_a_sigkilled_workers_job_is_requeued_by_the_next_worker(tmp_path, prepared):
    jid = submit(tmp_path, prepared("digits"), *SETTINGS, "training.epochs=2")
    w1 = start_worker(tmp_path, "--slots", "1", env={"TP_FAULT": "train:sleep=0.05"})
    run_dir = Path(job(tmp_path, jid)["run_dir"])
    wait_for(lambda: (run_dir / "checkpoints" / "index.json").exists(), what="a first checkpoint")
    train_pid = job(tmp_path, jid)["pid"]
    w1.send_signal(signal.SIGKILL); w1.wait()
    w2 = worker(tmp_path, "--slots", "1")
    assert "its worker" in w2.stdout and "requeued" in w2.stdout, w2.stdout
    j = job(tmp_path, jid)
    assert (j["state"], j["requeues"], j["retries"], j["attempts"]) == ("succeeded", 1, 0, 2)
    assert [x["outcome"] for x in attempts(tmp_path, jid)] == ["worker lost", "succeeded"]
    with pytest.raises(ProcessLookupError): os.kill(train_pid, 0)  # the orphaned attempt is gone
    ev = events(run_dir)
    assert "preempted" in ev and "resumed" in ev  # it saved a checkpoint on its way out; the next attempt continued it
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    check_run_dir(run_dir)


def test_two_workers_never_run_the_same_job(tmp_path, prepared):
    ids = [submit(tmp_path, prepared("digits"), f"seed={i}") for i in range(4)]
    workers = [start_worker(tmp_path, "--slots", "1") for _ in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    assert [job(tmp_path, i)["state"] for i in ids] == ["succeeded"] * 4
    runs = [a for i in ids for a in attempts(tmp_path, i)]
    assert len(runs) == 4  # every job started exactly once
    assert len({a["worker"] for a in runs}) == 2  # and both workers took part
    assert len(list((tmp_path / "runs" / "test").iterdir())) == 4


def test_cancel_stops_a_running_job_with_a_checkpoint(tmp_path, prepared):
    data = prepared("digits")
    running = submit(tmp_path, data, *SETTINGS, "training.epochs=3", "--priority", "5")
    queued = submit(tmp_path, data)
    w = start_worker(tmp_path, "--slots", "1", env={"TP_FAULT": "train:sleep=0.05"})
    run_dir = Path(job(tmp_path, running)["run_dir"])
    wait_for(lambda: metric_rows(run_dir) >= 2, what="training to start")
    r = run_tp("jobs", "cancel", str(queued), cwd=tmp_path)
    assert r.returncode == 0 and job(tmp_path, queued)["state"] == "cancelled", r.stderr
    r = run_tp("jobs", "cancel", str(running), cwd=tmp_path)
    assert r.returncode == 0 and "SIGTERM" in r.stdout, r.stderr
    out = w.communicate(timeout=120)[0]
    j = job(tmp_path, running)
    assert (j["state"], j["exit_code"], j["retries"]) == ("cancelled", 130, 0), out
    assert attempts(tmp_path, queued) == []  # never started
    assert "preempted" in events(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    assert meta["status"] == "interrupted" and index["last"] == f"step-{meta['summary']['global_step']:08d}"
    again = run_tp("jobs", "cancel", str(running), cwd=tmp_path)
    assert again.returncode == 2 and "already ended (cancelled)" in again.stderr


def test_queue_errors_are_one_line_and_leave_the_queue_alone(tmp_path):
    r = run_tp("jobs", "list", cwd=tmp_path)
    assert r.returncode == 0 and "no jobs" in r.stdout
    for argv in (["cancel", "42"], ["show", "x"]):
        r = run_tp("jobs", *argv, cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: ")
    assert list(tmp_path.iterdir()) == []
    # what would go into #SBATCH lines is checked first: a newline there would end the header and run as shell
    r = run_tp("jobs", "submit", "--config", CONFIG, "--backend", "slurm", "--partition", "gpu\necho pwned", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --partition") and len(r.stderr.splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == []
    # a file that is not a database: one line, exit 2, file untouched
    (tmp_path / "jobs").mkdir(); (tmp_path / "jobs" / "jobs.db").write_bytes(b"garbage" * 1000)
    for argv in (["list"], ["show", "1"], ["submit", "--config", str(CONFIG)]):
        r = run_tp("jobs", *argv, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith("error: job queue unreadable") and len(r.stderr.splitlines()) == 1, r.stderr
    assert (tmp_path / "jobs" / "jobs.db").read_bytes() == b"garbage" * 1000
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["jobs.db"]
    # a lock held too long: one line, exit 1, nothing queued
    other = tmp_path / "other"; other.mkdir()
    r = run_tp("jobs", "submit", "--config", CONFIG, cwd=other); assert r.returncode == 0, r.stderr
    holder = sqlite3.connect(other / "jobs" / "jobs.db", isolation_level=None); holder.execute("BEGIN IMMEDIATE")
    try:
        r = run_tp("jobs", "submit", "--config", CONFIG, cwd=other, env={"TP_JOBS_BUSY_TIMEOUT_S": "1"})
        assert r.returncode == 1 and r.stderr.startswith("error: job queue is locked by another process"), r.stderr
        assert len(r.stderr.splitlines()) == 1
    finally: holder.execute("ROLLBACK"); holder.close()
    assert db(other).execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_dashboard_template_renders_the_queue(tmp_path, prepared):
    jid = submit(tmp_path, prepared("digits"), "--name", "dash-demo")
    assert run_tp("jobs", "cancel", str(jid), cwd=tmp_path).returncode == 0
    watched = run_tp("jobs", "list", "--watch", cwd=tmp_path, timeout=30)  # every job ended: one frame, then exit 0
    assert watched.returncode == 0 and "1 cancelled" in watched.stdout and "dash-demo" in watched.stdout, watched.stderr
    path = run_tp("notebooks", "path", "jobs").stdout.strip()
    out = tmp_path / "jobs-out.ipynb"
    r = subprocess.run([str(Path(TP).with_name("papermill")), path, str(out), "-p", "jobs_dir", str(tmp_path / "jobs"),
                        "--no-progress-bar"], capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "dash-demo" in text and "cancelled" in text and "application/vnd.jupyter.widget-view+json" in text


# ---------------------------------------------------------------- Slurm: a real single-node cluster
def _free_port():
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _install_slurm():
    "Debian's Slurm, installed as CI installs chromium (root + apt-get), when missing."
    if all(shutil_which(b) for b in ("sbatch", "slurmctld", "slurmd", "munged")): return None
    if os.geteuid() != 0 or not shutil_which("apt-get"): return "Slurm is not installed and this is not root with apt-get"
    r = subprocess.run("apt-get update -qq && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge",
                       shell=True, capture_output=True, text=True, timeout=600)
    return None if r.returncode == 0 else f"apt-get install of Slurm failed: {r.stderr[-300:]}"


def shutil_which(name):
    import shutil
    return shutil.which(name) or (Path("/usr/sbin") / name if (Path("/usr/sbin") / name).exists() else None)


@pytest.fixture(scope="module")
def slurm():
    "munged + slurmctld + slurmd on this machine, configured in a temp dir; yields the environment for Slurm clients."
    why = _install_slurm()
    if why: pytest.skip(f"SLURM TESTS SKIPPED: {why}")
    d = Path(tempfile.mkdtemp(prefix="tp-slurm-"))
    started = []
    if not Path("/run/munge/munge.socket.2").exists():
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        if not Path("/etc/munge/munge.key").exists():
            Path("/etc/munge").mkdir(exist_ok=True)
            Path("/etc/munge/munge.key").write_bytes(os.urandom(128)); os.chmod("/etc/munge/munge.key", 0o400)
        r = subprocess.run([str(shutil_which("munged")), "--force"], capture_output=True, text=True)
        if r.returncode != 0: pytest.skip(f"SLURM TESTS SKIPPED: munged did not start: {r.stderr.strip()[-300:]}")
        started.append(Path("/run/munge/munged.pid"))
    host = socket.gethostname().split(".")[0]
    mem = int(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 * 0.8)
    for sub in ("state", "spool"): (d / sub).mkdir()
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=tp-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
MinJobAge=600
KillWait=30
DefMemPerCPU={mem // (os.cpu_count() or 1)}
NodeName={host} CPUs={os.cpu_count()} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for daemon in ("slurmctld", "slurmd"):
        r = subprocess.run([str(shutil_which(daemon))], env=env, capture_output=True, text=True)
        if r.returncode != 0: pytest.skip(f"SLURM TESTS SKIPPED: {daemon} did not start: {r.stderr.strip()[-300:]}")
        started.append(d / f"{daemon}.pid")
    try:
        t0 = time.time()
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout:
            if time.time() - t0 > 30:
                pytest.skip(f"SLURM TESTS SKIPPED: the node did not become idle in 30 s: {(d / 'slurmctld.log').read_text()[-500:]}")
            time.sleep(0.5)
        yield {"SLURM_CONF": str(conf)}
    finally:
        for pid_file in reversed(started):
            if pid_file.exists():
                try: os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError): pass
        time.sleep(1)
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def slurm_state(cwd, jid, env):
    run_tp("jobs", "list", cwd=cwd, env=env)  # reading the queue brings Slurm jobs up to date
    return job(cwd, jid)


def test_slurm_runs_a_one_node_job(tmp_path, prepared, slurm):
    jid = submit(tmp_path, prepared("digits"), "--backend", "slurm", "--time", "10:00", env=slurm)
    script = (tmp_path / "jobs" / "slurm" / f"{jid}.sbatch").read_text()
    assert script.startswith("#!/bin/bash\n") and "#SBATCH --requeue" in script
    wait_for(lambda: slurm_state(tmp_path, jid, slurm)["state"] in ("succeeded", "failed", "cancelled"), timeout=180, what="the Slurm job")
    j = job(tmp_path, jid)
    log = run_tp("jobs", "logs", str(jid), cwd=tmp_path, env=slurm).stdout
    assert j["state"] == "succeeded", log
    assert "run completed" in log and "attempt 1" in log
    shown = run_tp("jobs", "show", str(jid), cwd=tmp_path, env=slurm).stdout
    assert f"slurm job {json.loads(j['slurm'])['job_id']}" in shown
    check_run_dir(j["run_dir"])


def test_tune_trials_run_as_slurm_jobs(tmp_path, prepared, slurm):
    r = run_tp("tune", "--config", CONFIG, "--param", "training.learning_rate=choice(0.003)", "--trials", "1", "--jobs", "--backend", "slurm",
               "--pruner", "none", *data_overrides(prepared("digits")), "logging.tensorboard.enabled=false", cwd=tmp_path, env=slurm, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (row,) = db(tmp_path).execute("SELECT backend, state, run_dir FROM jobs").fetchall()
    assert (row["backend"], row["state"]) == ("slurm", "succeeded")
    meta = json.loads((Path(row["run_dir"]) / "run.json").read_text())
    assert meta["status"] == "completed" and meta["trial"]["number"] == 0  # the job's run is the trial
    assert "study test: 1 trials (1 complete)" in r.stdout, r.stdout


def test_slurm_requeue_resumes_from_the_preemption_checkpoint(tmp_path, prepared, slurm):
    env = {**slurm, "TP_FAULT": "train:sleep=0.05"}  # sbatch passes the submitter's environment on
    jid = submit(tmp_path, prepared("digits"), *SETTINGS, "training.epochs=2", "--backend", "slurm", env=env)
    sid = json.loads(job(tmp_path, jid)["slurm"])["job_id"]
    run_dir = Path(job(tmp_path, jid)["run_dir"])
    wait_for(lambda: metric_rows(run_dir) >= 3, timeout=120, what="training in Slurm")
    senv = {**os.environ, **slurm}
    r = subprocess.run(["scontrol", "requeue", sid], env=senv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # Slurm holds a requeued job back (BeginTime, ~2 min); as an admin would, let it start now
    wait_for(lambda: "PENDING" in subprocess.run(["squeue", "-h", "-j", sid, "-o", "%T"], env=senv, capture_output=True, text=True).stdout,
             what="the requeue")
    subprocess.run(["scontrol", "update", f"JobId={sid}", "StartTime=now"], env=senv, check=True, capture_output=True)
    wait_for(lambda: slurm_state(tmp_path, jid, slurm)["state"] in ("succeeded", "failed", "cancelled"), timeout=180, what="the requeued job")
    j = job(tmp_path, jid)
    log = (tmp_path / "jobs" / "logs" / f"{jid}.log").read_text()
    assert (j["state"], j["requeues"]) == ("succeeded", 1), log
    ev = events(run_dir)
    assert "preempted" in ev and "resumed" in ev
    assert "resume never" in log and "resume auto" in log and "restart 1" in log
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]
    check_run_dir(run_dir)
