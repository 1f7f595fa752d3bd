"""`training.compile`: a compiled run killed with SIGKILL mid-epoch resumes bitwise-equal to an uninterrupted compiled
run; its checkpoints hold the module's own names, so the best model loads into the eager class; the compile time is
its own event; DDP on two CPU processes compiles and trains; `tp config check` and `tp train` refuse, in one line and
before anything is written, a compile that cannot work here."""
import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TP, check_run_dir, data_overrides, free_port, run_tp
from test_resume import assert_bitwise_equal, completed_run, final_state, metric_rows

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                                reason="torch.compile on CPU needs a C++ compiler (g++)")

# 2 epochs of 40 steps, a checkpoint every 7 steps; the kill lands in the second epoch, after step 49's checkpoint
SETTINGS = ["training.compile=true", "training.epochs=2", "training.deterministic=true",
            "checkpointing.save_every_n_steps=7", "checkpointing.keep_last_n=2", "training.retry_backoff_s=0"]


def train(cwd, data_dir, *extra, env=None):
    return run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(data_dir), *SETTINGS, *extra,
                  cwd=cwd, env=env)


def events(run_dir): return [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]


def test_a_compiled_run_killed_mid_epoch_resumes_bitwise_and_its_best_model_loads_eagerly(tmp_path, prepared):
    data = prepared("digits")
    (tmp_path / "a").mkdir(); (tmp_path / "b").mkdir()
    r = train(tmp_path / "a", data)
    assert r.returncode == 0, r.stderr
    reference = completed_run(tmp_path / "a")
    compiled = [e for e in events(reference) if e["event"] == "compiled"]
    assert compiled and compiled[0]["split"] == "train" and compiled[0]["seconds"] > 0, compiled
    assert "compiled the model for train" in r.stderr + r.stdout

    killed = train(tmp_path / "b", data, env={"TP_FAULT": "train:kill@52"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    r = train(tmp_path / "b", data)
    assert r.returncode == 0, r.stderr
    resumed = completed_run(tmp_path / "b")
    assert "resumed" in [e["event"] for e in events(resumed)]
    assert_bitwise_equal(final_state(resumed), final_state(reference))
    assert metric_rows(resumed) == metric_rows(reference)
    check_run_dir(resumed)

    # the best model: the module's own names (no `_orig_mod.`), loaded into the eager class and run
    from training_pipeline.models.factory import model_from_spec
    weights = load_file(resumed / "checkpoints" / "best_model.safetensors")
    assert not any(k.startswith("_orig_mod") for k in weights), list(weights)[:3]
    model = model_from_spec(json.loads((resumed / "checkpoints" / "model.json").read_text()))
    model.load_state_dict(weights)
    assert not hasattr(model, "_orig_mod")
    assert model.eval()(torch.zeros(2, *json.loads((resumed / "checkpoints" / "model.json").read_text())
                                    ["input_shape"])).shape[0] == 2


def test_a_compile_that_cannot_work_here_is_one_line_before_anything_is_written(tmp_path, prepared):
    no_compiler = {"PATH": str(tmp_path / "empty"), "CXX": ""}  # neither g++ nor any other C++ compiler to be found
    (tmp_path / "empty").mkdir()
    r = run_tp("config", "check", REPO / "config" / "test.yaml", "training.compile=true", env=no_compiler)
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stderr
    assert "training.compile needs a C++ compiler" in r.stderr, r.stderr
    r = train(tmp_path, prepared("digits"), env=no_compiler)
    assert r.returncode == 2 and "training.compile needs a C++ compiler" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()
    r = run_tp("config", "check", REPO / "config" / "test.yaml", "training.compile=false", env=no_compiler)
    assert r.returncode == 0, r.stderr


def test_a_compiled_run_on_two_cpu_processes_with_ddp(tmp_path, prepared):
    r = train(tmp_path, prepared("digits"), "training.epochs=1", "--distributed", "--gpus", "2", "--cpu",
              "--master-port", free_port())
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = completed_run(tmp_path)
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["world_size"], meta["summary"]["val_accuracy"] > 0.8) == (2, True), meta
    compiled = [e for e in events(run_dir) if e["event"] == "compiled"]
    assert compiled and compiled[0]["split"] == "train", compiled
    weights = load_file(run_dir / "checkpoints" / "best_model.safetensors")
    assert weights and not any(k.startswith(("_orig_mod", "module.")) for k in weights), list(weights)[:3]
    check_run_dir(run_dir)
