"""Trainer vs a hand-written PyTorch loop: same model, data, seed and batches, alternating runs.

Workload: the small CNN on MNIST-5k (28x28, 3500 training images), batch 64, AdamW, validation each
epoch. The Trainer runs with its default callbacks (metrics, progress, run-directory writing,
non-finite guard). Prints, last line:
    max_abs_loss_diff=<x> max_abs_param_diff=<y> ratio=<median Trainer/raw wall time> overhead_ms_per_step=<z>
Run: .venv/bin/python benchmarks/parity.py [--runs 5] [--epochs 2] [--data-dir DIR]"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from training_pipeline.callback.progress import ProgressCallback
from training_pipeline.callback.tracker import NonFiniteLossCallback
from training_pipeline.config import validate_config
from training_pipeline.core import set_seed
from training_pipeline.loaders import build_data
from training_pipeline.models import SmallCNN
from training_pipeline.prepare import prepare_data
from training_pipeline.tracking import RunStore, RunStoreCallback
from training_pipeline.trainer import Trainer, make_accelerator

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
    t = Trainer(model, loaders, nn.CrossEntropyLoss(), opt, num_classes=10, log_every=50, logger=lambda *_: None,
                cbs=[NonFiniteLossCallback("stop"), ProgressCallback(), RunStoreCallback(store)],
                accelerator=make_accelerator(cpu=True))
    t.fit(epochs)
    losses = [r["loss"] for r in t.history if r["split"] == "train" and "epoch_time_s" in r]
    return losses, t.model, t.global_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--data-dir", default=None, help="a prepared mnist5k data dir (default: prepared into a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or prepare_data(f"{tmp}/data", "mnist5k")["data_dir"]
        cfg = config_for(data_dir)
        data = build_data(cfg)
        raw_loop(data, 1); trainer_loop(data, 1, cfg, f"{tmp}/runs")  # warm-up (allocator, kernels)
        raw_t, tr_t, diffs, pdiffs = [], [], [], []
        for _ in range(args.runs):
            t0 = time.perf_counter(); raw_losses, raw_model = raw_loop(data, args.epochs); raw_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); tr_losses, tr_model, steps = trainer_loop(data, args.epochs, cfg, f"{tmp}/runs"); tr_t.append(time.perf_counter() - t0)
            diffs.append(max(abs(a - b) for a, b in zip(raw_losses, tr_losses)))
            pdiffs.append(max((p - q).abs().max().item() for p, q in zip(raw_model.parameters(), tr_model.parameters())))
        ratio = statistics.median(tr_t) / statistics.median(raw_t)
        ratio_min = min(tr_t) / min(raw_t)  # the least disturbed run of each: robust to a noisy, shared machine
        overhead = (statistics.median(tr_t) - statistics.median(raw_t)) / steps * 1000
        print(f"raw loop median {statistics.median(raw_t):.3f} s, Trainer median {statistics.median(tr_t):.3f} s, "
              f"{steps} steps, {args.runs} runs each, torch threads {torch.get_num_threads()}")
        print(f"per-run seconds raw {[round(t, 3) for t in raw_t]} trainer {[round(t, 3) for t in tr_t]}")
        print(f"max_abs_loss_diff={max(diffs)} max_abs_param_diff={max(pdiffs)} ratio={ratio:.4f} ratio_min={ratio_min:.4f} "
              f"overhead_ms_per_step={overhead:.3f}")


if __name__ == "__main__":
    main()
