"""Runs and checkpoints in an S3 bucket, end to end against a real S3 API server (moto_server on
127.0.0.1, started here): kill -9 and resume from the bucket on another machine (an empty cache),
a truncated newest checkpoint, the endpoint down for 20 s mid-run, a missing bucket, and the
readers (`tp runs list`, `tp report`, `tp monitor --once`, `tp models register`) from a bucket."""
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, TP, check_run_dir, free_port, run_tp, wait_for
from test_resume import SLOW, assert_bitwise_equal, cmd, final_state, metric_rows, reference  # noqa: F401 (fixture)

pytest.importorskip("s3fs", reason="the s3 extra (pip install -e '.[dev]') is needed for the object-storage tests")
MOTO = Path(sys.executable).with_name("moto_server")


class Proxy:
    "A TCP relay in front of the S3 server: stopping it is the endpoint going down (moto keeps its objects)."
    def __init__(self, target_port):
        self.target, self.port, self.conns, self.listener = target_port, free_port(), [], None
        self.start()

    def start(self):
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.running = True
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener):
        while self.running:
            try: client, _ = listener.accept()
            except OSError: return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a, b):
        try:
            while self.running:
                ready, _, _ = select.select([a, b], [], [], 1)
                for s in ready:
                    data = s.recv(1 << 16)
                    if not data: return
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError): return  # closed by stop()
        finally:
            for s in (a, b): s.close()

    def stop(self):
        self.running = False
        self.listener.close()
        for s in self.conns:
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
            s.close()
        self.conns = []


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    "A real S3 API server with the bucket `bucket`; .env points boto3/s3fs at it (through .proxy)."
    assert MOTO.exists(), f"{MOTO} missing: pip install -e '.[dev]' (moto[server])"
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    def up():
        try: socket.create_connection(("127.0.0.1", port), timeout=1).close(); return True
        except OSError: return False
    wait_for(up, 60, "moto_server")
    proxy = Proxy(port)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    import boto3
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    client.create_bucket(Bucket="bucket")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # this process reads the bucket too (localize, the checks below)
    try: yield type("S3", (), {"env": env, "proxy": proxy, "client": client})
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
        proxy.stop(); server.terminate(); server.wait(timeout=30); log.close()


def keys(s3, prefix):
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket="bucket", Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def committed(s3, prefix):
    return sorted(k.split("/")[-2] for k in keys(s3, prefix) if k.endswith("/MANIFEST.json") and "/checkpoints/step-" in k)


def bucket_run(s3, prefix):
    runs = sorted({k.split("/")[2] for k in keys(s3, prefix) if k.endswith("/run.json")})
    assert len(runs) == 1, runs
    return f"s3://bucket/{prefix}/test/{runs[0]}"


def pulled(url, tmp_path):
    "A fresh local copy of a run in the bucket, with its checkpoints."
    from training_pipeline.track.storage import localize
    os.environ["TP_CACHE_DIR"] = str(tmp_path / f"reader-{uuid.uuid4().hex[:6]}")
    try: return localize(url, with_checkpoints=True)
    finally: del os.environ["TP_CACHE_DIR"]


def events(run_dir): return [json.loads(l) for l in (Path(run_dir) / "events.jsonl").read_text().splitlines()]


