"""Transferability across a model pool: does each score rank checkpoints as fine-tuning does?

The pool is every checkpoint with a committed fine-tuning sweep (``benchmarks/results/sweeps/*.json``) on
one target under one protocol (same training set, validation set, epochs and input size), plus the
random-init twin of each architecture (the sweeps' from-scratch column). On the UCI digits (300 training
images, 500 validation, 32 px, 6 epochs, seeds 0 and 1) that is EfficientNet-Lite0/1/2 (ImageNet), Lite0
trained on shuffled-label MNIST (8 and 30 epochs), two memorisers trained from scratch on random labels
(MNIST digits, noise), Lite0 trained from scratch on synthetic gratings, Lite0 with 40 %, 60 % and
100 % of its units dead or every BatchNorm scale 0, Lite0 with its weights shuffled within each layer,
Lite0 with its conv weights re-scaled (x 0.01, x 0.001, x 100; the shuffled weights x 10 and x 100; the
random init x 100), and three random-init twins: 22 checkpoints on 2026-11-30 (the textures: 7). A
target joins when it has at least ``--min-pool`` (5) checkpoints.

Truth, per checkpoint: the fine-tuned validation accuracy (mean over seeds) at the best swept freeze
depth, and with every layer tuned (depth 0); for a twin, its from-scratch accuracy (both).

Each checkpoint embeds the target's training set once (diag's embedding, cached); every score of
:data:`diag.stats.transfer.SCORES` is computed on the pooled features (LEEP and NCE from the checkpoint's
own classifier head: ImageNet's for Lite0/1/2 and their derivatives, the random-label head for the
checkpoints trained on shuffled labels, a random head for the twins). A score that cannot be computed for
a checkpoint (SFDA and GBC on constant features) ranks it last and is listed under ``failures``. One
variant that is not a library score rides along: ``sfda_pca64``, SFDA on the 64 leading principal
components (as GBC reduces its input), to tell whether SFDA's saturation when ``d > n`` limits it.

Agreement is scipy's weighted Kendall τ (``scipy.stats.weightedtau``: hyperbolic weights, the top of
both rankings counts most; the measure of You et al., LogME, ICML 2021 and of Shao et al., SFDA, ECCV
2022), with two bootstrap intervals:

- **checkpoints**: resample the pool with replacement (``--resamples``, 2000), recompute τ; also the
  paired difference to each static baseline on the same resamples;
- **target items**: subsample 80 % of the target's training items without replacement
  (``--item-resamples``, 20; with replacement, duplicated rows let LogME's evidence grow without bound),
  recompute every score for every checkpoint, then τ against the same truth.

Static baselines (no target data): the parameter count of the body (the classifier head excluded, so the
twins and derivatives of one architecture tie), and the source-task accuracy where it is known: timm's
published ImageNet top-1 for Lite0/1/2 (``results/results-imagenet.csv``), chance (0.1 %) for a
random-init twin; missing for the damaged checkpoints, whose ImageNet accuracy nobody measured here (their
source tasks are random labels or a surgically damaged ImageNet model). Its τ is computed on the six
checkpoints that have it, beside every score's τ on the same six.

Usage (the damaged checkpoints come from ``benchmarks/run_sweeps.sh``'s ``damage`` recipes)::

    nice -n 19 .venv/bin/python benchmarks/bench_rank_pool.py [--resamples 2000] [--item-resamples 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "benchmarks" / "results" / "sweeps"

#: timm's published ImageNet-1k top-1 (%) of the bundled weights (tf_efficientnet_lite{0,1,2}.in1k),
#: huggingface/pytorch-image-models results/results-imagenet.csv (commit aa4b585).
IMAGENET_TOP1 = {"efficientnet_lite0": 74.846, "efficientnet_lite1": 76.674, "efficientnet_lite2": 77.470}
CHANCE_TOP1 = 0.1  # a random-init twin's ImageNet top-1 (%), 1 in 1000 classes
SFDA_PCA = "sfda_pca64"  # benchmark-only variant


def _label(backbone: str) -> str:
    arch, _, path = backbone.partition("@")
    short = arch.replace("efficientnet_", "")
    if not path:
        return short
    stem = Path(path).parent.name if Path(path).name in ("last.pt", "best.pt") else Path(path).stem
    return stem.replace("-lite0", "").replace("-lite1", "").replace("-lite2", "") + f" ({short})"


def build_pools(min_pool: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Checkpoints with their truth, grouped by target and protocol; the notes on what was left out."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    notes: list[str] = []
    for path in sorted(SWEEPS.glob("*.json")):
        sw = json.loads(path.read_text())
        if sw.get("status") != "completed" or sw["target"]["modality"] != "image":
            continue
        cfg = sw["config"]
        key = (sw["target"]["name"], sw["target"]["fingerprint"], sw["val"]["fingerprint"], cfg["epochs"],
               cfg["image_size"])  # fmt: skip
        depths = {d["freeze"]: d["mean"] for d in sw["depths"]}
        if 0 not in depths:
            notes.append(f"{path.name}: no depth-0 run, left out")
            continue
        name = sw["backbone"]["name"]
        arch, _, weights = name.partition("@")
        run = (ROOT / weights).parent / "result.json"  # a diag finetune run: finished, not mid-training
        if weights and (
            not (ROOT / weights).exists() or (run.is_file() and '"completed"' not in run.read_text())
        ):
            notes.append(
                f"{path.name}: checkpoint {weights} is missing (run benchmarks/run_sweeps.sh), left out"
            )
            continue
        group = groups[key]
        group[name] = {
            "label": _label(name), "backbone": name, "arch": arch, "pretrained": True, "table": path.name,
            "best": max(depths.values()), "best_freeze": max(depths, key=lambda k: depths[k]),
            "tune_all": depths[0], "n_depths": len(depths),
            "source_top1": None if weights else IMAGENET_TOP1.get(arch),
        }  # fmt: skip
        if sw.get("scratch_mean") is not None:
            twin = f"{arch} (random-init)"
            group.setdefault(twin, {
                "label": f"{arch.replace('efficientnet_', '')} random-init", "backbone": arch, "arch": arch,
                "pretrained": False, "table": path.name, "best": sw["scratch_mean"], "best_freeze": None,
                "tune_all": sw["scratch_mean"], "n_depths": 1, "source_top1": CHANCE_TOP1,
            })  # fmt: skip
    pools = []
    for key, members in groups.items():
        target, _, _, epochs, size = key
        if len(members) < min_pool:
            notes.append(f"target {target} ({epochs} epochs, {size} px): {len(members)} checkpoints, fewer "
                         f"than {min_pool}: left out")  # fmt: skip
            continue
        tables = sorted({m["table"] for m in members.values()})
        pools.append({"target": target, "epochs": epochs, "image_size": size, "tables": tables,
                      "checkpoints": list(members.values())})  # fmt: skip
    return pools, notes


def embed_pool(pool: dict[str, Any]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]], np.ndarray]:
    import torch

    from diag.engine.extract import ExtractConfig
    from diag.models import load
    from diag.pipeline.diagnose import embed

    torch.set_num_threads(1)
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    labels: np.ndarray | None = None
    for ck in pool["checkpoints"]:
        t0 = time.perf_counter()
        bb = load(ck["backbone"], pretrained=ck["pretrained"], seed=0, image_size=pool["image_size"])
        head = sum(p.numel() for p in bb.model.get_classifier().parameters())
        ck["body_params"] = int(bb.num_params - head)
        ck["weights_fingerprint"] = bb.weights_fingerprint()[:16]
        emb = embed(pool["target"], bb, ExtractConfig(device="cpu"))
        assert emb.labels is not None
        labels = emb.labels if labels is None else labels
        assert np.array_equal(labels, emb.labels)
        out[ck["label"]] = (np.asarray(emb["pooled"], dtype=np.float64), emb.logits)
        ck["head_classes"] = None if emb.logits is None else int(emb.logits.shape[1])
        ck["embed_s"] = round(time.perf_counter() - t0, 1)
        print(f"  embedded {ck['label']:<32} {ck['embed_s']:6.1f} s", flush=True)
    assert labels is not None
    return out, labels


def score_pool(
    feats: dict[str, tuple[np.ndarray, np.ndarray | None]], labels: np.ndarray, idx: np.ndarray | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """``(scores[checkpoint][score], failures[checkpoint][score])`` on the items ``idx`` (all by default)."""
    from diag.errors import DiagError
    from diag.stats.common import principal_axes
    from diag.stats.transfer import SCORES, sfda_score, transferability

    scores, failures = {}, {}
    for label, (x, logits) in feats.items():
        sel = slice(None) if idx is None else idx
        res = transferability(
            x[sel], labels[sel], logits=None if logits is None else logits[sel], scores=SCORES, device="cpu"
        )
        scores[label] = dict(res.scores)
        failures[label] = dict(res.skipped)
        # Not a library score: SFDA on the 64 leading principal components (as GBC reduces its input), to
        # see whether SFDA's saturation at d > n is what limits it here.
        xc = x[sel] - x[sel].mean(axis=0)
        try:
            scores[label][SFDA_PCA] = sfda_score(xc @ principal_axes(xc, min(64, *xc.shape)), labels[sel])
        except DiagError as exc:
            failures[label][SFDA_PCA] = str(exc)
    return scores, failures


def wtau(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.weightedtau(x, y).statistic)


def column(values: list[float | None]) -> np.ndarray:
    """Scores with failures (None) ranked last: below the smallest defined value."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    floor = (min(finite) - 1.0 - abs(min(finite))) if finite else 0.0
    return np.array([v if v is not None and np.isfinite(v) else floor for v in values], dtype=np.float64)


