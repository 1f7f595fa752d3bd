"""How long training is blocked by saving a full ResNet-50 training state (model, AdamW state,
scheduler, RNG): synchronous save vs the async writer (which only copies the state to CPU memory
before returning). Median of N saves each, alternating. Goal: async blocked time <= 10% of sync.
--model NAME: another torchvision model (CI checks that the script runs with a small one).
Run: .venv/bin/python benchmarks/checkpoint_async.py [N] [--model resnet50]"""
import argparse
import statistics
import tempfile
import time

import torch
import torchvision

from training_pipeline.loop.checkpoint import AsyncCheckpointWriter, rng_state, save_checkpoint
from training_pipeline.callback.checkpoint import _clone_cpu


def full_state(model, opt, sched):
    return dict(model_state=model.state_dict(), optimizer_state=opt.state_dict(), scheduler_state=sched.state_dict(),
                rng=rng_state(), trainer_state={"epoch": 0, "batches_done": 1})


def main(n=5, model_name="resnet50"):
    model = torchvision.models.get_model(model_name, weights=None)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    model(torch.randn(2, 3, 64, 64)).sum().backward(); opt.step()  # optimizer state exists (exp_avg, exp_avg_sq)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) + \
           sum(v.numel() * v.element_size() for s in opt.state_dict()["state"].values() for v in s.values() if torch.is_tensor(v))
    sync_t, async_t, total_async = [], [], []
    with tempfile.TemporaryDirectory() as d:
        writer = AsyncCheckpointWriter()
        for i in range(n):
            t0 = time.perf_counter(); save_checkpoint(f"{d}/sync", 2 * i, **full_state(model, opt, sched)); sync_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            state = _clone_cpu(full_state(model, opt, sched))
            writer.submit(lambda s=state, step=2 * i + 1: save_checkpoint(f"{d}/async", step, **s))
            async_t.append(time.perf_counter() - t0)  # what training waits for
            writer.wait(); total_async.append(time.perf_counter() - t0)
    s, a = statistics.median(sync_t), statistics.median(async_t)
    print(f"{model_name} full state {size / 2**20:.0f} MiB: sync save median {s:.3f} s; async blocks training for median {a:.3f} s "
          f"(write finishes in the background after {statistics.median(total_async):.3f} s)")
    print(f"state_mib={size / 2**20:.0f} sync_s={s:.3f} async_blocked_s={a:.3f} ratio={a / s:.3f} goal=0.10")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", nargs="?", type=int, default=5, help="saves per case (medians of N)")
    p.add_argument("--model", default="resnet50", help="a torchvision model name")
    a = p.parse_args()
    main(a.n, a.model)
