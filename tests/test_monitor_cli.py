"""Alerts end to end against real servers on 127.0.0.1: a diverging run sends exactly one email (default
cooldown) and one webhook; a slow-data run raises the starvation alert; a stalled run the stall alert.
`tp monitor`: a snapshot of a finished run, following a live run to its end, and the watcher alerting on a
killed run (pid gone) and on a hung one (stale heartbeat, process alive). Throughput: a healthy digits run raises no
drop alert (its warm-up is not read as one); a run throttled after its warm-up raises exactly one."""
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from aiosmtpd.controller import Controller

from conftest import TP, free_port, REPO, data_overrides, run_tp


@pytest.fixture
def smtp():
    class Inbox:
        messages = []
        async def handle_DATA(self, server, session, envelope): self.messages.append(envelope.content.decode()); return "250 OK"
    inbox, port = Inbox(), free_port()
    inbox.messages = []
    c = Controller(inbox, hostname="127.0.0.1", port=port); c.start()
    yield port, inbox.messages
    c.stop()


@pytest.fixture
def webhook():
    posts = []
    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))); self.send_response(200); self.end_headers()
        def log_message(self, *a): pass
    server = HTTPServer(("127.0.0.1", 0), Hook); threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", posts
    server.shutdown()


def events(tmp_path):
    run_dir = next((tmp_path / "runs").glob("*/*"))
    return [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]


def test_diverging_run_sends_one_email_and_one_webhook(tmp_path, prepared, smtp, webhook):
    port, inbox = smtp
    url, posts = webhook
    r = run_tp("train", "--config", REPO / "config" / "tabular.yaml", *data_overrides(prepared("breast_cancer")),
               "training.learning_rate=1e12", "training.optimizer.type=sgd", "training.on_nonfinite_loss=skip",
               "alerts.email.smtp_host=127.0.0.1", f"alerts.email.smtp_port={port}", "alerts.email.to=ml@example.org",
               f"alerts.webhook.url={url}", cwd=tmp_path)
    assert len(inbox) == 1, f"{len(inbox)} emails"  # every batch is NaN, but the default cooldown sends one
    assert "Subject: Training alert: nonfinite_loss in" in inbox[0]
    assert len(posts) == 1 and posts[0]["alert"]["rule"] == "nonfinite_loss" and "nonfinite_loss" in posts[0]["text"]
    assert [e["delivered"] for e in events(tmp_path) if e["event"] == "alert"] == [["email", "webhook"]]


def test_slow_data_raises_the_starvation_alert(tmp_path, prepared):
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), cwd=tmp_path,
               env={"TP_FAULT": "train:slowdata=0.05"})
    assert r.returncode == 0, r.stderr
    alerts = [e for e in events(tmp_path) if e["event"] == "alert"]
    assert alerts and alerts[0]["rule"] == "data_starvation" and alerts[0]["value"] > 0.5
    assert "ALERT" in r.stdout and "waiting for data" in r.stdout


def test_stalled_loss_raises_the_stall_alert_and_stop_exits_1(tmp_path, prepared):
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), "training.epochs=4",
               "alerts.rules.loss_stall.patience=1", "alerts.rules.loss_stall.min_delta=100", "alerts.rules.loss_stall.action=stop",
               cwd=tmp_path)
    assert r.returncode == 1 and "stopped by the alert rule loss_stall" in r.stderr and "Traceback" not in r.stderr
    run_dir = next((tmp_path / "runs").glob("*/*"))
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "failed" and "loss_stall" in meta["error"]
    saved = [e for e in events(tmp_path) if e["event"] == "checkpoint_saved"]
    assert saved[-1]["epoch"] == 2  # stopped after the second epoch, with its checkpoint


def start_training(tmp_path, data_dir, *overrides, fault=None):
    "A `tp train` of config/test.yaml in the background, and its run directory once it exists."
    env = {**{k: v for k, v in os.environ.items() if k != "TP_DEBUG"}, **({"TP_FAULT": fault} if fault else {})}
    proc = subprocess.Popen([str(TP), "train", "--config", str(REPO / "config" / "test.yaml"), *data_overrides(data_dir),
                             *overrides], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "runs").glob("*/*/metrics.jsonl")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.1)
    return proc, next((tmp_path / "runs").glob("*/*"))


def test_monitor_once_shows_a_finished_run(tp, short_run):
    cwd, run = short_run
    r = tp("monitor", "--run", run, "--once")
    assert r.returncode == 0, r.stderr
    assert f"run {run.name} (test)  completed" in r.stdout and "100.0%" in r.stdout and "epoch 2/2" in r.stdout
    by_experiment = tp("monitor", "--experiment-id", "test", "--once", cwd=cwd)
    assert by_experiment.returncode == 0 and by_experiment.stdout == r.stdout


