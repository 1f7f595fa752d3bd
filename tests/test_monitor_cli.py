"""Alerts end to end against real servers on 127.0.0.1: a diverging run sends exactly one email (default
cooldown) and one webhook; a slow-data run raises the starvation alert; a stalled run the stall alert."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from aiosmtpd.controller import Controller

from conftest import free_port, REPO, data_overrides, run_tp


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
