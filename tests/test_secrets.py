"""No secret reaches a sink (issue 31, item 1). A real `tp train` with canary secrets at several depths — a storage
token given on the command line, a model factory's `api_token` in the config file, a mapping override holding a
`session_key`, an SMTP password read from the environment through `password_env` and sent to a real SMTP server — and
then every byte of what it and the commands after it wrote (run.json, config.yaml, metrics and events, logs, TensorBoard
event files and hparams.yml, the report, a job record) and printed (`tp config check`, `tp runs show`, error lines, with
and without --debug) holds none of them. A bucket run does the same for every object in the bucket, its staging copy and
the read cache."""
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import data_overrides, free_port, run_tp, wait_for

MODEL = '''import torch.nn as nn
def make(api_token=None, extra=None, fail=False):
    if fail: raise ValueError(f"the model service refused token {api_token}")
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
'''


def canaries(n):
    tag = uuid.uuid4().hex[:8]
    return [f"CANARY{i}x{tag}" for i in range(1, n + 1)]


def write_config(folder, data_dir, token, secret, smtp_port=None):
    (folder / "canary_model.py").write_text(MODEL)
    alerts = (f"alerts:\n  email: {{smtp_host: 127.0.0.1, smtp_port: {smtp_port}, username: bot, "
              "password_env: TP_CANARY_SMTP_PASSWORD, to: [ml@example.org]}\n"
              "  rules: {loss_stall: {patience: 1, min_delta: 100}}\n") if smtp_port else ""
    (folder / "cfg.yaml").write_text(
        f"seed: 0\nexperiment: {{name: secrets}}\ndata: {{dataset: digits, num_workers: 0, data_dir: {data_dir}}}\n"
        f"model: {{architecture: 'canary_model:make', init_args: {{api_token: {token}}}}}\n"
        f"training: {{batch_size: 64, epochs: 2}}\nstorage: {{options: {{key: testing, secret: {secret}}}}}\n" + alerts)
    return folder / "cfg.yaml"


def leaks(root, secrets, skip=("cfg.yaml", "canary_model.py")) -> dict:
    "{file: [secrets in it]} for every file under root (as bytes: TensorBoard's event files too) but the user's inputs."
    found = {}
    for p in Path(root).rglob("*"):
        if p.is_file() and p.name not in skip and "__pycache__" not in p.parts:
            data = p.read_bytes()
            if hit := [s for s in secrets if s.encode() in data]: found[str(p.relative_to(root))] = hit
    return found


def said(result, secrets) -> list:
    return [s for s in secrets if s in result.stdout + result.stderr]


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult
    logins, mails = [], []
    class Inbox:
        async def handle_DATA(self, server, session, envelope): mails.append(envelope.content.decode()); return "250 OK"
    def authenticate(server, session, envelope, mechanism, data):
        logins.append(data.password.decode()); return AuthResult(success=True)
    port = free_port()
    c = Controller(Inbox(), hostname="127.0.0.1", port=port, authenticator=authenticate, auth_require_tls=False)
    c.start()
    yield port, logins, mails
    c.stop()


