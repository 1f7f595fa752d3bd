"""`tp prepare --shards` and `tp validate --shards` end to end: LitData shards of the digits images, and a missing,
truncated or stale shard as one line, exit 2, naming the file."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import run_tp


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    "(data dir, prepare's stdout) of digits prepared with --shards."
    d = tmp_path_factory.mktemp("sharded") / "data"
    r = run_tp("prepare", "--dataset", "digits", "--data-dir", d, "--shards")
    assert r.returncode == 0, r.stderr
    return d, r.stdout


@pytest.fixture
def copy(sharded, tmp_path):
    "A copy of the sharded data dir to damage."
    shutil.copytree(sharded[0], tmp_path / "data")
    return tmp_path / "data"


def one_error_line(r):
    "The single `error: ...` line of a failed command (no traceback)."
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def first_chunk(data_dir, split="train"):
    manifest = json.loads((data_dir / "shards" / split / "MANIFEST.json").read_text())
    return data_dir / "shards" / split / next(f["name"] for f in manifest["files"] if "samples" in f)


def test_prepare_writes_verified_shards_of_every_split(sharded):
    d, out = sharded
    line = next(l for l in out.splitlines() if l.strip().startswith("shards"))
    assert str(d / "shards") in line and "files" in line and "MiB" in line, line
    version = json.loads((d / "metadata" / "statistics.json").read_text())["dataset_version"]
    counts = {}
    for split in ("train", "val", "test"):
        manifest = json.loads((d / "shards" / split / "MANIFEST.json").read_text())
        assert manifest["dataset_version"] == version and manifest["library"] == "litdata"
        assert manifest["data_format"] == ["no_header_numpy:4", "int", "int"]  # raw bytes and ints: nothing LitData would unpickle
        counts[split] = manifest["samples"]
        assert counts[split] == sum(1 for _ in (d / "processed" / split).rglob("*.png"))
    r = run_tp("validate", "--data-dir", d, "--shards")
    assert r.returncode == 0, r.stderr
    assert [l.split(":")[0] for l in r.stdout.splitlines()] == ["shards train", "shards val", "shards test"]
    assert f"shards train: {counts['train']} samples" in r.stdout


def test_missing_shard_is_one_line_exit_2(copy):
    chunk = first_chunk(copy, "val")
    chunk.unlink()
    line = one_error_line(run_tp("validate", "--data-dir", copy, "--shards"))
    assert "shard file missing" in line and str(chunk) in line and "tp prepare --shards" in line, line


def test_truncated_and_changed_shards_name_the_file(copy):
    chunk = first_chunk(copy)
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-10])
    line = one_error_line(run_tp("validate", "--data-dir", copy, "--shards"))
    assert "shard file damaged" in line and str(chunk) in line, line
    changed = bytearray(data); changed[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(changed))  # same size: only the sha256 tells
    line = one_error_line(run_tp("validate", "--data-dir", copy, "--shards"))
    assert "sha256" in line and str(chunk) in line, line


def test_shards_of_an_older_preparation_are_refused(copy):
    r = run_tp("prepare", "--dataset", "digits", "--data-dir", copy, "--seed", "7")  # new split: new dataset version
    assert r.returncode == 0, r.stderr
    line = one_error_line(run_tp("validate", "--data-dir", copy, "--shards"))
    assert "shards are of dataset version" in line and str(copy / "shards") in line, line


def test_shards_of_a_table_are_refused_before_anything_is_written(tmp_path):
    line = one_error_line(run_tp("prepare", "--dataset", "wine", "--data-dir", tmp_path / "data", "--shards"))
    assert "sharded tables are not built yet" in line, line
    assert not (tmp_path / "data").exists()


def test_without_litdata_prepare_shards_is_one_line_naming_the_extra(tmp_path):
    "LitData is an optional extra: without it (made unimportable here), --shards says how to install it, before any work."
    code = ("import sys; sys.modules['litdata'] = None\n"  # `import litdata` now raises ImportError, as when it is not installed
            "from training_pipeline.cli.commands import main\n"
            f"sys.exit(main(['prepare', '--dataset', 'digits', '--data-dir', {str(tmp_path / 'data')!r}, '--shards']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    line = one_error_line(r)
    assert "needs the optional package litdata" in line and "pip install 'training_pipeline[shards]'" in line, line
    assert not (tmp_path / "data").exists()


def final_state(cwd):
    "(model tensors of the last checkpoint, metric rows without timings) of the one run under cwd."
    from safetensors.torch import load_file
    run = next((cwd / "runs" / "test").iterdir())
    step = max((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    timing = {"time", "samples_per_s", "epoch_time_s", "data_wait_s", "data_wait_share"}
    rows = [{k: v for k, v in json.loads(l).items() if k not in timing and not k.startswith("time_")}
            for l in (run / "metrics.jsonl").read_text().splitlines()]
    return load_file(step / "model.safetensors"), rows


def test_training_streams_the_shards_alone_as_it_streams_the_folders(copy, tmp_path):
    "Shards are enough without their class folders: a streamed run from them (2 workers) ends where one from the folders does."
    import torch
    from conftest import REPO
    common = ["train", "--config", REPO / "config" / "test.yaml", f"data.data_dir={copy}", "data.in_memory=false", "data.cache=false"]
    (tmp_path / "folders").mkdir()
    r = run_tp(*common, "data.num_workers=0", cwd=tmp_path / "folders")
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.rmtree(copy / "processed" / "train"); shutil.rmtree(copy / "processed" / "val"); shutil.rmtree(copy / "processed" / "test")
    (tmp_path / "shards").mkdir()
    r = run_tp(*common, "data.shards=true", "data.num_workers=2", "data.persistent_workers=true", cwd=tmp_path / "shards")
    assert r.returncode == 0, r.stderr[-2000:]
    assert any(l.startswith("data: streaming") for l in r.stdout.splitlines()), r.stdout
    (a, rows_a), (b, rows_b) = final_state(tmp_path / "folders"), final_state(tmp_path / "shards")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows_a == rows_b


def test_a_shard_damaged_before_a_streamed_run_is_one_line_exit_2(copy, tmp_path):
    from conftest import REPO
    chunk = first_chunk(copy)
    raw = bytearray(chunk.read_bytes()); raw[len(raw) // 2] ^= 0xFF; chunk.write_bytes(bytes(raw))  # same size: found when read
    r = run_tp("train", "--config", REPO / "config" / "test.yaml", f"data.data_dir={copy}", "data.in_memory=false", "data.shards=true",
               "data.num_workers=2", cwd=tmp_path)
    line = one_error_line(r)
    assert str(chunk) in line and "tp prepare" in line, line
