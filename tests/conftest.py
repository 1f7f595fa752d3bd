"""Shared helpers for the system tests: they run the real `tp` console script in a subprocess."""
import hashlib
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from training_pipeline.core import free_port  # noqa: F401 (the tests import it from here)

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "corpus"
TP = Path(sys.executable).with_name("tp")
CHECK_RUN_DIR = REPO.parent / "shared" / "tools" / "check_run_dir.py"


def run_tp(*args, cwd=None, env=None, timeout=600):
    "Run the installed `tp` script; return the CompletedProcess (text)."
    full_env = {k: v for k, v in os.environ.items() if k != "TP_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([str(TP), *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def wait_for(pred, timeout=120, what="condition"):
    "Poll `pred` until it is true; fail the test after `timeout` seconds."
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred(): return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def tree_snapshot(root):
    "Relative path -> sha256 of every file below root (directories as None)."
    root, snap = Path(root), {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return snap


@pytest.fixture
def tp():
    assert TP.exists(), f"{TP} missing: install the package (pip install -e .)"
    return run_tp


def check_run_dir(run_dir):
    "Run shared/tools/check_run_dir.py (DESIGN.md's contract checker) on a run directory."
    if not CHECK_RUN_DIR.exists():  # a checkout away from shared/: the caller's other assertions still run
        warnings.warn(f"contract checker not found at {CHECK_RUN_DIR}: run directories not checked against DESIGN.md")
        return
    r = subprocess.run([sys.executable, str(CHECK_RUN_DIR), str(run_dir)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def data_overrides(data_dir):
    "KEY=VALUE overrides pointing a config at a prepared data dir."
    d = Path(data_dir)
    return [f"data.data_dir={d}", f"data.train_dir={d}/processed/train", f"data.val_dir={d}/processed/val",
            f"data.test_dir={d}/processed/test"]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    "Prepare a built-in dataset once per session: prepared('digits') -> data dir."
    cache = {}
    def get(name):
        if name not in cache:
            d = tmp_path_factory.mktemp(f"prepared-{name}") / "data"
            r = run_tp("prepare", "--dataset", name, "--data-dir", d)
            assert r.returncode == 0, r.stderr
            cache[name] = d
        return cache[name]
    return get


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, prepared):
    "(cwd, run dir) of one 2-epoch run of config/test.yaml on digits, shared by the tests that only read it."
    cwd = tmp_path_factory.mktemp("short-run")
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", *data_overrides(prepared("digits")), "training.epochs=2", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd, next((cwd / "runs" / "test").iterdir())

