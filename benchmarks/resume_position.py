"""Time from `restore` to the first resumed training step, resuming at 90% of an epoch vs at 1%.
The sampler jumps to the position (one permutation), so the two should cost the same; a loader
that replays skipped batches would take ~90x longer at 90%. Workload: MNIST-5k-sized tensors
(60,000 samples to make skipping expensive) through the real DataLoader, sampler and Trainer.
Run: .venv/bin/python benchmarks/resume_position.py [N]"""
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from training_pipeline.loop.events import Callback, CancelFitException
from training_pipeline.data.sampling import ArrayDataset, ResumableSampler, collate_batches
from training_pipeline.loop.trainer import Trainer, make_accelerator

N, BATCH = 60_000, 64


class StopAtFirstStep(Callback):
    def after_step(self): self.trainer.first_step_at = time.perf_counter(); raise CancelFitException()


def time_to_first_step(fraction, x, y):
    dl = DataLoader(ArrayDataset(x, y), batch_size=BATCH, sampler=ResumableSampler(N, seed=0), collate_fn=collate_batches)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    t = Trainer(model, {"train": dl}, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1), cbs=[StopAtFirstStep()],
                logger=lambda *a: None, accelerator=make_accelerator(cpu=True))
    start_iter = int(len(dl) * fraction)
    t0 = time.perf_counter()
    t.fit(1, start_epoch=0, start_iter=start_iter)
    return t.first_step_at - t0


def main(n=7):
    x, y = torch.randn(N, 1, 28, 28), torch.randint(0, 10, (N,))
    time_to_first_step(0.5, x, y)  # warm-up
    early, late = [], []
    for _ in range(n):
        early.append(time_to_first_step(0.01, x, y)); late.append(time_to_first_step(0.90, x, y))
    e, l = statistics.median(early), statistics.median(late)
    print(f"first resumed step: at 1% of the epoch median {e * 1000:.1f} ms, at 90% median {l * 1000:.1f} ms ({N} samples, batch {BATCH})")
    print(f"early_ms={e * 1000:.2f} late_ms={l * 1000:.2f} ratio={l / e:.3f} goal=1.2")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
