"""`tp lr-find` (issue 18, item 6) end to end: on digits it suggests a rate that `tp train` reaches >= 97% validation
accuracy with; on a model whose loss cannot fall (a package this repository does not contain, written here) it refuses
in one line, exit 1, and writes no config; nothing of a run is created either way. Under `--distributed --gpus 2 --cpu`
two real processes run the test on their shards and the main one reports, once."""
import json
import re
import textwrap
from pathlib import Path

import yaml

from conftest import REPO, data_overrides, free_port, run_tp


def test_the_suggested_rate_trains_digits_to_97_percent(tmp_path, prepared):
    data = data_overrides(prepared("digits"))
    config = REPO / "config" / "digits.yaml"
    before = config.read_text()
    r = run_tp("lr-find", "--config", config, "--apply", tmp_path / "digits.lr.yaml", *data, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    suggested = float(re.search(r"^suggested learning rate: (\S+)$", r.stdout, re.M).group(1))
    assert 1e-5 < suggested < 1, r.stdout
    page = (tmp_path / "digits.lr-find.html").read_text()
    assert "suggested learning rate" in page and "plotly" in page
    tuned = yaml.safe_load((tmp_path / "digits.lr.yaml").read_text())
    assert tuned["training"]["learning_rate"] == suggested
    assert {k: v for k, v in tuned["training"].items() if k != "learning_rate"} == \
           {k: v for k, v in yaml.safe_load(before)["training"].items() if k != "learning_rate"}
    assert config.read_text() == before and not (tmp_path / "runs").exists()  # the finder leaves the config and the runs alone

    r = run_tp("train", "--config", tmp_path / "digits.lr.yaml", *data, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = Path(re.search(r"^run completed: (\S+)$", r.stdout, re.M).group(1))
    summary = json.loads((tmp_path / run_dir / "run.json").read_text())["summary"]
    assert summary["val_accuracy"] >= 0.97, (suggested, summary)


def test_two_cpu_processes_suggest_one_rate_once(tmp_path, prepared):
    r = run_tp("lr-find", "--config", REPO / "config" / "digits.yaml", "--apply", "digits.lr.yaml", "--steps", "60", *data_overrides(prepared("digits")),
               "--distributed", "--gpus", "2", "--cpu", "--master-port", free_port(), cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    found = re.findall(r"^suggested learning rate: (\S+)$", r.stdout, re.M)
    assert len(found) == 1 and 1e-5 < float(found[0]) < 1, r.stdout  # the main process reports, the other is silent
    assert int(re.search(r"\(step \d+ of (\d+);", r.stdout).group(1)) <= 60, r.stdout  # --steps reached the processes
    assert r.stdout.count("written: ") == 1 and "Traceback" not in r.stderr, (r.stdout, r.stderr[-2000:])
    assert yaml.safe_load((tmp_path / "digits.lr.yaml").read_text())["training"]["learning_rate"] == float(found[0])
    assert "plotly" in (tmp_path / "digits.lr-find.html").read_text() and not (tmp_path / "runs").exists()


def test_a_loss_that_cannot_fall_is_refused(tmp_path, prepared):
    (tmp_path / "flatpkg").mkdir()
    (tmp_path / "flatpkg" / "__init__.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class Constant(nn.Module):
            "Ten equal logits whatever the input and the weights: the loss is log(10) at every rate."
            def __init__(self):
                super().__init__(); self.bias = nn.Parameter(torch.zeros(10))
            def forward(self, x): return (self.bias * 0).expand(len(x), 10)
    """))
    (tmp_path / "flat.yaml").write_text("experiment: {name: flat}\nmodel: {architecture: 'flatpkg:Constant'}\n"
                                        "data: {num_workers: 0}\ntraining: {optimizer: {type: adamw}}\n")
    r = run_tp("lr-find", "--config", "flat.yaml", "--apply", "flat.lr.yaml", *data_overrides(prepared("digits")), cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr[-2000:])
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: no clear descent: the smoothed loss fell by 0.0% at most") and "flat.lr-find.html" in r.stderr
    assert not (tmp_path / "flat.lr.yaml").exists() and not (tmp_path / "runs").exists()


def test_bad_settings_are_one_line_exit_2(tmp_path):
    r = run_tp("lr-find", "--config", REPO / "config" / "digits.yaml", "--steps", "3", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "error: 3 steps are too few to read a loss curve (lr-find): give at least 10 steps\n")
    r = run_tp("lr-find", "--config", REPO / "config" / "digits.yaml", "--start-lr", "1", "--end-lr", "0.1", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: the rates must rise: start 1.0, end 0.1"), r.stderr
    assert list(tmp_path.iterdir()) == []
