"""Hostile checkpoints and shards (issue 31), end to end with the real `tp`. Each case of
tests/corpus/checkpoints/README.md is crafted from one real small run, its manifest rewritten so that every file has its
true size and sha256, as an attacker would; then `tp train --resume CK`, `tp train` (auto), `tp models register`,
`tp models export` and `tp validate --shards` run against it. Every one must refuse: exit 2, one `error:` line, no
internal error or traceback, within 10 s of CPU, nothing written, every existing file unchanged, and no file outside the
checkpoint read (a canary's access time, set to the past, stays put).

The commands of all cases run from one pool (the machine has 2 cores; a command is mostly interpreter start-up), so the
whole file takes about a minute; each case is then its own test, asserting on what its commands did."""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import REPO, TP, data_overrides, run_tp, tree_snapshot

TRAIN = ["train", "--config", REPO / "config" / "test.yaml"]
SETTINGS = ["training.epochs=1", "checkpointing.keep_last_n=2", "checkpointing.save_every_n_steps=20"]  # steps 20, 40
LIMIT_S = 10  # CPU seconds of one refusal (about 2 here: start-up, imports)
HANG_S = 60   # wall seconds: other jobs share the 2 cores, and a 3 s command was measured at 23 s under their load
PAST = time.time() - 5 * 86400  # an access time before the modification time: relatime updates it on the next read


def sha256(path): return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reseal(ck, extra=()):
    "Rewrite MANIFEST.json listing every file of `ck` (and `extra`: (name, file) pairs) with its true size and sha256."
    manifest = json.loads((ck / "MANIFEST.json").read_text())
    names = sorted(p.name for p in ck.iterdir() if p.name != "MANIFEST.json")
    manifest["files"] = [{"path": n, "sha256": sha256(ck / n), "size": (ck / n).stat().st_size} for n in names] + \
                        [{"path": n, "sha256": sha256(f), "size": Path(f).stat().st_size} for n, f in extra]
    (ck / "MANIFEST.json").write_text(json.dumps(manifest))


def edit_manifest(ck, change):
    (ck / "MANIFEST.json").write_text(json.dumps(change(json.loads((ck / "MANIFEST.json").read_text()))))


