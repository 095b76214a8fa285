"""Which backbone transfers best to this target? Scores per backbone, bootstrap stability, a static baseline.

Each candidate backbone (and, optionally, its random-init twin) embeds the labelled target once; the
transferability scores of :mod:`diag.stats.transfer` are computed at the deepest probe and the per-layer
linear probe finds each backbone's best layer. The ranking uses LogME (You et al., ICML 2021) by default.
Transferability rankings are unstable (Agostinelli et al., "How stable are Transferability Metrics
evaluations?", ECCV 2022), so the ranking comes with its bootstrap stability — how often the top pick
stays on top when the target samples are resampled — and beside a static baseline that needs no data:
the parameter count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diag.errors import ConfigError, param_error
from diag.progress import ProgressCallback

__all__ = ["Ranking", "rank_backbones"]

log = logging.getLogger(__name__)

_BOOTSTRAP_SCORES = ("logme", "h_score_shrinkage")


@dataclass(frozen=True)
class Ranking:
    """Outcome of :func:`rank_backbones`.

    Attributes
    ----------
    by : str
        The score the ranking uses.
    rows : list of dict
        One per candidate, best first: ``backbone``, ``pretrained``, ``num_params``, ``rank``, ``score``,
        ``scores`` (all at the deepest probe), ``best_layer`` and its ``linear_probe_accuracy``,
        ``top_frequency`` (share of resamples (80% subsamples) in which it ranks first).
    stability : float
        ``top_frequency`` of the top pick.
    rank_by_params : list of str
        The static baseline: candidates by parameter count, largest first.
    n_bootstrap : int
    """

    by: str
    rows: list[dict[str, Any]]
    stability: float
    rank_by_params: list[str]
    n_bootstrap: int
    seconds: float

    @property
    def top(self) -> str:
        return str(self.rows[0]["backbone"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_backbones(
    target: Any,
    backbones: Sequence[str],
    *,
    include_random_init: bool = True,
    by: str = "logme",
    n_bootstrap: int = 200,
    image_size: int | None = None,
    max_length: int | None = None,
    seed: int = 0,
    config: Any = None,
    use_cache: bool = True,
    progress: ProgressCallback | None = None,
) -> Ranking:
    """Score every backbone on the labelled target and rank them, with bootstrap rank stability.

    Parameters
    ----------
    target : path, ``samples:NAME`` or DataSet
        Labelled, 2+ classes.
    backbones : list of str
        Backbone names (:func:`diag.models.backbones.load`).
    include_random_init : bool, default True
        Add each backbone's random-init twin as a candidate (``NAME (random-init)``): a backbone that
        does not beat its own twin brings nothing to transfer.
    by : {"logme", "h_score_shrinkage", "linear_probe_accuracy", "knn_accuracy"}
        The score to rank by (bootstrap stability is computed for the first two; for the probes, which
        are cross-validated and costly, the fold spread is shown instead).
    n_bootstrap : int, default 200
    """
    from diag.data.dataset import open_data
    from diag.models.backbones import load
    from diag.pipeline import embed
    from diag.predict.rules import _require_labels, layer_transfer
    from diag.stats.transfer import transferability

    allowed = ("logme", "h_score_shrinkage", "linear_probe_accuracy", "knn_accuracy")
    if by not in allowed:
        raise param_error("by", f"must be one of {', '.join(allowed)}", by)
    names = [b.strip() for b in backbones if b.strip()]
    if not names or len(set(names)) != len(names):
        raise param_error("backbones", "must be one or more distinct backbone names", list(backbones))
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise param_error("n_bootstrap", "must be an integer >= 0", n_bootstrap)
    t0 = time.perf_counter()
    data = open_data(target)
    candidates: list[tuple[str, Any]] = []
    for name in names:
        candidates.append((name, load(name, image_size=image_size, max_length=max_length)))
        if include_random_init:
            twin = load(name, pretrained=False, seed=seed, image_size=image_size, max_length=max_length)
            candidates.append((f"{name} (random-init)", twin))
    modalities = {bb.modality for _, bb in candidates}
    if len(modalities) > 1:
        raise ConfigError(
            f"backbones mix modalities ({', '.join(sorted(modalities))}); rank image or text backbones, "
            f"matching the target ({data.modality})."
        )
    rows: list[dict[str, Any]] = []
    pooled: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    for label, bb in candidates:
        emb = embed(data, bb, config, use_cache=use_cache, progress=progress)
        y = _require_labels(emb, str(target))
        labels = y if labels is None else labels
        last = emb.probes[-1].name
        per_layer = layer_transfer(emb, random_state=seed)
        best = max(per_layer, key=lambda k: per_layer[k]["scores"].get("linear_probe_accuracy", -1.0))
        # layer_transfer already scored the last layer (LogME, probes, and LEEP/NCE from the head):
        # only the remaining scores are computed here.
        extra = transferability(
            emb[last], y, random_state=seed, scores=("h_score_shrinkage", "gbc", "transrate")
        ).scores
        scores = {**extra, **per_layer[last]["scores"]}
        pooled[label] = emb[last]
        rows.append(
            {
                "backbone": label,
                "name": bb.name,
                "pretrained": bb.pretrained,
                "num_params": bb.num_params,
                "layer": last,
                "score": float(scores.get(by, float("nan"))),
                "scores": scores,
                "best_layer": best,
                "best_layer_linear_probe": per_layer[best]["scores"].get("linear_probe_accuracy"),
                "layers": {k: v["scores"] for k, v in per_layer.items()},
            }
        )
    rows.sort(key=lambda r: -r["score"] if np.isfinite(r["score"]) else np.inf)
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    assert labels is not None
    freq = _bootstrap_top(pooled, labels, by, n_bootstrap, seed) if by in _BOOTSTRAP_SCORES else {}
    for r in rows:
        r["top_frequency"] = freq.get(r["backbone"])
    by_params = [
        r["backbone"]
        for r in sorted(rows, key=lambda r: (-r["num_params"], not r["pretrained"], r["backbone"]))
    ]
    top_freq = freq.get(rows[0]["backbone"], float("nan")) if freq else float("nan")
    return Ranking(
        by=by,
        rows=rows,
        stability=float(top_freq),
        rank_by_params=by_params,
        n_bootstrap=n_bootstrap if freq else 0,
        seconds=round(time.perf_counter() - t0, 3),
    )


def _bootstrap_top(
    features: dict[str, np.ndarray], labels: np.ndarray, by: str, n_bootstrap: int, seed: int
) -> dict[str, float]:
    """Share of resamples of the target in which each candidate scores highest.

    Resamples draw 80% of the target *without* replacement (subsampling, Politis & Romano 1994): with
    replacement, duplicated rows let LogME's evidence grow without bound when d > n.
    """
    from diag.stats.transfer import h_score, logme_score

    if n_bootstrap == 0:
        return {}
    rng = np.random.default_rng(seed)
    n = len(labels)
    m = max(2, round(0.8 * n))
    wins = dict.fromkeys(features, 0)
    done = 0
    for _ in range(n_bootstrap):
        idx = rng.choice(n, size=m, replace=False)
        y = labels[idx]
        if len(np.unique(y)) < len(np.unique(labels)):
            continue  # a resample that lost a class is not the same task
        vals = {}
        for k, f in features.items():
            try:
                vals[k] = logme_score(f[idx], y) if by == "logme" else h_score(f[idx], y, shrinkage=True)
            except Exception as exc:  # a degenerate resample: skip it for every candidate
                log.debug("bootstrap resample skipped: %s", exc)
                break
        else:
            wins[max(vals, key=lambda k: vals[k])] += 1
            done += 1
    return {k: v / done for k, v in wins.items()} if done else {}


def write_ranking(ranking: Ranking, out: str | Path) -> Path:
    """Write ``out/rank.json`` atomically."""
    import json

    from diag.fileio import atomic_write_bytes
    from diag.report.schema import _json_safe

    path = Path(out) / "rank.json"
    blob = json.dumps(_json_safe({"kind": "diag.rank", "schema_version": 1, **ranking.to_dict()}), indent=1)
    atomic_write_bytes(path, (blob + "\n").encode())
    return path
