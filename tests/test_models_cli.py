"""`tp models` end to end: concurrent registrations get distinct versions; promote, export and load
round trip predicts what the evaluation of the same weights predicts; bad references are one line."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, TP, data_overrides, run_tp


@pytest.fixture
def run(short_run): return short_run


def test_concurrent_registrations_get_distinct_versions(run):
    cwd, run_dir = run
    procs = [subprocess.Popen([str(TP), "models", "register", str(run_dir), "--name", "race"], cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    versions = sorted(int(o.split(" v")[1].split(":")[0]) for o, _ in outs)
    assert versions == [1, 2, 3, 4]
    listed = run_tp("models", "list", "race", cwd=cwd).stdout.splitlines()
    assert len(listed) == 5 and all(f"race  {v}" in "\n".join(listed) for v in range(1, 5))
    assert sorted(p.name for p in (cwd / "models" / "race").iterdir()) == ["v1", "v2", "v3", "v4"]


def test_promote_export_load_round_trip(run, prepared, tmp_path):
    cwd, run_dir = run
    r = run_tp("models", "register", run_dir, "--name", "digits", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert run_tp("models", "promote", "digits", "1", "--alias", "production", cwd=cwd).stdout.strip() == "digits@production -> v1"
    out = tmp_path / "pkg"
    r = run_tp("models", "export", "digits@production", "--out", out, cwd=cwd)
    assert r.returncode == 0 and sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "load_model.py", "model.json", "model.safetensors"]
    files = sorted(str(p) for p in (prepared("digits") / "processed" / "test").rglob("*.png"))
    code = ("import json, sys\nfrom training_pipeline.track.registry import load_model\nfrom training_pipeline.track.evaluation import evaluate\n"
            f"m = load_model('digits@production', {str(cwd / 'models')!r})\n"
            f"ev = evaluate({str(run_dir / 'checkpoints' / 'best_model.safetensors')!r}, {str(prepared('digits'))!r})\n"
            f"files = {files!r}\n"
            "print(json.dumps([m.predict(files), [ev.classes[i] for i in ev.preds]]))")
    loaded, evaluated = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert loaded == evaluated
    standalone = ("import sys, json; sys.modules['training_pipeline'] = None\n"
                  f"sys.path.insert(0, {str(out)!r}); from load_model import load, predict\n"
                  f"model, spec = load(); print(json.dumps(predict(model, spec, {files!r})))")
    assert json.loads(subprocess.run([sys.executable, "-c", standalone], capture_output=True, text=True, check=True).stdout) == loaded


def test_bad_references_are_one_line(run, tmp_path):
    cwd, run_dir = run
    for argv, text in [(["models", "export", "nope:3", "--out", tmp_path / "x"], "no model 'nope:3'"),
                       (["models", "promote", "nope", "1", "--alias", "staging"], "no version 1 of model 'nope'"),
                       (["models", "register", tmp_path / "missing"], "not a run directory")]:
        r = run_tp(*argv, cwd=cwd)
        assert r.returncode == 2 and "Traceback" not in r.stderr and text in r.stderr, r.stderr
    (tmp_path / "models").mkdir(); (tmp_path / "models" / "registry.db").write_bytes(b"not a database at all" * 100)
    r = run_tp("models", "list", cwd=tmp_path)
    assert r.returncode == 2 and "model registry unreadable" in r.stderr
