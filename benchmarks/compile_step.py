"""The parity CNN's training step alone (forward, loss, backward, AdamW step), eager against compiled variants.

What `training.compile` can gain on this machine, without the loop, the data path or validation around it. Each
variant builds the same seeded model and runs warm-up steps first (compilation happens there), then times `--steps`
steps; variants alternate, `--runs` rounds, medians.

Variants:
    eager                the model as it is
    eager_channels_last  the model and inputs in channels-last layout (oneDNN's preferred layout for convolutions)
    compile              torch.compile, mode default (what `training.compile: true` does)
    compile_mant         mode max-autotune-no-cudagraphs
    compile_cpp_wrapper  mode default with Inductor's C++ wrapper (less Python around the kernels)
    compile_optimizer    mode default, and the optimizer step compiled too
Run: .venv/bin/python benchmarks/compile_step.py [--runs 5] [--steps 40] [--variants eager compile ...]"""
import argparse
import gc
import statistics
import tempfile
import time

import torch
from torch import nn

from parity import BATCH, config_for, new_model
from training_pipeline.data.loaders import build_data
from training_pipeline.data.prepare import prepare_data

MODES = {"compile": "default", "compile_mant": "max-autotune-no-cudagraphs", "compile_cpp_wrapper": "default",
         "compile_optimizer": "default"}
VARIANTS = ("eager", "eager_channels_last", *MODES)


def step_time(variant:str, x:torch.Tensor, y:torch.Tensor, steps:int, warmup:int=3) -> float:
    "Seconds per training step of `variant` (after `warmup` steps, which include any compilation)."
    import torch._inductor.config as inductor
    model, opt = new_model("cnn")
    channels_last = variant == "eager_channels_last"
    if channels_last: model = model.to(memory_format=torch.channels_last)
    inductor.cpp_wrapper = variant == "compile_cpp_wrapper"
    run_model = torch.compile(model, mode=MODES[variant]) if variant in MODES else model
    step = torch.compile(opt.step) if variant == "compile_optimizer" else opt.step
    loss_fn = nn.CrossEntropyLoss()
    def one(i):
        idx = torch.arange(i * BATCH, (i + 1) * BATCH) % len(y)
        xb = x[idx].contiguous(memory_format=torch.channels_last) if channels_last else x[idx]
        loss_fn(run_model(xb), y[idx]).backward(); step(); opt.zero_grad()
    try:
        for i in range(warmup): one(i)
        gc.collect(); t0 = time.perf_counter()
        for i in range(steps): one(warmup + i)
        return (time.perf_counter() - t0) / steps
    finally: inductor.cpp_wrapper = False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--data-dir", default=None, help="a prepared mnist5k data dir (default: prepared into a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = build_data(config_for(args.data_dir or prepare_data(f"{tmp}/data", "mnist5k")["data_dir"]))
        x, y = data.datasets["train"].x, data.datasets["train"].y
        times = {v: [] for v in args.variants}
        for _ in range(args.runs):
            for v in args.variants: times[v].append(step_time(v, x, y, args.steps))
    eager = statistics.median(times["eager"]) if "eager" in times else None
    for v, ts in times.items():
        med = statistics.median(ts)
        speedup = f" {eager / med:.3f}x eager" if eager else ""
        print(f"{v:20s} {med * 1000:7.2f} ms/step{speedup}  runs {[round(t * 1000, 1) for t in ts]}")
    print(f"{args.runs} runs of {args.steps} steps, batch {BATCH}, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
