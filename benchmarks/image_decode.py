"""Per-image decode time of PNGs: torchvision.io.decode_image (what `decode_image_file` uses for PNGs) vs PIL (`read_image`),
file read included, one thread, median of 3 passes; and whether both give the same pixels.
Workload: gradient + noise images (photo-like compression), 32x32 gray and RGB, 224x224 and 512x512 RGB.
Run: .venv/bin/python benchmarks/image_decode.py [SCALE]   (SCALE 1 = 2,000 small / 200 / 50 images; smaller for a smoke run)"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from training_pipeline.data.layout import read_image


def per_image_s(decode, paths, passes=3):
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        for p in paths: decode(p)
        times.append((time.perf_counter() - t) / len(paths))
    return statistics.median(times)


def main(scale=1.0):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    tv = lambda p: decode_image(torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    print("| image | files | PIL (read_image) us | torchvision us | PIL / torchvision | same pixels |")
    print("|---|---|---|---|---|---|")
    ratios = []
    with tempfile.TemporaryDirectory() as d:
        for size, mode, n in [(32, "L", 2000), (32, "RGB", 2000), (224, "RGB", 200), (512, "RGB", 50)]:
            n = max(2, int(n * scale))
            shape = (size, size) if mode == "L" else (size, size, 3)
            base = np.add.outer(np.arange(size), np.arange(size)) % 256
            paths = []
            for i in range(n):
                px = (base if mode == "L" else base[..., None]) + rng.integers(0, 30, shape)
                paths.append(Path(d, f"{size}{mode}{i}.png"))
                Image.fromarray(px.clip(0, 255).astype(np.uint8), mode).save(paths[-1])
            pil_s, tv_s = per_image_s(read_image, paths), per_image_s(tv, paths)
            a = read_image(paths[0])[0]
            same = all(np.array_equal(np.atleast_3d(read_image(p)[0]), tv(p).permute(1, 2, 0).numpy()) for p in paths[:20])
            ratios.append(pil_s / tv_s)
            print(f"| {size}x{size} {mode} | {n} | {pil_s * 1e6:.0f} | {tv_s * 1e6:.0f} | {pil_s / tv_s:.2f}x | {same} |")
    print(" ".join(f"ratio_{i}={r:.3f}" for i, r in enumerate(ratios)))


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
