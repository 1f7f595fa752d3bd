"""`tp config check` end to end: good configs resolve, every broken config in the corpus gives one
clear line, exit 2, no traceback, and nothing written."""
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CORPUS, REPO, tree_snapshot

CONFIGS = CORPUS / "configs"
PWNED = Path("/tmp/training_pipeline_pwned_marker")

# corpus file -> what its one error line must say (the problem and its key or line)
BROKEN = {
    "syntax_error.yaml": ["YAML syntax error", "syntax_error.yaml, line 7"],
    "python_tag.yaml": ["unsupported YAML tag !!python/object/apply:os.system", "python_tag.yaml, line 3"],
    "empty.yaml": ["config is empty", "empty.yaml"],
    "binary.yaml": ["not UTF-8 text", "binary.yaml"],
    "latin1.yaml": ["not UTF-8 text", "latin1.yaml"],
    "unknown_key.yaml": ["unknown key 'learning_rat' (did you mean 'learning_rate'?)", "line 7: training.learning_rat"],
    "wrong_type.yaml": ["batch_size must be an integer, got str 'thirty-two'", "line 6: training.batch_size"],
    "negative_lr.yaml": ["learning_rate must be > 0, got -0.1", "line 6: training.learning_rate"],
    "batch_not_divisible.yaml": ["batch size 30 is not divisible by world size 4", "line 6: training.batch_size"],
    "duplicate_key.yaml": ["duplicate key 'training.epochs'", "line 7"],
    "not_a_mapping.yaml": ["config must be a mapping of sections, got a list", "not_a_mapping.yaml"],
    "unknown_architecture.yaml": ["unknown architecture 'resnet51' (did you mean 'resnet50'?)", "line 4: model.architecture"],
    # hostile structure: stopped while composing, before anything walks the value (the unbounded loader spun for minutes)
    "billion_laughs.yaml": ["aliases expand the document past 100,000 values ('billion laughs'?)", "billion_laughs.yaml, line 10"],
    "recursive_alias.yaml": ["recursive alias *tags", "recursive_alias.yaml, line 4"],
    "deep_nesting.yaml": ["values nested more than 100 levels deep", "deep_nesting.yaml, line 4"],
}
HANG_GUARD_S = 60  # not a timing goal (see benchmarks/): a loader without a budget runs far past it


def assert_one_clean_error(result, *expected):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for text in expected: assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_config_is_one_clear_line(tp, tmp_path, name):
    PWNED.unlink(missing_ok=True)
    before_corpus, before_cwd = tree_snapshot(CONFIGS), tree_snapshot(tmp_path)
    result = tp("config", "check", CONFIGS / name, cwd=tmp_path, timeout=HANG_GUARD_S)
    assert_one_clean_error(result, *BROKEN[name])
    assert tree_snapshot(CONFIGS) == before_corpus and tree_snapshot(tmp_path) == before_cwd
    assert not PWNED.exists(), "the !!python tag payload ran"


def test_every_corpus_file_is_covered():
    assert set(BROKEN) | {"many_problems.yaml"} == {p.name for p in CONFIGS.iterdir()}


def test_directory_and_missing_path(tp, tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    assert_one_clean_error(tp("config", "check", "dir.yaml", cwd=tmp_path), "is a directory, not a file", "(dir.yaml)")
    assert_one_clean_error(tp("config", "check", "missing.yaml", cwd=tmp_path), "config file not found", "(missing.yaml)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.yaml"]


def test_all_problems_reported_at_once_in_file_order(tp):
    result = tp("config", "check", CONFIGS / "many_problems.yaml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    keys = ["training.epochs", "training.learning_rate", "training.optimizer.type", "checkpointing.keep_last_n",
            "checkpointing.mode"]
    assert len(lines) == len(keys), lines
    for line, key in zip(lines, keys):
        assert line.startswith("error: ") and f": {key})" in line, (key, line)
    assert "unknown optimizer type 'rmsprop'" in lines[2] and "choose one of sgd, adam, adamw" in lines[2]


@pytest.mark.parametrize("config", ["digits.yaml", "test.yaml", "tabular.yaml", "train_config.yaml"])
def test_example_configs_resolve(tp, config):
    result = tp("config", "check", REPO / "config" / config)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved) == {"seed", "experiment", "data", "model", "training", "distributed", "checkpointing",
                             "logging", "validation", "resources", "alerts", "profile", "storage"}
    original = yaml.safe_load((REPO / "config" / config).read_text())
    assert resolved["experiment"]["name"] == original["experiment"]["name"]
    assert resolved["training"]["batch_size"] == original["training"]["batch_size"]
    assert "# config hash: " in result.stdout


def test_seed_file_keeps_its_values(tp):
    resolved = yaml.safe_load(tp("config", "check", REPO / "config" / "train_config.yaml").stdout)
    assert resolved["model"]["architecture"] == "resnet50" and resolved["training"]["optimizer"]["type"] == "sgd"
    assert resolved["training"]["lr_scheduler"] == {"type": "cosine", "T_max": 90, "eta_min": 0.0001}
    assert resolved["training"]["mixed_precision"] == "auto"  # the seed's `true`
    assert resolved["distributed"]["world_size"] == 4 and resolved["checkpointing"]["monitor_metric"] == "val_accuracy"


def test_overrides_are_type_checked(tp):
    good = tp("config", "check", REPO / "config" / "digits.yaml", "training.epochs=3", "training.learning_rate=0.01")
    assert good.returncode == 0
    resolved = yaml.safe_load(good.stdout)
    assert (resolved["training"]["epochs"], resolved["training"]["learning_rate"]) == (3, 0.01)
    bad = tp("config", "check", REPO / "config" / "digits.yaml", "training.epochs=three")
    assert_one_clean_error(bad, "epochs must be an integer, got str 'three'", "(command line: training.epochs)")
    bad = tp("config", "check", REPO / "config" / "digits.yaml", "training.epocs=3")
    assert_one_clean_error(bad, "unknown key 'epocs' (did you mean 'epochs'?)", "(command line: training.epocs)")
    bad = tp("config", "check", REPO / "config" / "digits.yaml", "nonsense")
    assert_one_clean_error(bad, "override 'nonsense' is not KEY=VALUE")


def test_resolved_config_hash_is_stable(tp, tmp_path):
    first = tp("config", "check", REPO / "config" / "digits.yaml")
    saved = tmp_path / "resolved.yaml"
    saved.write_text(first.stdout)
    second = tp("config", "check", saved)
    hash_line = lambda out: next(l for l in out.splitlines() if l.startswith("# config hash:"))
    assert hash_line(first.stdout) == hash_line(second.stdout)
    changed = tp("config", "check", saved, "seed=1")
    assert hash_line(changed.stdout) != hash_line(first.stdout)


def test_debug_shows_traceback(tp):
    result = tp("--debug", "config", "check", CONFIGS / "negative_lr.yaml")
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: learning_rate must be > 0")
    result = tp("config", "check", CONFIGS / "negative_lr.yaml", env={"TP_DEBUG": "1"})
    assert "Traceback" in result.stderr
