"""Exact resume whatever the loader workers and the number of processes (issue 16, item 4), end to end with `tp train`:
augmentation in 2 loader workers killed by SIGKILL mid-epoch and resumed with 0 workers (and the reverse) ends bitwise
equal to an uninterrupted run (model, optimizer, RNG, metric log); a 2-process run stopped mid-epoch and resumed on 1
process sees every sample exactly once in that epoch, by the sample ids its model logs."""
import json
import os
import signal
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import REPO, TP, data_overrides, free_port, run_tp
from test_resume import assert_bitwise_equal, completed_run, final_state, metric_rows

AUGMENTED = ["training.epochs=2", "training.deterministic=true", "checkpointing.save_every_n_steps=7", "checkpointing.keep_last_n=3",
             "data.transforms.augment.rotation_degrees=15", "data.transforms.augment.random_erasing=0.3"]
WORKERS = {0: ["data.num_workers=0"],
           2: ["data.num_workers=2", "data.persistent_workers=true", "data.prefetch_factor=2", "data.pin_memory=true"]}


def train(cwd, data_dir, workers, env=None):
    return run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(data_dir), *AUGMENTED, *WORKERS[workers],
                  cwd=cwd, env=env, timeout=300)


def assert_same_rng(a, b):
    ra, rb = a[1]["rng"], b[1]["rng"]
    assert ra.keys() == rb.keys()
    assert torch.equal(ra["torch"], rb["torch"])
    assert repr(ra["numpy"]) == repr(rb["numpy"]) and ra["python"] == rb["python"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prepared):
    cwd = tmp_path_factory.mktemp("augmented-reference")
    r = train(cwd, prepared("digits"), workers=0)
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = completed_run(cwd)
    return final_state(run_dir), metric_rows(run_dir)


@pytest.mark.parametrize("before, after", [(2, 0), (0, 2)])
def test_augmented_run_killed_in_one_worker_setting_resumed_in_another_is_bitwise_equal(tmp_path, prepared, uninterrupted, before, after):
    # killed right after the mid-epoch checkpoint at step 35 (batch 35 of 40 in epoch 0)
    killed = train(tmp_path, prepared("digits"), before, env={"TP_FAULT": "train:kill@35"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = train(tmp_path, prepared("digits"), after)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_dir = completed_run(tmp_path)
    events = [json.loads(l)["event"] for l in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events.count("resumed") == 1
    final, rows = final_state(run_dir), metric_rows(run_dir)
    reference_final, reference_rows = uninterrupted
    assert_bitwise_equal(final, reference_final)
    assert_same_rng(final, reference_final)
    assert rows == reference_rows


# a user's dataset whose samples carry their id, and a model that logs the ids it trains on (only what was trained:
# the loader prefetches ahead, the model does not)
ID_PACKAGE = {
    "idpkg/__init__.py": "",
    "idpkg/parts.py": """
        import os
        import torch
        from torch import nn
        class Numbered(torch.utils.data.Dataset):
            def __init__(self, n, seed):
                g = torch.Generator().manual_seed(seed)
                self.x = torch.randn(n, 4, generator=g); self.y = (self.x[:, 0] > 0).long()
            def __len__(self): return len(self.y)
            def __getitem__(self, i): return {"x": self.x[i] + 0.1 * torch.randn(4), "ids": torch.tensor(i), "target": self.y[i]}
        def splits(n=403): return {"train": Numbered(n, 0), "val": Numbered(48, 1)}
        class IdLogger(nn.Module):
            def __init__(self):
                super().__init__(); self.net = nn.Linear(4, 2)
            def forward(self, x, ids):
                if self.training:
                    with open(os.path.join(os.environ["IDS_DIR"], f"{os.getpid()}.txt"), "a") as f: f.write(" ".join(map(str, ids.tolist())) + "\\n")
                return self.net(x)
    """,
}

ID_CONFIG = """
    seed: 5
    experiment: {name: elastic}
    data: {dataset: "idpkg.parts:splits", num_workers: 0, pin_memory: false, persistent_workers: false}
    model: {architecture: "idpkg.parts:IdLogger"}
    training: {task: classification, batch_size: 8, epochs: 1, learning_rate: 0.01}
    checkpointing: {save_every_n_steps: 3, keep_last_n: 2}
    logging: {log_frequency: 2}
"""


def ids_seen(ids_dir) -> Counter:
    return Counter(int(i) for f in Path(ids_dir).glob("*.txt") for line in f.read_text().splitlines() for i in line.split())


def test_a_two_process_run_resumed_on_one_process_sees_every_sample_once(tmp_path):
    for rel, text in ID_PACKAGE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    (tmp_path / "elastic.yaml").write_text(textwrap.dedent(ID_CONFIG))
    ids_dir = tmp_path / "ids"; ids_dir.mkdir()
    env = {**os.environ, "IDS_DIR": str(ids_dir), "TP_FAULT": "train:sleep=0.1"}  # 26 steps of 0.1 s on 2 processes
    two = subprocess.Popen([str(TP), "train", "--config", "elastic.yaml", "--distributed", "--gpus", "2", "--cpu",
                            "--master-port", str(free_port())], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while sum(ids_seen(ids_dir).values()) < 5 * 16:  # 5 steps of 2 x 8 samples done
        assert two.poll() is None and time.monotonic() < deadline, two.stderr.read()[-2000:]
        time.sleep(0.05)
    two.send_signal(signal.SIGTERM)
    _, err = two.communicate(timeout=120)
    assert two.returncode == 130, err[-2000:]
    before = ids_seen(ids_dir)
    assert len(list(ids_dir.glob("*.txt"))) == 2 and 80 <= sum(before.values()) < 403, sum(before.values())
    one = run_tp("train", "--config", "elastic.yaml", cwd=tmp_path, env={"IDS_DIR": str(ids_dir)}, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    # before training, each process start (two, then one) tries samples 0 and 1 through forward once: the preflight
    preflight = Counter({0: 3, 1: 3})
    seen = ids_seen(ids_dir) - preflight
    assert sorted(seen) == list(range(403)), sorted(set(range(403)) - set(seen))[:10]
    assert set(seen.values()) == {1}, [i for i, c in seen.items() if c > 1][:10]
    assert ids_seen(ids_dir) == Counter(range(403)) + preflight
    run_dir = next((tmp_path / "runs" / "elastic").iterdir())
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed"
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if json.loads(l)["split"] == "train"]
    assert len(steps) == len(set(steps)), "a step was logged twice"


def test_a_run_resumes_with_another_torch_thread_count(tmp_path, prepared):
    "resources.num_threads (which `tp tune-loader` may recommend beside workers) may change on resume: the same run goes on, and says so."
    short = ["--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), "checkpointing.save_every_n_steps=7"]
    killed = run_tp("train", *short, cwd=tmp_path, env={"TP_FAULT": "train:kill@7"}, timeout=300)  # right after its first checkpoint
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_tp("train", *short, *WORKERS[2], "resources.num_threads=1", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resources.num_threads None -> 1" in resumed.stdout + resumed.stderr, resumed.stdout
    run_dir = completed_run(tmp_path)  # the one run, continued
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    resumed_events = [e for e in events if e["event"] == "resumed"]
    assert len(resumed_events) == 1 and resumed_events[0]["changed"]["resources.num_threads"] == [None, 1], resumed_events
    assert json.loads((run_dir / "run.json").read_text())["resumable_settings"]["resources.num_threads"] == 1
