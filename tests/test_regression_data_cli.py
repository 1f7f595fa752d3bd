"""`tp prepare --task` and `tp validate` for regression tables, free-text columns and non-finite numbers, end to end
on plotly's real tables (tips, gapminder) written to CSV, with the defects injected into real files."""
import json

import numpy as np
import pandas as pd
import plotly.data
import pytest

from conftest import run_tp, tree_snapshot


def one_error_line(r, code):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr
    return r.stderr


def validate(data_dir, *extra):
    r = run_tp("validate", "--data-dir", data_dir, "--json", *extra)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def reviews(n, seed=0):
    "Generated review sentences: a free-text column."
    rng = np.random.default_rng(seed)
    food, verdict = ["soup", "fish", "pasta", "steak"], ["cold", "fine", "great", "late", "salty"]
    return [f"the {rng.choice(food)} was {rng.choice(verdict)} and the waiter was {rng.choice(verdict)} at table {i}" for i in range(n)]


@pytest.fixture(scope="module")
def tips_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("tips") / "tips.csv"
    plotly.data.tips().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def tips_dir(tips_csv):
    d = tips_csv.parent / "data"
    r = run_tp("prepare", "--source", tips_csv, "--target", "tip", "--data-dir", d)
    assert r.returncode == 0, r.stderr
    return d, r.stdout


def test_prepare_tips_is_regression_and_says_why(tips_dir):
    d, out = tips_dir
    assert out.splitlines()[0] == "task: regression (target 'tip' is float with 123 distinct values)"
    assert "prepared tips (tabular): 243 samples, regression target 'tip'" in out
    schema = json.loads((d / "metadata/schema.json").read_text())
    assert (schema["task"], schema["classes"], schema["dtypes"]["tip"]) == ("regression", [], "float64")
    assert "tip" not in schema["allowed_values"] and schema["constraints"]["tip"]["max"] >= 10.0
    stats = json.loads((d / "metadata/statistics.json").read_text())
    assert stats["task"] == "regression"
    for split in stats["splits"].values():
        assert "class_distribution" not in split
        t = split["target"]
        assert t["min"] <= t["quantiles"]["0.25"] <= t["quantiles"]["0.5"] <= t["quantiles"]["0.75"] <= t["max"]
    assert sum(s["target"]["count"] for s in stats["splits"].values()) == 243
    split = json.loads(next((d / "splits").glob("split-*.json")).read_text())
    assert split["strata"] == "10 quantile bins of the target" and split["counts"] == {"train": 171, "val": 36, "test": 36}


def test_validate_clean_regression_data_is_valid(tips_dir):
    d, _ = tips_dir
    code, report = validate(d)
    assert (code, report["valid"], report["issues"], report["warnings"]) == (0, True, [], 0)


def test_regression_split_is_seeded(tips_csv, tips_dir, tmp_path):
    d, _ = tips_dir
    again = tmp_path / "again"
    assert run_tp("prepare", "--source", tips_csv, "--target", "tip", "--data-dir", again).returncode == 0
    version = lambda p: json.loads((p / "metadata/schema.json").read_text())["dataset_version"]
    assert version(again) == version(d)
    other = tmp_path / "other"
    assert run_tp("prepare", "--source", tips_csv, "--target", "tip", "--data-dir", other, "--seed", "7").returncode == 0
    assert version(other) != version(d)


def test_a_task_the_target_cannot_serve_is_refused_and_nothing_is_written(tips_csv, tips_dir):
    d, _ = tips_dir
    before = {k: v for k, v in tree_snapshot(d).items() if not k.startswith((".prepare.lock", "cache"))}
    err = one_error_line(run_tp("prepare", "--source", tips_csv, "--target", "tip", "--task", "classification", "--data-dir", d), 2)
    assert "target 'tip' is float with 123 distinct values" in err and "use --task regression" in err
    err = one_error_line(run_tp("prepare", "--source", tips_csv, "--target", "day", "--task", "regression", "--data-dir", d), 2)
    assert "target 'day' is text with 4 distinct values, not a number" in err
    err = one_error_line(run_tp("prepare", "--dataset", "wine", "--task", "regression", "--data-dir", d), 2)
    assert "the built-in dataset 'wine' is classification" in err
    after = {k: v for k, v in tree_snapshot(d).items() if not k.startswith((".prepare.lock", "cache"))}
    assert after == before


def test_integer_targets(tips_csv, tmp_path):
    r = run_tp("prepare", "--source", tips_csv, "--target", "size", "--data-dir", tmp_path / "size")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == ("task: classification (target 'size' is integer with 6 distinct values; "
                                        "--task regression predicts it as a number)")
    assert json.loads((tmp_path / "size/metadata/schema.json").read_text())["classes"] == ["1", "2", "3", "4", "5", "6"]
    r = run_tp("prepare", "--source", tips_csv, "--target", "size", "--task", "regression", "--data-dir", tmp_path / "size_r")
    assert r.returncode == 0 and r.stdout.startswith("task: regression (target 'size' is integer with 6 distinct values; asked with --task regression)")
    assert validate(tmp_path / "size_r")[0] == 0
    gap = tmp_path / "gapminder.csv"
    plotly.data.gapminder().drop(columns=["lifeExp", "gdpPercap"]).to_csv(gap, index=False)
    r = run_tp("prepare", "--source", gap, "--target", "pop", "--data-dir", tmp_path / "pop")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("task: regression (target 'pop' is integer with ") and first.endswith("; --task classification treats the values as classes)")
    schema = json.loads((tmp_path / "pop/metadata/schema.json").read_text())
    assert (schema["task"], schema["dtypes"]["pop"], schema["text_columns"]) == ("regression", "int64", [])  # country is a category
    code, report = validate(tmp_path / "pop")
    assert code == 0, report["issues"]


