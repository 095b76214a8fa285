"""New data against a reference's summaries of every item: RFF-MMD and the Fréchet distance per layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from diag.engine.embeddings import Embeddings
from diag.reference.store import Reference
from diag.stats.summaries import frechet_from_moments, rff_mmd_test

__all__ = ["reference_comparison"]


def reference_comparison(ref: Reference, target: Embeddings, *, random_state: int = 0) -> dict[str, Any]:
    """Per layer, ``target`` against every reference item through the summaries: the RFF-MMD test
    (:func:`diag.stats.summaries.rff_mmd_test`) and the Fréchet distance from the moments."""
    layers: dict[str, Any] = {}
    for name, summary in ref.layers.items():
        x = target[name]
        rff = rff_mmd_test(summary.embedding, x, random_state=random_state)
        cov = np.cov(x.astype(np.float64), rowvar=False).reshape(x.shape[1], x.shape[1])
        layers[name] = {
            "rff_mmd2": rff.mmd2,
            "rff_p_value": rff.p_value,
            "frechet": frechet_from_moments(summary.moments.mean, summary.moments.covariance, x.mean(0), cov),
            "bandwidth": rff.bandwidth,
        }
    return {
        "folder": None if ref.folder is None else str(ref.folder),
        "name": ref.name,
        "n": ref.n,
        "reservoir": len(ref.reservoir.ids),
        "n_features": ref.settings.n_features,
        "layers": layers,
        "note": (
            "layers[i].shift compares the target with the reference's reservoir "
            f"({len(ref.reservoir.ids)} of {ref.n} items); this section compares it with all {ref.n} "
            "through their summaries."
        ),
    }