def split_safetensors(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_tensors(path, change):
    from safetensors.torch import load_file
    from training_pipeline.core import safetensors_bytes
    path.write_bytes(safetensors_bytes(change(load_file(path))))


def outside_copy(ck, name, canary):
    "Replace `ck/name` by a symbolic link to the canary, which holds the file's bytes: the manifest still matches."
    canary.write_bytes((ck / name).read_bytes()); (ck / name).unlink(); (ck / name).symlink_to(canary)


def with_offsets(ck):
    "The first tensor's data_offsets ending at 10^12, the header rewritten with its true length."
    header, data = split_safetensors(ck / "model.safetensors")
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"] = [header[first]["data_offsets"][0], 10**12]
    raw = json.dumps(header).encode()
    (ck / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    reseal(ck)


def with_length(ck, length):
    "The header length field replaced by length(file bytes)."
    raw = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(struct.pack("<Q", length(raw)) + raw[8:])
    reseal(ck)


def with_weights(ck, change, name="model.safetensors"):
    write_tensors(ck / name, change)
    reseal(ck)


def with_text(ck, name, text):
    (ck / name).write_text(text)
    reseal(ck)


def without_size(manifest):
    entry = lambda f: {k: v for k, v in f.items() if k != "size"} if f["path"] == "model.safetensors" else f
    return {**manifest, "files": [entry(f) for f in manifest["files"]]}


def step_forty(ck):
    return json.dumps({**json.loads((ck / "trainer.json").read_text()), "step": "forty"})


def int8(tensors): return {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in tensors.items()}


def exp_avg_int8(tensors): return {**tensors, ".state.0.exp_avg": tensors[".state.0.exp_avg"].to(torch.int8)}


OUT = "is not a plain file name inside its directory"
# name: (craft(ck, canary), the text every refusal holds, whether the weights are crafted: `tp models export` too)
CHECKPOINT_CASES = {
    "manifest_parent_entry": (lambda ck, c: reseal(ck, [("../../../../../canary.txt", c)]), OUT, False),
    "manifest_absolute_entry": (lambda ck, c: reseal(ck, [(str(c), c)]), OUT, False),
    "symlinked_weights": (lambda ck, c: outside_copy(ck, "model.safetensors", c),
                          "model.safetensors is a symbolic link", True),
    "manifest_not_object": (lambda ck, c: edit_manifest(ck, lambda m: m["files"]),
                            "MANIFEST.json is a list, not an object", False),
    "entry_without_size": (lambda ck, c: edit_manifest(ck, without_size),
                           "MANIFEST.json entry model.safetensors has no 'size'", False),
    "header_2_63": (lambda ck, c: with_length(ck, lambda raw: 2**63), f"declares a {2**63}-byte header", True),
    "header_past_end": (lambda ck, c: with_length(ck, len), "-byte header, but the file has", True),
    "offsets_past_end": (lambda ck, c: with_offsets(ck), "outside the file's", True),
    "wrong_shape": (lambda ck, c: with_weights(ck, lambda t: {**t, "0.0.weight": t["0.0.weight"].reshape(16, 2, 3, 3)}),
                    "1 wrongly shaped", True),
    "extra_key": (lambda ck, c: with_weights(ck, lambda t: {**t, "extra.weight": torch.zeros(3)}),
                  "1 unexpected", True),
    "missing_key": (lambda ck, c: with_weights(ck, lambda t: {k: v for k, v in t.items() if k != max(t)}),
                    "1 missing", True),
    "int8_weights": (lambda ck, c: with_weights(ck, int8), "wrongly typed tensor(s)", True),
    "optimizer_int8": (lambda ck, c: with_weights(ck, exp_avg_int8, "optimizer.safetensors"),
                       "the optimizer's exp_avg of parameter 0", False),
    "garbage_json_state": (lambda ck, c: with_text(ck, "optimizer.json", "{not json"),
                           "optimizer.json is not valid JSON", False),
    "deep_json_state": (lambda ck, c: with_text(ck, "rng.json", "[" * 100_000 + "]" * 100_000),
                        "rng.json nests more than 100 levels deep", False),
    "trainer_json_schema": (lambda ck, c: with_text(ck, "trainer.json", step_forty(ck)),
                            "'step' is a string, not a count", False),
}


def shard_manifest_entry(data, name, canary):
    path = data / "shards" / "train" / "MANIFEST.json"
    manifest = json.loads(path.read_text())
    manifest["files"].append({"name": name, "samples": 0, "size": canary.stat().st_size, "sha256": sha256(canary)})
    path.write_text(json.dumps(manifest))


def train_is_val(data, canary):
    shutil.rmtree(data / "shards" / "train"); shutil.copytree(data / "shards" / "val", data / "shards" / "train")


def symlinked_chunk(data, canary):
    folder = data / "shards" / "train"
    chunk = next(f["name"] for f in json.loads((folder / "MANIFEST.json").read_text())["files"] if "samples" in f)
    outside_copy(folder, chunk, canary)


# name: (craft(data dir, canary), the text every refusal holds, whether a streamed training runs too (the same check as
# `tp validate --shards`, through the loaders))
SHARD_CASES = {
    "shards_parent_entry": (lambda d, c: shard_manifest_entry(d, "../../../canary.txt", c), OUT, False),
    "shards_absolute_entry": (lambda d, c: shard_manifest_entry(d, str(c), c), OUT, False),
    "shards_symlinked_chunk": (symlinked_chunk, "is a symbolic link, which is never followed", True),
    "shards_train_is_val": (train_is_val, "the shards in train/ are split val's", True),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    "(root, data dir, a dir with runs/ (1 epoch, checkpoints at steps 20 and 40) and models/ (its model: digits v1))."
    root = tmp_path_factory.mktemp("hostile")
    data, made = root / "data", root / "made"
    r = run_tp("prepare", "--dataset", "digits", "--data-dir", data, "--shards")
    assert r.returncode == 0, r.stderr
    made.mkdir()
    r = run_tp(*TRAIN, *data_overrides(data), *SETTINGS, cwd=made)
    assert r.returncode == 0, r.stderr
    run = next((made / "runs" / "test").iterdir())
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000020", "step-00000040"]
    r = run_tp("models", "register", run, "--name", "digits", cwd=made)
    assert r.returncode == 0, r.stderr
    return root, data, made


def interrupted(run):
    "Mark the run interrupted: `tp train` (auto) continues it."
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "status": "interrupted"}))


