"""Source-free shift: BatchNorm statistics of EfficientNet-Lite0 on a graded corruption ladder.

No source data: each block of the backbone is scored by the distance of the target's BatchNorm-input
moments to the layers' running statistics, i.e. to the pretraining data (ImageNet)
(:func:`diag.reference.batchnorm_profile`; per-channel W2 as in Schneider et al., "Improving robustness
against common corruptions by covariate shift adaptation", NeurIPS 2020). What is measured:

(a) Data: seeded random square crops of the natural photos that ship with scikit-image (astronaut,
    camera (grey, to RGB), chelsea, coffee, rocket, coins (grey), the left stereo motorcycle, the Hubble
    deep field) and scikit-learn (china, flower), resized with antialiased bicubic to the size the
    model's eval transform resizes to (``input_size / crop_pct``, so that resize is a no-op and only
    the centre crop remains).
(b) A corruption ladder in the spirit of ImageNet-C (Hendrycks & Dietterich, "Benchmarking neural
    network robustness to common corruptions and perturbations", ICLR 2019), with its five severities:
    Gaussian noise (σ 0.08–0.38 of the range), Gaussian blur (σ 1–6 px at 224 px, scaled to our size),
    contrast reduction (factor 0.4–0.05 about each channel's mean) and JPEG (quality 25–7), plus clean.
(c) For each condition, in one forward pass: the block scores and the ImageNet head's agreement drop,
    1 − share of crops whose top-1 class equals the top-1 on the clean crop.
(d) Monotonicity per corruption (Spearman over clean + 5 severities; strictly increasing or not), the
    Spearman correlation over the 20 corrupted conditions between the score (mean over blocks; each
    block) and the agreement drop (goal >= 0.8), and the false-positive rate at α = 0.05 of the
    reference-based RFF-MMD test (:func:`diag.stats.summaries.rff_mmd_test` against a
    :class:`diag.reference.Reference` of one random half of the clean crops, the other half as new data)
    at ``pooled`` and one middle block, over random halvings (goal [0.03, 0.07]).

Usage::

    python benchmarks/bench_source_free.py              # 19 min measured on 2 CPU cores shared (load 4)
    python benchmarks/bench_source_free.py --quick      # ~3 min there: 96 crops, 2 severities, 100 splits
    python benchmarks/bench_source_free.py --device cuda --image-size 224

Writes ``benchmarks/results/source_free.json`` (``source_free-quick.json``) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data
import torch
from PIL import Image, ImageFilter
from scipy import stats
from sklearn.datasets import load_sample_images

from diag.data import DataSet
from diag.device import resolve_device
from diag.engine.extract import ExtractConfig, extract
from diag.models import Backbone, load
from diag.reference import Reference, ReferenceSettings, batchnorm_profile
from diag.stats.summaries import rff_mmd_test

ALPHA = 0.05
BACKBONE = "efficientnet_lite0"
#: 128 px: 22 passes of 320 crops took 19 min on 2 CPU cores shared with other jobs (aimed for ~10).
IMAGE_SIZE = 128
N_CROPS = 320
SEED = 0
#: Probe points tested for the false-positive rate: the head's input and a middle block (80-d).
FPR_LAYERS = ("pooled", "blocks.3")
#: Crop side as a fraction of the photo's shorter side: from a detail to most of the photo.
CROP_FRACTION = (0.3, 0.9)


# --------------------------------------------------------------------------------------------------
# Photos and crops


def load_photos() -> dict[str, np.ndarray]:
    """The bundled natural photos as uint8 RGB arrays (grey ones repeated to three channels)."""
    d: Any = skimage.data
    photos = {
        "astronaut": d.astronaut(),
        "camera": d.camera(),
        "chelsea": d.chelsea(),
        "coffee": d.coffee(),
        "rocket": d.rocket(),
        "coins": d.coins(),
        "motorcycle": d.stereo_motorcycle()[0],
        "hubble_deep_field": d.hubble_deep_field(),
    }
    sk = load_sample_images()
    for path, img in zip(sk.filenames, sk.images, strict=True):
        photos[Path(path).stem] = img
    return {
        k: np.ascontiguousarray(np.repeat(v[..., None], 3, 2) if v.ndim == 2 else v[..., :3])
        for k, v in photos.items()
    }


def random_crops(photos: dict[str, np.ndarray], n: int, size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` seeded square crops (photo uniform, side uniform in :data:`CROP_FRACTION` of the shorter
    side, position uniform), resized to ``size`` with antialiased bicubic. Returns (n, size, size, 3)
    uint8 and the crops' ids (``photo:y:x:side``)."""
    rng = np.random.default_rng(seed)
    names = sorted(photos)
    out = np.empty((n, size, size, 3), np.uint8)
    ids = []
    for i in range(n):
        name = names[int(rng.integers(len(names)))]
        img = photos[name]
        h, w = img.shape[:2]
        side = int(rng.uniform(*CROP_FRACTION) * min(h, w))
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((size, size), Image.Resampling.BICUBIC)
        out[i] = np.asarray(crop)
        ids.append(f"{name}:{y}:{x}:{side}")
    return out, ids