def start_train(data_dir, runs_url, cache, env=None, *extra):
    return subprocess.Popen(cmd(data_dir, f"experiment.runs_dir={runs_url}", "storage.sync_interval_s=0.5", *extra),
                            env={**os.environ, "TP_CACHE_DIR": str(cache), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("damage", [None, "truncate-newest"])
def test_kill9_then_resume_from_the_bucket_on_another_machine_is_bitwise_equal(tmp_path, prepared, reference, s3, damage):
    prefix = f"kill-{uuid.uuid4().hex[:6]}"
    url = f"s3://bucket/{prefix}"
    first = start_train(prepared("digits"), url, tmp_path / "machine-a", SLOW)
    wait_for(lambda: len(committed(s3, prefix)) >= 2 or first.poll() is not None, 120, "two checkpoints committed in the bucket")
    first.send_signal(signal.SIGKILL); first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, first.stderr.read()
    shutil.rmtree(tmp_path / "machine-a")  # the machine is gone with its disk: only the bucket remains
    newest = committed(s3, prefix)[-1]
    if damage:
        run_key = bucket_run(s3, prefix)[len("s3://bucket/"):]
        key = f"{run_key}/checkpoints/{newest}/model.safetensors"
        body = s3.client.get_object(Bucket="bucket", Key=key)["Body"].read()
        s3.client.put_object(Bucket="bucket", Key=key, Body=body[: len(body) // 2])
    again = start_train(prepared("digits"), url, tmp_path / "machine-b")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    run_url = bucket_run(s3, prefix)
    assert f"run completed: {run_url}" in out, out
    run = pulled(run_url, tmp_path)
    meta = json.loads((run / "run.json").read_text())
    assert (meta["status"], meta["resumed_count"], meta["remote"]) == ("completed", 1, run_url)
    assert_bitwise_equal(final_state(run), reference["final"])
    assert metric_rows(run) == reference["rows"]  # every step logged once, as in the uninterrupted run
    names = [e["event"] for e in events(run)]
    assert "checkpoint_uploaded" in names
    if damage:
        fell_back = [e for e in events(run) if e["event"] == "checkpoint_fallback"]
        assert fell_back and newest in json.dumps(fell_back), events(run)
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["last"] == reference["final"][0] and all(e["name"] in committed(s3, prefix) for e in index["checkpoints"])
    check_run_dir(run)
    assert not list(Path.cwd().glob("s3:*"))


def test_the_endpoint_down_for_20_s_mid_run_loses_nothing(tmp_path, prepared, reference, s3):
    prefix = f"outage-{uuid.uuid4().hex[:6]}"
    p = start_train(prepared("digits"), f"s3://bucket/{prefix}", tmp_path / "cache", {"TP_FAULT": "train:sleep=0.15"},
                    "checkpointing.remote_timeout_s=10")
    wait_for(lambda: len(committed(s3, prefix)) >= 1, 120, "a first checkpoint in the bucket")
    s3.proxy.stop()
    time.sleep(20)
    assert p.poll() is None, "training stopped while the storage was down"
    s3.proxy.start()
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    run = pulled(bucket_run(s3, prefix), tmp_path)
    names = [e["event"] for e in events(run)]
    assert "storage_unavailable" in names and "storage_restored" in names, names
    assert names.index("storage_unavailable") < names.index("storage_restored")
    down = next(e for e in events(run) if e["event"] == "storage_restored")["down_s"]
    assert 18 <= down <= 45, down  # the gap is recorded as it was (from the first call that failed to the first that worked)
    assert "storage_alert" in names  # no checkpoint committed within remote_timeout_s=10
    assert_bitwise_equal(final_state(run), reference["final"])  # the slow steps change timing only
    assert metric_rows(run) == reference["rows"]
    check_run_dir(run)


def test_missing_bucket_is_one_line_exit_2_and_nothing_written(tmp_path, prepared, s3):
    work = tmp_path / "work"; work.mkdir()
    r = run_tp(*cmd(prepared("digits"), "experiment.runs_dir=s3://no-such-bucket/runs")[1:], cwd=work,
               env={"TP_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bucket 'no-such-bucket' does not exist" in lines[0], r.stderr
    assert list(work.iterdir()) == [] and not (tmp_path / "cache" / "staging").exists()


def test_readers_work_from_the_bucket(tmp_path, prepared, s3):
    prefix = f"read-{uuid.uuid4().hex[:6]}"
    url = f"s3://bucket/{prefix}"
    r = run_tp(*cmd(prepared("digits"), f"experiment.runs_dir={url}", "training.epochs=1")[1:], cwd=tmp_path,
               env={"TP_CACHE_DIR": str(tmp_path / "trainer")})
    assert r.returncode == 0, r.stderr
    run_url = bucket_run(s3, prefix)
    run_id = run_url.rsplit("/", 1)[1]
    reader = {"TP_CACHE_DIR": str(tmp_path / "reader")}  # another machine
    r = run_tp("runs", "list", "--runs-dir", url, cwd=tmp_path, env=reader)
    assert r.returncode == 0 and run_id in r.stdout and "completed" in r.stdout, r.stdout + r.stderr
    r = run_tp("runs", "show", run_id, "--runs-dir", url, cwd=tmp_path, env=reader)
    assert r.returncode == 0 and f"run {run_id} (test): completed" in r.stdout, r.stdout + r.stderr
    r = run_tp("monitor", "--run", run_url, "--once", cwd=tmp_path, env=reader)
    assert r.returncode == 0 and "completed" in r.stdout, r.stdout + r.stderr
    r = run_tp("report", "--run", run_url, "--data-dir", prepared("digits"), cwd=tmp_path, env=reader)
    assert r.returncode == 0, r.stderr
    assert f"report in the bucket: {run_url}/report.html" in r.stdout
    html = s3.client.get_object(Bucket="bucket", Key=f"{run_url[len('s3://bucket/'):]}/report.html")["Body"].read().decode()
    assert run_id in html and "<html" in html.lower()
    r = run_tp("models", "register", run_url, "--checkpoint", "last", "--models-dir", tmp_path / "models", cwd=tmp_path, env=reader)
    assert r.returncode == 0, r.stderr
    assert "registered test v1" in r.stdout and f"pinned in the bucket: {run_url}/pins/test-v1.json" in r.stdout, r.stdout
    pin = json.loads(s3.client.get_object(Bucket="bucket", Key=f"{run_url[len('s3://bucket/'):]}/pins/test-v1.json")["Body"].read())
    assert pin["checkpoint"] in committed(s3, prefix)
    # the weights registered are the bucket's, verified
    from training_pipeline.core import sha256_file
    version = json.loads((tmp_path / "models" / "test" / "v1" / "model.json").read_text())
    assert version["sha256"] == sha256_file(tmp_path / "models" / "test" / "v1" / "model.safetensors")
    last = json.loads((pulled(run_url, tmp_path) / "checkpoints" / "index.json").read_text())["last"]
    r = run_tp(*cmd(prepared("digits"), "training.epochs=2", "--resume", f"{run_url}/checkpoints/{last}")[1:], cwd=tmp_path, env=reader)
    assert r.returncode == 0, r.stderr  # a child run on this machine from the bucket's checkpoint
    child = json.loads(next((tmp_path / "runs" / "test").glob("*/run.json")).read_text())
    assert (child["parent_run"], child["status"]) == (run_id, "completed")
    r = run_tp("models", "register", f"{run_url}/checkpoints/{last}", "--name", "other", "--models-dir", tmp_path / "models", cwd=tmp_path, env=reader)
    assert r.returncode == 0 and "registered other v1" in r.stdout, r.stdout + r.stderr
    r = run_tp("runs", "list", "--runs-dir", "s3://no-such-bucket/runs", cwd=tmp_path, env=reader)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_job_killed_mid_run_is_retried_from_the_bucket(tmp_path, prepared, reference, s3):
    from test_jobs_cli import attempts, job, start_worker
    prefix = f"jobs-{uuid.uuid4().hex[:6]}"
    env = {"TP_CACHE_DIR": str(tmp_path / "cache")}
    r = run_tp("jobs", "submit", *cmd(prepared("digits"), f"experiment.runs_dir=s3://bucket/{prefix}", "storage.sync_interval_s=0.5")[2:],
               cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    jid = int(r.stdout.strip())
    assert job(tmp_path, jid)["run_dir"] == f"s3://bucket/{prefix}/test/{job(tmp_path, jid)['run_id']}"  # the job knows its run's URL
    import torch  # the worker gives a job as many threads as CPU slots; the reference ran with torch's default: the same here
    w = start_worker(tmp_path, "--slots", "1", env={**env, **SLOW, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    wait_for(lambda: len(committed(s3, prefix)) >= 2, 120, "two checkpoints in the bucket")
    os.kill(job(tmp_path, jid)["pid"], signal.SIGKILL)
    w.communicate(timeout=300)
    j = job(tmp_path, jid)
    assert (j["state"], j["attempts"]) == ("succeeded", 2), w.stdout
    assert [(a["outcome"], a["resume"]) for a in attempts(tmp_path, jid)] == [("transient", "never"), ("succeeded", "auto")]
    run = pulled(j["run_dir"], tmp_path)
    assert_bitwise_equal(final_state(run), reference["final"])


def test_tune_refuses_a_bucket_and_ui_serves_one(tmp_path, prepared, s3):
    r = run_tp("tune", "--config", REPO / "config" / "test.yaml", "--param", "training.learning_rate=loguniform(1e-4,1e-2)",
               "--trials", "2", "experiment.runs_dir=s3://bucket/tune", cwd=tmp_path)
    assert r.returncode == 2 and "not built" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == []
    prefix = f"ui-{uuid.uuid4().hex[:6]}"
    r = run_tp(*cmd(prepared("digits"), f"experiment.runs_dir=s3://bucket/{prefix}", "training.epochs=1")[1:], cwd=tmp_path,
               env={"TP_CACHE_DIR": str(tmp_path / "trainer")})
    assert r.returncode == 0, r.stderr
    run_id = bucket_run(s3, prefix).rsplit("/", 1)[1]
    from test_ui import get, start_ui
    from test_dashboard_browser import stop
    proc, url = start_ui(tmp_path, "--runs-dir", f"s3://bucket/{prefix}", env={"TP_CACHE_DIR": str(tmp_path / "reader")})
    try:
        status, body, _ = get(url.rstrip("/") + "/api/runs")
        assert status == 200 and run_id in body, body[:500]
    finally: stop(proc)


def test_two_nodes_without_a_shared_disk_resume_from_the_bucket(tmp_path, prepared, s3):
    "Each node has its own disk (cwd and cache); the run killed on one machine continues on two, rank 1 pulling the checkpoint itself."
    prefix = f"nodes-{uuid.uuid4().hex[:6]}"
    url = f"s3://bucket/{prefix}"
    first = start_train(prepared("digits"), url, tmp_path / "machine-a", SLOW)
    wait_for(lambda: len(committed(s3, prefix)) >= 2, 120, "two checkpoints in the bucket")
    first.send_signal(signal.SIGKILL); first.wait(timeout=60)
    resumed_from = committed(s3, prefix)[-1]
    run_id = bucket_run(s3, prefix).rsplit("/", 1)[1]
    port = free_port()
    procs = []
    for rank in (0, 1):
        node = tmp_path / f"node-{rank}"; node.mkdir()
        procs.append(subprocess.Popen([*cmd(prepared("digits"), f"experiment.runs_dir={url}"), "--distributed", "--gpus", "1", "--nodes", "2",
                                       "--cpu", "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port)],
                                      cwd=node, env={**os.environ, "TP_CACHE_DIR": str(node / "cache"), "TP_RUN_ID": run_id},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    # rank 1's machine got the checkpoint from the bucket, into its own staging copy
    staged = list((tmp_path / "node-1" / "cache" / "staging").glob(f"*/test/{run_id}/checkpoints/{resumed_from}/MANIFEST.json"))
    assert staged, sorted(str(p) for p in (tmp_path / "node-1").rglob("*"))[:40]
    run = pulled(f"{url}/test/{run_id}", tmp_path)
    meta = json.loads((run / "run.json").read_text())
    assert (meta["status"], meta["world_size"], meta["num_nodes"], meta["resumed_count"]) == ("completed", 2, 2, 1)
    assert any(e["event"] == "resumed" for e in events(run))
    assert not list((tmp_path / "node-1").glob("runs"))  # nothing of the run went to a local runs dir
