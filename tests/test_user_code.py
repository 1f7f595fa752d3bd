"""The open trainer (issue 15) end to end: a model, a dataset and a task from a package this repository does not
contain (written into a temp dir here), trained from a YAML config with `tp train` and from Python with `fit(...)`
over plain `DataLoader(shuffle=True)`; kill -9 and resume stay bitwise equal; the report and `load_model` work for
both; bad import paths are one line, exit 2, nothing written."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import check_run_dir, run_tp

USER_PACKAGE = {
    "seqpkg/__init__.py": "",
    # a GRU regressor over sequences; its constructor arguments come from model.init_args
    "seqpkg/models.py": """
        import torch
        from torch import nn
        class GRURegressor(nn.Module):
            def __init__(self, features=3, hidden=16):
                super().__init__()
                self.gru, self.head = nn.GRU(features, hidden, batch_first=True), nn.Linear(hidden, 1)
            def forward(self, x): return self.head(self.gru(x)[1][-1])
        def failing_factory(**kwargs): raise RuntimeError("no GPU kernels for this layer")
        def not_a_model(**kwargs): return 42
    """,
    # split -> Dataset of (sequence, target) pairs; the target depends on the whole sequence
    "seqpkg/data.py": """
        import torch
        class Waves(torch.utils.data.Dataset):
            def __init__(self, n, seed, features):
                g = torch.Generator().manual_seed(seed)
                self.x = torch.randn(n, 10, features, generator=g)
                self.y = self.x[:, :, 0].sum(1) * 0.5 + self.x[:, -1, 1]
            def __len__(self): return len(self.y)
            def __getitem__(self, i): return self.x[i], self.y[i]
        def waves(n=320, features=3):
            return {"train": Waves(n, 0, features), "val": Waves(64, 1, features), "test": Waves(64, 2, features)}
        def not_datasets(**kwargs): return [1, 2, 3]
    """,
    # a multi-label tagger over dict batches: forward takes keyword arguments, the target is under 'labels'
    "tagpkg/__init__.py": "",
    "tagpkg/net.py": """
        import torch
        from torch import nn
        class Tagger(nn.Module):
            def __init__(self, width=32):
                super().__init__(); self.net = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))
            def forward(self, features, extra): return self.net(torch.cat([features, extra], -1))
        class Tags(torch.utils.data.Dataset):
            def __init__(self, n, seed):
                g = torch.Generator().manual_seed(seed)
                self.x, self.extra = torch.randn(n, 6, generator=g), torch.randn(n, 2, generator=g)
                self.y = torch.stack([self.x[:, 0] > 0, self.x[:, 1] + self.extra[:, 0] > 0, self.x[:, 2] < -0.5], 1).long()
            def __len__(self): return len(self.y)
            def __getitem__(self, i): return {"features": self.x[i], "extra": self.extra[i], "labels": self.y[i]}
    """,
}

REGRESSION_CONFIG = """
    seed: 3
    experiment: {name: waves}
    data:
      dataset: seqpkg.data:waves
      init_args: {n: 320, features: 3}
      num_workers: 0
      pin_memory: false
      persistent_workers: false
    model:
      architecture: seqpkg.models:GRURegressor
      init_args: {features: 3, hidden: 16}
    training:
      task: regression
      batch_size: 32
      epochs: 4
      learning_rate: 0.01
      deterministic: true
      metrics: [MeanAbsolutePercentageError]
      retry_backoff_s: 0
    checkpointing: {save_every_n_steps: 7, keep_last_n: 3, monitor_metric: val_rmse, mode: min}
    logging: {log_frequency: 5}
