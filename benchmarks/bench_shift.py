"""Shift statistics: calibration, power on a graded real shift, and speed against naive references.

(a) calibration: false-positive rate at α = 0.05 of ``mmd_test`` and ``c2st`` over random
    same-distribution halves of real embeddings (300 MNIST digits through EfficientNet-Lite0 at 112 px,
    several probe points) and of Gaussian samples, with the binomial (Clopper–Pearson) 95% interval of
    each rate. Goal: [0.03, 0.07]. Also the coverage of the C2ST 95% AUC interval: of 0.5 under the null,
    and under Gaussian mean shifts of the AUC the fitted fold classifiers truly have (closed form for a
    linear score of Gaussian data), and of its average over runs.
(b) power: clean digits against digits with Gaussian pixel noise of increasing σ (6 grades), embedded
    with the same backbone; for each grade and probe point, clean half vs corrupted other half over
    random splits. Power at α = 0.05, mean MMD² and mean AUC per grade. Goal: power >= 0.9 at the
    mildest grade a domain classifier detects.
(c) speed: the per-layer statistics of a shift profile (MMD with 1000 permutations, C2ST, Fréchet,
    CORAL at the 9 probe points of efficientnet_lite0, dims 16..1280) on Gaussian features, n per side
    in {2k, 10k, 50k}, against naive references in the same run: an MMD that recomputes the kernel
    matrix for every permutation, a C2ST that refits a scikit-learn ridge per fold and permutation,
    ``scipy.linalg.sqrtm`` for Fréchet and ``np.cov`` for CORAL. References that would take too long
    are timed on a few permutations (or a block of kernel rows) and extrapolated linearly; the JSON says
    which. Plus p-values of both on a size both can do. Goal: >= 10x.

The many small tests of (a) and (b) run with one BLAS/torch thread (on 2 busy cores, thread start-up
and contention dominate problems this small); (c) uses every core. Usage::

    python benchmarks/bench_shift.py            # about 15 min on 2 cores (first run embeds 7 sets)
    python benchmarks/bench_shift.py --quick    # about 2 min: fewer splits, grades and sizes
    python benchmarks/bench_shift.py --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from scipy import stats

from diag.data import DataSet, open_data
from diag.device import resolve_device
from diag.stats import shift
from diag.stats.shift import c2st, coral_distance, frechet_distance, mmd_test

ALPHA = 0.05
BACKBONE = "efficientnet_lite0"
IMAGE_SIZE = 112
# Probe points of efficientnet_lite0 and their dims (checked against the embeddings in (a) and (b)).
PROBE_DIMS = {
    "stem": 32,
    "blocks.0": 16,
    "blocks.1": 24,
    "blocks.2": 40,
    "blocks.3": 80,
    "blocks.4": 112,
    "blocks.5": 192,
    "blocks.6": 320,
    "pooled": 1280,
}
# Noise σ as a fraction of the 0..255 range. MNIST's background is exactly 0, so even σ = 0.001 (a
# quarter of a grey level, which after rounding sets ~2.5% of the pixels to 1/255) is visible to the
# backbone; the grades double from below what any test detects.
NOISE_GRADES = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016)


# --------------------------------------------------------------------------------------------------
# Helpers


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Limit torch and BLAS threads to ``n`` inside the block (None: leave them as they are)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    """Exact binomial interval of a rate ``k / n``."""
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return [round(low, 4), round(high, 4)]


def rate(flags: list[bool]) -> dict[str, Any]:
    k, n = int(sum(flags)), len(flags)
    return {"rate": round(k / n, 4), "ci95": clopper_pearson(k, n), "k": k, "n": n}


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, out


def halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    return perm[: n // 2], perm[n // 2 :]


def noisy_mnist(sigma: float) -> DataSet:
    """The 300 ``samples:mnist`` digits with Gaussian pixel noise of σ = ``sigma`` x 255, rounded, clipped."""
    ds = open_data("samples:mnist")
    imgs = np.stack([np.asarray(ds.load_image(i).convert("L")) for i in range(len(ds))])
    noise = np.random.default_rng(0).normal(scale=sigma * 255.0, size=imgs.shape)
    arr = np.clip(np.rint(imgs + noise), 0, 255).astype(np.uint8)
    return DataSet(
        name=f"samples:mnist+noise{sigma}",
        modality="image",
        ids=ds.ids,
        labels=ds.labels,
        classes=ds.classes,
        arrays=arr,
    )


def embed_features(data: str | DataSet) -> dict[str, np.ndarray]:
    from diag.pipeline import embed

    emb = embed(data, BACKBONE, image_size=IMAGE_SIZE)
    feats = {name: np.asarray(emb[name]) for name in emb}
    dims = {k: v.shape[1] for k, v in feats.items()}
    if dims != PROBE_DIMS:
        raise SystemExit(f"unexpected probe points/dims {dims}; update PROBE_DIMS")
    return feats


def tests(x: np.ndarray, y: np.ndarray, seed: int, n_perm: int, device: torch.device) -> dict[str, Any]:
    mmd = mmd_test(x, y, n_permutations=n_perm, random_state=seed, device=device)
    clf = c2st(x, y, n_permutations=n_perm, random_state=seed)
    return {"mmd": mmd, "c2st": clf}


# --------------------------------------------------------------------------------------------------
# (a) Calibration


def calibration(
    args: argparse.Namespace, device: torch.device, clean: dict[str, np.ndarray]
) -> dict[str, Any]:
    rows = []
    settings: list[tuple[str, Callable[[int], tuple[np.ndarray, np.ndarray]]]] = []
    for layer in args.null_layers:
        feats = clean[layer]

        def real(i: int, feats: np.ndarray = feats) -> tuple[np.ndarray, np.ndarray]:
            a, b = halves(len(feats), np.random.default_rng(10_000 + i))
            return feats[a], feats[b]

        settings.append((f"MNIST {layer} ({feats.shape[1]}-d), 150 vs 150", real))
    for m, d in ((150, 32), (300, 256)):

        def gauss(i: int, m: int = m, d: int = d) -> tuple[np.ndarray, np.ndarray]:
            z = np.random.default_rng(20_000 + i).normal(size=(2 * m, d))
            return z[:m], z[m:]

        settings.append((f"Gaussian {d}-d, {m} vs {m}", gauss))
    for name, draw in settings:
        t0 = time.perf_counter()
        rej: dict[str, list[bool]] = {"mmd": [], "c2st": []}
        covers, inflation = [], []
        with threads(1):
            for i in range(args.null_splits):
                x, y = draw(i)
                res = tests(x, y, i, args.permutations, device)
                rej["mmd"].append(res["mmd"].p_value <= ALPHA)
                rej["c2st"].append(res["c2st"].p_value <= ALPHA)
                covers.append(res["c2st"].auc_ci[0] <= 0.5 <= res["c2st"].auc_ci[1])
                inflation.append(res["c2st"].variance_inflation)
        row = {
            "setting": name,
            "splits": args.null_splits,
            "mmd": rate(rej["mmd"]),
            "c2st": rate(rej["c2st"]),
            "c2st_ci_covers_0.5": rate(covers),
            "c2st_variance_inflation_median": round(float(np.median(inflation)), 3),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"null": rows, "coverage_under_shift": coverage_under_shift(args)}


def coverage_under_shift(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Coverage of the C2ST interval when the truth is known: Gaussian mean shifts, linear fold scores.

    For ``x ~ N(0, Σ)``, ``y ~ N(δ, Σ)`` and a linear score ``wᵀv``, the AUC is ``Φ(wᵀδ / sqrt(2 wᵀΣw))``.
    The fitted fold classifiers are rebuilt with the private ``shift._fit_cross`` from the same seed
    (``c2st`` draws its folds and subspace first, from ``np.random.default_rng(random_state)``).
    """
    rows = []
    for m, d, size in ((150, 32, 0.5), (150, 32, 1.2), (300, 256, 1.0), (300, 256, 2.5)):
        scale = np.linspace(0.5, 2.0, d)  # unequal variances; Σ = diag(scale²)
        delta = np.zeros(d)
        delta[: d // 4] = size / math.sqrt(d // 4) * scale[: d // 4]  # Mahalanobis length `size`
        truth, est, lows, highs = [], [], [], []
        with threads(1):
            for i in range(args.coverage_runs):
                rng = np.random.default_rng(30_000 + i)
                x = rng.normal(size=(m, d)) * scale
                y = rng.normal(size=(m, d)) * scale + delta
                res = c2st(x, y, n_permutations=args.permutations, random_state=i)
                fit = shift._fit_cross(x, y, 5, 128, 0.03, np.random.default_rng(i))
                w = fit.raw_directions()
                fold_w = np.array(
                    [np.sum(fit.labels[t] == 0) * np.sum(fit.labels[t] == 1) for _, t in fit.folds]
                )
                auc_k = stats.norm.cdf((w @ delta) / np.sqrt(2.0 * np.sum(w * w * scale**2, axis=1)))
                truth.append(float(fold_w @ auc_k / fold_w.sum()))
                est.append(res.auc)
                lows.append(res.auc_ci[0])
                highs.append(res.auc_ci[1])
        t, lo, hi = np.array(truth), np.array(lows), np.array(highs)
        row = {
            "setting": f"Gaussian {d}-d, {m} vs {m}, mean shift of Mahalanobis length {size}",
            "runs": args.coverage_runs,
            "mean_true_auc": round(float(t.mean()), 4),
            "mean_auc": round(float(np.mean(est)), 4),
            "covers_true_auc": rate(list((lo <= t) & (t <= hi))),
            "covers_mean_true_auc": rate(list((lo <= t.mean()) & (t.mean() <= hi))),
            "mean_width": round(float(np.mean(hi - lo)), 4),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# (b) Power on a graded shift


def power(args: argparse.Namespace, device: torch.device, clean: dict[str, np.ndarray]) -> dict[str, Any]:
    rows = []
    for sigma in args.grades:
        t0 = time.perf_counter()
        corrupt = embed_features(noisy_mnist(sigma))
        embed_s = time.perf_counter() - t0
        for layer in args.power_layers:
            x_all, y_all = clean[layer], corrupt[layer]
            rej: dict[str, list[bool]] = {"mmd": [], "c2st": []}
            mmd2, auc = [], []
            with threads(1):
                for i in range(args.power_splits):
                    a, b = halves(len(x_all), np.random.default_rng(40_000 + i))
                    res = tests(x_all[a], y_all[b], i, args.power_permutations, device)
                    rej["mmd"].append(res["mmd"].p_value <= ALPHA)
                    rej["c2st"].append(res["c2st"].p_value <= ALPHA)
                    mmd2.append(res["mmd"].mmd2)
                    auc.append(res["c2st"].auc)
            row = {
                "sigma": sigma,
                "layer": layer,
                "splits": args.power_splits,
                "mmd_power": rate(rej["mmd"]),
                "c2st_power": rate(rej["c2st"]),
                "mmd2_mean": float(np.mean(mmd2)),
                "auc_mean": round(float(np.mean(auc)), 4),
                "seconds": round(time.perf_counter() - t0, 1),
                "embed_seconds": round(embed_s, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            t0, embed_s = time.perf_counter(), 0.0
    return {"rows": rows, "monotone": monotone(rows, args)}


def monotone(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, bool]:
    """Whether the mean effect sizes grow with the grade at every layer (ties allowed within 1%)."""
    out = {}
    for key in ("mmd2_mean", "auc_mean"):
        ok = True
        for layer in args.power_layers:
            vals = [r[key] for r in rows if r["layer"] == layer]
            ok &= all(b >= a - 0.01 * abs(a) for a, b in itertools.pairwise(vals))
        out[key] = bool(ok)
    return out


# --------------------------------------------------------------------------------------------------
# (c) Speed


def naive_mmd2(z: torch.Tensor, m: int, widths: list[float]) -> float:
    """MMD²_u of ``z[:m]`` vs ``z[m:]``, recomputing the kernel matrix from the points."""
    d2 = torch.cdist(z, z).square_()
    k = torch.zeros_like(d2)
    for w in widths:
        k += torch.exp(d2 * (-0.5 / (w * w))) / len(widths)
    n = z.shape[0] - m
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def naive_mmd_test(
    x: np.ndarray, y: np.ndarray, widths: list[float], n_perm: int, seed: int, device: torch.device
) -> float:
    """Permutation p-value with the kernel recomputed for every permutation (the textbook loop)."""
    rng = np.random.default_rng(seed)
    z = torch.as_tensor(np.concatenate([x, y]), dtype=torch.float64, device=device)
    m = len(x)
    obs = naive_mmd2(z, m, widths)
    exceed = sum(
        naive_mmd2(z[torch.as_tensor(rng.permutation(len(z)), device=device)], m, widths) >= obs
        for _ in range(n_perm)
    )
    return (exceed + 1) / (n_perm + 1)


def naive_mmd_seconds(
    x: np.ndarray, y: np.ndarray, widths: list[float], n_perm: int, device: torch.device
) -> dict[str, Any]:
    """Time of the naive MMD test: a few permutations timed (a block of kernel rows when huge), scaled up."""
    total = len(x) + len(y)
    z = torch.as_tensor(np.concatenate([x, y]), dtype=torch.float32, device=device)
    rows = total if total <= 12_000 else 2_000  # above that, time one row block and scale by total/rows
    reps = 2 if total <= 12_000 else 1

    def one() -> None:
        zp = z[torch.randperm(total, device=device)]
        d2 = torch.cdist(zp[:rows], zp).square_()
        k = torch.zeros_like(d2)
        for w in widths:
            k += torch.exp(d2 * (-0.5 / (w * w)))
        float(k.sum())

    one()
    secs = [timed(one, device)[0] for _ in range(reps)]
    per_perm = float(np.median(secs)) * total / rows
    return {
        "seconds": per_perm * (n_perm + 1),
        "extrapolated": True,
        "how": f"{reps} permutation(s) timed on {rows} of {total} kernel rows, scaled x{total / rows:.0f} "
        f"and x{n_perm + 1}",
    }


def naive_c2st_statistic(z: np.ndarray, labels: np.ndarray, folds: np.ndarray, ridge: float) -> float:
    """Weighted mean held-out AUC with a scikit-learn ridge refitted per fold (reference for c2st)."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import roc_auc_score

    stat, weight = 0.0, 0.0
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        model = Ridge(alpha=ridge * int(train.sum())).fit(z[train], labels[train])
        n1 = labels[test].sum()
        w = n1 * (test.sum() - n1)
        stat += w * roc_auc_score(labels[test], model.predict(z[test]))
        weight += w
    return stat / weight


def naive_c2st_setup(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardise, PCA (scikit-learn, 128 components) and stratified folds, as c2st does."""
    from sklearn.decomposition import PCA
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(np.concatenate([x, y]).astype(np.float64))
    if z.shape[1] > 128:
        z = PCA(128, svd_solver="randomized", random_state=seed).fit_transform(z)
    labels = np.r_[np.zeros(len(x)), np.ones(len(y))]
    folds = np.empty(len(z), dtype=np.int64)
    for k, (_, test) in enumerate(StratifiedKFold(5, shuffle=True, random_state=seed).split(z, labels)):
        folds[test] = k
    return z, labels, folds


def naive_c2st_test(x: np.ndarray, y: np.ndarray, n_perm: int, seed: int) -> tuple[float, float]:
    """Statistic and p-value refitting a scikit-learn ridge per fold and relabelling, on c2st's folds.

    The features and folds are c2st's own (``shift._fit_cross`` with c2st's seed), so the observed
    statistic must equal ``c2st(...).auc`` and the p-values differ by Monte Carlo error only.
    """
    fit = shift._fit_cross(x, y, 5, 128, 0.03, np.random.default_rng(seed))
    folds = np.empty(len(fit.labels), dtype=np.int64)
    for k, (_, test) in enumerate(fit.folds):
        folds[test] = k
    z, labels = fit.features, fit.labels
    rng = np.random.default_rng(seed + 1)
    obs = naive_c2st_statistic(z, labels, folds, 0.03)
    exceed = 0
    for _ in range(n_perm):
        perm = labels.copy()
        for k in range(len(fit.folds)):
            perm[folds == k] = rng.permutation(perm[folds == k])
        exceed += naive_c2st_statistic(z, perm, folds, 0.03) >= obs - 1e-12
    return obs, (exceed + 1) / (n_perm + 1)


def naive_c2st_seconds(x: np.ndarray, y: np.ndarray, n_perm: int) -> dict[str, Any]:
    cpu = torch.device("cpu")
    setup_s, (z, labels, folds) = timed(partial(naive_c2st_setup, x, y, 0), cpu)
    reps = 2
    secs = []
    for r in range(reps):
        relabelled = np.random.default_rng(r).permutation(labels)
        secs.append(timed(partial(naive_c2st_statistic, z, relabelled, folds, 0.03), cpu)[0])
    return {
        "seconds": setup_s + float(np.median(secs)) * (n_perm + 1),
        "extrapolated": True,
        "how": f"{reps} relabellings timed (5 ridge refits each), x{n_perm + 1}",
    }


def naive_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """The usual FID formula: full covariances and ``scipy.linalg.sqrtm`` of their product."""
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cx @ cy)
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + np.trace(cx) + np.trace(cy) - 2.0 * np.trace(root).real)


def naive_coral(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    diff = np.cov(x, rowvar=False) - np.cov(y, rowvar=False)
    return float(np.sum(diff * diff) / (4 * d * d))


def speed(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cpu = torch.device("cpu")
    rows = []
    for n in args.sizes:
        ours: dict[str, float] = {"mmd": 0.0, "c2st": 0.0, "frechet": 0.0, "coral": 0.0}
        ref: dict[str, float] = {"mmd": 0.0, "c2st": 0.0, "frechet": 0.0, "coral": 0.0}
        notes: dict[str, str] = {}
        for li, (layer, d) in enumerate(PROBE_DIMS.items()):
            rng = np.random.default_rng(50_000 + li)
            x = rng.normal(size=(n, d)).astype(np.float32)
            y = (rng.normal(size=(n, d)) * 1.02 + 0.02).astype(np.float32)
            s, mmd = timed(
                partial(mmd_test, x, y, n_permutations=1000, random_state=li, device=device), device
            )
            ours["mmd"] += s
            ours["c2st"] += timed(partial(c2st, x, y, random_state=li), cpu)[0]
            ours["frechet"] += timed(partial(frechet_distance, x, y), cpu)[0]
            ours["coral"] += timed(partial(coral_distance, x, y), cpu)[0]
            r = naive_mmd_seconds(x, y, mmd.bandwidths, 1000, device)
            ref["mmd"] += r["seconds"]
            notes["mmd"] = r["how"]
            r = naive_c2st_seconds(x, y, 1000)
            ref["c2st"] += r["seconds"]
            notes["c2st"] = r["how"]
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            ref["frechet"] += timed(partial(naive_frechet, x64, y64), cpu)[0]
            ref["coral"] += timed(partial(naive_coral, x64, y64), cpu)[0]
            print(f"  n={n} {layer} ({d}-d) done: mmd method {mmd.method}", file=sys.stderr, flush=True)
        row = {
            "n_per_side": n,
            "ours_seconds": {k: round(v, 2) for k, v in ours.items()},
            "reference_seconds": {k: round(v, 2) for k, v in ref.items()},
            "ours_total": round(sum(ours.values()), 2),
            "reference_total": round(sum(ref.values()), 2),
            "speedup": round(sum(ref.values()) / sum(ours.values()), 1),
            "reference_notes": notes | {"frechet": "measured", "coral": "measured"},
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"rows": rows, "agreement": agreement(args, device)}


def agreement(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """p-values of ours and the naive references on one mildly shifted pair both can do in full."""
    rng = np.random.default_rng(60_000)
    m, d, n_perm = 300, 32, args.agreement_permutations
    x = rng.normal(size=(m, d))
    y = rng.normal(size=(m, d)) + 0.04
    ours_mmd = mmd_test(x, y, n_permutations=n_perm, random_state=1, device=device)
    ref_mmd = naive_mmd_test(x, y, ours_mmd.bandwidths, n_perm, 2, device)
    ours_c2st = c2st(x, y, n_permutations=n_perm, random_state=1)
    ref_auc, ref_c2st = naive_c2st_test(x, y, n_perm, 1)

    def mc_se(p: float) -> float:
        return round(math.sqrt(p * (1 - p) / n_perm), 4)

    out = {
        "setting": f"Gaussian {d}-d, {m} vs {m}, mean shift 0.04 per coordinate, {n_perm} permutations each",
        "mmd": {"ours": ours_mmd.p_value, "reference": ref_mmd, "monte_carlo_se": mc_se(ours_mmd.p_value)},
        "c2st": {
            "ours": ours_c2st.p_value,
            "reference": ref_c2st,
            "monte_carlo_se": mc_se(ours_c2st.p_value),
            "auc_ours": ours_c2st.auc,
            "auc_reference": ref_auc,
        },
        "frechet": {"ours": frechet_distance(x, y), "reference": naive_frechet(x, y)},
        "coral": {"ours": coral_distance(x, y), "reference": naive_coral(x, y)},
    }
    print(json.dumps(out), flush=True)
    return out


# --------------------------------------------------------------------------------------------------
# Report


def fmt_rate(r: dict[str, Any]) -> str:
    return f"{r['rate']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"


def markdown(result: dict[str, Any]) -> str:
    hw = result["hardware"]
    lines = [f"## Shift statistics (`bench_shift.py{' --quick' if result['config']['quick'] else ''}`)", ""]
    lines.append(
        f"{hw['cores']} cores ({hw['cpu']}), device {result['config']['device']}, torch {hw['torch']}, "
        f"numpy {hw['numpy']} — {result['date']}"
    )
    if "calibration" in result:
        cal = result["calibration"]
        lines += [
            "",
            f"### (a) Calibration: rejection rate at α = {ALPHA} on same-distribution splits "
            "(95% binomial CI)",
            "",
            "| setting | splits | MMD | C2ST | C2ST 95% CI covers 0.5 | AUC variance inflation |",
            "|---|---|---|---|---|---|",
        ]
        for r in cal["null"]:
            lines.append(
                f"| {r['setting']} | {r['splits']} | {fmt_rate(r['mmd'])} | {fmt_rate(r['c2st'])} | "
                f"{fmt_rate(r['c2st_ci_covers_0.5'])} | {r['c2st_variance_inflation_median']} |"
            )
        lines += [
            "",
            "C2ST interval under a shift (truth: closed-form AUC of the fitted fold classifiers):",
            "",
            "| setting | runs | true AUC (mean) | AUC (mean) | covers true AUC | covers mean true AUC "
            "| width |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in cal["coverage_under_shift"]:
            lines.append(
                f"| {r['setting']} | {r['runs']} | {r['mean_true_auc']} | {r['mean_auc']} | "
                f"{fmt_rate(r['covers_true_auc'])} | {fmt_rate(r['covers_mean_true_auc'])} | "
                f"{r['mean_width']} |"
            )
    if "power" in result:
        rows = result["power"]["rows"]
        layers = list(dict.fromkeys(r["layer"] for r in rows))
        sigmas = list(dict.fromkeys(r["sigma"] for r in rows))
        lines += [
            "",
            f"### (b) Power at α = {ALPHA}: clean MNIST half vs Gaussian-noise half (MMD / C2ST; "
            f"{rows[0]['splits']} splits each)",
            "",
            "| noise σ (x255) | " + " | ".join(f"`{layer}`" for layer in layers) + " |",
            "|---|" + "---|" * len(layers),
        ]
        by = {(r["sigma"], r["layer"]): r for r in rows}
        for s in sigmas:
            cells = [
                f"{by[s, la]['mmd_power']['rate']:.2f} / {by[s, la]['c2st_power']['rate']:.2f}"
                for la in layers
            ]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Mean effect sizes (MMD² / C2ST AUC):",
            "",
            "| noise σ | " + " | ".join(f"`{la}`" for la in layers) + " |",
        ]
        lines.append("|---|" + "---|" * len(layers))
        for s in sigmas:
            cells = [f"{by[s, la]['mmd2_mean']:.3g} / {by[s, la]['auc_mean']:.3f}" for la in layers]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        mono = result["power"]["monotone"]
        lines += [
            "",
            f"Effect sizes grow with the grade at every layer: MMD² {mono['mmd2_mean']}, "
            f"AUC {mono['auc_mean']}.",
        ]
    if "speed" in result:
        sp = result["speed"]
        lines += [
            "",
            "### (c) Speed: per-layer statistics over the 9 probe points of efficientnet_lite0 "
            "(dims 16..1280)",
            "",
            "| n per side | MMD (1000 perm.) | C2ST | Fréchet | CORAL | total | naive total | speed-up |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sp["rows"]:
            o, f = r["ours_seconds"], r["reference_seconds"]
            cells = [f"{o[k]:.1f} s (naive {f[k]:.3g} s)" for k in ("mmd", "c2st", "frechet", "coral")]
            lines.append(
                f"| {r['n_per_side']} | " + " | ".join(cells) + f" | {r['ours_total']:.1f} s | "
                f"{r['reference_total']:.4g} s | **{r['speedup']}x** |"
            )
        notes = sp["rows"][-1]["reference_notes"]
        lines += ["", "Naive references: " + "; ".join(f"{k}: {v}" for k, v in notes.items()) + "."]
        ag = sp["agreement"]
        lines += [
            "",
            f"Agreement ({ag['setting']}): MMD p {ag['mmd']['ours']:.3f} vs naive "
            f"{ag['mmd']['reference']:.3f}; C2ST p {ag['c2st']['ours']:.3f} vs naive "
            f"{ag['c2st']['reference']:.3f} (Monte Carlo s.e. {ag['mmd']['monte_carlo_se']}, "
            f"{ag['c2st']['monte_carlo_se']}; AUC {ag['c2st']['auc_ours']:.6f} vs "
            f"{ag['c2st']['auc_reference']:.6f}); Fréchet {ag['frechet']['ours']:.6g} vs "
            f"{ag['frechet']['reference']:.6g}; CORAL {ag['coral']['ours']:.6g} vs "
            f"{ag['coral']['reference']:.6g}.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (the kernel statistics run there)")
    p.add_argument("--quick", action="store_true", help="a ~2 min smoke run with smaller settings")
    p.add_argument("--only", choices=["calibration", "power", "speed"], action="append")
    p.add_argument("--out", type=Path, default=None, help="default: results/shift.json (shift-quick.json)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    q = args.quick
    args.null_layers = ["stem", "pooled"] if q else ["stem", "blocks.3", "pooled"]
    args.null_splits = 100 if q else 400
    args.permutations = 200 if q else 500
    args.coverage_runs = 60 if q else 300
    args.grades = NOISE_GRADES[1:5:2] if q else NOISE_GRADES
    args.power_layers = ["stem", "blocks.3", "pooled"] if q else list(PROBE_DIMS)
    args.power_splits = 20 if q else 50
    args.power_permutations = 200 if q else 500
    args.sizes = [1000] if q else [2000, 10_000, 50_000]
    args.agreement_permutations = 200 if q else 1000
    out = args.out or here / "results" / ("shift-quick.json" if q else "shift.json")
    sections = args.only or ["calibration", "power", "speed"]

    warnings.simplefilter("error", RuntimeWarning)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "config": {
            "quick": q,
            "device": str(device),
            "alpha": ALPHA,
            **{k: v for k, v in vars(args).items() if k not in ("out", "only", "quick", "device")},
        },
        "hardware": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__,
            "python": sys.version.split()[0],
            "load_average_at_start": list(os.getloadavg()),
        },
    }
    t0 = time.perf_counter()
    clean = embed_features("samples:mnist") if {"calibration", "power"} & set(sections) else {}
    if "calibration" in sections:
        result["calibration"] = calibration(args, device, clean)
    if "power" in sections:
        result["power"] = power(args, device, clean)
    if "speed" in sections:
        result["speed"] = speed(args, device)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    result["hardware"]["load_average_at_end"] = list(os.getloadavg())
    if args.only and out.exists():
        # A partial run updates its sections and keeps the others (with their own date and hardware).
        previous = json.loads(out.read_text())
        for key in ("calibration", "power", "speed"):
            if key not in result and key in previous:
                result[key] = previous[key]
                result.setdefault("kept_from_previous_run", {})[key] = {
                    "date": previous.get("date"),
                    "hardware": previous.get("hardware"),
                }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(f"\nwrote {out} in {result['total_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