def test_no_canary_reaches_any_sink_of_a_local_run(tmp_path, prepared, smtp):
    port, logins, mails = smtp
    cli_token, file_token, mapped, smtp_password, file_secret = secrets = canaries(5)
    cfg = write_config(tmp_path, prepared("digits"), file_token, file_secret, port)
    overrides = [f"storage.options.client_kwargs.aws_session_token={cli_token}",
                 f"model.init_args.extra={{session_key: {mapped}}}", *data_overrides(prepared("digits"))]
    env = {"TP_CANARY_SMTP_PASSWORD": smtp_password}
    outputs = []
    def tp(*args, code=0):
        r = run_tp(*args, cwd=tmp_path, env=env)
        assert r.returncode == code, (args, r.stdout[-2000:], r.stderr[-2000:])
        outputs.append(r); return r

    r = tp("train", "--config", cfg, *overrides)
    run_dir = next((tmp_path / "runs" / "secrets").iterdir())
    assert logins == [smtp_password] and len(mails) >= 1  # the password was read from the environment and used
    assert not [s for s in secrets if any(s in m for m in mails)]
    tp("report", "--run", run_dir)
    tp("runs", "show", run_dir.name)
    check = tp("config", "check", cfg, *overrides)
    tp("train", "--config", cfg, *overrides, "model.init_args.fail=true", code=2)  # the error quotes the token
    tp("train", "--config", cfg, *overrides, "model.init_args.fail=true", "--debug", code=2)  # so does the traceback
    tp("jobs", "submit", "--config", cfg, "--jobs-dir", "jobs", *data_overrides(prepared("digits")))
    refused = tp("jobs", "submit", "--config", cfg, "--jobs-dir", "jobs", *overrides, code=2)
    assert "would be stored in the job queue" in refused.stderr
    tp("jobs", "show", "1", "--jobs-dir", "jobs")

    assert leaks(tmp_path, secrets) == {}
    assert [said(r, secrets) for r in outputs] == [[]] * len(outputs)
    # the sinks were there to leak into: each shows the key with its value redacted
    assert (run_dir / "report.html").exists() and list(run_dir.glob("tensorboard/**/hparams.yml"))
    hparams = next(run_dir.glob("tensorboard/**/hparams.yml"))
    for f in (run_dir / "config.yaml", hparams, run_dir / "artifacts" / "model.json"):
        assert "<redacted>" in f.read_text(), f
    assert "aws_session_token=<redacted>" in (run_dir / "run.json").read_text()
    assert "api_token: <redacted>" in check.stdout and "password_env: TP_CANARY_SMTP_PASSWORD" in check.stdout


@pytest.fixture
def s3(tmp_path):
    "A real S3 API server (moto_server) on 127.0.0.1 with the bucket `bucket`."
    pytest.importorskip("s3fs", reason="the s3 extra (pip install -e '.[dev]') is needed for the object-storage tests")
    moto = Path(sys.executable).with_name("moto_server")
    assert moto.exists(), f"{moto} missing: pip install -e '.[dev]' (moto[server])"
    port = free_port()
    with open(tmp_path / "moto.log", "w") as log:
        server = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    def up():
        try: socket.create_connection(("127.0.0.1", port), timeout=1).close(); return True
        except OSError: return False
    try:
        wait_for(up, 60, "moto_server")
        import boto3
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket="bucket")
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        yield client, env
    finally: server.terminate(); server.wait(timeout=30)


def test_no_canary_reaches_the_bucket_its_staging_copy_or_the_read_cache(tmp_path, prepared, s3):
    client, env = s3
    cli_token, file_token, file_secret = secrets = canaries(3)
    work = tmp_path / "work"; work.mkdir()
    cfg = write_config(work, prepared("digits"), file_token, file_secret)
    env = {**env, "TP_CACHE_DIR": str(tmp_path / "cache")}
    train = ["train", "--config", cfg, "experiment.runs_dir=s3://bucket/runs", "storage.sync_interval_s=0.5",
             "training.epochs=1", f"storage.options.client_kwargs.aws_session_token={cli_token}",
             *data_overrides(prepared("digits"))]
    outputs = [run_tp(*train, cwd=work, env=env)]
    assert outputs[0].returncode == 0, outputs[0].stderr[-2000:]
    url = outputs[0].stdout.split("run completed: ")[1].split()[0]
    assert url.startswith("s3://bucket/runs/secrets/"), outputs[0].stdout
    outputs.append(run_tp("report", "--run", url, cwd=work, env=env))  # through the read cache; pushed to the bucket
    outputs.append(run_tp("runs", "show", url.rsplit("/", 1)[1], "--runs-dir", "s3://bucket/runs", cwd=work, env=env))
    assert [r.returncode for r in outputs] == [0, 0, 0], [r.stderr[-1000:] for r in outputs]

    pages = client.get_paginator("list_objects_v2").paginate(Bucket="bucket")
    objects = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert {"config.yaml", "report.html"} <= {k.rsplit("/", 1)[-1] for k in objects}, objects
    body = lambda key: client.get_object(Bucket="bucket", Key=key)["Body"].read()
    in_bucket = {k: [s for s in secrets if s.encode() in body(k)] for k in objects}
    assert {k: v for k, v in in_bucket.items() if v} == {}
    assert {p.name for p in (tmp_path / "cache").iterdir()} >= {"staging", "read"}
    assert leaks(tmp_path / "cache", secrets) == {} and leaks(work, secrets) == {}
    assert [said(r, secrets) for r in outputs] == [[]] * len(outputs)
