"""Fine-tuning throughput: diag's training engine against a plain PyTorch loop, and a sample sweep.

(a) training step: the training loop of :func:`diag.train.finetune` as users run it (batches cut
    from the in-memory uint8 cache and normalised on the device, AdamW with per-block groups, warm-up +
    cosine schedule, metrics accumulated on the device and logged, STOP-file checks, deterministic
    algorithms on CPU), timed by the engine itself over its second epoch, against a plain loop over the
    same model, the same decoded images (already normalised floats on the device), the same batch size,
    precision and memory format: forward, cross-entropy, backward, ``AdamW.step``. Every block is
    trained (``freeze=0``), so both do the same arithmetic. Goal: ratio >= 0.95.
(b) sweep wall time: ``diag sweep --preset small`` on a bundled sample (every depth and from scratch,
    over the seeds), end to end.

Rounds of (a) are interleaved (plain, engine, plain, ...) and medians reported, so a noisy neighbour
slows both alike. Usage::

    python benchmarks/bench_finetune.py                          # CPU, Lite0 at 64 px, then the sweep
    python benchmarks/bench_finetune.py --no-sweep --rounds 5
    python benchmarks/bench_finetune.py --device cuda --random-init --batch-size 128 --image-size 224
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diag.data import open_data
from diag.device import resolve_device, resolve_precision
from diag.models import load
from diag.train import PRESETS, FinetuneConfig, TrainCallback, TrainState, finetune
from diag.train.data import prepare_data as _prepare
from diag.train.model import build_model as _build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], int], device: torch.device) -> float:
    """Items per second of one call of ``fn`` (which returns the item count)."""
    _sync(device)
    t = time.perf_counter()
    n = fn()
    _sync(device)
    return n / (time.perf_counter() - t)


class _CpuClock(TrainCallback):
    """Process CPU seconds of the last epoch's training steps (validation excluded): on a shared machine
    CPU time is far steadier than wall time, since waiting for the cores is not counted."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def on_epoch_start(self, state: TrainState) -> None:
        self.start = time.process_time()

    def on_step_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if state.step % state.steps_per_epoch == 0:
            self.seconds = time.process_time() - self.start


