"""Throughput of the extraction engines on one machine, as ratios measured in one run.

(c) Ray Data (``--engine ray``) with 1 and 2 CPU actors against the single process, on the same items
    (UCI handwritten digits through EfficientNet-Lite0 at 112 px). The local Ray instance is started
    once, before the rounds (its start-up is reported apart); each Ray call still starts its actor pool
    (a fresh Python per actor that imports torch and receives the backbone), which is part of its time,
    as it is for a user.
(e) decoding in DataLoader worker processes against decoding in the main process (the CPU default),
    on JPEG files (natural photos, 320-420 px, resized and cropped to the model's input) and on the
    UCI digits (small PNG files).
(f) ``torch.compile`` of the backbone's blocks against eager: the first call (compilation included)
    and the later calls.

Rounds are interleaved (one call of every variant per round) and medians reported, so a neighbour's
load slows all variants alike. Run niced on a shared machine; the output says so. Usage::

    nice -n 10 python benchmarks/bench_ray.py            # writes benchmarks/results/ray.json
    python benchmarks/bench_ray.py --quick               # fewer items and rounds
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diag.data import DataSet, open_data
from diag.engine.distributed import extract_ray
from diag.engine.extract import ExtractConfig, extract
from diag.models import Backbone, load

OUT = Path(__file__).resolve().parent / "results" / "ray.json"


def _rate(fn: Callable[[], Any], n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def _rounds(variants: dict[str, Callable[[], Any]], n: int, rounds: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            rates[name].append(round(_rate(fn, n), 2))
            print(f"  round {r + 1}: {name}: {rates[name][-1]:.1f} items/s", flush=True)
    return rates


def _summary(rates: dict[str, list[float]], baseline: str) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "items_per_s": rates,
        "median_items_per_s": med,
        "ratio_to_" + baseline: {k: round(v / med[baseline], 3) for k, v in med.items()},
    }


def _jpegs(folder: Path, n: int) -> DataSet:
    """``n`` JPEG crops (320-420 px) of scikit-learn's two sample photos, in a flat folder."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(n):
        img = photos[i % len(photos)]
        s = int(rng.integers(320, 420))  # the photos are 427 x 640
        y, x = int(rng.integers(0, img.shape[0] - s)), int(rng.integers(0, img.shape[1] - s))
        Image.fromarray(img[y : y + s, x : x + s]).save(folder / f"{i:04d}.jpg", quality=90)
    return open_data(str(folder))


def bench_ray(bb: Backbone, data: DataSet, rounds: int) -> dict[str, Any]:
    import ray

    t = time.perf_counter()
    ray.init(
        num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
    )
    start_s = time.perf_counter() - t
    n = len(data)
    variants = {
        "local": lambda: extract(bb, data, ExtractConfig()),
        "ray_1_actor": lambda: extract_ray(bb, data, ExtractConfig(engine="ray", ray_concurrency=1)),
        "ray_2_actors": lambda: extract_ray(bb, data, ExtractConfig(engine="ray", ray_concurrency=2)),
    }
    out = _summary(_rounds(variants, n, rounds), "local")
    ray.shutdown()
    return {"n_items": n, "ray_start_s": round(start_s, 2), **out}


def bench_decode(bb: Backbone, sets: dict[str, DataSet], rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, data in sets.items():
        print(f"decode: {name} ({len(data)} items)", flush=True)
        variants = {
            f"workers_{w}": (lambda w=w, data=data: extract(bb, data, ExtractConfig(num_workers=w)))
            for w in (0, 1, 2)
        }
        out[name] = {"n_items": len(data), **_summary(_rounds(variants, len(data), rounds), "workers_0")}
    return out


def bench_compile(bb: Backbone, data: DataSet, rounds: int) -> dict[str, Any]:
    n = len(data)
    t = time.perf_counter()
    extract(bb, data, ExtractConfig(compile=True))
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    extract(bb, data, ExtractConfig())
    eager_first_s = time.perf_counter() - t
    variants = {
        "eager": lambda: extract(bb, data, ExtractConfig()),
        "compiled": lambda: extract(bb, data, ExtractConfig(compile=True)),
    }
    out = _summary(_rounds(variants, n, rounds), "eager")
    return {
        "n_items": n,
        "first_call_s": {"compiled": round(first_s, 2), "eager": round(eager_first_s, 2)},
        **out,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="ray,decode,compile")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--n", type=int, default=300, help="items (at most 300: the bundled sample)")
    args = ap.parse_args()
    n, rounds = (min(args.n, 128), 2) if args.quick else (min(args.n, 300), 3)
    parts = args.parts.split(",")
    bb = load("efficientnet_lite0", image_size=args.image_size)
    uci = open_data("samples:uci-digits")
    digits = uci.subset(np.arange(n), name=f"uci-digits[{n}]")
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "shared": "yes: about 7 other jobs on the same 2 cores; niced; read the ratios, not absolutes",
            "load_average_at_start": os.getloadavg(),
        },
        "backbone": f"efficientnet_lite0 at {args.image_size} px, fp32, CPU",
    }
    if "ray" in parts:
        print(f"(c) Ray vs single process: {n} UCI digits", flush=True)
        result["ray"] = bench_ray(bb, digits, rounds)
    if "decode" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            photos = _jpegs(Path(tmp), n // 2)
            result["decode"] = bench_decode(bb, {"jpeg_photos": photos, "uci_digits_png": digits}, rounds)
    if "compile" in parts:
        print("(f) torch.compile vs eager", flush=True)
        result["compile"] = bench_compile(bb, digits.subset(np.arange(n // 2)), rounds)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(OUT.read_text()) if OUT.is_file() else {}
    previous.update(result)
    OUT.write_text(json.dumps(previous, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
