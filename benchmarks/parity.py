"""Trainer vs a hand-written PyTorch loop vs PyTorch Lightning: same model, data, seed and batches, alternating runs.

Workload: the small CNN on MNIST-5k (28x28, 3500 training images), batch 64, AdamW, validation each
epoch. The Trainer runs with its default callbacks (metrics, progress, run-directory writing,
non-finite guard). Lightning (the benchmark-only extra: `pip install -e ".[bench]"`) runs its own
training_step/optimizer loop over the Trainer's DataLoader, without the extras the others don't have
(progress bar, logger, checkpointing, model summary, sanity validation). Without Lightning installed the
script says so and runs the other two. Prints, last line:
    max_abs_loss_diff=<x> max_abs_param_diff=<y> ratio=<median Trainer/raw wall time> ratio_min=<fastest/fastest>
    overhead_ms_per_step=<z> [lightning_ratio=... lightning_ratio_min=... lightning_max_abs_loss_diff=...
    lightning_max_abs_param_diff=...]
Run: .venv/bin/python benchmarks/parity.py [--runs 5] [--epochs 2] [--warmup 1] [--data-dir DIR]"""
import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from training_pipeline.callback.metrics import MetricsCallback
from training_pipeline.callback.progress import ProgressCallback
from training_pipeline.callback.schedule import GradNormCallback
from training_pipeline.callback.tracker import NonFiniteLossCallback
from training_pipeline.config.load import validate_config
from training_pipeline.core import set_seed
from training_pipeline.data.loaders import build_data
from training_pipeline.models.factory import SmallCNN
from training_pipeline.data.prepare import prepare_data
from training_pipeline.track.store import RunStore
from training_pipeline.callback.run_store import RunStoreCallback
from training_pipeline.loop.trainer import Trainer, make_accelerator

try:
    import pytorch_lightning as pl
except ImportError:
    pl = None

SEED, BATCH, LR = 0, 64, 3e-3


def config_for(data_dir):
    d = Path(data_dir)
    return validate_config({"experiment": {"name": "parity"}, "model": {"architecture": "small_cnn"}, "seed": SEED,
                            "data": {"data_dir": str(d), "train_dir": f"{d}/processed/train", "val_dir": f"{d}/processed/val",
                                     "test_dir": None, "num_workers": 0, "pin_memory": False, "persistent_workers": False}})


def new_model():
    set_seed(SEED)
    model = SmallCNN(1, 10, dropout=0.1)
    return model, torch.optim.AdamW(model.parameters(), lr=LR)


def raw_loop(data, epochs):
    "The loop a careful person writes by hand: same permutation per epoch, same arithmetic, no framework."
    model, opt = new_model()
    x, y = data.datasets["train"].x, data.datasets["train"].y
    xv, yv = data.datasets["val"].x, data.datasets["val"].y
    loss_fn, losses = nn.CrossEntropyLoss(), []
    for epoch in range(epochs):
        model.train()
        g = torch.Generator(); g.manual_seed(SEED + epoch)
        order = torch.randperm(len(y), generator=g)
        total, n = 0.0, 0
        for i in range(0, len(y), BATCH):
            idx = order[i:i + BATCH]
            xb, yb = x[idx], y[idx]
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            total, n = total + loss.detach() * len(yb), n + len(yb)
        losses.append(float(total) / n)
        model.eval()
        with torch.no_grad():
            correct = sum((model(xv[i:i + BATCH]).argmax(-1) == yv[i:i + BATCH]).sum() for i in range(0, len(yv), BATCH))
    return losses, model


def trainer_loop(data, epochs, cfg, runs_dir):
    model, opt = new_model()
    store = RunStore.create(runs_dir, cfg)
    loaders = {s: data.loader(s, BATCH, cfg.data, seed=SEED, even=(s == "train")) for s in ("train", "val")}
    t = Trainer(model, loaders, nn.CrossEntropyLoss(), opt, logger=lambda *_: None,
                cbs=[MetricsCallback(log_every=50), GradNormCallback(log_every=50), NonFiniteLossCallback("stop"),
                     ProgressCallback(), RunStoreCallback(store)],
                accelerator=make_accelerator(cpu=True))
    t.fit(epochs)
    losses = [r["loss"] for r in t.history if r["split"] == "train" and "epoch_time_s" in r]
    return losses, t.model, t.global_step


