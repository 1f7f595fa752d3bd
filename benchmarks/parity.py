"""Trainer vs a hand-written PyTorch loop vs PyTorch Lightning: same model, data, seed and batches, alternating runs.

Workloads:
- cnn: the small CNN on MNIST-5k (28x28, 3500 training images), batch 64, AdamW, validation each epoch;
- tiny: a 32-64-10 MLP on 8192 random vectors, batch 64: a step of a fraction of a millisecond, so what the
  framework costs per step is all that shows.
The Trainer runs with its default callbacks (metrics, progress, run-directory writing, non-finite guard). Lightning
(the benchmark-only extra: `pip install -e ".[bench]"`) runs its own training_step/optimizer loop over the Trainer's
DataLoader, without the extras the others don't have (progress bar, logger, checkpointing, model summary, sanity
validation). Without Lightning installed the script says so and runs the others.
With --compile (the default) the CNN also runs compiled (torch.compile, Inductor): the Trainer with
`training.compile` (its dynamo plugin and CompileCallback) and Lightning with `torch.compile(model)` before `fit`;
the seconds spent in batches that compiled are reported and left out of their times.
Prints, last line:
    max_abs_loss_diff=<x> max_abs_param_diff=<y> ratio=<median Trainer/raw wall time> ratio_min=<fastest/fastest>
    ratio_paired=<median over rounds of Trainer/raw in the round> overhead_ms_per_step=<z> tiny_ratio=...
    tiny_overhead_ms_per_step=... tiny_max_abs_loss_diff=... tiny_max_abs_param_diff=... [lightning_ratio=...
    lightning_ratio_min=... lightning_ratio_paired=... lightning_max_abs_loss_diff=... lightning_max_abs_param_diff=...
    tiny_lightning_ratio=...] [compile_speedup=<compiled Trainer steps/s ÷ raw eager steps/s> compile_s=<seconds
    compiling, the first compiled run's> [lightning_compile_speedup=...]]
Run: .venv/bin/python benchmarks/parity.py [--runs 5] [--epochs 2] [--warmup 1] [--data-dir DIR] [--no-compile]"""
import argparse
import gc
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
from training_pipeline.loop.trainer import Trainer, dynamo_plugin, make_accelerator
from training_pipeline.callback.compile import CompileCallback, compile_count
from training_pipeline.data.sampling import ArrayDataset, resumable_loader

try:
    import pytorch_lightning as pl
except ImportError:
    pl = None

SEED, BATCH, LR = 0, 64, 3e-3


def config_for(data_dir):
    d = Path(data_dir)
    data = {"data_dir": str(d), "train_dir": f"{d}/processed/train", "val_dir": f"{d}/processed/val",
            "test_dir": None, "num_workers": 0, "pin_memory": False, "persistent_workers": False}
    return validate_config({"experiment": {"name": "parity"}, "model": {"architecture": "small_cnn"}, "seed": SEED,
                            "data": data})


class TinyData:
    "The tiny workload's splits, in memory, read like the prepared data (`datasets`, `loader`)."
    def __init__(self):
        g = torch.Generator().manual_seed(SEED)
        x, y = torch.randn(9216, 32, generator=g), torch.randint(0, 10, (9216,), generator=g)
        self.datasets = {"train": ArrayDataset(x[:8192], y[:8192]), "val": ArrayDataset(x[8192:], y[8192:])}
    def loader(self, split, batch_size, data_cfg=None, seed=0, even=True):
        return resumable_loader(self.datasets[split], batch_size, split == "train", seed, even=even)


def new_model(workload="cnn"):
    set_seed(SEED)
    model = SmallCNN(1, 10, dropout=0.1) if workload == "cnn" else \
        nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    return model, torch.optim.AdamW(model.parameters(), lr=LR)


def raw_loop(data, epochs, workload="cnn"):
    "The loop a careful person writes by hand: same permutation per epoch, same arithmetic, no framework."
    model, opt = new_model(workload)
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
            correct = sum((model(xv[i:i + BATCH]).argmax(-1) == yv[i:i + BATCH]).sum()
                          for i in range(0, len(yv), BATCH))
    return losses, model


