"""Distributed training on CPU processes over gloo (ENVIRONMENT.md's traps handled by `tp train --distributed`):
two processes, two simulated nodes, resume of a 2-process run, and a killed rank that fails fast; under
`torchrun --max-restarts 1` a killed rank restarts the group, which resumes the same run and completes (with no
restarts the job fails, fast); `notebook_train` trains on 2 processes from a real Jupyter kernel (papermill)."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, REPO, TP, check_run_dir, data_overrides, run_tp

EXTRA = ["training.epochs=2", "training.batch_size=32"]


def rows(run_dir): return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_cpu_processes(tmp_path, prepared):
    d = prepared("digits")
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(d), *EXTRA, "--distributed", "--gpus", "2",
               "--cpu", "--master-port", free_port(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run completed:") == 1  # only the main process reports
    run_dir = next((tmp_path / "runs" / "test").iterdir())
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["world_size"], meta["backend"], meta["num_nodes"]) == (2, "gloo", 1)
    epochs = [r for r in rows(run_dir) if r["split"] == "train" and "epoch_time_s" in r]
    assert [r["samples"] for r in epochs] == [1257, 1257]  # every training sample exactly once per epoch
    assert [r["samples"] for r in rows(run_dir) if r["split"] in ("val", "test")] == [270, 270, 270]
    # the gathered test metrics equal a single-process evaluation of the final weights
    code = ("import json\nfrom training_pipeline.track.evaluation import evaluate\n"
            f"ev = evaluate({str(run_dir)!r} + '/checkpoints/' + json.load(open({str(run_dir)!r} + '/checkpoints/index.json'))['last'] + '/model.safetensors', {str(d)!r})\n"
            "print(ev.accuracy)")
    single = float(subprocess.run([str(Path(TP).with_name("python")), "-c", code], capture_output=True, text=True, check=True).stdout)
    assert single == pytest.approx([r for r in rows(run_dir) if r["split"] == "test"][0]["accuracy"], abs=1e-12)
    assert (run_dir / "logs" / "train.rank1.log").exists()
    check_run_dir(run_dir)


def test_two_simulated_nodes(tmp_path, prepared):
    port, env = free_port(), {**os.environ, "TP_RUN_ID": "two-nodes-run"}
    base = [str(TP), "train", "--config", str(REPO / "config" / "test.yaml"), *data_overrides(prepared("digits")), *EXTRA,
            "--distributed", "--gpus", "1", "--nodes", "2", "--cpu", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    procs = [subprocess.Popen(base + ["--node-rank", str(r)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    meta = json.loads((tmp_path / "runs" / "test" / "two-nodes-run" / "run.json").read_text())
    assert (meta["world_size"], meta["num_nodes"], meta["status"]) == (2, 2, "completed")


def test_resume_a_two_process_run(tmp_path, prepared):
    args = ["train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), *EXTRA,
            "checkpointing.save_every_n_steps=10", "--distributed", "--gpus", "2", "--cpu"]
    r = run_tp(*args, "--master-port", free_port(), cwd=tmp_path, env={"TP_FAULT": "train:kill@30"}, timeout=300)
    assert r.returncode != 0
    r = run_tp(*args, "--master-port", free_port(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = next((tmp_path / "runs" / "test").iterdir())
    events = [json.loads(l)["event"] for l in (run_dir / "events.jsonl").read_text().splitlines()]
    assert "resumed" in events and json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    keys = [(r["split"], r["step"], "epoch_time_s" in r) for r in rows(run_dir)]
    assert len(keys) == len(set(keys))


def test_a_killed_rank_fails_the_job_fast(tmp_path, prepared):
    start = time.monotonic()
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), *EXTRA,
               "distributed.timeout_s=60", "--distributed", "--gpus", "2", "--cpu", "--master-port", free_port(),
               cwd=tmp_path, env={"TP_FAULT": "train:killrank1@10"}, timeout=300)
    assert r.returncode != 0
    assert time.monotonic() - start < 120, "the surviving rank hung"


def torchrun(tmp_path, data_dir, max_restarts, fault):
    cmd = [str(Path(TP).with_name("python")), "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts",
           str(max_restarts), "--monitor-interval", "1", "--master-port", str(free_port()), "-m", "training_pipeline", "train",
           "--config", str(REPO / "config" / "test.yaml"), *data_overrides(data_dir), *EXTRA,
           "checkpointing.save_every_n_steps=10", "distributed.timeout_s=60"]
    env = {**{k: v for k, v in os.environ.items() if k != "TP_DEBUG"}, "TP_FAULT": fault}
    start = time.monotonic()
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return r, time.monotonic() - start


def test_torchrun_restarts_the_group_after_a_killed_rank_and_the_run_completes(tmp_path, prepared):
    r, _ = torchrun(tmp_path, prepared("digits"), max_restarts=1, fault="train:killrank1@45")
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "runs" / "test").iterdir())
    assert len(runs) == 1  # the restarted group continued the same run, in place
    run_dir = runs[0]
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["status"], meta["world_size"]) == ("completed", 2)
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["checkpoint"].endswith("step-00000040"), resumed
    keys = [(r["split"], r["step"], "epoch_time_s" in r) for r in rows(run_dir)]
    assert len(keys) == len(set(keys))  # no step logged twice across the restart
    assert [r["samples"] for r in rows(run_dir) if r["split"] == "train" and "epoch_time_s" in r][-1] == 1257
    rng = json.loads((run_dir / "checkpoints" / json.loads((run_dir / "checkpoints" / "index.json").read_text())["last"] / "rng.json").read_text())
    assert len(rng["ranks"]) == 2  # every rank's RNG state is in the checkpoint
    check_run_dir(run_dir)


def test_torchrun_without_restarts_fails_fast_with_one_clear_line(tmp_path, prepared):
    r, seconds = torchrun(tmp_path, prepared("digits"), max_restarts=0, fault="train:killrank1@20")
    assert r.returncode != 0 and seconds < 120
    assert "error: process 0 of 2 failed" in r.stderr and "torchrun --max-restarts" in r.stderr, r.stderr[-2000:]


def test_notebook_train_runs_two_processes_from_a_jupyter_kernel(tmp_path, prepared):
    import nbformat
    import papermill
    d = prepared("digits")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                            "language_info": {"name": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("overrides = []", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(
                    "import json\nfrom training_pipeline.run.fit import notebook_train\n"
                    f"run_dir = notebook_train({str(REPO / 'config' / 'test.yaml')!r}, overrides, num_processes=2)\n"
                    "meta = json.loads((run_dir / 'run.json').read_text())\n"
                    "print('RESULT', meta['status'], meta['world_size'], meta['backend'], run_dir)")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(tmp_path), progress_bar=False,
                               parameters={"overrides": [*data_overrides(d), "training.epochs=1"]}, kernel_name="python3")
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    line = next(l for l in text.splitlines() if l.startswith("RESULT"))
    status, world, backend, run_dir = line.split()[1:]
    assert (status, world, backend) == ("completed", "2", "gloo")
    assert (Path(run_dir) / "logs" / "train.rank1.log").exists()


@pytest.mark.parametrize("override, message", [
    ("distributed.strategy=fsdp", "distributed.strategy=fsdp needs CUDA GPUs"),
    ("distributed.backend=nccl", "distributed.backend=nccl needs CUDA GPUs"),
    ("distributed.strategy=deepspeed", "distributed.strategy=deepspeed")])
def test_a_strategy_that_cannot_run_here_fails_before_training(tmp_path, prepared, override, message):
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), override,
               "--distributed", "--gpus", "2", "--cpu", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: " + message), r.stderr
    assert not (tmp_path / "runs").exists()


def test_an_alert_rule_with_action_stop_stops_every_process_at_the_same_step(tmp_path, prepared):
    start = time.monotonic()
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), *EXTRA,
               "alerts.rules.data_starvation.max_share=0.0001", "alerts.rules.data_starvation.action=stop",
               "--distributed", "--gpus", "2", "--cpu", "--master-port", free_port(), cwd=tmp_path, timeout=300)
    assert r.returncode == 1 and time.monotonic() - start < 100, r.stderr[-2000:]  # no rank left waiting for the other
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "stopped by the alert rule data_starvation" in errors[0], r.stderr[-2000:]
    run_dir = next((tmp_path / "runs" / "test").iterdir())
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "failed" and meta["summary"]["epochs_completed"] == 0
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in events if e["event"] == "checkpoint_saved"] == ["final"]


def test_sigterm_to_a_distributed_run_saves_stops_every_process_and_resumes(tmp_path, prepared):
    # the launcher passes SIGTERM on; the processes agree on the step (even one that falls on a checkpoint step)
    args = ["train", "--config", str(REPO / "config" / "test.yaml"), *data_overrides(prepared("digits")), *EXTRA,
            "checkpointing.save_every_n_steps=2", "--distributed", "--gpus", "2", "--cpu", "--master-port", str(free_port())]
    p = subprocess.Popen([str(TP), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "TP_FAULT": "train:sleep=0.02"})
    deadline = time.monotonic() + 120
    while not any(f.stat().st_size for f in (tmp_path / "runs").glob("*/*/metrics.jsonl")):
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()[-2000:]
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    out, err = p.communicate(timeout=120)
    assert time.monotonic() - signalled < 25, "a process hung after the signal (the launcher kills after 30 s)"
    assert p.returncode == 130, err[-2000:]
    assert [l for l in err.splitlines() if l.startswith("error:")] == [l for l in err.splitlines() if "error: interrupted by SIGTERM" in l]
    assert len([l for l in err.splitlines() if l.startswith("error:")]) == 1, err[-2000:]
    run_dir = next((tmp_path / "runs" / "test").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    r = run_tp(*args, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert [e["event"] for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())].count("resumed") == 1
