"""Streamed, decode-bound images: the loader workers `tp tune-loader` recommends against none, and the data-wait share of
training with them.

On a prepared ImageFolder of 20,000 synthetic RGB PNGs of --size pixels (made with streaming_memory.make_pngs and
`tp prepare` unless --data names a prepared data dir), read with `data.in_memory=false` (each sample decoded in the loader)
and resized to 32x32 for the model (`data.transforms.resize`, as photos larger than a model's input are): decoding is where
loading spends its time, and at 320 pixels it costs about what small_cnn's step does.
1. `tune_config` (what `tp tune-loader` runs) recommends a loader setting and, beside workers, maybe fewer torch threads;
2. the train loader's samples/s with no workers and with that setting, alternating, median of --rounds;
3. a 1-epoch `tp train` (config/test.yaml: small_cnn, batch 32) with each setting: the share of step time spent waiting for
   data and the train samples/s (the epoch row of metrics.jsonl).
Goals (issue 16): recommended/none >= 1.6 on a 2-core machine; data-wait share <= 5% with the recommended setting.
With --size 32 decoding is cheap beside the step, and the tuner rightly recommends no workers (see benchmarks/README.md).
Run: .venv/bin/python benchmarks/streaming_workers.py [--size 320] [--data DIR] [--rounds 3] [--batches 120]"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TP = Path(sys.executable).with_name("tp")
sys.path.insert(0, str(REPO / "benchmarks"))


def prepared_data(args) -> Path:
    if args.data: return args.data
    from streaming_memory import make_pngs
    base = REPO / "benchmarks" / "results" / "streaming_workers" / f"n{args.images}-s{args.size}"
    if not (base / "data" / "metadata" / "schema.json").exists():
        make_pngs(base / "source", args.images, size=args.size)
        subprocess.run([str(TP), "prepare", "--source", str(base / "source"), "--data-dir", str(base / "data")], check=True,
                       capture_output=True, text=True)
    return base / "data"


RESIZE = []  # data.transforms.resize=[32,32] when the images are larger


def overrides(data_dir: Path, threads=None, **data) -> list:
    return [f"data.data_dir={data_dir}", "data.in_memory=false", *RESIZE, *(f"data.{k}={str(v).lower()}" for k, v in data.items()),
            *([f"resources.num_threads={threads}"] if threads else [])]


def config(data_dir: Path, **data):
    from training_pipeline.config.load import load_config
    return load_config(REPO / "config" / "test.yaml", [*overrides(data_dir, **data), "data.cache=false"])


def loader_rate(data_dir: Path, batches: int, **setting) -> float:
    "Samples/s of the streamed train loader with `setting`, after its first batch (worker start-up)."
    from training_pipeline.data.loaders import build_data
    cfg = config(data_dir, **setting)
    dl = build_data(cfg).loader("train", cfg.training.batch_size, cfg.data, seed=0)
    it = iter(dl); next(it)
    n, t0 = 0, time.perf_counter()
    for i, (xb, _) in enumerate(it):
        n += len(xb)
        if i + 1 >= batches: break
    rate = n / (time.perf_counter() - t0)
    del it
    return rate


def train_wait_share(data_dir: Path, cwd: Path, threads=None, **setting) -> dict:
    cwd.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([str(TP), "train", "--config", str(REPO / "config" / "test.yaml"), "--resume", "never", "training.epochs=1",
                        *overrides(data_dir, threads, **setting)],
                       cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0: raise SystemExit(f"tp train failed ({r.returncode}): {r.stderr[-1500:]}")
    run = max((cwd / "runs" / "test").iterdir())
    row = next(json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()
               if json.loads(l)["split"] == "train" and "epoch_time_s" in json.loads(l))
    return {"wait_share": row["data_wait_share"], "samples_s": row["samples_per_s"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a prepared image data dir (default: make one)")
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--size", type=int, default=320, help="height and width of the PNGs made (resized to 32x32 for the model)")
    ap.add_argument("--resize", type=int, help="square size the model gets (default: 32 for the PNGs made, as they are for --data)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=120)
    ap.add_argument("--budget-s", type=float, default=30)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "streaming_workers" / "runs", help="where the runs go")
    args = ap.parse_args()
    resize = args.resize or (None if args.data or args.size == 32 else 32)
    if resize: RESIZE.append(f"data.transforms.resize=[{resize},{resize}]")
    t0 = time.perf_counter()
    data_dir = prepared_data(args)
    print(f"data: {data_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)
    from training_pipeline.run.loader_tuner import tune_config
    t0 = time.perf_counter()
    tuned = tune_config(config(data_dir, num_workers=0), budget_s=args.budget_s)
    rec, threads = tuned.recommendation, tuned.threads
    print(tuned.table(), f"\n{tuned.bottleneck}\nrecommendation: {rec}, torch threads {threads or 'default'} "
          f"(tuned in {time.perf_counter() - t0:.0f} s)", flush=True)
    none = {"num_workers": 0, "persistent_workers": False, "pin_memory": False}
    rates = {"none": [], "recommended": []}
    for _ in range(args.rounds):  # alternating, so that a change of load on the machine hits both
        rates["none"].append(loader_rate(data_dir, args.batches, **none))
        rates["recommended"].append(loader_rate(data_dir, args.batches, **rec))
        print({k: round(v[-1]) for k, v in rates.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = args.out / f"n{args.images}-s{args.size}"
    waits = {"none": train_wait_share(data_dir, out / "none", **none),
             "recommended": train_wait_share(data_dir, out / "recommended", threads, **rec)}
    print(f"\nnum_workers=0 in the tuner's own trials: {next(t.samples_per_s for t in tuned.trials if t.num_workers == 0):,.0f} samples/s")
    print("\n| setting | loader samples/s (median) | 1-epoch train: data-wait share | train samples/s |")
    print("|---|---|---|---|")
    for k, label in (("none", "num_workers=0"), ("recommended", f"recommended {rec}" + (f", resources.num_threads={threads}" if threads else ""))):
        print(f"| {label} | {med[k]:,.0f} | {100 * waits[k]['wait_share']:.1f}% | {waits[k]['samples_s']:,.0f} |")
    print(f"ratio={med['recommended'] / med['none']:.2f} wait_share_recommended={waits['recommended']['wait_share']:.4f} "
          f"wait_share_none={waits['none']['wait_share']:.4f} "
          f"train_ratio={waits['recommended']['samples_s'] / waits['none']['samples_s']:.2f}")


if __name__ == "__main__":
    main()
