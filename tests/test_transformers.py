"""Transformers and sequence models, first class (issue 32), with code nobody on this project wrote: Hugging Face
models built from their configs (nothing downloaded) and a word-level LSTM language model in a package written to a
temp dir. From YAML: BERT on dict samples with its own loss -> report -> register -> load_model().predict; GPT-2 and
the user's LM on a folder of text prepared by `tp prepare --task causal_lm`, kill -9 and resume bitwise; from `fit`:
the LM on plain DataLoaders of (N, T) pairs, registered and loaded back (or refused, never another model); every
shape/task/loss mismatch: one line, exit 2, no run directory."""
import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import check_run_dir, run_tp

pytest.importorskip("transformers", reason="the hf extra (transformers) is part of the dev install")

PACKAGES = {
    "hfpkg/__init__.py": "",
    # sentences of token ids; the class says whether token 7 occurs: dict samples, the target under `labels`
    "hfpkg/data.py": """
        import torch
        class Sentences(torch.utils.data.Dataset):
            classes = ["absent", "present"]
            def __init__(self, n, seed):
                g = torch.Generator().manual_seed(seed)
                self.ids = torch.randint(8, 60, (n, 12), generator=g)
                self.ids[torch.randperm(n, generator=g)[: n // 2], 3] = 7
                self.labels = (self.ids == 7).any(1).long()
            def __len__(self): return len(self.ids)
            def __getitem__(self, i):
                return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}
        def sentences(n=256):
            return {"train": Sentences(n, 0), "val": Sentences(96, 1), "test": Sentences(96, 2)}
    """,
    # pytorch/examples' word-language-model, small: (N, T) tokens in, (log-probabilities (N, T, V), hidden) out
    "lmpkg/__init__.py": "",
    "lmpkg/models.py": """
        import torch
        from torch import nn
        class WordLM(nn.Module):
            def __init__(self, vocab=257, hidden=48):
                super().__init__()
                self.vocab, self.hidden = vocab, hidden
                self.emb, self.rnn = nn.Embedding(vocab, hidden), nn.LSTM(hidden, hidden, batch_first=True)
                self.out = nn.Linear(hidden, vocab)
            def forward(self, tokens):
                h, state = self.rnn(self.emb(tokens))
                return nn.functional.log_softmax(self.out(h), -1), state
        def tokens(n=64, per_sample=False):
            "(N, T) token pairs (or, per_sample, one target per sequence) of a user's own dataset."
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, 257, (n, 17), generator=g)
            y = x[:, 0] if per_sample else x[:, 1:]
            data = torch.utils.data.TensorDataset(x[:, :-1], y)
            return {"train": data, "val": data}
        class Forgetful(WordLM):
            "The same network, whose constructor arguments are not kept: it cannot be rebuilt from a record."
            def __init__(self, size):
                super().__init__(257, size); del self.vocab, self.hidden
    """,
}

BERT = """
    seed: 0
    experiment: {name: bert}
    data: {dataset: hfpkg.data:sentences, target_key: labels, num_workers: 0, pin_memory: false, persistent_workers: false}
    model:
      architecture: transformers:BertForSequenceClassification
      init_args: {vocab_size: 64, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64,
                  max_position_embeddings: 16}
    training: {batch_size: 32, epochs: 5, learning_rate: 0.003, deterministic: true}
    checkpointing: {monitor_metric: val_accuracy, mode: max}
"""

GPT = """
    seed: 0
    experiment: {name: gpt}
    data: {data_dir: data, block_size: 32, num_workers: 0, pin_memory: false, persistent_workers: false}
    model:
      architecture: transformers:GPT2LMHeadModel
      init_args: {n_positions: 32, n_embd: 32, n_layer: 2, n_head: 2}
    training: {task: causal_lm, batch_size: 16, epochs: 3, learning_rate: 0.003, deterministic: true, retry_backoff_s: 0}
    checkpointing: {monitor_metric: val_perplexity, mode: min, save_every_n_steps: 20}
    logging: {log_frequency: 10}
"""