def bench_step(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    precision = resolve_precision(args.precision, device)
    cfg = FinetuneConfig(
        freeze=0,
        epochs=2,  # the engine's second epoch is timed; the first one warms it up
        batch_size=args.batch_size,
        image_size=args.image_size,
        device=str(device),
        precision=precision,
        augment="none",  # the plain loop does not augment: the same arithmetic in both
        save_best=False,
    )
    bb = load(args.backbone, pretrained=not args.random_init, image_size=args.image_size)
    assert bb.modality == "image"
    data = open_data(args.data)
    prep = _prepare(bb, data, None, cfg)  # the very tensors the engine trains on
    cuda = device.type == "cuda"

    # The plain loop: its own copy of the same model, pre-normalised float batches on the device.
    plain = _build_model(bb, len(prep.classes)).to(device).train()
    fmt = torch.channels_last if cuda else torch.contiguous_format
    if cuda:
        plain.to(memory_format=torch.channels_last)
    assert isinstance(prep.train.x, torch.Tensor)
    mean = torch.tensor(bb.preprocessing["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(bb.preprocessing["std"]).view(1, -1, 1, 1)
    x_all = ((prep.train.x.float() / 255.0 - mean) / std).to(device).contiguous(memory_format=fmt)
    y_all = prep.train.y.to(device)
    opt = torch.optim.AdamW(plain.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cuda or None)
    autocast: Any = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )
    bs = cfg.batch_size
    n = prep.train.n
    steps = n // bs + (1 if n % bs > 1 else 0)  # the engine's batches per epoch
    gen = torch.Generator().manual_seed(0)

    def plain_epoch() -> int:
        order = torch.randperm(n, generator=gen).to(device)
        seen = 0
        for i in range(steps):
            idx = order[i * bs : (i + 1) * bs]
            x, y = x_all[idx], y_all[idx]
            with autocast:
                logits = plain(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
        return seen

    items = min(n, steps * bs)

    def engine_epoch(out: Path) -> tuple[float, float]:
        """The whole of finetune(); epoch 2's training loop: items/s by its own record, and by CPU time."""
        clock = _CpuClock()
        res = finetune(data, bb, cfg, out=out, overwrite=True, callbacks=[clock])
        return float(res.history[-1]["items_per_s"]), items / clock.seconds

    def plain_cpu() -> tuple[float, float]:
        c = time.process_time()
        wall = _timed(plain_epoch, device)
        return wall, items / (time.process_time() - c)

    res: dict[str, list[float]] = {"plain": [], "engine": [], "plain_cpu": [], "engine_cpu": []}
    with tempfile.TemporaryDirectory(prefix="bench-ft-") as tmp:
        plain_epoch()  # warm-up: allocator, autotuning, first-call overheads
        for _ in range(args.rounds):
            for key, (wall, cpu) in (("plain", plain_cpu()), ("engine", engine_epoch(Path(tmp)))):
                res[key].append(wall)
                res[key + "_cpu"].append(cpu)
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {
        "backbone": args.backbone,
        "pretrained": not args.random_init,
        "device": str(device),
        "precision": precision,
        "channels_last": cuda,
        "batch_size": bs,
        "image_size": args.image_size,
        "data": args.data,
        "items_per_epoch": items,
        "items_per_s": {k: round(v, 1) for k, v in med.items()},
        "engine_over_plain": round(med["engine"] / med["plain"], 3),
        # Each round's engine/plain ratio, then the median: robust to load that drifts between rounds.
        "engine_over_plain_paired": round(
            statistics.median(e / p for e, p in zip(res["engine"], res["plain"], strict=True)), 3
        ),
        # Items per CPU-second (process time, all threads): what the loops cost, whatever the load.
        "cpu_engine_over_plain": round(med["engine_cpu"] / med["plain_cpu"], 3),
        "rounds": {k: [round(x, 1) for x in v] for k, v in res.items()},
    }
    print(json.dumps(out), flush=True)
    return out


def bench_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from diag.train.sweep import sweep

    seeds = [int(s) for s in args.sweep_seeds.split(",")]
    cfg = FinetuneConfig(**PRESETS["small"], device=args.sweep_device)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        t = time.perf_counter()
        res = sweep(args.sweep_target, args.backbone, cfg, out=Path(tmp), seeds=seeds)
        wall = time.perf_counter() - t
    out = {
        "target": args.sweep_target,
        "backbone": args.backbone,
        "preset": "small",
        "seeds": seeds,
        "n_runs": res.n_runs,
        "wall_s": round(wall, 1),
        "s_per_run": round(wall / res.n_runs, 1),
        "depths": {d["label"]: [d["mean"], d["std"]] for d in res.depths},
        "scratch": [res.scratch_mean, res.scratch_std],
        "best_freeze": res.best_freeze,
        "best_frozen_through": res.best_frozen_through,
        "best_mean": res.best_mean,
        "negative_transfer_gap": res.negative_transfer_gap,
        "device": args.sweep_device,
    }
    print(json.dumps(out), flush=True)
    return out


def _markdown(step: dict[str, Any] | None, sw: dict[str, Any] | None) -> str:
    lines = []
    if step:
        lines += [
            "| backbone | device | precision | batch | px | plain loop | diag engine | engine / plain |",
            "|---|---|---|---|---|---|---|---|",
            f"| `{step['backbone']}` | {step['device']} | {step['precision']} | {step['batch_size']} | "
            f"{step['image_size']} | {step['items_per_s']['plain']} img/s | "
            f"{step['items_per_s']['engine']} img/s | **{step['engine_over_plain']}** "
            f"(paired {step['engine_over_plain_paired']}; per CPU-second {step['cpu_engine_over_plain']}) |",
        ]
    if sw:
        depths = ", ".join(f"{k} {m:.3f}±{s:.3f}" for k, (m, s) in sw["depths"].items())
        lines += [
            "",
            "| sweep | runs | wall | per run | best depth | depths (mean±std) | scratch | gap |",
            "|---|---|---|---|---|---|---|---|",
            f"| `{sw['target']}`, `{sw['backbone']}`, preset small | {sw['n_runs']} | {sw['wall_s']} s | "
            f"{sw['s_per_run']} s | {sw['best_frozen_through'] or 'nothing frozen'} "
            f"(K={sw['best_freeze']}) | {depths} | "
            f"{sw['scratch'][0]:.3f}±{sw['scratch'][1]:.3f} | {sw['negative_transfer_gap']:+.3f} |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--precision", default="auto", help="fp32, bf16 or auto (bf16 on CUDA)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--random-init", action="store_true", help="random-init weights (same architecture)")
    p.add_argument("--data", default="samples:uci-digits", help="training images for (a)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (default: all cores; 1 is steadier on a shared box)",
    )
    p.add_argument("--no-step", action="store_true", help="skip (a); the output keeps its previous (a)")
    p.add_argument("--no-sweep", action="store_true", help="skip (b); the output keeps its previous (b)")
    p.add_argument("--sweep-target", default="samples:uci-digits")
    p.add_argument("--sweep-seeds", default="0,1,2")
    p.add_argument("--sweep-device", default="cpu")
    p.add_argument("--out", type=Path, default=here / "results" / "finetune.json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    step = None if args.no_step else bench_step(args, device)
    sw = None if args.no_sweep else bench_sweep(args)
    hw = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # a part skipped this time keeps its previous measurement
        prev = json.loads(args.out.read_text())
        step = step or prev.get("train_step")
        sw = sw or prev.get("sweep")
    args.out.write_text(json.dumps({"hardware": hw, "train_step": step, "sweep": sw}, indent=1) + "\n")
    print(_markdown(step, sw))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