# --------------------------------------------------------------------------------------------------
# Corruptions (Hendrycks & Dietterich 2019, ImageNet-C severities 1-5)


def gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, σ²) in [0, 1] units, clip, round."""
    y = x / 255.0 + rng.normal(0.0, sigma, size=x.shape)
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


def gaussian_blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """PIL Gaussian blur of radius σ (σ in pixels of this image size)."""
    del rng
    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(sigma))) for im in x])


def contrast(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Shrink each channel towards its image mean: ``(x − μ_c)·factor + μ_c``."""
    del rng
    xf = x.astype(np.float64)
    mean = xf.mean(axis=(1, 2), keepdims=True)
    return np.clip(np.rint((xf - mean) * factor + mean), 0, 255).astype(np.uint8)


def jpeg(x: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """Encode and decode with PIL's JPEG at ``quality``."""
    del rng
    out = np.empty_like(x)
    for i, im in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


Corruption = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Ladder:
    """A corruption and its five ImageNet-C severity parameters (at 224 px where size matters)."""

    name: str
    apply: Corruption
    params: tuple[float, ...]
    scales_with_size: bool = False


LADDERS = (
    Ladder("gaussian_noise", gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38)),
    Ladder("gaussian_blur", gaussian_blur, (1.0, 2.0, 3.0, 4.0, 6.0), scales_with_size=True),
    Ladder("contrast", contrast, (0.4, 0.3, 0.2, 0.1, 0.05)),
    Ladder("jpeg", jpeg, (25.0, 18.0, 15.0, 10.0, 7.0)),
)


# --------------------------------------------------------------------------------------------------
# One condition: block scores and head logits in one pass


def score_condition(
    backbone: Backbone, images: np.ndarray, ids: list[str], name: str, config: ExtractConfig, n_splits: int
) -> tuple[dict[str, dict[str, float]], np.ndarray, float]:
    """The source-free block scores of ``images`` and the ImageNet head's top-1 per crop, from the
    profile's own forward pass (a hook on the classifier collects the logits, in data order)."""
    data = DataSet(name, "image", tuple(ids), arrays=images)
    logits: list[torch.Tensor] = []
    clf: Any = backbone.model
    hook = clf.get_classifier().register_forward_hook(
        lambda _m, _a, y: logits.append(y.detach().float().cpu())
    )
    t0 = time.perf_counter()
    try:
        profile = batchnorm_profile(backbone, data, config, n_splits=n_splits, seed=SEED)
    finally:
        hook.remove()
    seconds = time.perf_counter() - t0
    top1 = torch.cat(logits).argmax(1).numpy()
    if len(top1) != len(ids):
        raise RuntimeError(f"{name}: {len(top1)} logits for {len(ids)} crops")
    blocks = {
        b.name: {"score": b.score, "null_median": b.null_median, "null_p95": b.null_p95, "p_value": b.p_value}
        for b in profile.blocks
    }
    return blocks, top1, seconds


# --------------------------------------------------------------------------------------------------
# Analysis


def spearman(x: list[float], y: list[float]) -> float:
    r = stats.spearmanr(x, y).statistic
    return float(r) if np.isfinite(r) else float("nan")


