"""Extraction throughput: diag's every-probe capture against the bare model forward, in one run.

(a) capture overhead: ``Backbone.capture`` (every probe point pooled on the device, plus logits) against
    the bare ``model(x)`` with the same precision, memory format and batch size, on the same tensors
    already in memory. Goal: ratio >= 0.9.
(b) end to end: ``diag.engine.extract`` from files on disk (decode, resize, tokenise, batching, host copies
    included) against (a)'s bare forward. Goal on GPU: >= 0.8 (the data path keeps the GPU fed).

(c) ``--data-path-only``: the data path alone, no forward pass, the path before against the one now:
    images, a DataLoader over a folder of PNGs with W workers (before: timm's float eval transform in
    each worker, 600 KB of float32 per 224-px image stacked and handed over; now: uint8 from the workers,
    150 KB, normalised later on the device); texts, the length-sorted batching (before: every text
    tokenised for its length, then each batch tokenised again; now: tokenised once, padded from the ids).
    On a CPU machine this is what bounds extraction on a fast GPU.

Rounds are interleaved (bare, capture, end to end, bare, ...; before, now, before, ...) and the median of
each is reported, so a noisy neighbour slows all alike. Usage::

    python benchmarks/bench_extract.py                 # both backbones, CPU here
    python benchmarks/bench_extract.py --device cuda --random-init   # GPU machine without weight wheels
    python benchmarks/bench_extract.py --data-path-only --workers 1 2 --n 2000
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


def _float_loader(bb: Any, data: Any, batch_size: int, workers: int) -> Any:
    """The image data path before uint8 batches: timm's float eval transform (ToTensor + Normalize) in
    each worker and the batch stacked as float32 (the code it replaced, kept here as the baseline)."""
    import timm.data
    from torch.utils.data import DataLoader

    from diag.models import ImageItems

    p = bb.preprocessing
    tf = timm.data.create_transform(
        input_size=tuple(p["input_size"]), interpolation=p["interpolation"], mean=tuple(p["mean"]),
        std=tuple(p["std"]), crop_pct=p["crop_pct"], crop_mode=p["crop_mode"], is_training=False,
    )  # fmt: skip

    def collate(items: list[Any]) -> tuple[torch.Tensor, Any, list[Any]]:
        ok = [(i, x) for i, x, _ in items if x is not None]
        failed = [(i, err) for i, x, err in items if x is None]
        return torch.tensor([i for i, _ in ok]), torch.stack([x for _, x in ok]) if ok else None, failed

    return DataLoader(
        ImageItems(data, tf), batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
        prefetch_factor=4 if workers > 0 else None,
    )  # fmt: skip


def _text_batches_before(bb: Any, texts: list[str], batch_size: int) -> list[Any]:
    """The text batching before: every text tokenised for its length, then each batch tokenised again."""
    import numpy as np

    ids = bb.tokenizer(texts, truncation=True, max_length=bb.max_length)["input_ids"]
    order = np.argsort(-np.asarray([len(x) for x in ids]), kind="stable")
    return [
        bb.tokenize([texts[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)
    ]


def _stage_ms(bb: Any, images: Any, rounds: int, n: int = 200) -> dict[str, Any]:
    """Milliseconds per image of each step of one worker (one thread; rounds interleaved, medians):
    decoding, the resize + crop (as loaded, RGB; and from the grey image, converted after), the float
    conversion + normalisation the workers did before, the uint8 tensor they make now."""
    import numpy as np
    from torchvision.transforms import Compose

    tf = bb.image_transform()
    resize_crop = Compose(tf.transforms[:-1])  # timm's Resize, CenterCrop (then MaybePILToTensor)
    float_tail = Compose(
        _float_loader(bb, images, 1, 0).dataset.transform.transforms[-2:]
    )  # ToTensor, Normalize
    rgb = [images.load_image(i) for i in range(n)]
    grey = [im.convert("L") for im in rgb]
    cropped = [resize_crop(im) for im in rgb]
    same = all(
        np.array_equal(np.asarray(c), np.asarray(resize_crop(g).convert("RGB")))
        for c, g in zip(cropped, grey, strict=True)
    )
    steps: dict[str, Callable[[int], Any]] = {
        "load_png": lambda i: images.load_image(i),
        "resize_crop_rgb": lambda i: resize_crop(rgb[i]),
        "resize_crop_grey_then_rgb": lambda i: resize_crop(grey[i]).convert("RGB"),
        "to_float_normalize": lambda i: float_tail(cropped[i]),
        "to_uint8_tensor": lambda i: tf.transforms[-1](cropped[i]),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            t = time.perf_counter()
            for i in range(n):
                fn(i)
            times[k].append(1e3 * (time.perf_counter() - t) / n)
    out: dict[str, Any] = {k: round(statistics.median(v), 3) for k, v in times.items()}
    out["grey_then_rgb_bitwise_equal"] = same
    return out


def bench_data_path(args: argparse.Namespace) -> dict[str, Any]:
    """Items/s of the data path alone (no forward), before against now, interleaved rounds, medians."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gpu import make_folder

    folder = args.folder or Path("/tmp") / f"diag-bench-digits-{args.n}"
    if not (folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == args.n):
        make_folder("mnist", folder, args.n, seed=0, workers=2)
    images = open_data(folder)
    bb = load("efficientnet_lite0", pretrained=not args.random_init, image_size=args.image_size)
    tb = load(args.text_backbone, pretrained=False, max_length=args.max_length)  # weights unused here
    text_data = open_data(args.texts)
    assert text_data.texts is not None
    texts = list(text_data.texts)

    def count(batches: Any) -> int:
        return sum(0 if b is None else len(b) for _, b, _ in batches)

    def image_now(w: int) -> Callable[[], int]:
        return lambda: count(bb.batches(images, args.batch_size, w, pin=False))

    def image_before(w: int) -> Callable[[], int]:
        return lambda: count(_float_loader(bb, images, args.batch_size, w))

    parts: dict[str, Callable[[], int]] = {}
    for w in args.workers:
        parts[f"images_{w}w_before"] = image_before(w)
        parts[f"images_{w}w_now"] = image_now(w)
    parts["texts_before"] = lambda: sum(len(b) for b in _text_batches_before(tb, texts, args.batch_size))
    parts["texts_now"] = lambda: count(tb.batches(text_data, args.batch_size, 0, pin=False))
    cpu = torch.device("cpu")
    for fn in parts.values():  # warm-up: page cache, imports, tokenizer caches
        fn()
    res: dict[str, list[float]] = {k: [] for k in parts}
    for r in range(args.rounds):
        keys = list(parts) if r % 2 == 0 else list(parts)[::-1]  # alternate which goes first
        for k in keys:
            res[k].append(_timed(parts[k], cpu))
    med = {k: statistics.median(v) for k, v in res.items()}
    x = bb.image_transform()(images.load_image(0))
    stages = _stage_ms(bb, images, args.rounds)
    ratios = {
        f"images_{w}w": round(med[f"images_{w}w_now"] / med[f"images_{w}w_before"], 3) for w in args.workers
    }
    ratios["texts"] = round(med["texts_now"] / med["texts_before"], 3)
    out = {
        "images": f"{folder} ({len(images)} PNGs, {images.load_image(0).size[0]} px -> {args.image_size})",
        "texts": f"{args.texts} ({len(texts)} texts, max {tb.max_length} tokens)",
        "batch_size": args.batch_size,
        "workers": args.workers,
        "bytes_per_image": {"before": 4 * x.numel(), "now": x.numel()},
        "items_per_s": {k: round(v, 1) for k, v in med.items()},
        "now_over_before": ratios,
        "worker_ms_per_image": stages,
        "rounds": {k: [round(v, 1) for v in vs] for k, vs in res.items()},
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "note": "data path only, no forward; CPU machine shared with other jobs",
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
    p.add_argument("--out", type=Path, default=None, help="default: results/extract[-data-path].json")
    p.add_argument("--data-path-only", action="store_true", help="(c): the data path alone, before/now")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="(c): DataLoader workers")
    p.add_argument("--folder", type=Path, default=None, help="(c): PNG folder (default: --n digits in /tmp)")
    args = p.parse_args(argv)
    name = "extract-data-path.json" if args.data_path_only else "extract.json"
    args.out = args.out or here / "results" / name
    device = resolve_device(args.device)
    cuda_sized = device.type == "cuda" or args.data_path_only  # (c) uses the CUDA default: it is about GPUs
    args.batch_size = args.batch_size or (256 if cuda_sized else 64)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    results = []
    if args.data_path_only:
        args.n = args.n or 2000
        torch.set_num_threads(1)  # no forward here; the workers are the parallelism
        results.append(bench_data_path(args))
    else:
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
