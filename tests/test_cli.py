"""The `tp` surface of DESIGN.md: every subcommand exists with its documented options, starts
without importing torch, and a missing run or job is one line with exit 2."""
import subprocess
import sys

import pytest

from conftest import REPO

DOCUMENTED = {  # command -> options DESIGN.md and the issues document for it
    ("prepare",): ["--dataset", "--source", "--target", "--data-dir"],
    ("validate",): ["--data-dir", "--schema", "--source", "--json"],
    ("config", "check"): ["PATH", "KEY=VALUE"],
    ("train",): ["--config", "--epochs", "--resume", "--distributed", "--gpus", "--nodes", "--node-rank",
                 "--master-addr", "--master-port", "--cpu", "KEY=VALUE"],
    ("monitor",): ["--experiment-id", "--run", "--follow", "--once"],
    ("report",): ["--run", "--checkpoint", "--out"],
    ("runs", "list"): ["--experiment"], ("runs", "show"): ["ID"], ("runs", "compare"): ["ID"],
    ("models", "register"): ["--name", "--checkpoint"], ("models", "list"): ["NAME"],
    ("models", "promote"): ["--alias"], ("models", "export"): ["--out"],
    ("notebooks", "path"): ["train", "report", "dashboard"], ("sweep",): ["--config", "--param", "--parallel"],
    ("tune-loader",): ["--config", "--budget-s", "--apply"],
    ("jobs", "submit"): ["--config", "--gpus", "--cpus", "--priority", "--max-retries", "--backend"],
    ("jobs", "worker"): ["--slots"], ("jobs", "list"): ["--watch"], ("jobs", "logs"): ["--follow"],
    ("jobs", "cancel"): ["ID"],
}


@pytest.mark.parametrize("command", sorted(DOCUMENTED), ids=" ".join)
def test_documented_options_in_help(tp, command):
    result = tp(*command, "--help")
    assert result.returncode == 0, result.stderr
    for option in DOCUMENTED[command]: assert option in result.stdout, (command, option)


def test_help_does_not_import_heavy_modules():
    probe = ("import sys, io, contextlib\nfrom training_pipeline.cli.commands import main\n"
             "for argv in (['--help'], ['train', '--help'], ['jobs', 'submit', '--help']):\n"
             "    with contextlib.redirect_stdout(io.StringIO()): assert main(argv) == 0\n"
             "print(','.join(m for m in ('torch', 'accelerate', 'pandas', 'pydantic', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_python_dash_m_is_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "training_pipeline", "config", "check",
                             str(REPO / "config" / "test.yaml")], capture_output=True, text=True)
    assert result.returncode == 0 and "architecture: small_cnn" in result.stdout


@pytest.mark.parametrize("argv", [["monitor", "--run", "nowhere", "--once"], ["jobs", "show", "42"], ["jobs", "logs", "42"]])
def test_missing_run_or_job_is_one_line_and_writes_nothing(tp, argv, tmp_path):
    result = tp(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_are_one_line(tp):
    result = tp("train")
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "error: the following arguments are required: --config (tp train): see `tp train --help`"]
    result = tp("frobnicate")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "invalid choice" in result.stderr
    result = tp("monitor", "--run", "a", "--experiment-id", "b")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
