"""Hostile inputs through the real `tp` command (tests/corpus/inputs/README.md lists them): each is one `error:` line,
its documented exit code, no traceback and no internal error, within 10 s, and nothing written anywhere. And `tp tune`
sent SIGTERM while its trials train ends within 5 s with exit 130, its study left readable."""
import os
import runpy
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CORPUS, TP, REPO, data_overrides, run_tp, tree_snapshot

INPUTS = CORPUS / "inputs"
TINY = INPUTS / "tiny.yaml"
LIMIT_S = 10
SEARCH = "training.learning_rate=loguniform(1e-4,1e-1)"


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    "The large generated inputs (generate.py), written once for the module."
    out = tmp_path_factory.mktemp("hostile-large")
    runpy.run_path(str(INPUTS / "generate.py"))["generate"](out)
    return out


def stamps(folder):
    "What would show a write: every file's size and modification time (cheaper than hashing 40 MB each time)."
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).iterdir()}


def refused(args, cwd, code=2, says=""):
    "Run `tp args` in `cwd`; assert the documented refusal and that nothing was written; return stderr."
    before, corpus = tree_snapshot(cwd), tree_snapshot(INPUTS)
    t0 = time.monotonic()
    r = run_tp(*args, cwd=cwd, timeout=60)
    took = time.monotonic() - t0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert says in lines[0], (says, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert took < LIMIT_S, f"took {took:.1f} s"
    assert tree_snapshot(cwd) == before and tree_snapshot(INPUTS) == corpus  # nothing written, nothing changed
    return lines[0]


TABLES = [("wide_header_only.csv", "1,000,000 columns (at most 10,000)"), ("wide_four_rows.csv", "1,000,000 columns"),
          ("long_line.csv", "line 3 is longer than 16 MiB")]
PARQUET = [("struct_column.parquet", "column 'struct_column' is struct<"),
           ("list_column.parquet", "column 'list_column' is list<"),
           ("map_column.parquet", "column 'map_column' is map<"),
           ("binary_column.parquet", "column 'binary_column' is binary"),
           ("not_parquet.parquet", "not a readable Parquet file"),
           ("huge_footer.parquet", "Parquet footer of 2,147,483,648 bytes")]


@pytest.mark.parametrize("name, says", TABLES, ids=[t[0] for t in TABLES])
def test_a_hostile_csv_is_refused_from_its_header(tmp_path, large, name, says):
    before = stamps(large)
    prepare = ["prepare", "--source", large / name, "--target", "label", "--data-dir", "data"]
    line = refused(prepare, tmp_path, says=says)
    assert name in line  # the line names the file
    refused(["validate", "--source", large / name], tmp_path, says=says)
    assert stamps(large) == before


@pytest.mark.parametrize("name, says", PARQUET, ids=[p[0] for p in PARQUET])
def test_a_hostile_parquet_file_is_refused_naming_the_column(tmp_path, name, says):
    refused(["prepare", "--source", INPUTS / name, "--target", "label", "--data-dir", "data"], tmp_path, says=says)


def test_lr_find_apply_to_a_directory_or_a_system_path_is_refused_before_any_work(tmp_path):
    lr_find = ["lr-find", "--config", TINY]
    refused([*lr_find, "--apply", "/etc"], tmp_path, says="/etc is a directory")
    refused([*lr_find, "--apply", "/etc/tp-hostile.yaml"], tmp_path, says="is in a system directory (/etc)")
    assert not Path("/etc/tp-hostile.yaml").exists()
    refused([*lr_find, "--apply", tmp_path], tmp_path, says="is a directory")
    refused([*lr_find, "--out", "/usr/lr.html"], tmp_path, says="system directory (/usr)")


@pytest.mark.parametrize("args, says", [
    (["lr-find", "--config", TINY, "--steps", "1000000"], "1000000 is out of range: give 1 to 10,000"),
    (["lr-find", "--config", TINY, "--end-lr", "inf"], "--end-lr: 'inf' is not a finite number"),
    (["lr-find", "--config", TINY, "--end-lr", "nan"], "--end-lr: 'nan' is not a finite number"),
    (["lr-find", "--config", TINY, "--start-lr=-inf"], "--start-lr: '-inf' is not a finite number"),
    (["tune", "--config", TINY, "--param", SEARCH, "--trials", "1000000000000"], "out of range: give 1 to 10,000"),
    (["tune", "--config", TINY, "--param", "model.dropout=choice(0.1,!!python/object/apply:os.system [touch pwned])"],
     "the YAML tag !!python/object/apply:os.system"),
    (["tune", "--config", TINY, "--param", "model.dropout=choice(0.1,!custom 0.2)"], "the YAML tag !custom"),
    (["tune", "--config", TINY, "--param", "model.dropout=choice(0.1,{a: 1})"], "is a dict, not a single value"),
    (["tune", "--config", TINY, "--param", "model.dropout=uniform(0,inf)"], "'inf' is not a finite number"),
    (["tune", "--config", TINY, "--param", "training.batch_size=int(1,100000000000000000000)"], "within int64"),
    (["tune", "--config", TINY, "--param", "training.batch_size=int(1,100000000000)", "--sampler", "grid"],
     "the grid has 100,000,000,000 points"),
    (["tune", "--config", TINY, "--param", "training.batch_size=choice(" + ",".join(map(str, range(1, 301))) + ")"],
     "choice has 300 values"),
    (["jobs", "submit", "--config", TINY, "--priority", str(2**70)], "out of range"),
    (["ui", "--port", "70000"], "70000 is out of range: give 0 to 65,535"),
], ids=["lr-find-steps", "end-lr-inf", "end-lr-nan", "start-lr-minus-inf", "tune-trials", "choice-python-tag",
        "choice-custom-tag", "choice-mapping", "uniform-inf", "int-past-int64", "grid-too-large", "too-many-choices",
        "priority-past-int64", "ui-port"])
def test_a_hostile_option_is_one_line_exit_2(tmp_path, args, says):
    refused(args, tmp_path, says=says)
    assert not (tmp_path / "pwned").exists()


def float_options():
    "(subcommand words, option) of every float option of every subcommand, found from the parser itself."
    from training_pipeline.cli.parser import build_parser
    found = []
    def walk(parser, words):
        for action in parser._actions:
            if action.type is float: found.append((words, action.option_strings[-1]))
            if action.choices and hasattr(action, "_name_parser_map"):
                for name, sub in action._name_parser_map.items(): walk(sub, [*words, name])
    walk(build_parser(), [])
    return found


FLOATS = float_options()


def test_the_parser_has_float_options():
    assert len(FLOATS) >= 5 and (["lr-find"], "--end-lr") in FLOATS, FLOATS


@pytest.mark.parametrize("words, option", FLOATS, ids=[f"{' '.join(w)} {o}" for w, o in FLOATS])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_every_float_option_refuses_a_non_finite_value(tmp_path, words, option, value):
    refused([*words, f"{option}={value}"], tmp_path, says=f"argument {option}: '{value}' is not a finite number")


def test_tp_tune_stops_within_5_s_of_sigterm_and_leaves_its_study_readable(tmp_path, prepared):
    args = ["tune", "--config", TINY, "--param", SEARCH, "--trials", "10000", "--parallel", "2",
            *data_overrides(prepared("digits")), "training.epochs=100", "logging.tensorboard.enabled=false"]
    tuner = subprocess.Popen([str(TP), *map(str, args)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        started = [tuner.stdout.readline() for _ in range(2)]
        assert all(" started: " in line for line in started), started
        time.sleep(3)  # the trials are importing, loading data or training: wherever they are, the stop must be quick
        t0 = time.monotonic()
        tuner.send_signal(signal.SIGTERM)
        out, err = tuner.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if tuner.poll() is None: os.killpg(tuner.pid, signal.SIGKILL)
    assert tuner.returncode == 130, (tuner.returncode, err)
    assert took < 5, f"stopped in {took:.1f} s"
    assert "interrupted" in err and "Traceback" not in err, err
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError): os.killpg(tuner.pid, 0)  # no trial left behind
    r = run_tp("tune", "--config", TINY, "--status", *data_overrides(prepared("digits")), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "study hostile: 2 trials (2 running)" in r.stdout, r.stdout  # the next tp tune continues them