def ci(samples: list[float]) -> list[float] | None:
    """The 95 % percentile interval of the finite values (None when there are none)."""
    s = np.asarray([v for v in samples if np.isfinite(v)])
    if not s.size:
        return None
    return [round(float(np.percentile(s, 2.5)), 3), round(float(np.percentile(s, 97.5)), 3)]


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """The interval of ``a - b`` over the resamples where both are defined, and how often ``a > b``."""
    diff = np.array(a) - np.array(b)
    diff = diff[np.isfinite(diff)]
    return {"ci": ci(list(diff)), "p_better": round(float(np.mean(diff > 0)), 3) if diff.size else None}


def evaluate(
    pool: dict[str, Any],
    scores: dict[str, dict[str, float]],
    item_scores: list[dict[str, dict[str, float]]],
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    from diag.stats.transfer import SCORES

    cks = pool["checkpoints"]
    n = len(cks)
    names = [*SCORES, SFDA_PCA]
    predictors = {s: column([scores[c["label"]].get(s) for c in cks]) for s in names}
    predictors["params"] = np.array([c["body_params"] for c in cks], dtype=np.float64)
    has_src = np.array([c["source_top1"] is not None for c in cks])
    src = np.array([c["source_top1"] if c["source_top1"] is not None else np.nan for c in cks])
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, n, size=n) for _ in range(n_resamples)]
    sub = np.flatnonzero(has_src)
    sub_boots = [sub[rng.integers(0, sub.size, size=sub.size)] for _ in range(n_resamples)]
    out: dict[str, Any] = {}
    for truth_name in ("best", "tune_all"):
        truth = np.array([c[truth_name] for c in cks])
        rows: dict[str, Any] = {}
        base = {b: [wtau(predictors[b][i], truth[i]) for i in boots] for b in ("params",)}
        src_boot = [wtau(src[i], truth[i]) for i in sub_boots]
        for name, pred in predictors.items():
            taus = [wtau(pred[i], truth[i]) for i in boots]
            row: dict[str, Any] = {"tau": round(wtau(pred, truth), 3), "ci_checkpoints": ci(taus)}
            if name != "params":
                row["minus_params"] = paired(taus, base["params"])
                sub_taus = [wtau(pred[i], truth[i]) for i in sub_boots]
                row["on_source_subset"] = {
                    "tau": round(wtau(pred[sub], truth[sub]), 3), "ci_checkpoints": ci(sub_taus),
                    "minus_source": paired(sub_taus, src_boot),
                }  # fmt: skip
                if item_scores:
                    item_taus = [
                        wtau(column([s[c["label"]].get(name) for c in cks]), truth) for s in item_scores
                    ]
                    row["ci_items"] = ci(item_taus)
            rows[name] = row
        rows["source_top1"] = {
            "tau": round(wtau(src[sub], truth[sub]), 3), "ci_checkpoints": ci(src_boot), "n": int(sub.size),
            "checkpoints": [cks[i]["label"] for i in sub],
        }  # fmt: skip
        out[truth_name] = rows
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rank_pool.json"))
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the checkpoints")
    ap.add_argument("--item-resamples", type=int, default=20, help="80%% subsamples of the target items")
    ap.add_argument("--min-pool", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t_start = time.perf_counter()
    load_before = [round(v, 2) for v in os.getloadavg()]
    pools, notes = build_pools(args.min_pool)
    for note in notes:
        print("note:", note)
    results = []
    for pool in pools:
        print(f"{pool['target']}: {len(pool['checkpoints'])} checkpoints", flush=True)
        feats, labels = embed_pool(pool)
        t0 = time.perf_counter()
        scores, failures = score_pool(feats, labels)
        score_s = time.perf_counter() - t0
        print(f"  scored in {score_s:.0f} s", flush=True)
        rng = np.random.default_rng(args.seed)
        item_scores = []
        n_items = len(labels)
        m = round(0.8 * n_items)
        while len(item_scores) < args.item_resamples:
            idx = np.sort(rng.choice(n_items, size=m, replace=False))
            if np.unique(labels[idx]).size < np.unique(labels).size:
                continue
            item_scores.append(score_pool(feats, labels, idx)[0])
            print(f"  item resample {len(item_scores)}/{args.item_resamples}", flush=True)
        taus = evaluate(pool, scores, item_scores, args.resamples, args.seed)
        for ck in pool["checkpoints"]:
            ck["scores"] = {k: round(v, 6) for k, v in scores[ck["label"]].items()}
            ck["failures"] = failures[ck["label"]]
        results.append({**pool, "n_items": int(n_items), "score_s": round(score_s, 1), "tau": taus})
        print_table(results[-1])
        print(markdown(results[-1]))
    blob = {
        "kind": "diag.bench.rank_pool",
        "what": "weighted Kendall tau (scipy.stats.weightedtau) of each transferability score with "
        "fine-tuned accuracy across a pool of checkpoints; bootstrap 95% intervals over checkpoints and over "
        "target items",
        "resamples": args.resamples,
        "item_resamples": args.item_resamples,
        "item_fraction": 0.8,
        "notes": notes,
        "machine": "2 CPU cores shared with other jobs (nice 19, one thread); times are indicative only",
        "loadavg_before": load_before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "wall_s": round(time.perf_counter() - t_start, 1),
        "pools": results,
    }
    sys.path.insert(0, str(ROOT))
    from diag.fileio import atomic_write_bytes, json_safe

    atomic_write_bytes(Path(args.out), (json.dumps(json_safe(blob), indent=1) + "\n").encode())
    print("wrote", args.out)
    return 0


def markdown(res: dict[str, Any]) -> str:
    """The README tables of one pool: τ per score for both truths, and the checkpoints."""
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    span = lambda c: "–" if c is None else f"[{c[0]:.2f}, {c[1]:.2f}]"  # noqa: E731
    best, tune = res["tau"]["best"], res["tau"]["tune_all"]
    out = [
        "| score | τ (best depth) | 95 % CI, checkpoints | CI, target items | τ − τ(params): CI, P(>) | "
        f"τ on the {best['source_top1']['n']} with a source accuracy | τ (tune-all) | CI, checkpoints |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in best.items():
        if name == "source_top1":
            continue
        t = tune[name]
        if name == "params":
            cells = [
                "**parameter count** (static)",
                fmt(row["tau"]),
                span(row["ci_checkpoints"]),
                "–",
                "–",
                "–",
            ]
        else:
            mp = row["minus_params"]
            cells = [
                name, fmt(row["tau"]), span(row["ci_checkpoints"]), span(row.get("ci_items")),
                f"{span(mp['ci'])}, {fmt(mp['p_better'])}", fmt(row["on_source_subset"]["tau"]),
            ]  # fmt: skip
        cells += [fmt(t["tau"]), span(t["ci_checkpoints"])]
        out.append("| " + " | ".join(cells) + " |")
    src, src_t = best["source_top1"], tune["source_top1"]
    out.append(
        f"| **source-task accuracy** (static, {src['n']} checkpoints) | – | – | – | – | {fmt(src['tau'])} "
        f"{span(src['ci_checkpoints'])} | ({fmt(src_t['tau'])} on those) | {span(src_t['ci_checkpoints'])} |"
    )
    out += [
        "",
        "| checkpoint | best depth: accuracy (K) | tune-all | body params | source top-1 | "
        "LogME | LEEP | SFDA | SFDA (PCA 64) | k-NN | failures |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ck in sorted(res["checkpoints"], key=lambda c: -c["best"]):
        s = ck["scores"]
        k = "scratch" if ck["best_freeze"] is None else f"K {ck['best_freeze']}, {ck['n_depths']} swept"
        src_acc = "–" if ck["source_top1"] is None else f"{ck['source_top1']:.1f} %"
        vals = [s.get(n) for n in ("logme", "leep", "sfda", SFDA_PCA, "knn_accuracy")]
        cells = [
            ck["label"],
            f"{ck['best']:.3f} ({k})",
            f"{ck['tune_all']:.3f}",
            f"{ck['body_params'] / 1e6:.2f}M",
        ]
        cells += [src_acc, *("–" if v is None else f"{v:.3g}" for v in vals)]
        cells.append(", ".join(sorted(ck["failures"])) or "–")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def print_table(res: dict[str, Any]) -> None:
    print(f"\n{res['target']}  ({len(res['checkpoints'])} checkpoints)")
    for ck in sorted(res["checkpoints"], key=lambda c: -c["best"]):
        print(f"  {ck['label']:<32} best {ck['best']:.3f}  tune-all {ck['tune_all']:.3f}  "
              f"params {ck['body_params'] / 1e6:.2f}M  failures {sorted(ck['failures'])}")  # fmt: skip
    for truth in ("best", "tune_all"):
        print(f" truth = {truth}")
        for name, row in res["tau"][truth].items():
            extra = ""
            if "minus_params" in row:
                extra = f"  vs params {row['minus_params']['ci']} P {row['minus_params']['p_better']}"
                extra += f"  items {row.get('ci_items')}"
                extra += f"  on-src-subset {row['on_source_subset']['tau']}"
            print(f"  {name:<24} tau {row['tau']:>6}  CI {row['ci_checkpoints']}{extra}")


if __name__ == "__main__":
    raise SystemExit(main())
