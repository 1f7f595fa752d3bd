"""How long training is blocked per checkpoint of a full ResNet-50 training state (model, AdamW state, scheduler, RNG)
saved locally with the async writer vs into a run whose runs dir is an S3 bucket (the same async writer into the run's
local staging copy + the background RunMirror upload to a real S3 API server, moto_server). Blocked: from the start of
the save until the writer's submit returns, as in checkpoint_async.py. Saves alternate local / remote, medians of N.
Between saves the training loop is busy: ResNet-50 forward/backward/AdamW steps on 2x3x64x64 random batches run until
the background work is done (local: the write; remote: the checkpoint committed in the bucket, its MANIFEST.json
there), at least --steps of them, each timed: the upload may slow them. Goal: remote blocked <= 1.5x local blocked.
--threads T: torch intra-op threads (default torch's own: one per core). --model NAME: another torchvision model (CI
checks that the script runs with a small one).
Run: .venv/bin/python benchmarks/remote_checkpoint.py [N] [--steps K] [--threads T] [--model resnet50]"""
import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from training_pipeline.loop.checkpoint import AsyncCheckpointWriter, rng_state, save_checkpoint
from training_pipeline.callback.checkpoint import _clone_cpu
from training_pipeline.core import free_port

MOTO = Path(sys.executable).with_name("moto_server")
RUN = "exp/run1"


def full_state(model, opt, sched, step):
    return dict(model_state=model.state_dict(), optimizer_state=opt.state_dict(), scheduler_state=sched.state_dict(),
                rng=rng_state(), trainer_state={"epoch": 0, "batches_done": step})


def cpu_s(pid):
    "CPU seconds (user + system) process `pid` has used so far (Linux /proc); nan elsewhere."
    try: fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError: return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_moto(log):
    port = free_port()
    server = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try: socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
        except OSError:
            if server.poll() is not None: raise RuntimeError(f"moto_server exited with {server.returncode}")
            if time.monotonic() > deadline: raise RuntimeError("moto_server did not answer within 60 s")
            time.sleep(0.1)
    return server, port