"""

# fit() from a script: the user's own model, plain shuffled DataLoaders, a loss and optimizer of their own
FIT_SCRIPT = """
    import sys, torch
    from torch.utils.data import DataLoader
    from training_pipeline import fit
    from tagpkg.net import Tagger, Tags
    torch.manual_seed(0)
    model = Tagger(width=32)
    data = {"train": DataLoader(Tags(480, 0), batch_size=32, shuffle=True), "val": DataLoader(Tags(96, 1), batch_size=64),
            "test": DataLoader(Tags(96, 2), batch_size=64)}
    result = fit(model, data, optimizer=lambda params: torch.optim.Adam(params, lr=0.01), epochs=5, task="multilabel",
                 target_key="labels", experiment="tags", seed=5, training__deterministic=True,
                 checkpointing__save_every_n_steps=6, checkpointing__monitor_metric="val_f1", checkpointing__mode="max",
                 training__retry_backoff_s=0)
    print("fit:", result.status, result.run_dir, result.best_checkpoint)
"""


@pytest.fixture
def user_project(tmp_path):
    "A working directory holding the user's packages and config (none of it is in this repository)."
    for rel, text in USER_PACKAGE.items():
        p = tmp_path / rel; p.parent.mkdir(parents=True, exist_ok=True); p.write_text(textwrap.dedent(text))
    (tmp_path / "waves.yaml").write_text(textwrap.dedent(REGRESSION_CONFIG))
    (tmp_path / "fit_tags.py").write_text(textwrap.dedent(FIT_SCRIPT))
    return tmp_path


def runs_of(cwd, experiment):
    return sorted((Path(cwd) / "runs" / experiment).glob("*/run.json"))


def the_run(cwd, experiment):
    found = runs_of(cwd, experiment)
    assert len(found) == 1, found
    return found[0].parent


def last_checkpoint(run_dir):
    from training_pipeline.loop.checkpoint import load_checkpoint
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    return index["last"], load_checkpoint(run_dir / "checkpoints" / index["last"])


def assert_same_final_state(a, b):
    (name_a, sa), (name_b, sb) = a, b
    assert name_a == name_b
    for k in sa["model"]: assert torch.equal(sa["model"][k], sb["model"][k]), k
    for i, st in sa["optimizer"]["state"].items():
        for k, v in st.items(): assert torch.equal(v, sb["optimizer"]["state"][i][k]), (i, k)


def rows(run_dir, *keys):
    return [tuple(r.get(k) for k in ("split", "step", *keys)) for r in
            (json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_regression_from_config_trains_resumes_bitwise_and_reports(user_project, tmp_path_factory):
    r = run_tp("config", "check", "waves.yaml", cwd=user_project)
    assert r.returncode == 0, r.stderr
    r = run_tp("train", "--config", "waves.yaml", cwd=user_project)
    assert r.returncode == 0, r.stderr
    ref = the_run(user_project, "waves")
    check_run_dir(ref)
    val = [json.loads(l) for l in (ref / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    assert {"rmse", "mae", "r2", "mean_absolute_percentage_error"} <= set(val[-1]), val[-1]
    assert val[-1]["rmse"] < val[0]["rmse"] and val[-1]["r2"] > 0.5, (val[0], val[-1])
    spec = json.loads((ref / "artifacts" / "model.json").read_text())
    assert (spec["architecture"], spec["init_args"], spec["task"]) == ("seqpkg.models:GRURegressor", {"features": 3, "hidden": 16}, "regression")
    preds = json.loads((ref / "artifacts" / "predictions" / "test_final.json").read_text())
    assert preds["samples"] == 64 and "final model" in preds["weights"]

    # kill -9 mid-epoch right after a checkpoint, then `tp train` again: the same run continues, bitwise equal
    killed = tmp_path_factory.mktemp("killed")
    for rel in list(USER_PACKAGE) + ["waves.yaml"]:
        (killed / rel).parent.mkdir(parents=True, exist_ok=True); (killed / rel).write_text((user_project / rel).read_text())
    r = run_tp("train", "--config", "waves.yaml", cwd=killed, env={"TP_FAULT": "train:kill@15"})
    assert r.returncode == -9, (r.returncode, r.stderr)
    r = run_tp("train", "--config", "waves.yaml", cwd=killed)
    assert r.returncode == 0, r.stderr
    resumed = the_run(killed, "waves")
    events = [json.loads(l)["event"] for l in (resumed / "events.jsonl").read_text().splitlines()]
    assert "resumed" in events
    assert_same_final_state(last_checkpoint(ref), last_checkpoint(resumed))
    assert rows(ref, "loss", "rmse") == rows(resumed, "loss", "rmse")

    # the run directory alone makes the report; the registry rebuilds the model from its import path
    r = run_tp("report", "--run", ref, cwd=user_project)
    assert r.returncode == 0, r.stderr
    html = (ref / "report.html").read_text()
    assert "rmse" in html.lower()
    r = run_tp("models", "register", ref, "--name", "waves", cwd=user_project)
    assert r.returncode == 0, r.stderr
    code = textwrap.dedent("""
        import torch
        from training_pipeline.track.registry import load_model
        m = load_model("waves")
        x = torch.randn(4, 10, 3)
        out = m.predict(x)
        print(len(out))
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=user_project, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "4", p.stderr