if pl is not None:
    class LitClassifier(pl.LightningModule):
        "The same model and optimizer as Lightning users write it: training_step returns the loss, Lightning steps."
        def __init__(self, model, opt):
            super().__init__()
            self.model, self.opt, self.loss_fn = model, opt, nn.CrossEntropyLoss()
            self.epoch_losses, self._total, self._n = [], 0.0, 0

        def forward(self, x): return self.model(x)
        def configure_optimizers(self): return self.opt

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = self.loss_fn(self(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
            # the epoch loss for the comparison, in the raw loop's arithmetic (self.log averages in its own order)
            self._total, self._n = self._total + loss.detach() * len(y), self._n + len(y)
            return loss

        def on_train_epoch_end(self):
            self.epoch_losses.append(float(self._total) / self._n)
            self._total, self._n = 0.0, 0

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            self.log_dict({"val_loss": self.loss_fn(logits, y), "val_accuracy": (logits.argmax(-1) == y).float().mean()},
                          batch_size=len(y))


def lightning_loop(data, epochs, cfg):
    model, opt = new_model()
    lit = LitClassifier(model, opt)
    loaders = {s: data.loader(s, BATCH, cfg.data, seed=SEED, even=(s == "train")) for s in ("train", "val")}
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False)  # keep our sampler: the batches must be the others' batches
    trainer.fit(lit, loaders["train"], loaders["val"])
    return lit.epoch_losses, lit.model, trainer.global_step


def quiet_lightning():
    "Lightning's start-up notes and its 'few workers' advice would bury the result lines."
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated")  # Lightning 2.6 on torch 2.14's pytree
    warnings.filterwarnings("ignore", message="The `srun` command is available")  # where Slurm is installed


def max_param_diff(a, b): return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs of each loop first (0: CI, which checks the parity only)")
    ap.add_argument("--data-dir", default=None, help="a prepared mnist5k data dir (default: prepared into a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or prepare_data(f"{tmp}/data", "mnist5k")["data_dir"]
        cfg = config_for(data_dir)
        data = build_data(cfg)
        if pl is None: print("pytorch-lightning is not installed (pip install -e \".[bench]\"): comparing raw loop and Trainer only")
        else: quiet_lightning()
        if args.warmup:  # untimed (allocator, kernels)
            raw_loop(data, args.warmup); trainer_loop(data, args.warmup, cfg, f"{tmp}/runs")
            if pl is not None: lightning_loop(data, args.warmup, cfg)
        raw_t, tr_t, lit_t, diffs, pdiffs, lit_diffs, lit_pdiffs = [], [], [], [], [], [], []
        for _ in range(args.runs):
            t0 = time.perf_counter(); raw_losses, raw_model = raw_loop(data, args.epochs); raw_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); tr_losses, tr_model, steps = trainer_loop(data, args.epochs, cfg, f"{tmp}/runs"); tr_t.append(time.perf_counter() - t0)
            diffs.append(max(abs(a - b) for a, b in zip(raw_losses, tr_losses, strict=True)))
            pdiffs.append(max_param_diff(raw_model, tr_model))
            if pl is None: continue
            t0 = time.perf_counter(); lit_losses, lit_model, lit_steps = lightning_loop(data, args.epochs, cfg); lit_t.append(time.perf_counter() - t0)
            assert lit_steps == steps, f"Lightning ran {lit_steps} steps, the Trainer {steps}"
            lit_diffs.append(max(abs(a - b) for a, b in zip(raw_losses, lit_losses, strict=True)))
            lit_pdiffs.append(max_param_diff(raw_model, lit_model))
        med = statistics.median
        ratio = med(tr_t) / med(raw_t)
        ratio_min = min(tr_t) / min(raw_t)  # the least disturbed run of each: robust to a noisy, shared machine
        overhead = (med(tr_t) - med(raw_t)) / steps * 1000
        lit_median = f", Lightning median {med(lit_t):.3f} s" if lit_t else ""
        print(f"raw loop median {med(raw_t):.3f} s, Trainer median {med(tr_t):.3f} s{lit_median}, "
              f"{steps} steps, {args.runs} runs each, torch threads {torch.get_num_threads()}")
        lit_runs = f" lightning {[round(t, 3) for t in lit_t]}" if lit_t else ""
        print(f"per-run seconds raw {[round(t, 3) for t in raw_t]} trainer {[round(t, 3) for t in tr_t]}{lit_runs}")
        lit_line = (f" lightning_ratio={med(lit_t) / med(raw_t):.4f} lightning_ratio_min={min(lit_t) / min(raw_t):.4f} "
                    f"lightning_max_abs_loss_diff={max(lit_diffs)} lightning_max_abs_param_diff={max(lit_pdiffs)}") if lit_t else ""
        print(f"max_abs_loss_diff={max(diffs)} max_abs_param_diff={max(pdiffs)} ratio={ratio:.4f} ratio_min={ratio_min:.4f} "
              f"overhead_ms_per_step={overhead:.3f}{lit_line}")


if __name__ == "__main__":
    main()