def checkpoint_case(root, data, made, name):
    "A copy of the made run with its newest checkpoint crafted; returns (case dir, canary, {command: argv}, cwd)."
    craft, _, weights = CHECKPOINT_CASES[name]
    case = root / name
    shutil.copytree(made, case, symlinks=True)
    canary = case / "canary.txt"; canary.write_text("nothing outside the checkpoint is read\n")
    run = next((case / "runs" / "test").iterdir())
    ck = run / "checkpoints" / "step-00000040"
    craft(ck, canary)
    shutil.rmtree(run / "checkpoints" / "step-00000020")  # auto: the crafted checkpoint is the run's only one
    interrupted(run)
    commands = {"train --resume PATH": [*TRAIN, *data_overrides(data), *SETTINGS, "--resume", ck],
                "train (auto)": [*TRAIN, *data_overrides(data), *SETTINGS],
                "models register": ["models", "register", run, "--checkpoint", ck, "--name", "crafted"]}
    if weights:  # the registered version's weights replaced by the crafted ones, model.json's sha256 made to match
        version = case / "models" / "digits" / "v1"
        (version / "model.safetensors").unlink()
        if (ck / "model.safetensors").is_symlink(): (version / "model.safetensors").symlink_to(canary)
        else: shutil.copyfile(ck / "model.safetensors", version / "model.safetensors")
        spec = json.loads((version / "model.json").read_text())
        (version / "model.json").write_text(json.dumps({**spec, "sha256": sha256(version / "model.safetensors")}))
        commands["models export"] = ["models", "export", "digits:1", "--out", case / "export"]
    return case, canary, commands


# refused by the model's check, after verification passed (a checkpoint that fails verification is skipped the same
# way by `plan_resume`: tests/test_resume.py, a truncated newest checkpoint)
FALLBACK_CASES = ("int8_weights",)


def fallback_case(root, data, made, name):
    "A copy of the made run, interrupted, its newest checkpoint crafted and the older one (step-20) left good."
    case = root / f"fallback-{name}"
    shutil.copytree(made, case, symlinks=True)
    canary = case / "canary.txt"; canary.write_text("nothing outside the checkpoint is read\n")
    run = next((case / "runs" / "test").iterdir())
    CHECKPOINT_CASES[name][0](run / "checkpoints" / "step-00000040", canary)
    interrupted(run)
    return case, canary, {"train (auto)": [*TRAIN, *data_overrides(data), *SETTINGS]}


def shard_case(root, data, name):
    craft, _, trains = SHARD_CASES[name]
    case = root / name
    case.mkdir()
    for part in ("metadata", "shards"):  # what reading shards needs (statistics.json: the dataset version), no images
        shutil.copytree(data / part, case / "data" / part, symlinks=True)
    canary = case / "canary.txt"; canary.write_text("nothing outside the shards is read\n")
    craft(case / "data", canary)
    commands = {"validate --shards": ["validate", "--data-dir", case / "data", "--shards"]}
    if trains:
        streamed = [f"data.data_dir={case / 'data'}", "data.shards=true", "data.in_memory=false"]
        commands["train data.shards=true"] = [*TRAIN, *streamed]
    return case, canary, commands


def timed(argv, cwd):
    "(CompletedProcess, CPU seconds of the command): on a shared machine the limit judges the command's own CPU time."
    env = {k: v for k, v in os.environ.items() if k != "TP_DEBUG"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([str(TP), *map(str, argv)], cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        watchdog = threading.Timer(HANG_S, p.kill)  # a hang (on a FIFO, say) burns no CPU: the wall clock catches it
        watchdog.start()
        try: _, status, usage = os.wait4(p.pid, 0)
        finally: watchdog.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0); err.seek(0)
        cpu = usage.ru_utime + usage.ru_stime
        return subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read()), cpu


