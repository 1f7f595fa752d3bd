"""Shared helpers for the system tests: they run the real `tp` console script in a subprocess."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "corpus"
TP = Path(sys.executable).with_name("tp")


def run_tp(*args, cwd=None, env=None, timeout=600):
    "Run the installed `tp` script; return the CompletedProcess (text)."
    full_env = {k: v for k, v in os.environ.items() if k != "TP_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([str(TP), *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


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