def test_monitor_follows_a_live_run_until_it_completes(tmp_path, prepared):
    proc, run = start_training(tmp_path, prepared("digits"), "training.epochs=3", "logging.log_frequency=5", fault="train:sleep=0.03")
    r = run_tp("monitor", "--run", run, "--follow", cwd=tmp_path, env={"TP_MONITOR_INTERVAL": "0.2"}, timeout=300)
    assert proc.wait(timeout=120) == 0
    assert r.returncode == 0, r.stderr
    progress = [l for l in r.stdout.splitlines() if l.startswith("running epoch")]
    steps = [int(l.split(" step ")[1].split("/")[0]) for l in progress]
    assert len(set(steps)) >= 3 and steps == sorted(steps), r.stdout  # it watched the run advance
    assert "completed" in r.stdout.splitlines()[len(progress)] and "step 120/120" in r.stdout, r.stdout


def test_watcher_alerts_once_when_the_training_process_was_killed(tmp_path, prepared, smtp, webhook):
    port, inbox = smtp
    url, posts = webhook
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), f"alerts.webhook.url={url}",
               "alerts.email.smtp_host=127.0.0.1", f"alerts.email.smtp_port={port}", "alerts.email.to=ml@example.org",
               cwd=tmp_path, env={"TP_FAULT": "train:kill@20"})
    assert r.returncode == -signal.SIGKILL
    run = next((tmp_path / "runs").glob("*/*"))
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # nobody was left to say otherwise
    m = run_tp("monitor", "--run", run, "--follow", cwd=tmp_path)
    assert m.returncode == 1, m.stderr  # the run did not complete
    assert "crashed" in m.stdout and "heartbeat: the training process" in m.stdout
    assert len(posts) == 1 and len(inbox) == 1
    assert posts[0]["alert"]["rule"] == "heartbeat" and "is gone" in posts[0]["text"] and run.name in posts[0]["text"]
    watcher_events = [e for e in events(tmp_path) if e.get("source") == "watcher"]
    assert [(e["rule"], e["delivered"]) for e in watcher_events] == [("heartbeat", ["email", "webhook"])]
    again = run_tp("monitor", "--run", run, "--once", cwd=tmp_path)  # a snapshot only looks: no second alert
    assert again.returncode == 0 and "alerts (1)" in again.stdout and len(posts) == 1


def test_watcher_alerts_on_a_hung_run_and_follows_it_until_its_process_is_gone(tmp_path, prepared, webhook):
    url, posts = webhook
    proc, run = start_training(tmp_path, prepared("digits"), f"alerts.webhook.url={url}", "alerts.rules.heartbeat.stale_s=6",
                               fault="train:hang@20")
    monitor = subprocess.Popen([str(TP), "monitor", "--run", str(run), "--follow"], cwd=tmp_path, text=True,
                               env={**os.environ, "TP_MONITOR_INTERVAL": "0.5"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not posts and time.monotonic() < deadline: time.sleep(0.2)
        assert len(posts) == 1 and "is not responding" in posts[0]["text"], posts
        assert proc.poll() is None and monitor.poll() is None  # the hung process lives; the monitor keeps watching
        proc.kill(); proc.wait()
        out, err = monitor.communicate(timeout=30)
        assert monitor.returncode == 1, err
        assert len(posts) == 1  # the cooldown holds the second alert back
    finally:
        for p in (proc, monitor):
            if p.poll() is None: p.kill(); p.wait()


def throughput_alerts(tmp_path):
    return [e for e in events(tmp_path) if e["event"] == "alert" and e["rule"] == "throughput_drop"]


def test_a_healthy_digits_run_raises_no_throughput_alert(tmp_path, prepared):
    r = run_tp("train", "--config", REPO / "config" / "digits.yaml", *data_overrides(prepared("digits")), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert throughput_alerts(tmp_path) == []


def test_a_run_throttled_after_its_warm_up_raises_one_throughput_alert(tmp_path, prepared):
    # 0.5 s more per batch from step 48 on (of 60; a batch took 0.01 s here): 6 logged rows at ~1/50 of the run's own
    # median (124 vs 6648 samples/s measured), after 5 warm-up rows and a baseline of 18: a drop even on a crowded machine
    r = run_tp("train", "--config", REPO / "config" / "digits.yaml", *data_overrides(prepared("digits")), "training.epochs=3",
               "validation.early_stopping.enabled=false", "logging.log_frequency=2", cwd=tmp_path,
               env={"TP_FAULT": "train:sleep=0.5@48"})
    assert r.returncode == 0, r.stderr[-2000:]
    throttled = [a for a in throughput_alerts(tmp_path) if a["step"] > 48]  # (a crowded machine can cause a real drop before)
    assert len(throttled) == 1, throughput_alerts(tmp_path)
