"""How fast `tp ui` answers `/api/runs` and `/` with many runs (issue 19: /api/runs <= 1 s at 10,000 runs, warm).

For each size, synthetic run directories (`training_pipeline.ui.synthetic_run`: run.json, the full resolved config.yaml,
16 metric rows, events) are written to runs-<size>/, a fresh `tp ui` subprocess is started on it, and timed:
  cold      the first /api/runs after the server starts (the index is built then: every run read once)
  warm      /api/runs and / again (nothing changed: a stat of each finished run's run.json), median of --repeat
  changed   /api/runs after 10 runs changed as training runs do (a metric row appended, run.json rewritten with a new
            heartbeat): only those 10 are read again, median of --repeat
Run dirs already under --out are reused (only missing ones are written).
Run: .venv/bin/python benchmarks/ui_index.py [--sizes 100 1000 10000] [--repeat 5] [--out DIR]"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TP = Path(sys.executable).with_name("tp")


def fetch(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r: body = r.read()
    return time.perf_counter() - t, len(body)


def start(runs: Path):
    proc = subprocess.Popen([str(TP), "ui", "--runs-dir", str(runs), "--port", "0"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    return proc, proc.stdout.readline().split(": ", 1)[1].strip()


def main():
    from training_pipeline.ui.index import synthetic_run
    from training_pipeline.core import atomic_write_json
    from training_pipeline.track.store import json_line
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="where to write the run dirs (default: a temp dir, removed)")
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory() if not a.out else None
    base = Path(a.out or tmp.name)
    t0, results = time.time() - 10 * 86400, {}
    print("| runs | write s | /api/runs cold s | /api/runs warm s | / warm s | /api/runs after 10 changed s | JSON MB | HTML MB |")
    print("|---|---|---|---|---|---|---|---|")
    for size in a.sizes:
        w, runs = time.perf_counter(), base / f"runs-{size}"
        for i in range(size):
            if (runs / f"exp-{i % 20:02d}" / f"run-{i:06d}" / "run.json").exists(): continue
            synthetic_run(runs, f"exp-{i % 20:02d}", f"run-{i:06d}", {"training.learning_rate": 10 ** -(2 + (i % 7) / 3),
                          "training.batch_size": 32 << (i % 3), "model.dropout": round(0.05 * (i % 5), 2)},
                          status=("completed", "completed", "failed", "pruned", "interrupted")[i % 5], seed=i, created=t0 + i, steps=100)
        write_s = time.perf_counter() - w
        proc, url = start(runs)
        try:
            cold, _ = fetch(url + "api/runs")
            api = [fetch(url + "api/runs") for _ in range(a.repeat)]
            page = [fetch(url) for _ in range(a.repeat)]
            changed = []
            for r in range(a.repeat):
                for j in range(10):
                    run_dir = runs / f"exp-{j % 20:02d}" / f"run-{j:06d}"
                    with open(run_dir / "metrics.jsonl", "a") as f: f.write(json_line({"step": 1000 + r, "epoch": 9, "split": "val", "accuracy": 0.5}))
                    meta = json.loads((run_dir / "run.json").read_text()); meta["heartbeat"] = meta["ended"]
                    atomic_write_json(run_dir / "run.json", meta)
                time.sleep(1.05)  # past the index's max_age_s, so the next request refreshes
                changed.append(fetch(url + "api/runs")[0])
            count = json.loads(urllib.request.urlopen(url + "api/runs", timeout=600).read())["total"]
            assert count == size, (count, size)
        finally:
            os.killpg(proc.pid, signal.SIGTERM); proc.wait(30)
        res = {"cold": cold, "warm": statistics.median(t for t, _ in api), "page": statistics.median(t for t, _ in page),
               "changed": statistics.median(changed), "json_mb": api[0][1] / 1e6, "html_mb": page[0][1] / 1e6}
        results[size] = res
        print(f"| {size:,} | {write_s:.1f} | {res['cold']:.3f} | {res['warm']:.3f} | {res['page']:.3f} | {res['changed']:.3f} "
              f"| {res['json_mb']:.1f} | {res['html_mb']:.1f} |", flush=True)
    big = max(results)
    print(" ".join(f"{k}_{n}={v[k]:.3f}" for n, v in results.items() for k in ("cold", "warm", "page", "changed"))
          + f" goal_warm_s=1.0 ok={results[big]['warm'] <= 1.0}")


if __name__ == "__main__":
    main()