def trainer_loop(data, epochs, cfg, runs_dir, workload="cnn", compile_mode="no"):
    "The Trainer as the recipe builds it; returns (epoch losses, model, steps, seconds spent in compiling batches)."
    model, opt = new_model(workload)
    store = RunStore.create(runs_dir, cfg)
    loaders = {s: data.loader(s, BATCH, cfg.data, seed=SEED, even=(s == "train")) for s in ("train", "val")}
    compiling = [CompileCallback()] if compile_mode != "no" else []
    t = Trainer(model, loaders, nn.CrossEntropyLoss(), opt, logger=lambda *_: None,
                cbs=[MetricsCallback(log_every=50), GradNormCallback(log_every=50), NonFiniteLossCallback("stop"),
                     ProgressCallback(), RunStoreCallback(store), *compiling],
                accelerator=make_accelerator(cpu=True, dynamo_plugin=dynamo_plugin(compile_mode)))
    t.fit(epochs)
    losses = [r["loss"] for r in t.history if r["split"] == "train" and "epoch_time_s" in r]
    return losses, t.model, t.global_step, compiling[0].seconds if compiling else 0.0


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
            accuracy = (logits.argmax(-1) == y).float().mean()
            self.log_dict({"val_loss": self.loss_fn(logits, y), "val_accuracy": accuracy}, batch_size=len(y))


    class CompileTimer(pl.Callback):
        "The seconds of the batches during which dynamo compiled (the Trainer's CompileCallback, for Lightning)."
        seconds = 0.0
        def on_train_batch_start(self, *args): self._before = (compile_count(), time.perf_counter())
        on_validation_batch_start = on_train_batch_start
        def on_train_batch_end(self, *args):
            if compile_count() != self._before[0]: self.seconds += time.perf_counter() - self._before[1]
        on_validation_batch_end = on_train_batch_end


def lightning_loop(data, epochs, cfg, workload="cnn", compiled=False):
    "Lightning's loop; returns (epoch losses, model, steps, seconds spent in compiling batches)."
    model, opt = new_model(workload)
    lit = LitClassifier(torch.compile(model) if compiled else model, opt)
    timer = CompileTimer()
    loaders = {s: data.loader(s, BATCH, cfg.data, seed=SEED, even=(s == "train")) for s in ("train", "val")}
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False,  # keep our sampler: the batches must be the others' batches
                         callbacks=[timer] if compiled else [])
    trainer.fit(lit, loaders["train"], loaders["val"])
    return lit.epoch_losses, getattr(lit.model, "_orig_mod", lit.model), trainer.global_step, timer.seconds


def quiet_lightning():
    "Lightning's start-up notes and its 'few workers' advice would bury the result lines."
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated")  # Lightning 2.6 on torch 2.14's pytree
    warnings.filterwarnings("ignore", message="The `srun` command is available")  # where Slurm is installed


def max_param_diff(a, b): return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def compare(name, data, cfg, runs, epochs, tmp, compile_cnn=False):
    "Alternating runs of each loop on one workload; returns {column: [seconds]}, the parity diffs and the steps."
    times, diffs, steps = {}, {}, None
    def timed(column, loop, *args):
        gc.collect()  # the garbage of the loop before is not this one's to collect
        t0 = time.perf_counter(); out = loop(*args); wall = time.perf_counter() - t0
        compile_s = out[3] if len(out) > 3 else 0.0
        times.setdefault(column, []).append(wall - compile_s)
        # dynamo reuses what it compiled for the same forward in this process: the first compiled run pays, later
        # ones find it compiled (0 s)
        if column.endswith("compiled"): times.setdefault(column + "_compile_s", []).append(compile_s)
        return out
    for _ in range(runs):
        raw_losses, raw_model = timed("raw", raw_loop, data, epochs, name)
        tr_losses, tr_model, steps, _ = timed("trainer", trainer_loop, data, epochs, cfg, f"{tmp}/runs", name)
        diffs.setdefault("loss", []).append(max(abs(a - b) for a, b in zip(raw_losses, tr_losses, strict=True)))
        diffs.setdefault("param", []).append(max_param_diff(raw_model, tr_model))
        if compile_cnn: timed("compiled", trainer_loop, data, epochs, cfg, f"{tmp}/runs", name, "default")
        if pl is None: continue
        lit_losses, lit_model, lit_steps, _ = timed("lightning", lightning_loop, data, epochs, cfg, name)
        assert lit_steps == steps, f"Lightning ran {lit_steps} steps, the Trainer {steps}"
        diffs.setdefault("lit_loss", []).append(max(abs(a - b) for a, b in zip(raw_losses, lit_losses, strict=True)))
        diffs.setdefault("lit_param", []).append(max_param_diff(raw_model, lit_model))
        if compile_cnn: timed("lightning_compiled", lightning_loop, data, epochs, cfg, name, True)
    return times, diffs, steps


