"""Loader workers finish (issue 16): every combination of num_workers, persistent_workers, pin_memory and prefetch_factor
trains, exits 0 within seconds of its last epoch and leaves no process behind; one SIGTERM or SIGINT, to the process
or to its whole group, saves a preemption checkpoint, exits 130 and takes the workers with it.

A process belongs to a run when its environment carries the run's mark: DataLoader workers inherit it, so a worker
left behind is found even after its parent is gone (and it has been re-parented to init)."""
import itertools
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import yaml

from conftest import REPO, TP, run_tp

CONFIG = REPO / "config" / "test.yaml"
MARK = "TP_TEST_LOADER_RUN"
EXIT_SOON_S = 30  # from the last epoch line to exit: the test split and the summary take 3 s here, 12 s with load 9

# (num_workers, persistent_workers, pin_memory, prefetch_factor). Each run costs ~9 CPU-seconds of start-up here, so by
# default these six: together they hold every pair of values of any two keys (without workers the other keys have no
# effect, and without CUDA the loader does not pin memory). TP_ALL_LOADER_COMBOS=1 runs all 24 (worth it on a GPU box).
PAIRWISE = [(0, True, True, 2),   # loader-only keys without workers: ignored, not an error
            (2, True, True, 1), (2, False, True, 2),
            (2, True, False, 2),  # the reproduction: hung forever after "run ... completed"
            (8, True, True, 2),   # the seed's config/train_config.yaml values, on this 2-core machine
            (8, False, False, 1)]
ALL = list(itertools.product((0, 2, 8), (False, True), (False, True), (1, 2)))
COMBOS = ALL if os.environ.get("TP_ALL_LOADER_COMBOS") == "1" else PAIRWISE


def run_processes(mark):
    "Live processes (zombies aside) whose environment carries `mark`."
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK) == mark and p.status() != psutil.STATUS_ZOMBIE: found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess): pass
    return found


def left_behind(mark, within=3.0):
    "The run's processes still alive `within` seconds after its main process exited (a worker may take a moment)."
    deadline = time.monotonic() + within
    while (found := run_processes(mark)) and time.monotonic() < deadline: time.sleep(0.1)
    return [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in found if p.is_running()]


class Run:
    "`tp train` in its own session; its output lines with their arrival times; the children it had."
    def __init__(self, cwd, data_dir, *overrides, env=None):
        self.mark, self.cwd = uuid.uuid4().hex, cwd
        self.cmd = [str(TP), "train", "--config", str(CONFIG), f"data.data_dir={data_dir}", *overrides]
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env={**os.environ, **(env or {}), MARK: self.mark},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines, self.err, self.children = [], [], set()
        self._readers = [threading.Thread(target=self._read, args=(s, out), daemon=True)
                         for s, out in ((self.proc.stdout, self.lines), (self.proc.stderr, self.err))]
        for t in self._readers: t.start()

    def _read(self, stream, out):
        for line in stream: out.append((time.monotonic(), line.rstrip("\n")))

    def watch(self, until=lambda run: False, timeout=120):
        "Note the children until the run exits (or `until(run)` is true); kill the whole session after `timeout` s."
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            try: self.children |= {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
            except psutil.NoSuchProcess: pass
            if until(self): break
            if time.monotonic() > deadline:
                for p in run_processes(self.mark): p.kill()
                pytest.fail(f"still running after {timeout} s: {self.cmd}\n" + self.stdout[-2000:])
            time.sleep(0.05)
        if self.proc.poll() is not None:
            self.exited = time.monotonic()
            for t in self._readers: t.join(5)
        return self

    @property
    def stdout(self): return "\n".join(l for _, l in self.lines)
    @property
    def stderr(self): return "\n".join(l for _, l in self.err)

    def seconds_after_last_epoch(self):
        epochs = [t for t, l in self.lines if l.startswith("epoch ")]
        return self.exited - epochs[-1] if epochs else None


@pytest.fixture(scope="module")
def combo_runs(request, prepared, tmp_path_factory):
    "The selected COMBOS trained two at a time (each run is mostly a single-threaded start-up), in the background."
    selected = [item.callspec.params["combo"] for item in request.session.items
                if "combo_runs" in getattr(item, "fixturenames", ()) and hasattr(item, "callspec")]
    data = prepared("wine")
    pool = ThreadPoolExecutor(max_workers=2)
    def one(combo):
        workers, persistent, pin, prefetch = combo
        cwd = tmp_path_factory.mktemp(f"workers-{workers}-{persistent}-{pin}-{prefetch}")
        run = Run(cwd, data, "model.architecture=mlp", "training.epochs=2", f"data.num_workers={workers}",
                  f"data.persistent_workers={str(persistent).lower()}", f"data.pin_memory={str(pin).lower()}",
                  f"data.prefetch_factor={prefetch}").watch()
        return run, left_behind(run.mark)
    futures = {c: pool.submit(one, c) for c in dict.fromkeys(selected)}  # in test order, each once
    yield lambda combo: futures[combo].result()
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "workers{}-persistent{}-pin{}-prefetch{}".format(*c))
def test_training_exits_and_leaves_no_process(combo_runs, combo):
    run, left = combo_runs(combo)
    assert run.proc.returncode == 0, run.stderr[-3000:]
    assert "completed" in run.stdout and "epoch 2/2" in run.stdout, run.stdout
    assert run.seconds_after_last_epoch() < EXIT_SOON_S, run.seconds_after_last_epoch()
    assert left == [], left
    workers = combo[0]
    assert len(run.children) >= workers, (len(run.children), workers)  # the workers did exist


