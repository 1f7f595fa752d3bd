"""Loader workers finish (issue 16): every combination of num_workers, persistent_workers, pin_memory and prefetch_factor
trains, exits 0 within seconds of its last epoch and leaves no process behind; one SIGTERM or SIGINT, to the process
or to its whole group, saves a preemption checkpoint, exits 130 and takes the workers with it.

A process belongs to a run when its environment carries the run's mark: DataLoader workers inherit it, so a worker
left behind is found even after its parent is gone (and it has been re-parented to init)."""
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

from conftest import REPO, TP

CONFIG = REPO / "config" / "test.yaml"
MARK = "TP_TEST_LOADER_RUN"
EXIT_SOON_S = 20  # from the last epoch line to exit: test evaluation and the summary take ~3 s here under load

# (num_workers, persistent_workers, pin_memory, prefetch_factor). Without CUDA the loader does not pin memory, and
# without workers the other keys have no effect, so these ten are every case that runs differently here; pin_memory
# alternates so that each of its values meets each value of the other keys.
COMBOS = [(0, False, False, 2), (0, True, True, 2),
          (2, False, False, 1), (2, False, True, 2), (2, True, True, 1),
          (2, True, False, 2),   # the reproduction: hung forever after "run ... completed"
          (8, False, True, 1), (8, False, False, 2), (8, True, False, 1),
          (8, True, True, 2)]    # the seed's config/train_config.yaml values, on this 2-core machine


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
        while self.proc.poll() is None and not until(self):
            try: self.children |= {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
            except psutil.NoSuchProcess: pass
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
def combo_runs(prepared, tmp_path_factory):
    "All COMBOS trained two at a time (each run is mostly a single-threaded start-up), in the background."
    data = prepared("wine")
    pool = ThreadPoolExecutor(max_workers=2)
    def one(combo):
        workers, persistent, pin, prefetch = combo
        cwd = tmp_path_factory.mktemp(f"workers-{workers}-{persistent}-{pin}-{prefetch}")
        run = Run(cwd, data, "model.architecture=mlp", "training.epochs=2", f"data.num_workers={workers}",
                  f"data.persistent_workers={str(persistent).lower()}", f"data.pin_memory={str(pin).lower()}",
                  f"data.prefetch_factor={prefetch}").watch()
        return run, left_behind(run.mark)
    futures = {c: pool.submit(one, c) for c in COMBOS}
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


def training_begun(run):
    return any(f.stat().st_size for f in (run.cwd / "runs").glob("*/*/metrics.jsonl"))


@pytest.mark.parametrize("sig,group", [("SIGTERM", False), ("SIGTERM", True), ("SIGINT", False), ("SIGINT", True)],
                         ids=["SIGTERM-main", "SIGTERM-group", "SIGINT-main", "SIGINT-group"])
def test_one_stop_signal_checkpoints_and_takes_the_workers(tmp_path, prepared, sig, group):
    # persistent workers, mid-run: 30 ms per batch makes the 20 epochs last ~3 s after the first metrics line
    run = Run(tmp_path, prepared("wine"), "model.architecture=mlp", "training.epochs=20", "data.num_workers=2",
              "data.persistent_workers=true", "logging.log_frequency=1", env={"TP_FAULT": "train:sleep=0.03"})
    run.watch(until=training_begun, timeout=90)
    assert run.proc.poll() is None, "the run ended before the signal: " + run.stdout
    workers = set(run.children)
    assert len(workers) >= 2, workers
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