WORDLM = GPT.replace("name: gpt", "name: wordlm").replace(
    "architecture: transformers:GPT2LMHeadModel\n      init_args: {n_positions: 32, n_embd: 32, n_layer: 2, n_head: 2}",
    "architecture: lmpkg.models:WordLM\n      init_args: {vocab: 257, hidden: 48}")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    "The user's packages, configs and a small corpus of real text (standard-library modules), prepared once."
    root = tmp_path_factory.mktemp("transformers")
    for rel, text in PACKAGES.items():
        p = root / rel; p.parent.mkdir(parents=True, exist_ok=True); p.write_text(textwrap.dedent(text))
    for name, text in (("bert.yaml", BERT), ("gpt.yaml", GPT), ("wordlm.yaml", WORDLM)):
        (root / name).write_text(textwrap.dedent(text))
    corpus = root / "corpus"; corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("this.py", "colorsys.py", "bisect.py", "keyword.py", "stat.py", "fnmatch.py", "copyreg.py", "abc.py",
                 "genericpath.py", "numbers.py", "opcode.py", "cmd.py"):
        shutil.copyfile(stdlib / name, corpus / name)
    r = run_tp("prepare", "--source", corpus, "--task", "causal_lm", "--data-dir", root / "data", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "text, causal_lm" in r.stdout and "split by document" in r.stdout, r.stdout
    return root


def only_run(cwd, experiment):
    found = sorted((Path(cwd) / "runs" / experiment).glob("*/run.json"))
    assert len(found) == 1, found
    return found[0].parent


def metric_rows(run_dir, split):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def python(code, cwd):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_bert_from_yaml_trains_with_its_own_loss_reports_registers_and_predicts(project):
    r = run_tp("train", "--config", "bert.yaml", cwd=project)
    assert r.returncode == 0, r.stderr
    run = only_run(project, "bert")
    check_run_dir(run)
    meta = json.loads((run / "run.json").read_text())
    assert meta["resolved"] == {"training.loss.type": "model"}, meta.get("resolved")  # the SequenceClassifierOutput's loss
    val = metric_rows(run, "val")
    assert val[-1]["accuracy"] > 0.9 and "f1" in val[-1], val[-1]
    spec = json.loads((run / "artifacts" / "model.json").read_text())
    assert spec["architecture"] == "transformers:BertForSequenceClassification" and len(spec["init_args"]["id2label"]) == 2
    r = run_tp("report", "--run", run, cwd=project)
    assert r.returncode == 0, r.stderr
    html = (run / "report.html").read_text()
    assert "F1 (macro)" in html and "accuracy" in html
    r = run_tp("models", "register", run, "--name", "bert", cwd=project)
    assert r.returncode == 0, r.stderr
    # the registered model predicts what the trained weights predict in the model built from the YAML by hand
    p = python("""
        import json, torch
        from safetensors.torch import load_file
        from transformers import BertConfig, BertForSequenceClassification
        from training_pipeline.track.registry import load_model
        from hfpkg.data import sentences
        test = sentences()["test"]
        batch = {k: torch.stack([test[i][k] for i in range(len(test))]) for k in ("input_ids", "attention_mask")}
        loaded = load_model("bert")
        args = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=16, num_labels=2)
        by_hand = BertForSequenceClassification(BertConfig(**args)).eval()
        by_hand.load_state_dict(load_file("models/bert/v1/model.safetensors"))
        with torch.no_grad(): expected = by_hand(**batch).logits.argmax(-1).tolist()
        got = loaded.predict(batch)
        print(json.dumps({"same": got == [["absent", "present"][i] for i in expected], "n": len(got)}))
    """, project)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"same": True, "n": 96}, p.stdout


