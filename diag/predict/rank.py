"""Which backbone transfers best to this target? The ranking, its bootstrap stability, a static baseline.

Each candidate backbone (and, optionally, its random-init twin) embeds the labelled target once
(:func:`diag.pipeline.rank_backbones` orchestrates that); the transferability scores of
:mod:`diag.stats.transfer` are computed at the deepest probe and the per-layer linear probe finds each
backbone's best layer. The ranking uses LogME (You et al., ICML 2021) by default; SFDA (Shao et al., ECCV
2022), the shrinkage H-score and the k-NN and linear-probe accuracies can rank too. Transferability
rankings are unstable (Agostinelli et al., "How stable are Transferability Metrics evaluations?", ECCV
2022), so the ranking comes with its bootstrap stability — how often the top pick stays on top when the
target samples are resampled — and beside a static baseline that needs no data: the parameter count.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from diag.errors import param_error
from diag.fileio import atomic_write_bytes, json_safe
from diag.stats.transfer import h_score, logme_score, sfda_score

__all__ = [
    "RANK_SCORES",
    "Ranking",
    "bootstrap_top_frequency",
    "candidate_names",
    "rank_candidates",
    "write_ranking",
]

log = logging.getLogger(__name__)

#: The scores a ranking can use; bootstrap stability is computed for the first three.
RANK_SCORES = ("logme", "h_score_shrinkage", "sfda", "linear_probe_accuracy", "knn_accuracy")
_BOOTSTRAP_SCORES = RANK_SCORES[:3]


def _bootstrap_score(by: str, features: ArrayLike, labels: ArrayLike) -> float:
    if by == "logme":
        return logme_score(features, labels)
    if by == "sfda":
        return sfda_score(features, labels)
    return h_score(features, labels, shrinkage=True)


@dataclass(frozen=True)
class Ranking:
    """Outcome of :func:`diag.pipeline.rank_backbones`.

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


def rank_candidates(
    rows: list[dict[str, Any]],
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    by: str,
    n_bootstrap: int,
    seed: int,
    seconds: float,
) -> Ranking:
    """Order scored candidates by ``by``, best first, with bootstrap stability and the size baseline.

    Parameters
    ----------
    rows : list of dict
        One per candidate with at least ``backbone``, ``pretrained``, ``num_params`` and ``score``
        (the value of ``by``; NaN sorts last). ``rank`` and ``top_frequency`` are added in place.
    features : dict of str to ndarray of shape (n_samples, n_features)
        Each candidate's features at the scored layer, keyed by ``backbone``.
    labels : ndarray of shape (n_samples,)
    by, n_bootstrap, seed
        See :func:`diag.pipeline.rank_backbones`.
    seconds : float
        Wall time of the ranking, recorded in the result.
    """
    rows.sort(key=lambda r: -r["score"] if np.isfinite(r["score"]) else np.inf)
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    freq = bootstrap_top_frequency(features, labels, by, n_bootstrap, seed) if by in _BOOTSTRAP_SCORES else {}
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
        seconds=seconds,
    )


def candidate_names(backbones: Sequence[str]) -> list[str]:
    """The backbone names to rank, stripped; raise unless they are one or more and distinct."""
    names = [b.strip() for b in backbones if b.strip()]
    if not names or len(set(names)) != len(names):
        raise param_error("backbones", "must be one or more distinct backbone names", list(backbones))
    return names


def bootstrap_top_frequency(
    features: dict[str, np.ndarray], labels: np.ndarray, by: str, n_bootstrap: int, seed: int
) -> dict[str, float]:
    """Share of resamples of the target in which each candidate scores highest.

    Parameters
    ----------
    features : dict of str to ndarray of shape (n_samples, n_features)
        Each candidate's features of the same target samples.
    labels : ndarray of shape (n_samples,)
    by : {"logme", "h_score_shrinkage", "sfda"}
    n_bootstrap : int
        Resamples; 0 returns ``{}``.
    seed : int

    Resamples draw 80% of the target *without* replacement (subsampling, Politis & Romano 1994): with
    replacement, duplicated rows let LogME's evidence grow without bound when d > n.
    """
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
                vals[k] = _bootstrap_score(by, f[idx], y)
            except Exception as exc:  # a degenerate resample: skip it for every candidate
                log.debug("bootstrap resample skipped: %s", exc)
                break
        else:
            wins[max(vals, key=lambda k: vals[k])] += 1
            done += 1
    return {k: v / done for k, v in wins.items()} if done else {}


def write_ranking(ranking: Ranking, out: str | Path) -> Path:
    """Write ``out/rank.json`` atomically."""
    path = Path(out) / "rank.json"
    blob = json.dumps(json_safe({"kind": "diag.rank", "schema_version": 1, **ranking.to_dict()}), indent=1)
    atomic_write_bytes(path, (blob + "\n").encode())
    return path
