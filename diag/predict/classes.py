"""The class-conditional view of a shift profile: label shift, and the MMD² test within each class.

Separates "the classes moved" from "the class mix changed". :func:`diag.predict.profile.shift_profile`
calls :func:`class_view` when both sides are labelled; above ``streaming_above`` items on a side a class
is tested from mean embeddings (:func:`diag.predict.streaming.streaming_mmd`), as the layers are, and when
the profile itself is on the streaming path the exact test of a smaller class sees at most
:data:`~diag.predict.streaming.CLASS_PER_SIDE` items per side (a seeded uniform subsample).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from diag.errors import param_error
from diag.predict.streaming import CLASS_PER_SIDE, streaming_mmd
from diag.stats.shift import MIN_SAMPLES, label_shift, mmd_test
from diag.stats.streaming import stratified_rows

if TYPE_CHECKING:  # the view reads labels and classes off the profile's Embeddings
    from diag.engine.embeddings import Embeddings

__all__ = ["ClassShift", "class_conditional_shift", "class_view", "holm"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassShift:
    """Shift within one class (both sides restricted to that label) at one layer."""

    label: str
    n_source: int
    n_target: int
    mmd2: float
    p_value: float
    p_adjusted: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order; monotone and at most 1."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def class_view(
    source: Embeddings,
    target: Embeddings,
    onset_layer: str | None,
    names: list[str],
    n_permutations: int,
    random_state: int,
    device: str,
    streaming_above: int | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    cs, ct = list(source.classes), list(target.classes)
    common = [c for c in cs if c in ct]
    if not common:
        log.info("no class names in common between source and target: no class-conditional view")
        return None, {"skipped": "source and target share no class names", "layers": {}}
    assert source.labels is not None and target.labels is not None
    # Labels index each side's own class list: map both onto the union, in source order.
    union = cs + [c for c in ct if c not in cs]
    ys = np.asarray([union.index(cs[i]) for i in source.labels])
    yt = np.asarray([union.index(ct[i]) for i in target.labels])
    lab = label_shift(ys, yt, union)
    wanted = [names[-1]]
    if onset_layer and onset_layer not in wanted:
        wanted.insert(0, onset_layer)
    out: dict[str, Any] = {"layers": {}, "n_permutations": min(n_permutations, 1000)}
    # On the profile's streaming path the exact per-class tests get a bounded sample, as the C2ST does.
    big = streaming_above is not None and max(len(source), len(target)) > streaming_above
    cap = CLASS_PER_SIDE if big else None
    if cap is not None:
        out["max_per_side"] = cap
    for layer in wanted:
        out["layers"][layer] = [c.to_dict() for c in class_conditional_shift(
            source[layer], ys, target[layer], yt, union,
            n_permutations=min(n_permutations, 1000), random_state=random_state, device=device,
            streaming_above=streaming_above, max_per_side=cap,
        )]  # fmt: skip
    return lab, out


def class_conditional_shift(
    x: np.ndarray,
    y_source: np.ndarray,
    z: np.ndarray,
    y_target: np.ndarray,
    classes: Sequence[str],
    *,
    n_permutations: int = 1000,
    random_state: int = 0,
    device: str = "auto",
    streaming_above: int | None = None,
    max_per_side: int | None = None,
) -> list[ClassShift]:
    """MMD² test within each class present on both sides with at least ``MIN_SAMPLES`` items each.

    Separates "the classes moved" from "the class mix changed" (label shift). Holm-adjusted over the
    classes tested. Classes with too few items on a side are left out (and so not in the list). A class
    with more than ``streaming_above`` items on a side is tested from mean embeddings
    (:func:`diag.predict.streaming.streaming_mmd`, asymptotic p-value), as the layers are. Any other
    class gets the exact permutation test, on at most ``max_per_side`` of its items per side when given
    (a seeded uniform subsample of each side, drawn without looking at the features, so the test keeps
    its exact level; its cost grows with the square of the sample). ``n_source`` and ``n_target`` are
    the class's items either way.
    """
    if max_per_side is not None and (
        isinstance(max_per_side, bool) or not isinstance(max_per_side, int) or max_per_side < MIN_SAMPLES
    ):
        rule = f"must be an integer of at least {MIN_SAMPLES} or None"
        raise param_error("max_per_side", rule, max_per_side)
    tested: list[tuple[str, int, int, Any]] = []
    for c_idx, c in enumerate(classes):
        xs, zs = x[y_source == c_idx], z[y_target == c_idx]
        if len(xs) < MIN_SAMPLES or len(zs) < MIN_SAMPLES:
            continue
        seed = random_state + c_idx
        n_xs, n_zs = len(xs), len(zs)
        r: Any
        if streaming_above is not None and max(len(xs), len(zs)) > streaming_above:
            r = streaming_mmd(xs, zs, random_state=seed)[0]
        else:
            if max_per_side is not None:
                rs, rz = stratified_rows([len(xs), len(zs)], max_per_side, seed + 7919)
                xs, zs = xs[rs], zs[rz]
            r = mmd_test(xs, zs, n_permutations=n_permutations, random_state=seed, device=device)
        tested.append((str(c), n_xs, n_zs, r))
    adj = holm([t[3].p_value for t in tested]) if tested else []
    return [
        ClassShift(c, ns, nt, float(r.mmd2), float(r.p_value), float(a))
        for (c, ns, nt, r), a in zip(tested, adj, strict=True)
    ]
