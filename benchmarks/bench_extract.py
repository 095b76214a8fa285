"""Extraction throughput: diag's every-probe capture against the bare model forward, in one run.

(a) capture overhead: ``Backbone.capture`` (every probe point pooled on the device, plus logits) against
    the bare ``model(x)`` with the same precision, memory format and batch size, on the same tensors
    already in memory. Goal: ratio >= 0.9.
(b) end to end: ``diag.engine.extract`` from files on disk (decode, resize, tokenise, batching, host copies
    included) against (a)'s bare forward. Goal on GPU: >= 0.8 (the data path keeps the GPU fed).

Rounds are interleaved (bare, capture, end to end, bare, ...) and the median of each is reported, so a
noisy neighbour slows all three alike. Usage::

    python benchmarks/bench_extract.py                 # both backbones, CPU here
    python benchmarks/bench_extract.py --device cuda --random-init   # GPU machine without weight wheels
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diag.data import open_data
from diag.device import resolve_device, resolve_precision
from diag.engine.extract import ExtractConfig, extract
from diag.models import load


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


def _autocast(device: torch.device, precision: str) -> Any:
    import contextlib

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    return (
        torch.autocast(device.type, dtype=dtypes[precision])
        if precision in dtypes
        else contextlib.nullcontext()
    )


def bench_image(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    bb = load("efficientnet_lite0", pretrained=not args.random_init, image_size=args.image_size)
    assert bb.modality == "image"
    data = open_data(args.images)
    if args.n and args.n < len(data):
        data = data.subset(range(args.n))
    precision = resolve_precision(args.precision, device)
    channels_last = device.type == "cuda"
    model = bb.model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    tf = bb.transform()
    x_all = torch.stack([tf(data.load_image(i)) for i in range(len(data))])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batches = [
        x_all[s : s + args.batch_size].to(device).contiguous(memory_format=fmt)
        for s in range(0, len(x_all), args.batch_size)
    ]
    cfg = ExtractConfig(device=str(device), precision=precision, batch_size=args.batch_size)
    return _run(
        name="efficientnet_lite0",
        bare=lambda b: model(b),
        capture=bb.capture,
        batches=batches,
        e2e=lambda: len(extract(bb, data, cfg)),
        device=device,
        precision=precision,
        rounds=args.rounds,
        extra={
            "image_size": bb.preprocessing["input_size"][1],
            "n": len(data),
            "channels_last": channels_last,
        },
    )


def bench_text(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    bb = load(args.text_backbone, pretrained=not args.random_init, max_length=args.max_length)
    assert bb.modality == "text"
    data = open_data(args.texts)
    if args.n and args.n < len(data):
        data = data.subset(range(args.n))
    assert data.texts is not None
    precision = resolve_precision(args.precision, device)
    model = bb.model.to(device).eval()
    texts = list(data.texts)
    batches = [
        bb.tokenize(texts[s : s + args.batch_size]).to(device) for s in range(0, len(texts), args.batch_size)
    ]
    cfg = ExtractConfig(device=str(device), precision=precision, batch_size=args.batch_size)
    return _run(
        name=args.text_backbone,
        bare=lambda b: model(input_ids=b.input_ids, attention_mask=b.attention_mask),
        capture=bb.capture,
        batches=batches,
        e2e=lambda: len(extract(bb, data, cfg)),
        device=device,
        precision=precision,
        rounds=args.rounds,
        extra={"n": len(data), "max_length": bb.max_length},
    )


def _run(
    *,
    name: str,
    bare: Callable[[Any], Any],
    capture: Callable[[Any], Any],
    batches: list[Any],
    e2e: Callable[[], int],
    device: torch.device,
    precision: str,
    rounds: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    n = sum(len(b) for b in batches)

    def loop(fn: Callable[[Any], Any]) -> Callable[[], int]:
        def run() -> int:
            with torch.inference_mode(), _autocast(device, precision):
                for b in batches:
                    fn(b)
            return n

        return run

    loop(bare)()  # warm-up (cuDNN autotune, allocator, first-call overheads)
    loop(capture)()
    res: dict[str, list[float]] = {"bare": [], "capture": [], "end_to_end": []}
    for _ in range(rounds):
        res["bare"].append(_timed(loop(bare), device))
        res["capture"].append(_timed(loop(capture), device))
        res["end_to_end"].append(_timed(e2e, device))
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {
        "backbone": name,
        "device": str(device),
        "precision": precision,
        "batch_size": len(batches[0]),
        **extra,
        "items_per_s": {k: round(v, 1) for k, v in med.items()},
        "capture_over_bare": round(med["capture"] / med["bare"], 3),
        "end_to_end_over_bare": round(med["end_to_end"] / med["bare"], 3),
        "rounds": {k: [round(x, 1) for x in v] for k, v in res.items()},
    }
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 64 on CPU")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", default="samples:mnist", help="image data for the end-to-end pass")
    p.add_argument("--texts", default="samples:speeches", help="text data for the end-to-end pass")
    p.add_argument("--n", type=int, default=0, help="use only the first N items (0 = all)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=["image", "text"])
    p.add_argument(
        "--text-backbone",
        default="minilm",
        help="e.g. hf:FOLDER (a config and tokenizer; with --random-init)",
    )
    p.add_argument("--max-length", type=int, default=256, help="token length of the text backbone")
    p.add_argument("--random-init", action="store_true", help="random-init weights (same architecture)")
    p.add_argument("--out", type=Path, default=here / "results" / "extract.json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    args.batch_size = args.batch_size or (256 if device.type == "cuda" else 64)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    results = []
    if args.only in (None, "image"):
        results.append(bench_image(args, device))
    if args.only in (None, "text"):
        results.append(bench_text(args, device))
    hw = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"hardware": hw, "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
