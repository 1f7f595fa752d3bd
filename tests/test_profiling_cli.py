"""Profiling end to end: step timing in every run's metrics, `tp train --profile` artifacts and traces,
`tp tune-loader` on the digits config (in memory: no workers, loading not the bottleneck, also when the settings train
with the model's step) with --apply, and on a streamed split (its decoding timed)."""
import json

import yaml

from conftest import REPO, data_overrides, run_tp


def test_profile_and_step_timing(tmp_path, prepared):
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), "--profile", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = next((tmp_path / "runs" / "test").iterdir())
    assert "Self CPU" in (run_dir / "artifacts" / "profile.txt").read_text()
    assert json.loads((run_dir / "artifacts" / "profile.json").read_text())[0]["cpu_time_total_us"] > 0
    assert list((run_dir / "tensorboard" / "profile").glob("*.pt.trace.json"))
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in rows if r["split"] == "train" and "epoch_time_s" in r][0]
    phases = sum(epoch[f"time_{p}_s"] for p in ("data", "h2d", "forward", "backward", "optimizer"))
    assert epoch["time_forward_s"] > 0 and epoch["time_backward_s"] > 0 and 0.5 * epoch["epoch_time_s"] < phases <= 1.05 * epoch["epoch_time_s"]
    r = run_tp("report", "--run", run_dir, cwd=tmp_path)
    assert r.returncode == 0 and "torch.profiler operator table" in (run_dir / "report.html").read_text()


def test_tune_loader_on_in_memory_digits(tmp_path, prepared):
    d = prepared("digits")
    cfg = tmp_path / "digits.yaml"
    raw = yaml.safe_load((REPO / "config" / "digits.yaml").read_text())
    raw["data"].update(data_dir=str(d), train_dir=f"{d}/processed/train", val_dir=f"{d}/processed/val", test_dir=f"{d}/processed/test",
                       num_workers=2, persistent_workers=True)
    cfg.write_text(yaml.safe_dump(raw))
    r = run_tp("tune-loader", "--config", cfg, "--budget-s", "6", "--apply", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "loading is not the bottleneck" in r.stdout and "'num_workers': 0" in r.stdout
    assert "with the model step" in r.stdout and "workers 0, batch 64, " in r.stdout.split("with the model step")[1]  # trained too
    tuned = yaml.safe_load((tmp_path / "digits.tuned.yaml").read_text())
    assert tuned["data"]["num_workers"] == 0 and tuned["model"] == raw["model"]
    assert (tmp_path / "digits.tune-loader.html").exists()
    assert run_tp("config", "check", tmp_path / "digits.tuned.yaml").returncode == 0


def test_tune_loader_on_a_streamed_split_times_its_decoding(tmp_path, prepared):
    raw = yaml.safe_load((REPO / "config" / "digits.yaml").read_text())
    raw["data"].update(data_dir=str(prepared("digits")), in_memory=False)  # decoded per sample, in the workers
    (tmp_path / "streamed.yaml").write_text(yaml.safe_dump(raw))
    r = run_tp("tune-loader", "--config", tmp_path / "streamed.yaml", "--budget-s", "6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "workers 0" in r.stdout and "workers 2" in r.stdout  # every setting was timed on the streamed split
    stages = next(l for l in r.stdout.splitlines() if l.startswith("stages per batch:"))
    assert "decode" in stages and "model_step" in stages, stages
