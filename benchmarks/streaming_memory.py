"""Peak memory of `tp train` on streamed images does not grow with the dataset; in memory stays the fastest for small data.

Makes N synthetic 32x32 RGB PNGs (10 classes) for each size, `tp prepare --source`s them, and runs a 1-epoch `tp train`
(config/test.yaml: small_cnn, batch 32) with `data.in_memory=false` and 2 loader workers on each, sampling every 50 ms the
RSS of the main process and the sum over its process tree (psutil; pages shared with the workers are counted in each).
On the smallest size it also trains in memory (no workers: its best setting) and streamed without workers, for samples/s
(train samples / the epoch's seconds as `tp train` prints them). Data goes to benchmarks/results/ (git-ignored).
With --shards the data is also written as shards (`tp prepare --shards`) and streamed from them (`data.shards=true`).
Goal: streamed peak at the largest size <= 1.25 x at the smallest (main process and tree); in memory the fastest.
Run: .venv/bin/python benchmarks/streaming_memory.py [--sizes 2000 20000] [--shards]"""
import argparse
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TP = Path(sys.executable).with_name("tp")
CONFIG = REPO / "config" / "test.yaml"
MIB = 2**20


def make_pngs(root: Path, n: int, seed: int = 0, size: int = 32):
    "n size x size RGB PNGs in 10 class folders: a class-dependent colour ramp plus noise (learnable, photo-like compression)."
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(size), np.arange(size))[..., None]
    for i in range(n):
        label = i % 10
        px = (ramp * (label + 1) % 256 + rng.integers(0, 40, (size, size, 3))).clip(0, 255).astype(np.uint8)
        d = root / f"class_{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px, "RGB").save(d / f"{i:06d}.png")


def sample_memory(proc: subprocess.Popen, peaks: dict, every_s: float = 0.05):
    "Track the peak RSS of the process and of its whole tree until it exits."
    p = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            main = p.memory_info().rss
            tree = main + sum(c.memory_info().rss for c in p.children(recursive=True) if c.is_running())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            break
        peaks["main"], peaks["tree"] = max(peaks["main"], main), max(peaks["tree"], tree)
        time.sleep(every_s)


def train(data_dir: Path, cwd: Path, *overrides) -> dict:
    cmd = [str(TP), "train", "--config", str(CONFIG), f"data.data_dir={data_dir}", "training.epochs=1", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"main": 0, "tree": 0}
    sampler = threading.Thread(target=sample_memory, args=(proc, peaks), daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    if proc.returncode != 0: raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    epoch_s = float(re.search(r"^epoch 1/1 .*\(([\d.]+) s\)$", out, re.M).group(1))
    placement = next(l for l in out.splitlines() if l.startswith("data: "))
    return {"main_mib": peaks["main"] / MIB, "tree_mib": peaks["tree"] / MIB, "epoch_s": epoch_s,
            "wall_s": time.perf_counter() - t0, "placement": placement}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "streaming_memory")
    ap.add_argument("--shards", action="store_true", help="also stream the same images from shards")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    rows, results = [], {}
    for n in args.sizes:
        base = args.out / f"n{n}"
        t0 = time.perf_counter(); make_pngs(base / "source", n); made = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([str(TP), "prepare", "--source", str(base / "source"), "--data-dir", str(base / "data"),
                        *(["--shards"] if args.shards else [])], check=True, capture_output=True, text=True)
        prepared = time.perf_counter() - t0
        train_n = sum(1 for _ in (base / "data" / "processed" / "train").rglob("*.png"))
        print(f"{n} images: written in {made:.1f} s, prepared in {prepared:.1f} s ({train_n} train)", flush=True)
        runs = [("streamed, 2 workers", ("data.in_memory=false", "data.num_workers=2"))]
        if args.shards: runs += [("shards streamed, 2 workers", ("data.in_memory=false", "data.num_workers=2", "data.shards=true"))]
        if n == min(args.sizes):
            runs += [("in memory, no workers", ("data.in_memory=true", "data.num_workers=0")),
                     ("streamed, no workers", ("data.in_memory=false", "data.num_workers=0"))]
        for name, overrides in runs:
            cwd = base / name.replace(", ", "-").replace(" ", "_")
            cwd.mkdir()
            r = train(base / "data", cwd, *overrides)
            r["samples_s"] = train_n / r["epoch_s"]
            results[(n, name)] = r
            rows.append(f"| {n:,} | {name} | {r['main_mib']:.0f} | {r['tree_mib']:.0f} | {r['epoch_s']:.1f} | {r['samples_s']:,.0f} | {r['wall_s']:.1f} |")
            print(rows[-1], f"  [{r['placement']}]", flush=True)
    small, large = min(args.sizes), max(args.sizes)
    s, l = results[(small, "streamed, 2 workers")], results[(large, "streamed, 2 workers")]
    print("\n| images | data | peak RSS main MiB | peak RSS tree MiB | epoch s | train samples/s | wall s |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    mem, stream = results[(small, "in memory, no workers")], s
    if args.shards:
        ss, sl = results[(small, "shards streamed, 2 workers")], results[(large, "shards streamed, 2 workers")]
        print(f"shards_main_ratio={sl['main_mib'] / ss['main_mib']:.3f} shards_tree_ratio={sl['tree_mib'] / ss['tree_mib']:.3f}")
    print(f"main_ratio={l['main_mib'] / s['main_mib']:.3f} tree_ratio={l['tree_mib'] / s['tree_mib']:.3f} "
          f"in_memory_samples_s={mem['samples_s']:.0f} streamed_samples_s={stream['samples_s']:.0f} "
          f"streamed_no_workers_samples_s={results[(small, 'streamed, no workers')]['samples_s']:.0f}")


if __name__ == "__main__":
    main()