def summary(prefix, times, diffs, steps):
    "The result keys of one workload (`prefix`: '' for the CNN, 'tiny_' for the tiny model)."
    med = statistics.median
    keys = {"max_abs_loss_diff": max(diffs["loss"]), "max_abs_param_diff": max(diffs["param"]),
            "ratio": f"{med(times['trainer']) / med(times['raw']):.4f}",
            "ratio_min": f"{min(times['trainer']) / min(times['raw']):.4f}",  # the least disturbed run of each
            # each run beside the raw run of its round: a machine that slows for a while slows both
            "ratio_paired": f"{med(t / r for t, r in zip(times['trainer'], times['raw'])):.4f}",
            "overhead_ms_per_step": f"{(med(times['trainer']) - med(times['raw'])) / steps * 1000:.3f}"}
    if "lightning" in times:
        keys.update(lightning_ratio=f"{med(times['lightning']) / med(times['raw']):.4f}",
                    lightning_ratio_min=f"{min(times['lightning']) / min(times['raw']):.4f}",
                    lightning_ratio_paired=f"{med(t / r for t, r in zip(times['lightning'], times['raw'])):.4f}",
                    lightning_max_abs_loss_diff=max(diffs["lit_loss"]),
                    lightning_max_abs_param_diff=max(diffs["lit_param"]))
    if "compiled" in times:  # steps per second ÷ the raw eager loop's: the inverse ratio of times
        keys.update(compile_speedup=f"{med(times['raw']) / med(times['compiled']):.4f}",
                    compile_s=f"{max(times['compiled_compile_s']):.2f}")
    if "lightning_compiled" in times:
        keys.update(lightning_compile_speedup=f"{med(times['raw']) / med(times['lightning_compiled']):.4f}",
                    lightning_compile_s=f"{max(times['lightning_compiled_compile_s']):.2f}")
    print(f"{prefix or 'cnn_'}: {steps} steps, per-run seconds "
          + " ".join(f"{k} {[round(t, 3) for t in v]}" for k, v in times.items()))
    return {prefix + k: v for k, v in keys.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed epochs of each loop first (0: CI, which checks the parity only)")
    ap.add_argument("--data-dir", default=None, help="a prepared mnist5k data dir (default: prepared into a temp dir)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled runs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or prepare_data(f"{tmp}/data", "mnist5k")["data_dir"]
        cfg = config_for(data_dir)
        workloads = {"": (build_data(cfg), "cnn"), "tiny_": (TinyData(), "tiny")}
        if pl is None: print("pytorch-lightning is not installed (pip install -e \".[bench]\"): no Lightning columns")
        else: quiet_lightning()
        keys = {}
        for prefix, (data, name) in workloads.items():
            if args.warmup:  # untimed (allocator, kernels)
                raw_loop(data, args.warmup, name); trainer_loop(data, args.warmup, cfg, f"{tmp}/runs", name)
                if pl is not None: lightning_loop(data, args.warmup, cfg, name)
            times, diffs, steps = compare(name, data, cfg, args.runs, args.epochs, tmp, args.compile and name == "cnn")
            keys.update(summary(prefix, times, diffs, steps))
        print(f"{args.runs} runs each, {args.epochs} epochs, torch threads {torch.get_num_threads()}")
        print(" ".join(f"{k}={v}" for k, v in keys.items()))


if __name__ == "__main__":
    main()
