"""How long `tp --help` takes to start, next to a bare `python -c pass` (median of N runs each,
alternating). Run: .venv/bin/python benchmarks/cli_startup.py [N]"""
import statistics
import subprocess
import sys
import time
from pathlib import Path

TP = Path(sys.executable).with_name("tp")


def timed(argv):
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def main(n=10):
    cases = {"python -c pass": [sys.executable, "-c", "pass"], "tp --help": [str(TP), "--help"],
             "tp train --help": [str(TP), "train", "--help"]}
    times = {name: [] for name in cases}
    for _ in range(n):
        for name, argv in cases.items(): times[name].append(timed(argv))
    for name, ts in times.items(): print(f"{name:18s} median {statistics.median(ts)*1000:6.1f} ms  max {max(ts)*1000:6.1f} ms")
    median = statistics.median(times["tp --help"])
    print(f"tp_help_median_s={median:.3f} goal=0.5 ok={median < 0.5}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
