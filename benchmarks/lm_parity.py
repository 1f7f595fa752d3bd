"""A small causal transformer on packed text: plain PyTorch loop vs the Trainer vs Hugging Face's Trainer, alternating.

Workload: GPT-2 built from a config (2 layers, 64 wide, 4 heads, blocks of 64 tokens) on the Python standard
library's top-level modules as byte-level tokens (257 ids: `tp prepare --task causal_lm`'s default), batch 16, AdamW
at a constant rate. The plain loop and the Trainer see the same batches in the same order (the Trainer's resumable
sampler, reproduced by hand in the loop) from the same seed, so their losses must be bitwise equal. The Trainer runs
with the callbacks `tp train` gives every run (metrics with perplexity and token accuracy, progress, run directory,
non-finite guard). Hugging Face's Trainer (needs the `hf` extra; skipped when transformers is missing) runs the same
model and optimizer over the same blocks with `labels = input_ids` (its own convention: the model shifts them), its
logging, saving and progress bars off; its batches are its own sampler's, so only its time is compared.

Second measure: the cost of the training-time metrics at GPT-2's vocabulary (50,257), the same Trainer with the
causal-LM task's metrics on and with a task that computes none: the ratio must stay within 2%.

Prints, last line:
    max_abs_loss_diff=<x> max_abs_param_diff=<y> ratio=<median Trainer / plain loop> hf_ratio=<median HF Trainer / plain loop>
    trainer_vs_hf=<median Trainer / HF Trainer> metrics_cost=<median with metrics / without, vocabulary 50,257>
Run: .venv/bin/python benchmarks/lm_parity.py [--runs 7] [--epochs 1] [--files 40] [--vocab-steps 12]"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from training_pipeline.callback.metrics import MetricsCallback
from training_pipeline.callback.progress import ProgressCallback
from training_pipeline.callback.schedule import GradNormCallback
from training_pipeline.callback.tracker import NonFiniteLossCallback
from training_pipeline.config.load import validate_config
from training_pipeline.core import set_seed
from training_pipeline.data.sampling import resumable_loader
from training_pipeline.models.tasks import CausalLM, make_loss
from training_pipeline.data.text import ByteTokenizer, TokenBlocks, stdlib_corpus, write_token_streams
from training_pipeline.track.store import RunStore
from training_pipeline.callback.run_store import RunStoreCallback
from training_pipeline.loop.trainer import Trainer, make_accelerator

SEED, BATCH, LR, BLOCK = 0, 16, 1e-3, 64


def corpus_blocks(tmp:Path, files:int) -> TokenBlocks:
    "The first `files` top-level standard-library modules as one byte-level token stream, in blocks of BLOCK tokens."
    src = tmp/"corpus"; src.mkdir()
    for path in sorted(stdlib_corpus().glob("*.py"))[:files]: (src/path.name).write_bytes(path.read_bytes())
    write_token_streams(src, tmp/"processed", ByteTokenizer(), {"train": {p.name for p in src.iterdir()}})
    return TokenBlocks(tmp/"processed"/"train", BLOCK)


def new_model(vocab:int):
    from transformers import GPT2Config, GPT2LMHeadModel
    set_seed(SEED)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=BLOCK, n_embd=64, n_layer=2, n_head=4,
                                       bos_token_id=0, eos_token_id=0))
    return model, torch.optim.AdamW(model.parameters(), lr=LR)


def plain_loop(blocks, epochs, vocab=257, batch=BATCH, steps=None):
    "What a careful person writes by hand: the sampler's permutation per epoch, the model's logits, cross-entropy."
    model, opt = new_model(vocab)
    model.train()
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(SEED + epoch))
        total, n = 0.0, 0
        for i in range(0, len(order) if steps is None else steps * batch, batch):
            x, y = (torch.stack(t) for t in zip(*(blocks[int(j)] for j in order[i:i + batch])))
            logits = model(input_ids=x).logits
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=-100)
            loss.backward(); opt.step(); opt.zero_grad()
            tokens = (y != -100).sum()
            total, n = total + loss.detach() * tokens, n + tokens
        losses.append(float(total) / float(n))
    return losses, model


class NoMetrics(CausalLM):
    "The causal-LM task without its training-time metrics: what the Trainer costs with none."
    train_metrics = ()
    def update(self, sums, output, target): pass
    def from_loss(self, loss): return {}


def trainer_loop(blocks, epochs, runs_dir, vocab=257, batch=BATCH, task=None, steps=None):
    model, opt = new_model(vocab)
    task = task or CausalLM()
    data = torch.utils.data.Subset(blocks, range(steps * batch)) if steps else blocks
    cfg = validate_config({"experiment": {"name": "lm-parity"}, "model": {"architecture": "transformers:GPT2LMHeadModel"},
                           "training": {"task": "causal_lm"}, "seed": SEED})
    store = RunStore.create(runs_dir, cfg)
    loader = resumable_loader(data, batch, True, SEED)
    loss = make_loss(cfg.training.loss.model_copy(update={"type": "cross_entropy"}), task)
    t = Trainer(model, {"train": loader}, loss, opt, task=task, logger=lambda *_: None, accelerator=make_accelerator(cpu=True),
                cbs=[MetricsCallback(log_every=50), GradNormCallback(log_every=50), NonFiniteLossCallback("stop"),
                     ProgressCallback(), RunStoreCallback(store)])
    t.fit(epochs)
    losses = [r["loss"] for r in t.history if r["split"] == "train" and "epoch_time_s" in r]
    return losses, t.model, t.global_step


def hf_loop(blocks, epochs, tmp):
    "Hugging Face's Trainer on the same model, optimizer and blocks (labels = input_ids: the model shifts them)."
    from transformers import Trainer as HFTrainer, TrainingArguments
    model, _ = new_model(257)
    samples = [{"input_ids": blocks[i][0], "labels": blocks[i][0]} for i in range(len(blocks))]
    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=BATCH, num_train_epochs=epochs, learning_rate=LR,
                             lr_scheduler_type="constant", weight_decay=0.01, optim="adamw_torch", report_to=[], save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=SEED)
    trainer = HFTrainer(model=model, args=args, train_dataset=samples)
    trainer.train()
    return trainer.state.global_step


def median_time(fn, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--files", type=int, default=40, help="standard-library modules in the corpus")
    ap.add_argument("--vocab-steps", type=int, default=12, help="steps of each metrics on/off run at vocabulary 50,257 (0: skip)")
    args = ap.parse_args()
    try: import transformers  # noqa: F401
    except ImportError: raise SystemExit("transformers is not installed: pip install -e '.[hf]' (the model is GPT-2 from a config)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        blocks = corpus_blocks(tmp, args.files)
        plain_loop(blocks, 1, steps=3); trainer_loop(blocks, 1, tmp/"runs", steps=3)  # untimed: allocator, kernels
        plain_t, tr_t, hf_t, diffs, pdiffs = [], [], [], [], []
        for run in range(args.runs):  # alternating, so a slower stretch of the machine hits all three
            t0 = time.perf_counter(); plain_losses, plain_model = plain_loop(blocks, args.epochs); plain_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); tr_losses, tr_model, steps = trainer_loop(blocks, args.epochs, tmp/"runs"); tr_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); hf_steps = hf_loop(blocks, args.epochs, tmp/f"hf{run}"); hf_t.append(time.perf_counter() - t0)
            assert hf_steps == steps, f"Hugging Face's Trainer ran {hf_steps} steps, the Trainer {steps}"
            diffs.append(max(abs(a - b) for a, b in zip(plain_losses, tr_losses, strict=True)))
            pdiffs.append(max((p - q).abs().max().item() for p, q in zip(plain_model.parameters(), tr_model.parameters())))
        med = statistics.median
        print(f"{len(blocks)} blocks of {BLOCK} tokens, {steps} steps, {args.runs} runs each, torch threads {torch.get_num_threads()}")
        print(f"median seconds: plain {med(plain_t):.3f}, Trainer {med(tr_t):.3f}, HF Trainer {med(hf_t):.3f}")
        print(f"per-run seconds plain {[round(t, 3) for t in plain_t]} trainer {[round(t, 3) for t in tr_t]} hf {[round(t, 3) for t in hf_t]}")
        cost = float("nan")
        if args.vocab_steps:
            on, off = [], []
            for _ in range(max(3, args.runs // 2)):
                for task, times in ((CausalLM(), on), (NoMetrics(), off)):
                    t0 = time.perf_counter(); trainer_loop(blocks, 1, tmp/"runs", 50257, 8, task, args.vocab_steps)
                    times.append(time.perf_counter() - t0)
            cost = med(on) / med(off)
            print(f"vocabulary 50,257, {args.vocab_steps} steps of batch 8: metrics on {[round(t, 3) for t in on]} off {[round(t, 3) for t in off]}")
        print(f"max_abs_loss_diff={max(diffs)} max_abs_param_diff={max(pdiffs)} ratio={med(tr_t) / med(plain_t):.4f} "
              f"hf_ratio={med(hf_t) / med(plain_t):.4f} trainer_vs_hf={med(tr_t) / med(hf_t):.4f} metrics_cost={cost:.4f}")


if __name__ == "__main__":
    main()
