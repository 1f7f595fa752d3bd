"""Read throughput of the sharded format beside the class folders it was written from: same images, one process.
Makes N distinct 32x32 RGB PNGs (gradient + noise, 10 classes) in a temp dir, `prepare_data`s them, writes the
LitData shards (`write_shards`, timed), then reads the train split in a seeded random order (what `ResumableSampler`
gives) through a DataLoader, num_workers 0 and 2, alternating the two readers, median of RUNS passes each:
  folder  PIL decode of one file per sample (read_image), the ImageFolder way
  shards  ShardDataset (the sample's PNG bytes from a memory-mapped LitData chunk, same decode, chunk sha256 checked)
and the time to open the split (listing its folders vs checking the shard manifest).
Run: .venv/bin/python benchmarks/shards_read.py [N] [RUNS]"""
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from training_pipeline.data.layout import DataLayout, load_schema, read_image, write_png
from training_pipeline.data.prepare import prepare_data
from training_pipeline.data.shards import image_files, open_shards, write_shards


class FolderDataset(Dataset):
    "One PNG file per sample, decoded with PIL: what an ImageFolder does."
    def __init__(self, files): self.files = files
    def __len__(self): return len(self.files)
    def __getitem__(self, i):
        path, label = self.files[i]
        return read_image(path)[0], label


def make_images(root:Path, n:int):
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 32)[None, :, None]
    for i in range(n):
        base = rng.integers(0, 256, (1, 1, 3))
        pixels = (base * ramp + rng.integers(0, 48, (32, 32, 3))).clip(0, 255).astype(np.uint8)
        write_png(pixels, root/f"c{i % 10}"/f"{i:06d}.png")


def epoch_s(ds, order, workers:int) -> float:
    t = time.perf_counter()
    n = sum(len(y) for _, y in DataLoader(ds, batch_size=256, sampler=order, num_workers=workers))
    assert n == len(order)
    return time.perf_counter() - t


def main(n:int=20_000, runs:int=3):
    tmp = Path(tempfile.mkdtemp(prefix="shards-bench-"))
    try:
        t = time.perf_counter(); make_images(tmp/"src", n); make_s = time.perf_counter() - t
        t = time.perf_counter(); prepare_data(tmp/"data", source=tmp/"src"); prepare_s = time.perf_counter() - t
        t = time.perf_counter(); written = write_shards(tmp/"data"); write_s = time.perf_counter() - t
        layout = DataLayout(tmp/"data")
        classes = load_schema(layout.schema_path)["classes"]
        open_s = {"folder": [], "shards": []}  # listing the class folders vs checking the manifest (sizes, index.json sha256)
        for _ in range(runs):
            t = time.perf_counter(); folder = FolderDataset(image_files(layout.split_dir("train"), classes))
            open_s["folder"].append(time.perf_counter() - t)
            t = time.perf_counter(); shards = open_shards(layout, "train")
            open_s["shards"].append(time.perf_counter() - t)
        assert all(np.array_equal(folder[i][0], shards[i][0]) and folder[i][1] == shards[i][1] for i in range(0, len(folder), 97))
        order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0)).tolist()
        print(f"{n} images made in {make_s:.1f} s, prepared in {prepare_s:.1f} s; shards written in {write_s:.2f} s "
              f"({written['files']} files, {written['bytes'] / 2**20:.1f} MiB); reading train: {len(order)} samples, random order, "
              f"median of {runs}")
        result = {f"open_{k}_ms": statistics.median(v) * 1000 for k, v in open_s.items()}
        print(f"opening the train split: folder listing {result['open_folder_ms']:.1f} ms, shards manifest check {result['open_shards_ms']:.1f} ms")
        print("| reader | num_workers | samples/s | epoch s |\n|---|---|---|---|")
        for workers in (0, 2):
            times = {"folder": [], "shards": []}
            for _ in range(runs):
                for name, ds in (("folder", folder), ("shards", shards)): times[name].append(epoch_s(ds, order, workers))
            for name in times:
                s = statistics.median(times[name]); result[f"{name}_w{workers}"] = len(order) / s
                print(f"| {name} | {workers} | {len(order) / s:,.0f} | {s:.2f} |")
            result[f"ratio_w{workers}"] = result[f"shards_w{workers}"] / result[f"folder_w{workers}"]
        print(" ".join(f"{k}={v:.3f}" if k.startswith("ratio") else f"{k}={v:.1f}" if k.startswith("open") else f"{k}={v:.0f}" for k, v in result.items()) + f" write_s={write_s:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