def main(n=5, min_steps=3, threads=None, model_name="resnet50"):
    if threads: torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 1000, (2,))

    def train_step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step(); sched.step()
        return time.perf_counter() - t0

    idle = [train_step() for _ in range(3)][1:]  # optimizer state exists (exp_avg, exp_avg_sq); the first step is a warm-up
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) + \
           sum(v.numel() * v.element_size() for s in opt.state_dict()["state"].values() for v in s.values() if torch.is_tensor(v))

    blocked = {"local": [], "remote": []}
    steps = {"local": [], "remote": []}
    done_s = {"local": [], "remote": []}  # local: the write finished; remote: committed in the bucket
    moto_cpu = []  # CPU seconds the S3 server (on this machine, unlike a real bucket) used per remote save
    with tempfile.TemporaryDirectory() as d:
        log = open(Path(d) / "moto.log", "w")
        server = mirror = None
        try:
            server, port = start_moto(log)
            os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
            import boto3
            boto3.client("s3").create_bucket(Bucket="bench")
            from training_pipeline.track.storage import RunMirror, Storage
            storage = Storage("s3://bench/runs")
            local_run = Path(d) / "staging" / RUN
            (local_run / "checkpoints").mkdir(parents=True)
            mirror = RunMirror(storage, local_run, RUN, interval_s=0.2, remote_timeout_s=600).start()
            writer = AsyncCheckpointWriter()
            for i in range(n):
                for case in ("local", "remote"):
                    step = 2 * i + (case == "remote")
                    root = Path(d) / "local" / "checkpoints" if case == "local" else local_run / "checkpoints"
                    manifest = f"{RUN}/checkpoints/step-{step:08d}/MANIFEST.json"
                    m0, t0 = cpu_s(server.pid), time.perf_counter()
                    state = _clone_cpu(full_state(model, opt, sched, step))
                    writer.submit(lambda s=state, r=root, k=step: save_checkpoint(r, k, **s))
                    blocked[case].append(time.perf_counter() - t0)  # what training waits for
                    del state
                    count, finished = 0, None
                    while finished is None or count < min_steps:
                        steps[case].append(train_step()); count += 1
                        if finished is None:
                            if case == "local": busy = writer.thread is not None and writer.thread.is_alive()
                            else: busy = not storage.exists(manifest)
                            if not busy: finished = time.perf_counter() - t0
                        if finished is None and time.perf_counter() - t0 > 900:
                            raise RuntimeError(f"step-{step:08d} not {'written' if case == 'local' else 'committed'} after 900 s "
                                               f"(mirror error: {mirror.error!r})")
                    writer.wait()  # raises if the write failed
                    done_s[case].append(finished)
                    if case == "remote": moto_cpu.append(cpu_s(server.pid) - m0)
                    print(f"save {i + 1}/{n} {case}: blocked {blocked[case][-1]:.3f} s, "
                          f"{'written' if case == 'local' else 'committed in the bucket'} after {finished:.2f} s, "
                          f"{count} steps, median {statistics.median(steps[case][-count:]):.3f} s"
                          + (f", moto_server CPU {moto_cpu[-1]:.1f} s" if case == "remote" else ""), flush=True)
            t0 = time.perf_counter()
            mirror.close(); closed = mirror; mirror = None
            close_s = time.perf_counter() - t0
            if closed.error is not None: print(f"mirror error: {closed.error!r}")
            events = [json.loads(line) for line in (local_run / "events.jsonl").read_text().splitlines()]
            uploads = [e["seconds"] for e in events if e["event"] == "checkpoint_uploaded"]
            others = [e for e in events if e["event"] != "checkpoint_uploaded"]
            print(f"mirror: {len(uploads)} checkpoints uploaded and verified in {', '.join(f'{u:.2f}' for u in uploads)} s "
                  f"(upload + read-back); other events: {others or 'none'}; close {close_s:.2f} s")
        finally:
            if mirror is not None:
                try: mirror.close(timeout_s=30)
                except Exception as e: print(f"mirror close failed: {e!r}")
            if server is not None:
                server.terminate()
                try: server.wait(timeout=30)
                except subprocess.TimeoutExpired: server.kill(); server.wait()
            log.close()

    lb, rb = statistics.median(blocked["local"]), statistics.median(blocked["remote"])
    sl, sr, si = statistics.median(steps["local"]), statistics.median(steps["remote"]), statistics.median(idle)
    commit, written = statistics.median(done_s["remote"]), statistics.median(done_s["local"])
    print(f"{model_name} full state {size / 2**20:.0f} MiB, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores: blocked median local {lb:.3f} s, remote {rb:.3f} s (ratio {rb / lb:.2f}); "
          f"written locally after {written:.2f} s, committed in the bucket after {commit:.2f} s; "
          f"train step median {sl:.3f} s local ({len(steps['local'])} steps), {sr:.3f} s remote ({len(steps['remote'])} steps), "
          f"{si:.3f} s with nothing in the background; moto_server used median {statistics.median(moto_cpu):.1f} CPU s per remote save")
    print(f"state_mib={size / 2**20:.0f} local_blocked_s={lb:.3f} remote_blocked_s={rb:.3f} ratio={rb / lb:.3f} goal=1.50 "
          f"commit_s={commit:.3f} step_local_s={sl:.3f} step_remote_s={sr:.3f} write_s={written:.3f} step_idle_s={si:.3f} moto_cpu_s={statistics.median(moto_cpu):.1f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", nargs="?", type=int, default=5, help="saves per case (medians of N)")
    p.add_argument("--steps", type=int, default=3, help="at least this many train steps after each save")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--model", default="resnet50", help="a torchvision model name")
    a = p.parse_args()
    main(a.n, a.steps, a.threads, a.model)