def monotonicity(conditions: list[dict[str, Any]], blocks: list[str]) -> dict[str, Any]:
    """Per corruption and block (and the mean over blocks): Spearman of the score over clean + the five
    severities, and whether it strictly increases."""
    clean = next(c for c in conditions if c["corruption"] == "clean")
    out: dict[str, Any] = {}
    for ladder in LADDERS:
        steps = [c for c in conditions if c["corruption"] == ladder.name]
        rows = [clean, *sorted(steps, key=lambda c: c["severity"])]
        sev = [r["severity"] for r in rows]
        per: dict[str, Any] = {}
        for key in [*blocks, "mean"]:
            s = [r["mean_score"] if key == "mean" else r["blocks"][key]["score"] for r in rows]
            per[key] = {"spearman": spearman(sev, s), "strictly_increasing": bool(np.all(np.diff(s) > 0))}
        out[ladder.name] = per
    return out


def ladder_correlation(conditions: list[dict[str, Any]], blocks: list[str]) -> dict[str, Any]:
    """Spearman over the corrupted conditions between each block's score (and the mean) and the drop."""
    rows = [c for c in conditions if c["corruption"] != "clean"]
    drop = [r["agreement_drop"] for r in rows]
    per = {b: spearman([r["blocks"][b]["score"] for r in rows], drop) for b in blocks}
    best = max(per, key=lambda b: per[b] if np.isfinite(per[b]) else -2.0)
    return {
        "n_conditions": len(rows),
        "mean_over_blocks": spearman([r["mean_score"] for r in rows], drop),
        "per_block": per,
        "best_block": best,
        "best_block_spearman": per[best],
        "goal": 0.8,
    }


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def false_positive_rate(
    backbone: Backbone, images: np.ndarray, ids: list[str], config: ExtractConfig, n_splits: int
) -> dict[str, Any]:
    """Random halvings of the clean crops: a Reference of one half, ``rff_mmd_test`` of the other half
    against its mean embedding at each of :data:`FPR_LAYERS`; the share of splits with p <= α."""
    t0 = time.perf_counter()
    emb = extract(backbone, DataSet("clean crops", "image", tuple(ids), arrays=images), config)
    seconds_extract = time.perf_counter() - t0
    rng = np.random.default_rng(SEED + 1)
    n = len(ids)
    pvals: dict[str, list[float]] = {layer: [] for layer in FPR_LAYERS}
    t0 = time.perf_counter()
    settings = ReferenceSettings(reservoir=n, seed=SEED)
    for j in range(n_splits):
        perm = rng.permutation(n)
        ref = Reference.from_embeddings(emb.subset(np.sort(perm[: n // 2])), settings)
        new = emb.subset(np.sort(perm[n // 2 :]))
        for layer in FPR_LAYERS:
            pvals[layer].append(rff_mmd_test(ref.layers[layer].embedding, new[layer], random_state=j).p_value)
    out: dict[str, Any] = {
        "n_splits": n_splits,
        "n_reference": n // 2,
        "n_new": n - n // 2,
        "seconds_extract": seconds_extract,
        "seconds_tests": time.perf_counter() - t0,
        "goal": [0.03, 0.07],
    }
    for layer, p in pvals.items():
        k = int(np.sum(np.asarray(p) <= ALPHA))
        out[layer] = {"rate": k / n_splits, "rejections": k, "ci95": clopper_pearson(k, n_splits)}
    return out


# --------------------------------------------------------------------------------------------------
# Main


def run(
    image_size: int, n_crops: int, severities: tuple[int, ...], n_null: int, n_fpr: int, device: str
) -> dict[str, Any]:
    torch.manual_seed(SEED)
    t_start = time.perf_counter()
    backbone = load(BACKBONE, image_size=image_size)
    pre = backbone.preprocessing
    # Corrupt at the size the eval transform resizes to, so that its resize is a no-op (PIL returns a
    # copy at equal size) and the model sees exactly the corrupted pixels, centre-cropped.
    work_size = math.floor(image_size / pre["crop_pct"])
    config = ExtractConfig(device=device, precision="fp32")
    photos = load_photos()
    clean, ids = random_crops(photos, n_crops, work_size, SEED)
    print(f"{len(photos)} photos, {n_crops} crops at {work_size} px -> {image_size} px", flush=True)

    conditions: list[dict[str, Any]] = []
    blocks, clean_top1, seconds = score_condition(backbone, clean, ids, "clean", config, n_null)
    conditions.append(
        {
            "corruption": "clean",
            "severity": 0,
            "param": None,
            "blocks": blocks,
            "agreement_drop": 0.0,
            "seconds": seconds,
        }
    )
    for ladder in LADDERS:
        for s in severities:
            param = ladder.params[s - 1] * (work_size / 224 if ladder.scales_with_size else 1.0)
            rng = np.random.default_rng([SEED, s, LADDERS.index(ladder)])
            images = ladder.apply(clean, param, rng)
            blocks, top1, seconds = score_condition(
                backbone, images, ids, f"{ladder.name}-{s}", config, n_null
            )
            drop = float(np.mean(top1 != clean_top1))
            conditions.append(
                {
                    "corruption": ladder.name,
                    "severity": s,
                    "param": param,
                    "blocks": blocks,
                    "agreement_drop": drop,
                    "seconds": seconds,
                }
            )
            print(f"{ladder.name} {s}: drop {drop:.3f}, {seconds:.1f} s", flush=True)
    names = list(conditions[0]["blocks"])
    for c in conditions:
        c["mean_score"] = float(np.mean([c["blocks"][b]["score"] for b in names]))

    fpr = false_positive_rate(backbone, clean, ids, config, n_fpr)
    return {
        "benchmark": "source_free",
        "backbone": BACKBONE,
        "image_size": image_size,
        "work_size": work_size,
        "photos": {k: list(v.shape) for k, v in photos.items()},
        "n_crops": n_crops,
        "crop_fraction": list(CROP_FRACTION),
        "null_splits": n_null,
        "seed": SEED,
        "blocks": names,
        "conditions": conditions,
        "monotonicity": monotonicity(conditions, names),
        "ladder_spearman": ladder_correlation(conditions, names),
        "false_positive_rate": fpr,
        "seconds_total": time.perf_counter() - t_start,
        "hardware": {
            "device": str(resolve_device(device)),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    }


def markdown(result: dict[str, Any]) -> str:
    names = result["blocks"]
    lines = [
        "| condition | param | drop | " + " | ".join(names) + " | mean |",
        "|---" * (len(names) + 4) + "|",
    ]
    for c in result["conditions"]:
        param = "" if c["param"] is None else f"{c['param']:.3g}"
        cells = [f"{c['blocks'][b]['score']:.3g}" for b in names]
        label = "clean" if c["corruption"] == "clean" else f"{c['corruption']} {c['severity']}"
        lines.append(
            f"| {label} | {param} | {c['agreement_drop']:.3f} | "
            + " | ".join(cells)
            + f" | {c['mean_score']:.3g} |"
        )
    lines += ["", "| corruption | mean: Spearman (strict) | blocks strictly increasing |", "|---|---|---|"]
    for corr, per in result["monotonicity"].items():
        mono = [b for b in names if per[b]["strictly_increasing"]]
        m = per["mean"]
        strict = "yes" if m["strictly_increasing"] else "no"
        listed = f"{len(mono)}/{len(names)}: {', '.join(mono) or '-'}"
        lines.append(f"| {corr} | {m['spearman']:.3f} ({strict}) | {listed} |")
    ls = result["ladder_spearman"]
    lines += [
        "",
        f"Spearman over {ls['n_conditions']} conditions, score vs agreement drop: mean over blocks "
        f"{ls['mean_over_blocks']:.3f}; best block {ls['best_block']} {ls['best_block_spearman']:.3f}; "
        "per block " + ", ".join(f"{b} {r:.3f}" for b, r in ls["per_block"].items()),
    ]
    f = result["false_positive_rate"]
    for layer in FPR_LAYERS:
        lo, hi = f[layer]["ci95"]
        lines.append(
            f"FPR at α = {ALPHA} ({layer}, {f['n_splits']} splits, {f['n_reference']} vs {f['n_new']}): "
            f"{f[layer]['rate']:.3f} [{lo:.3f}, {hi:.3f}]"
        )
    lines.append(f"Total {result['seconds_total']:.0f} s.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="96 crops, severities 1 and 5, 100 splits")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="default: results/source_free.json (-quick)")
    args = p.parse_args()
    if args.quick:
        result = run(args.image_size, 96, (1, 5), 100, 100, args.device)
    else:
        result = run(args.image_size, N_CROPS, (1, 2, 3, 4, 5), 200, 400, args.device)
    here = Path(__file__).resolve().parent
    out = args.out or here / "results" / ("source_free-quick.json" if args.quick else "source_free.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