@pytest.mark.parametrize("config", ["gpt.yaml", "wordlm.yaml"])
def test_a_language_model_trains_from_a_text_folder_and_reports(project, config):
    experiment = config.removesuffix(".yaml")
    r = run_tp("train", "--config", config, cwd=project)
    assert r.returncode == 0, r.stderr
    run = only_run(project, experiment)
    check_run_dir(run)
    val, train = metric_rows(run, "val"), metric_rows(run, "train")
    assert val[-1]["perplexity"] < val[0]["perplexity"], [v["perplexity"] for v in val]
    assert {"token_accuracy", "tokens"} <= set(val[-1]) and all("tokens_per_s" in t for t in train), (val[-1], train[0])
    assert "per_class_accuracy" not in val[-1]  # no list of 257 numbers in a row
    meta = json.loads((run / "run.json").read_text())
    if experiment == "gpt": assert meta["resolved"] == {"training.loss.type": "cross_entropy"}  # tuples: no labels reach it
    r = run_tp("report", "--run", run, cwd=project)
    assert r.returncode == 0, r.stderr
    report = run / "report.html"
    html = report.read_text()
    assert report.stat().st_size < 5 * 2**20, report.stat().st_size
    assert "perplexity" in html and "most frequent errors" in html and "confusion matrix" not in html