def test_fit_multilabel_dict_batches_plain_loaders_resume_and_report(user_project, tmp_path_factory):
    script = lambda cwd, env=None: subprocess.run([sys.executable, "fit_tags.py"], cwd=cwd, capture_output=True, text=True,
                                                  env={**os.environ, **(env or {})}, timeout=600)
    r = script(user_project)
    assert r.returncode == 0, r.stderr
    ref = the_run(user_project, "tags")
    check_run_dir(ref)
    assert "fit: completed" in r.stdout
    meta = json.loads((ref / "run.json").read_text())
    assert meta["status"] == "completed"
    val = [json.loads(l) for l in (ref / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    assert val[-1]["f1"] > 0.8 and len(val[-1]["per_label_f1"]) == 3, val[-1]

    killed = tmp_path_factory.mktemp("fit-killed")
    for rel in list(USER_PACKAGE) + ["fit_tags.py"]:
        (killed / rel).parent.mkdir(parents=True, exist_ok=True); (killed / rel).write_text((user_project / rel).read_text())
    r = script(killed, {"TP_FAULT": "train:kill@20"})
    assert r.returncode == -9, (r.returncode, r.stderr)
    r = script(killed)  # the same call again: resume="auto" continues the killed run in place
    assert r.returncode == 0, r.stderr
    resumed = the_run(killed, "tags")
    assert_same_final_state(last_checkpoint(ref), last_checkpoint(resumed))
    assert rows(ref, "loss", "f1") == rows(resumed, "loss", "f1")

    r = run_tp("report", "--run", ref, cwd=user_project)
    assert r.returncode == 0, r.stderr
    assert "per_label_f1" in (ref / "report.html").read_text() or "per-label" in (ref / "report.html").read_text().lower()


@pytest.mark.parametrize("override, message", [
    ("model.architecture=seqpkg.nope:GRURegressor", "module 'seqpkg.nope' not found"),
    ("model.architecture=seqpkg.models:GRURegresor", "did you mean 'GRURegressor'"),
    ("model.architecture=seqpkg.models:failing_factory", "no GPU kernels for this layer"),
    ("model.architecture=seqpkg.models:not_a_model", "not a torch nn.Module"),
    ("data.dataset=seqpkg.data:not_datasets", "not a mapping with a 'train' split"),
    ("data.init_args={rows: 3}", "unexpected keyword argument 'rows'"),
])
def test_bad_user_code_is_one_line_exit_2_nothing_written(user_project, override, message):
    key = override.split("=")[0].rsplit(".", 1)[0] if "init_args" in override else override.split("=")[0]
    r = run_tp("train", "--config", "waves.yaml", override, cwd=user_project)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert ("data.dataset" if key.startswith("data") else "model.architecture") in lines[0], lines[0]
    assert not (user_project / "runs").exists()

