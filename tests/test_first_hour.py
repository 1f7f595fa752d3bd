"""What a newcomer sees first (issue 30): every epoch that ran has its console line, the early stop included, and
the console, events.jsonl, metrics.jsonl and the report count epochs the same way (from 1)."""
import json
import re

from conftest import REPO, data_overrides, run_tp


def test_early_stopping_epochs_agree_in_console_events_metrics_and_report(tmp_path, prepared):
    r = run_tp("train", "--config", REPO / "config" / "digits.yaml", *data_overrides(prepared("digits")),
               "validation.early_stopping.patience=1", "training.epochs=12", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    console = [(int(n), int(m)) for n, m in re.findall(r"^epoch (\d+)/(\d+) ", r.stdout, re.M)]
    run_dir = next((tmp_path / "runs" / "digits").iterdir())
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    ran = sorted({row["epoch"] for row in rows if row["split"] == "train"})
    assert [n for n, _ in console] == ran == list(range(1, len(ran) + 1)), (console, ran)  # a line for every epoch
    stop = next(e for e in events if e["event"] == "early_stop")
    assert len(ran) < 12 and stop["epoch"] == console[-1][0], (stop, console[-1])  # the stopping epoch, as printed
    val = {row["epoch"]: row["accuracy"] for row in rows if row["split"] == "val"}
    assert stop["best_epoch"] == max(val, key=val.get) and f"best {stop['best']:.4f} at epoch {stop['best_epoch']}" in r.stdout
    r = run_tp("report", "--run", run_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    html = (run_dir / "report.html").read_text()
    assert f"yes: after epoch {len(ran)} of 12 (val_accuracy best at epoch {stop['best_epoch']})" in html
    assert re.search(rf"<td>early_stop</td>\s*<td>{stop['step']}</td>\s*<td>{stop['epoch']}</td>", html), "events table"


def test_a_run_that_ends_with_its_planned_epochs_is_not_an_early_stop(tmp_path, prepared):
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), "training.epochs=2",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = next((tmp_path / "runs").glob("*/*"))
    assert run_tp("report", "--run", run_dir, cwd=tmp_path).returncode == 0
    assert re.search(r"<th>early stop</th>\s*<td>no</td>", (run_dir / "report.html").read_text())
