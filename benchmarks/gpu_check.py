"""One short GPU check (run where a GPU exists; never in CI): mixed precision, CUDA memory, throughput vs a raw
loop, the FSDP strategy end to end with a kill and resume, and the GPU monitor rules.

Part 1 — Trainer vs a raw PyTorch loop on the GPU, side by side, alternating, median of --runs runs, for
precision no / bf16 / fp16, and bf16 compiled (`training.compile`: default and max-autotune-no-cudagraphs modes,
compile time left out): ResNet-18 (grayscale stem) on MNIST-5k, batch 256. Per precision: samples/s of
each, their ratio, peak CUDA memory (torch.cuda.max_memory_allocated) of each, final train loss of each.
Part 2 — `tp train` end to end on the GPU (bf16) and through `torchrun --nproc_per_node 1` with
distributed.strategy=fsdp: killed at a step (TP_FAULT=train:kill@S), resumed (--resume auto, in place),
completed; the exported best_model.safetensors loads into a plain model. The gpu_memory rule with a tiny
threshold must raise its alert.
Run: python benchmarks/gpu_check.py [--runs 3] [--epochs 2]    (prints one JSON line per measurement)"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
from training_pipeline.callback.metrics import MetricsCallback  # noqa: E402
from training_pipeline.callback.progress import ProgressCallback  # noqa: E402
from training_pipeline.callback.schedule import GradNormCallback  # noqa: E402
from training_pipeline.callback.tracker import NonFiniteLossCallback  # noqa: E402
from training_pipeline.callback.profiling import StepTimer  # noqa: E402
from training_pipeline.config.load import validate_config  # noqa: E402
from training_pipeline.core import set_seed  # noqa: E402
from training_pipeline.data.loaders import build_data  # noqa: E402
from training_pipeline.models.factory import model_from_config  # noqa: E402
from training_pipeline.data.prepare import prepare_data  # noqa: E402
from training_pipeline.loop.trainer import Trainer, dynamo_plugin, make_accelerator  # noqa: E402
from training_pipeline.callback.compile import CompileCallback  # noqa: E402

BATCH, LR, SEED = 256, 1e-3, 0


def report(**fields): print(json.dumps(fields), flush=True)


def config_for(d):
    return validate_config({"experiment": {"name": "gpu"}, "model": {"architecture": "resnet18"}, "seed": SEED,
                            "data": {"data_dir": str(d), "train_dir": f"{d}/processed/train", "val_dir": f"{d}/processed/val",
                                     "test_dir": None, "num_workers": 0, "pin_memory": True, "persistent_workers": False}})


def new_model(cfg, data):
    set_seed(SEED)
    model = model_from_config(cfg.model, data.input_shape, data.num_classes, data.num_classes)
    return model, torch.optim.AdamW(model.parameters(), lr=LR)


def raw_loop(cfg, data, epochs, precision):
    model, opt = new_model(cfg, data)
    model = model.cuda()
    x, y = data.datasets["train"].x, data.datasets["train"].y
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    loss_fn = nn.CrossEntropyLoss()
    torch.cuda.synchronize(); t0 = time.perf_counter(); seen = 0
    for epoch in range(epochs):
        g = torch.Generator(); g.manual_seed(SEED + epoch)
        order = torch.randperm(len(y), generator=g)
        total = torch.zeros((), device="cuda")
        for i in range(0, len(y), BATCH):
            idx = order[i:i + BATCH]
            xb, yb = x[idx].pin_memory().cuda(non_blocking=True), y[idx].pin_memory().cuda(non_blocking=True)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(xb), yb)
            scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); opt.zero_grad(set_to_none=True)
            total += loss.detach() * len(yb); seen += len(yb)
    torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0), float(total) / len(y)


def trainer_loop(cfg, data, epochs, precision, guards=False, compile_mode="no"):
    "samples/s (the batches that compiled left out: their seconds are CompileCallback's) and the last epoch's loss."
    model, opt = new_model(cfg, data)
    loaders = {"train": data.loader("train", BATCH, cfg.data, seed=SEED, even=True)}
    # guards: the callbacks `tp train` adds — the non-finite loss guard (a host sync per step) and the step timer
    extra = [NonFiniteLossCallback("stop"), StepTimer()] if guards else []
    compiling = [CompileCallback()] if compile_mode != "no" else []
    accelerator = make_accelerator(precision, cpu=False, dynamo_plugin=dynamo_plugin(compile_mode))
    t = Trainer(model, loaders, nn.CrossEntropyLoss(), opt, logger=lambda *_: None, accelerator=accelerator,
                cbs=[MetricsCallback(log_every=50), GradNormCallback(log_every=50), ProgressCallback(), *extra,
                     *compiling])
    torch.cuda.synchronize(); t0 = time.perf_counter()
    t.fit(epochs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0 - (compiling[0].seconds if compiling else 0.0)
    seen = sum(r["samples"] for r in t.history if r["split"] == "train" and "epoch_time_s" in r)
    return seen / seconds, [r["loss"] for r in t.history if r["split"] == "train" and "epoch_time_s" in r][-1]


def part1(data_dir, runs, epochs):
    cfg = config_for(data_dir)
    data = build_data(cfg)
    # (precision, guards, training.compile): the last two compile with TorchInductor (Triton kernels on the GPU)
    for precision, guards, mode in (("no", False, "no"), ("no", True, "no"), ("bf16", False, "no"), ("fp16", False, "no"),
                                    ("bf16", False, "default"), ("bf16", False, "max-autotune-no-cudagraphs")):
        # warm-up: cuDNN autotune, allocator
        raw_loop(cfg, data, 1, precision); trainer_loop(cfg, data, 1, precision, guards, mode)
        raw, tr, mem_raw, mem_tr, losses = [], [], [], [], None
        for _ in range(runs):
            torch.cuda.reset_peak_memory_stats(); r, raw_loss = raw_loop(cfg, data, epochs, precision)
            mem_raw.append(torch.cuda.max_memory_allocated()); raw.append(r)
            torch.cuda.reset_peak_memory_stats(); t, tr_loss = trainer_loop(cfg, data, epochs, precision, guards, mode)
            mem_tr.append(torch.cuda.max_memory_allocated()); tr.append(t)
            losses = (round(raw_loss, 4), round(tr_loss, 4))
        report(part="throughput", precision=precision, guards=guards, compile=mode, raw_samples_per_s=round(statistics.median(raw)),
               trainer_samples_per_s=round(statistics.median(tr)), trainer_over_raw_time=round(statistics.median(raw) / statistics.median(tr), 4),
               peak_mem_mib_raw=round(max(mem_raw) / 2**20), peak_mem_mib_trainer=round(max(mem_tr) / 2**20),
               final_loss_raw_trainer=losses, runs=runs, epochs=epochs)


def tp(*args, env=None, launcher=None):
    cmd = [*(launcher or [sys.executable, "-m", "training_pipeline"]), *map(str, args)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=WORK, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    return r, time.perf_counter() - t0


def part2(data_dir):
    d = Path(data_dir)
    over = [f"data.data_dir={d}", f"data.train_dir={d}/processed/train", f"data.val_dir={d}/processed/val",
            f"data.test_dir={d}/processed/test", "training.epochs=4", "logging.log_frequency=10"]
    r, secs = tp("train", "--config", REPO / "config/digits.yaml", *over, "training.mixed_precision=bf16",
                 "alerts.rules.gpu_memory.max_pct=0.0001")
    run = sorted((WORK / "runs/digits").iterdir())[-1]
    events = [json.loads(l) for l in (run / "events.jsonl").read_text().splitlines()]
    report(part="tp train bf16", rc=r.returncode, seconds=round(secs, 1), summary=r.stdout.strip().splitlines()[-1:],
           gpu_memory_alerts=[e.get("message") for e in events if e.get("rule") == "gpu_memory"][:1], stderr=r.stderr[-600:] if r.returncode else "")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "training_pipeline", "train"]
    fsdp = [*over, "experiment.name=fsdp", "distributed.strategy=fsdp",
            "distributed.fsdp.min_num_params=2000", "training.mixed_precision=bf16", "checkpointing.save_every_n_steps=20"]
    r1, s1 = tp("--config", REPO / "config/digits.yaml", *fsdp, launcher=torchrun, env={"TP_FAULT": "train:kill@50"})
    r2, s2 = tp("--config", REPO / "config/digits.yaml", *fsdp, launcher=torchrun)
    if not (WORK / "runs/fsdp").exists():
        report(part="fsdp kill+resume", killed_rc=r1.returncode, resumed_rc=r2.returncode, error="no run directory",
               stderr=r1.stderr[-2500:] + "\n----\n" + r2.stderr[-2500:])
        return
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "fsdp_stderr.txt").write_text(r1.stderr + "\n----\n" + r2.stderr)
    run = sorted((WORK / "runs/fsdp").iterdir())[-1]
    meta = json.loads((run / "run.json").read_text())
    events = [json.loads(l) for l in (run / "events.jsonl").read_text().splitlines()]
    report(part="fsdp files", checkpoints=sorted(p.name for p in (run / "checkpoints").iterdir()),
           events=[e["event"] for e in events][-12:], status=meta.get("status"), error=meta.get("error"))
    from training_pipeline.loop.checkpoint import load_exported_model
    try: loaded, spec = load_exported_model(run / "checkpoints" / "best_model.safetensors")
    except Exception as e: loaded, spec = e, {}
    report(part="fsdp kill+resume", killed_rc=r1.returncode, resumed_rc=r2.returncode, seconds=(round(s1, 1), round(s2, 1)),
           status=meta.get("status"), runs=len(list((WORK / "runs/fsdp").iterdir())),
           resumed=[e.get("checkpoint", "").split("/")[-1] for e in events if e["event"] == "resumed"],
           val_accuracy=meta.get("summary", {}).get("val_accuracy"), exported_model=f"{type(loaded).__name__} ({spec.get('architecture')})",
           stderr=(r1.stderr[-800:] + "\n----\n" + r2.stderr[-1500:]) if r2.returncode else "")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: 1,2")
    args = ap.parse_args()
    report(part="env", torch=torch.__version__, gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    with tempfile.TemporaryDirectory() as tmp:
        WORK = Path(tmp)
        mnist = prepare_data(f"{tmp}/mnist", "mnist5k")["data_dir"]
        digits = prepare_data(f"{tmp}/digits", "digits")["data_dir"]
        if "2" not in args.skip:
            try: part2(digits)
            except Exception as e: report(part="part2 failed", error=repr(e))
        if "1" not in args.skip: part1(mnist, args.runs, args.epochs)