def test_kill9_mid_epoch_then_resume_is_bitwise_equal_for_a_language_model(project, tmp_path):
    from training_pipeline.loop.checkpoint import load_checkpoint
    reference = only_run(project, "wordlm") if (project / "runs" / "wordlm").exists() else None
    if reference is None:  # run alone (-k): make the uninterrupted run here
        assert run_tp("train", "--config", "wordlm.yaml", cwd=project).returncode == 0
        reference = only_run(project, "wordlm")
    for rel in list(PACKAGES) + ["wordlm.yaml"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(project / rel, tmp_path / rel)
    (tmp_path / "data").symlink_to(project / "data")
    r = run_tp("train", "--config", "wordlm.yaml", cwd=tmp_path, env={"TP_FAULT": "train:kill@30"})
    assert r.returncode == -9, (r.returncode, r.stderr)
    r = run_tp("train", "--config", "wordlm.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    resumed = only_run(tmp_path, "wordlm")
    assert "resumed" in (resumed / "events.jsonl").read_text()
    last = lambda run: json.loads((run / "checkpoints" / "index.json").read_text())["last"]
    assert last(reference) == last(resumed)
    a, b = (load_checkpoint(run / "checkpoints" / last(run)) for run in (reference, resumed))
    for k in a["model"]: assert torch.equal(a["model"][k], b["model"][k]), k
    strip = lambda rows: [(r["split"], r["step"], r["loss"], r.get("perplexity")) for r in rows]
    metrics = lambda run: [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert strip(metrics(reference)) == strip(metrics(resumed))


FIT_LM = """
    import json, sys, torch
    from torch.utils.data import DataLoader, TensorDataset
    from training_pipeline import fit
    from training_pipeline.data.text import TokenBlocks
    from lmpkg.models import Forgetful, WordLM
    def pairs(split):
        blocks = TokenBlocks(f"data/processed/{split}", 32)
        x, y = zip(*(blocks[i] for i in range(len(blocks))))
        return TensorDataset(torch.stack(x), torch.stack(y))  # (N, T) inputs and (N, T) next-token targets, as they are
    torch.manual_seed(0)
    model = WordLM(257, 40) if sys.argv[1] == "kept" else Forgetful(40)
    data = {"train": DataLoader(pairs("train"), batch_size=16, shuffle=True), "val": DataLoader(pairs("val"), batch_size=64)}
    result = fit(model, data, task="causal_lm", epochs=2, experiment="fit-" + sys.argv[1], learning_rate=3e-3)
    model.eval()
    with torch.no_grad(): own = model(pairs("val").tensors[0][:4])[0].argmax(-1).tolist()
    print(json.dumps({"status": result.status, "run": str(result.run_dir), "own": own}))
"""

LOAD_BACK = """
    import json, sys, torch
    from training_pipeline.track.registry import load_model
    from training_pipeline.data.text import TokenBlocks
    from lmpkg.models import Forgetful
    blocks = TokenBlocks("data/processed/val", 32)
    x = torch.stack([blocks[i][0] for i in range(4)])
    model = Forgetful(40) if len(sys.argv) > 2 else None
    print(json.dumps(load_model(sys.argv[1], model=model).predict(x)))
"""


def test_fit_on_plain_loaders_of_token_pairs_registers_and_loads_back_the_same_model(project):
    (project / "fit_lm.py").write_text(textwrap.dedent(FIT_LM))
    (project / "load_back.py").write_text(textwrap.dedent(LOAD_BACK))
    run_script = lambda *args: subprocess.run([sys.executable, *args], cwd=project, capture_output=True, text=True, timeout=600)
    p = run_script("fit_lm.py", "kept")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["status"] == "completed", out
    run = project / out["run"]
    spec = json.loads((run / "artifacts" / "model.json").read_text())
    assert (spec["architecture"], spec["init_args"], spec["rebuildable"]) == ("lmpkg.models:WordLM", {"vocab": 257, "hidden": 40}, True)
    config = (run / "config.yaml").read_text()
    assert "learning_rate: 0.003" in config and "task: causal_lm" in config, config
    r = run_tp("models", "register", out["run"], "--name", "lm-kept", "--checkpoint", "last", cwd=project)
    assert r.returncode == 0, r.stderr
    p = run_script("load_back.py", "lm-kept")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == out["own"]  # the same model rebuilt: the same next tokens

    # a model whose arguments were not kept: registered with a note, never rebuilt as something else
    p = run_script("fit_lm.py", "forgetful")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    r = run_tp("models", "register", out["run"], "--name", "lm-forgetful", "--checkpoint", "last", cwd=project)
    assert r.returncode == 0 and "cannot be rebuilt from its record" in r.stdout, (r.stdout, r.stderr)
    p = run_script("load_back.py", "lm-forgetful")
    assert p.returncode != 0 and "cannot be rebuilt from its record" in p.stderr, p.stderr
    p = run_script("load_back.py", "lm-forgetful", "with-model")
    assert p.returncode == 0 and json.loads(p.stdout) == out["own"], p.stderr


MISMATCH = """
    experiment: {name: mismatch}
    data: {dataset: lmpkg.models:tokens, num_workers: 0, pin_memory: false, persistent_workers: false}
    model: {architecture: lmpkg.models:WordLM, init_args: {vocab: 257, hidden: 16}}
    training: {task: causal_lm, batch_size: 8, epochs: 1}
    checkpointing: {monitor_metric: val_loss}
"""

MISMATCHES = [
    # (what, config edits as KEY=VALUE, the words of the error line): all found by the preflight batch
    ("a language model trained as a classifier", ["training.task=classification"],
     "outputs (N, T, V) and targets (N, T) are a token task: set training.task: causal_lm"),
    ("one target per sample for a token task", ["data.init_args={per_sample: true}"], "causal_lm needs (N, T) targets"),
    ("a loss that does not take (outputs, targets)", ["training.loss.type=lmpkg.models:WordLM"], "the first batch fails in the loss"),
    ("the model's own loss from a model that computes none", ["training.loss.type=model"], "takes no 'labels' argument"),
]


@pytest.mark.parametrize("what, overrides, words", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_shape_task_and_loss_mismatches_are_one_line_exit_2_and_no_run_directory(project, tmp_path, what, overrides, words):
    for rel in PACKAGES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(project / rel, tmp_path / rel)
    (tmp_path / "mismatch.yaml").write_text(textwrap.dedent(MISMATCH))
    r = run_tp("train", "--config", "mismatch.yaml", *overrides, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert not (tmp_path / "runs").exists()