def test_free_text_column_is_left_out_and_reported(tips_csv, tmp_path):
    src = tmp_path / "reviews.csv"
    pd.read_csv(tips_csv).assign(review=reviews(244)).to_csv(src, index=False)
    d = tmp_path / "data"
    r = run_tp("prepare", "--source", src, "--target", "tip", "--data-dir", d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1] == "text column(s) left out of the features (free text, not categories): review"
    schema = json.loads((d / "metadata/schema.json").read_text())
    assert schema["text_columns"] == ["review"] and "review" not in schema["allowed_values"]
    features = pd.read_csv(next((d / "features").glob("version-*")) / "train.csv")
    assert not any(c.startswith("review") for c in features.columns) and features.shape[1] == 13  # 12 features + target
    code, report = validate(d)
    assert (code, report["valid"], report["errors"], report["warnings"]) == (0, True, 0, 1)
    assert [(i["check"], i["column"], i["severity"]) for i in report["issues"]] == [("free_text", "review", "warning")]
    table = run_tp("validate", "--data-dir", d)
    assert table.returncode == 0 and "VALID with 1 warning(s)" in table.stdout and "VALID: no issues" not in table.stdout
    assert "column 'review': warning: free text (244 distinct values" in table.stdout
    # a schema from before text columns were marked: training would one-hot encode it, so it is an error
    schema.pop("text_columns")
    (d / "metadata/schema.json").write_text(json.dumps(schema))
    code, report = validate(d)
    assert code == 1 and [(i["check"], i["column"], i["severity"]) for i in report["issues"]] == [("free_text", "review", "error")]


def test_non_finite_numbers(tips_csv, tips_dir, tmp_path):
    src = tmp_path / "inf.csv"
    df = pd.read_csv(tips_csv)
    df.loc[10, "total_bill"] = np.inf
    df.to_csv(src, index=False)
    assert "inf" in src.read_text().splitlines()[11]
    d = tmp_path / "data"
    for target in ("tip", "smoker"):  # regression and classification alike: prepare refuses an inf feature, writes nothing
        err = one_error_line(run_tp("prepare", "--source", src, "--target", target, "--data-dir", d), 1)
        assert "non-finite value(s) (inf) in numeric column(s): 'total_bill' (1); the first in data row 11" in err
        assert not d.exists()
    # an inf that reaches the prepared splits anyway is one issue of `tp validate`, not also a range issue
    import shutil
    shutil.copytree(tips_dir[0], d)
    val = pd.read_csv(d / "processed/val/data.csv")
    val.loc[2, "total_bill"] = -np.inf
    val.to_csv(d / "processed/val/data.csv", index=False)
    code, report = validate(d)
    assert code == 1 and not report["valid"]
    assert [(i["check"], i["split"], i["column"], i["count"]) for i in report["issues"] if i["check"] == "non_finite"] == [("non_finite", "val", "total_bill", 1)]
    assert not any(i["check"] == "range" for i in report["issues"])
    table = run_tp("validate", "--data-dir", d)
    assert table.returncode == 1 and table.stderr == "" and "non_finite" in table.stdout and "column 'total_bill'" in table.stdout
    df = pd.read_csv(tips_csv)
    df.loc[3, "tip"] = np.inf
    df.to_csv(src, index=False)
    err = one_error_line(run_tp("prepare", "--source", src, "--target", "tip", "--data-dir", tmp_path / "t"), 1)
    assert "target column 'tip' has 1 non-finite value(s)" in err and not (tmp_path / "t" / "metadata").exists()


def test_regression_target_is_checked_as_a_number(tips_dir, tmp_path):
    import shutil
    d = tmp_path / "data"
    shutil.copytree(tips_dir[0], d)
    val = pd.read_csv(d / "processed/val/data.csv")
    test = pd.read_csv(d / "processed/test/data.csv")
    val.loc[0, "tip"] = None                    # null target
    val.loc[1, "tip"] = 80.0                    # far beyond the range
    test["tip"] = test["tip"] * 3               # the target drifts
    val.to_csv(d / "processed/val/data.csv", index=False)
    test.to_csv(d / "processed/test/data.csv", index=False)
    code, report = validate(d)
    assert code == 1
    found = {(i["check"], i["split"], i["column"]) for i in report["issues"]}
    for expected in [("nulls", "val", "tip"), ("range", "val", "tip"), ("drift", "test", "tip")]:
        assert expected in found, (expected, found)
    assert not any(i["check"] in ("missing_class", "unknown_category") for i in report["issues"])