@pytest.fixture(scope="module")
def outcomes(base):
    "case -> each command's (result, CPU seconds), the tree before and after, what the canary's access time showed."
    root, data, made = base
    cases = {f"fallback-{n}": fallback_case(root, data, made, n) for n in FALLBACK_CASES}  # the longest: first
    cases |= {n: checkpoint_case(root, data, made, n) for n in CHECKPOINT_CASES}
    cases |= {n: shard_case(root, data, n) for n in SHARD_CASES}
    before = {n: tree_snapshot(case) for n, (case, _, _) in cases.items()}  # reads every file: before the times are set
    for case, canary, _ in cases.values(): os.utime(canary, (PAST, canary.stat().st_mtime))
    jobs = [(n, label, argv, case) for n, (case, _, commands) in cases.items() for label, argv in commands.items()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda job: timed(job[2], job[3]), jobs))
    results = {}
    for (n, label, _, _), outcome in zip(jobs, done): results.setdefault(n, {})[label] = outcome
    found = {}
    for n, (case, canary, _) in cases.items():
        untouched = canary.stat().st_atime == PAST  # before anything below reads the canary
        after = tree_snapshot(case)
        canary.read_bytes()  # on purpose: the access time must move, or the canary could not have told
        found[n] = {"results": results[n], "before": before[n], "after": after, "canary_untouched": untouched,
                    "canary_can_tell": canary.stat().st_atime != PAST}
    return found


def assert_refused(label, outcome, text):
    r, seconds = outcome
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (label, r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (label, r.stderr[-2000:])
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, (label, r.stderr)
    assert text in lines[0], (label, text, lines[0])
    assert seconds < LIMIT_S, (label, f"{seconds:.1f} CPU seconds")


def assert_harmless(found):
    assert found["after"] == found["before"], {k for k in set(found["after"]) | set(found["before"])
                                               if found["after"].get(k, "absent") != found["before"].get(k, "absent")}
    assert found["canary_can_tell"], "reading the canary did not move its access time: this file system cannot tell"
    assert found["canary_untouched"], "a file outside the checkpoint was read"


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_a_crafted_checkpoint_is_refused_by_every_command_before_anything_is_written(outcomes, name):
    found = outcomes[name]
    assert set(found["results"]) >= {"train --resume PATH", "train (auto)", "models register"}
    for label, outcome in found["results"].items(): assert_refused(label, outcome, CHECKPOINT_CASES[name][1])
    assert_harmless(found)  # no run dir, no registry entry or export dir, every file as it was, the canary unread


@pytest.mark.parametrize("name", SHARD_CASES)
def test_crafted_shards_are_refused_by_validate_and_training(outcomes, name):
    found = outcomes[name]
    for label, outcome in found["results"].items(): assert_refused(label, outcome, SHARD_CASES[name][1])
    assert_harmless(found)


@pytest.mark.parametrize("name", FALLBACK_CASES)
def test_auto_resume_falls_back_past_a_crafted_newest_checkpoint(outcomes, base, name):
    "With an older good checkpoint, --resume auto continues from it (a warning event), reading nothing outside."
    found = outcomes[f"fallback-{name}"]
    r, _ = found["results"]["train (auto)"]
    assert r.returncode == 0, r.stderr[-2000:]
    assert found["canary_can_tell"] and found["canary_untouched"], "a file outside the checkpoint was read"
    runs = [p for p in found["after"] if p.count("/") == 2 and p.startswith("runs/test/")]
    assert runs == [p for p in found["before"] if p.count("/") == 2 and p.startswith("runs/test/")]  # the same run
    run = base[0] / f"fallback-{name}" / runs[0]
    events = [json.loads(l) for l in (run / "events.jsonl").read_text().splitlines()]
    fallback = [e for e in events if e["event"] == "checkpoint_fallback"]
    assert [e["skipped"] for e in fallback] == ["step-00000040"], fallback
    assert CHECKPOINT_CASES[name][1] in fallback[0]["error"], fallback
    assert [e for e in events if e["event"] == "resumed"][-1]["checkpoint"].endswith("step-00000020")
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
