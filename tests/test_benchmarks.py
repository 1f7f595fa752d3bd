"""Benchmarks are not timed tests: CI only checks that each one runs and prints its result line."""
import os
import subprocess
import sys

from conftest import REPO


def test_cli_startup_benchmark_runs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cli_startup.py"), "2"],
                         capture_output=True, text=True, check=True).stdout
    assert "tp_help_median_s=" in out.splitlines()[-1]


def test_validate_benchmark_runs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "validate_1m.py"), "20000", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert "check_tables_s=" in out.splitlines()[-1]


def test_parity_benchmark_runs_and_is_bitwise_equal():
    "Both workloads (the CNN, and the tiny model where only the framework shows) bitwise equal to the raw loop."
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "parity.py"), "--runs", "1", "--epochs", "1",
                          "--warmup", "0", "--no-compile"],  # compiling is tests/test_compile.py's (CI time)
                         capture_output=True, text=True, check=True).stdout
    last = dict(kv.split("=") for kv in out.splitlines()[-1].split())
    for prefix in ("", "tiny_"):
        assert float(last[f"{prefix}max_abs_loss_diff"]) == 0.0, last
        assert float(last[f"{prefix}max_abs_param_diff"]) == 0.0, last
        assert f"{prefix}overhead_ms_per_step" in last, last
    assert "compile_speedup" not in last, last
    # Lightning is a benchmark-only extra (CI does not install it): measured when present, named when absent
    assert "lightning_ratio" in last or "pytorch-lightning is not installed" in out, out


def test_resume_position_benchmark_runs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "resume_position.py"), "1"],
                         capture_output=True, text=True, check=True).stdout
    assert "ratio=" in out.splitlines()[-1]


def test_async_checkpoint_benchmark_runs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "checkpoint_async.py"), "1", "--model", "resnet18"],
                         capture_output=True, text=True, check=True).stdout
    assert "async_blocked_s=" in out.splitlines()[-1]


def test_image_decode_benchmark_runs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "image_decode.py"), "0.01"],
                         capture_output=True, text=True, check=True).stdout
    assert "ratio_0=" in out.splitlines()[-1] and "| False |" not in out, out  # both decoders give the same pixels


def test_streaming_memory_benchmark_runs(tmp_path):
    # (--shards adds two runs streamed from shards: that path is tested in test_shards_cli, so CI does not time it here
    # again)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "streaming_memory.py"), "--sizes", "100", "200",
                          "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "tree_ratio=" in out.splitlines()[-1], out


def test_shards_read_benchmark_runs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "shards_read.py"), "400", "1"],
                         capture_output=True, text=True, check=True, env={**os.environ, "TQDM_DISABLE": "1"}).stdout
    assert "ratio_w2=" in out.splitlines()[-1]


def test_streaming_workers_benchmark_runs(prepared, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "streaming_workers.py"),
                          "--data", str(prepared("digits")), "--rounds", "1", "--batches", "5", "--budget-s", "2",
                          "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True, env={**os.environ, "TQDM_DISABLE": "1"}).stdout
    assert "ratio=" in out.splitlines()[-1] and "wait_share_recommended=" in out.splitlines()[-1], out[-1500:]


def test_ui_index_benchmark_runs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ui_index.py"), "--sizes", "30", "--repeat", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert "warm_30=" in out.splitlines()[-1] and "ok=True" in out.splitlines()[-1], out


def test_remote_checkpoint_benchmark_runs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "remote_checkpoint.py"), "1",
                          "--model", "resnet18"],
                         capture_output=True, text=True, check=True).stdout
    assert "remote_blocked_s=" in out.splitlines()[-1], out


def test_lm_parity_benchmark_runs_and_is_bitwise_equal():
    "GPT-2 from a config on byte-level standard-library text: the Trainer's losses and weights equal the plain loop's."
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lm_parity.py"), "--runs", "1", "--files", "3",
                          "--vocab-steps", "1"], capture_output=True, text=True, check=True).stdout
    last = dict(kv.split("=") for kv in out.splitlines()[-1].split())
    assert float(last["max_abs_loss_diff"]) == 0.0 and float(last["max_abs_param_diff"]) == 0.0, last
    assert {"ratio", "hf_ratio", "trainer_vs_hf", "metrics_cost"} <= set(last), last


def test_compile_step_benchmark_runs():
    "The eager variants only: compiling is tests/test_compile.py's (CI time)."
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compile_step.py"), "--runs", "1", "--steps", "2",
                          "--variants", "eager", "eager_channels_last"],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line for line in out.splitlines() if "ms/step" in line}
    assert set(rows) == {"eager", "eager_channels_last"}, out
    assert "x eager" in rows["eager_channels_last"], out