@pytest.mark.parametrize("combo", COMBOS[:1], ids=["workers0"])
def test_data_dir_alone_locates_the_splits(combo_runs, combo, prepared):
    # these runs set data.data_dir only (config/test.yaml names no split dir): train, val and test come from under it
    run, _ = combo_runs(combo)
    data = prepared("wine")
    run_dir = next((run.cwd / "runs" / "test").iterdir())
    version = json.loads((data / "metadata" / "statistics.json").read_text())["dataset_version"]
    assert json.loads((run_dir / "run.json").read_text())["data_version"] == version
    assert "test_loss" in run.stdout, run.stdout
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    assert (saved["data_dir"], saved["train_dir"], saved["test_dir"]) == (str(data), None, None)


def test_a_split_dir_given_wins_over_data_dir(tmp_path, prepared):
    data = prepared("wine")
    r = run_tp("train", "--config", CONFIG, f"data.data_dir={data}", f"data.val_dir={tmp_path}/nowhere", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0] == (f"error: directory not found: {tmp_path}/nowhere (data.val_dir): "
                        "run `tp prepare` first, or point the key at an existing directory"), lines
    assert not (tmp_path / "runs").exists()
    r = run_tp("config", "check", CONFIG, f"data.data_dir={tmp_path}/empty", cwd=tmp_path)
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["data"]["train_dir"] is None
    assert f"warning: directory not found: {tmp_path}/empty/processed/train, the train split under data.data_dir" in r.stderr
    assert "test split" not in r.stderr  # a test split under data_dir is optional


def training_begun(run):
    return any(f.stat().st_size for f in (run.cwd / "runs").glob("*/*/metrics.jsonl"))


# SIGTERM from a job manager or scheduler, to the process or its group (Slurm, `kill -- -PGID`); SIGINT as Ctrl-C sends it
@pytest.mark.parametrize("sig,group", [("SIGTERM", False), ("SIGTERM", True), ("SIGINT", True)],
                         ids=["SIGTERM-main", "SIGTERM-group", "SIGINT-group"])
def test_one_stop_signal_checkpoints_and_takes_the_workers(tmp_path, prepared, sig, group):
    # persistent workers, mid-run: 30 ms per batch makes the 20 epochs last ~3 s after the first metrics line
    run = Run(tmp_path, prepared("wine"), "model.architecture=mlp", "training.epochs=20", "data.num_workers=2",
              "data.persistent_workers=true", "logging.log_frequency=1", env={"TP_FAULT": "train:sleep=0.03"})
    run.watch(until=training_begun, timeout=90)
    assert run.proc.poll() is None, "the run ended before the signal: " + run.stdout
    assert len(run.children) >= 2, run.children  # the workers are running
    signum = getattr(signal, sig)
    (os.killpg if group else os.kill)(run.proc.pid, signum)
    run.watch(timeout=60)
    assert run.proc.returncode == 130, run.stderr[-3000:]
    assert f"interrupted by {sig}" in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]
    run_dir = next((tmp_path / "runs" / "test").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    last = json.loads((run_dir / "checkpoints" / "index.json").read_text())["last"]
    assert json.loads((run_dir / "checkpoints" / last / "trainer.json").read_text())["reason"] == "preempted"
    assert left_behind(run.mark) == []
