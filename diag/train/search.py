"""A budgeted freeze-depth search: successive halving over a few candidate depths, then the winner in full.

``diag finetune --freeze search [--search-budget F]``: where diag's freeze rule
(:func:`diag.predict.freeze.recommend_freeze`) may be wrong, spend a little compute to check it. The
candidates (:func:`search_candidates`) are the rule's depth, then the two recipes a user would otherwise run —
tune the last two blocks, tune every block — then the rule's "about as defensible" alternative. Each candidate
is trained with the *full* recipe (same epochs, same learning-rate schedule) but stopped early, at the end of
a rung; after each rung the better half (by best validation accuracy so far) continues from its checkpoint,
the rest stop — successive halving (Jamieson & Talwalkar, "Non-stochastic Best Arm Identification and
Hyperparameter Optimization", AISTATS 2016; Li et al., "Hyperband", JMLR 2018). The last candidate standing
resumes to the full number of epochs, so its trial epochs are not wasted.

Cost is counted in units of one full run (``epochs`` epochs): the *extra* cost is the epochs spent on the
candidates that lost, divided by ``epochs``; the winner's run is the one the rule alone would have paid for.
:func:`plan_rungs` picks the most candidates, then the longest first rung, whose extra cost stays within the
budget — exactly, in whole epochs.

The rule's depth (the first candidate) is the incumbent. Early epochs favour deeper freezing — fewer tuned
parameters converge first, and the curves cross later — so a challenger that freezes *more* blocks than the
incumbent displaces it at a rung only by more than the validation noise, ``DISPLACE_Z`` standard errors of
the difference of two accuracies on the same ``n`` validation items, ``sqrt(2 p (1 - p) / n)``
(:func:`incumbent_margin`); one that freezes *fewer* (the bias runs against it) only has to lead. With the
rule's neighbours as challengers and no margin the search lost to the rule alone on the 59 benchmark tables
(simulated from their per-epoch curves at budget 0.5: 0.969 of the best depth against the rule's 0.976;
``benchmarks/bench_search.py``). With the candidates of :func:`search_candidates` and this one-sided margin
it reached 0.979 / 0.981 / 0.988 at budgets 0.25 / 0.5 / 1 (the neighbours under a margin for every
challenger: 0.970 / 0.976 / 0.978); the best of the three candidates averages 0.992, but the early rungs
cannot always tell which one it is. With four seeds on 41 of those tables (four families; the rule alone
0.978): 0.979 / 0.982 / 0.988, the neighbours 0.971 / 0.976 / 0.984, no margin 0.976 / 0.979 / 0.989.
Over 68 tables (nine built after the rule's last change; the rule alone 0.972): 0.975 / 0.981 / 0.988; the
gain over the rule at half a run is not distinguishable from zero (+0.008, 95 % [-0.001, +0.020]), at one
run it is (+0.016, [+0.007, +0.027]) — so one run is the default budget
(:data:`diag.predict.freeze.DEFAULT_SEARCH_BUDGET`).

What else was replayed on the 71 tables' curves (``bench_search.DESIGNS``; 69 tables at four seeds), at half
a run, against the shipped design's 0.980: a pair of candidates (the rule's depth and the far end: 0.983, the
best found), the rung scored by the last or the mean epoch (0.979, 0.980), one rung (0.978), a gate that
searches only where the rule tunes half the blocks or more (0.981 at 0.16 runs); and the trials ranked by
validation loss instead of accuracy (re-run to epoch 2 on 63 tables, seeds 0 and 1: 0.967 against 0.978 on
the same seeds; at epoch 2 the two rankings disagree on the leader in 50 of 126 table-seeds, in both
directions). None reaches 0.99; each seed's best candidate after full runs would (0.997), at about two extra
runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from diag.data.dataset import DataSet
from diag.errors import param_error
from diag.fileio import atomic_write_bytes
from diag.models import Backbone
from diag.predict.freeze import DEFAULT_SEARCH_BUDGET, search_candidates
from diag.train.callbacks import TrainCallback, TrainState
from diag.train.config import FinetuneConfig
from diag.train.result import FinetuneResult
from diag.train.run import TrainJob, check_run_folder, run_job

__all__ = [
    "DEFAULT_BUDGET",
    "DISPLACE_Z",
    "SearchResult",
    "freeze_search",
    "incumbent_margin",
    "plan_rungs",
    "search_candidates",
    "successive_halving",
]

#: Extra compute of ``--freeze search`` by default, in units of one full run (why one:
#: :data:`diag.predict.freeze.DEFAULT_SEARCH_BUDGET`).
DEFAULT_BUDGET = DEFAULT_SEARCH_BUDGET
#: Standard errors by which a depth that freezes more must beat the rule's at a rung (the usual two: ~95 %).
DISPLACE_Z = 2.0
SEARCH_FILE = "search.json"


def _rung_cost(n: int, rungs: Sequence[int], eta: int) -> tuple[int, list[int]]:
    """Epochs spent on the candidates eliminated at each rung, and how many are alive at each."""
    alive, cost, counts = n, 0, []
    for r in rungs:
        counts.append(alive)
        keep = math.ceil(alive / eta)
        cost += (alive - keep) * r
        alive = keep
    return cost, counts


def plan_rungs(n_candidates: int, epochs: int, budget: float, *, eta: int = 2) -> tuple[int, list[int]]:
    """How many candidates to try and the epochs at which each rung ends, within ``budget``.

    Rungs end at ``r0, eta·r0, eta²·r0, ...`` (all before ``epochs``) until one candidate is left. The
    extra cost — epochs trained by the candidates eliminated — is at most ``budget · epochs``. The plan
    with the most candidates wins, then the one with the longest first rung. Returns ``(1, [])`` (no
    search: the rule's depth alone) when even two candidates at one epoch do not fit.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise param_error("epochs", "must be an integer >= 1", epochs)
    if not math.isfinite(budget) or budget < 0:
        raise param_error("search_budget", "must be a number >= 0 (extra cost in full runs)", budget)
    if eta < 2:
        raise param_error("eta", "must be an integer >= 2", eta)
    allowed = budget * epochs + 1e-9
    for n in range(n_candidates, 1, -1):
        for r0 in range(epochs - 1, 0, -1):
            rungs, alive, r = [], n, r0
            while alive > 1 and r < epochs:
                rungs.append(r)
                alive = math.ceil(alive / eta)
                r *= eta
            if alive > 1:
                continue  # the rungs would reach a full run before one candidate is left
            if _rung_cost(n, rungs, eta)[0] <= allowed:
                return n, rungs
    return 1, []


@dataclass(frozen=True)
class SearchResult:
    """What a search tried and what it cost.

    Attributes
    ----------
    candidates : list of int
        Depths tried, most trusted first (ties go to the earlier one).
    rungs : list of dict
        Per rung: ``epochs``, ``scores`` (best validation accuracy so far, per depth),
        ``incumbent_margin`` (the handicap of the depths that freeze more than the first candidate), ``kept``.
    winner : int
    winner_score : float
        The winner's best validation accuracy after the full run.
    epochs_trained : dict
        Epochs trained per depth.
    epochs : int
        Epochs of one full run.
    extra_cost : float
        Epochs of the eliminated candidates / ``epochs`` (full runs beyond the winner's).
    total_cost : float
        All epochs trained / ``epochs``.
    budget : float
    """

    candidates: list[int]
    rungs: list[dict[str, Any]]
    winner: int
    winner_score: float
    epochs_trained: dict[int, int]
    epochs: int
    extra_cost: float
    total_cost: float
    budget: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["epochs_trained"] = {str(k): v for k, v in self.epochs_trained.items()}
        d["rungs"] = [{**r, "scores": {str(k): v for k, v in r["scores"].items()}} for r in self.rungs]
        return d


def incumbent_margin(p: float, n_val: int | None, z: float = DISPLACE_Z) -> float:
    """How far a challenger must lead the incumbent's validation accuracy ``p`` to displace it: ``z``
    standard errors of the difference of two accuracies on the same ``n_val`` items, ``z sqrt(2 p (1 - p)
    / n_val)`` (two independent binomial proportions, the paired case's upper bound). 0 without ``n_val``."""
    if not n_val or n_val < 1 or z <= 0:
        return 0.0
    q = min(max(float(p), 0.0), 1.0)
    return z * math.sqrt(2.0 * q * (1.0 - q) / n_val)


def successive_halving(
    candidates: Sequence[int],
    epochs: int,
    budget: float,
    train_to: Callable[[int, int], float],
    *,
    eta: int = 2,
    n_val: int | Callable[[], int | None] | None = None,
    z: float = DISPLACE_Z,
) -> SearchResult:
    """Successive halving over ``candidates`` with the plan of :func:`plan_rungs`.

    ``train_to(depth, e)`` trains that depth's run up to epoch ``e`` (continuing it if it has fewer) and
    returns its best validation accuracy over epochs 1..e; it is called once per candidate and rung, then
    once for the winner with ``e = epochs``. The same bookkeeping serves a real search
    (:func:`freeze_search`) and a simulation from recorded per-epoch curves.

    ``n_val`` (the validation items, or a function that tells them once a trial has run) sets the
    incumbent's margin (:func:`incumbent_margin`): a candidate that freezes more blocks than the first one
    ranks as if its score were that much lower; one that freezes fewer ranks on its score. None: no margin
    (plain successive halving).
    """
    if not candidates:
        raise param_error("candidates", "must name at least one depth", list(candidates))
    n, rungs = plan_rungs(len(candidates), epochs, budget, eta=eta)
    alive = list(candidates[:n])
    order = {c: i for i, c in enumerate(alive)}
    trained = dict.fromkeys(alive, 0)
    log: list[dict[str, Any]] = []
    incumbent = alive[0]
    for r in rungs:
        scores = {c: float(train_to(c, r)) for c in alive}
        for c in alive:
            trained[c] = r
        keep = math.ceil(len(alive) / eta)
        size = n_val() if callable(n_val) else n_val
        margin = incumbent_margin(scores[incumbent], size, z) if incumbent in scores else 0.0
        # a depth that freezes more than the incumbent is handicapped by the margin (early epochs favour it)
        ranked = sorted(alive, key=lambda c: (-(scores[c] - (margin if c > incumbent else 0.0)), order[c]))
        alive = ranked[:keep]
        log.append({"epochs": r, "scores": scores, "incumbent_margin": margin, "kept": list(alive)})
    winner = alive[0]
    final = float(train_to(winner, epochs))
    trained[winner] = epochs
    lost = sum(e for c, e in trained.items() if c != winner)
    return SearchResult(
        candidates=list(candidates[:n]),
        rungs=log,
        winner=winner,
        winner_score=final,
        epochs_trained=trained,
        epochs=epochs,
        extra_cost=lost / epochs,
        total_cost=sum(trained.values()) / epochs,
        budget=budget,
    )


class _StopAfter(TrainCallback):
    """Stops a trial cleanly (checkpoint kept, status ``stopped``) at the end of epoch ``epochs``."""

    stop_reason: ClassVar[str] = "the search's rung"

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> bool:
        return int(record["epoch"]) >= self.epochs


def _best_until(res: FinetuneResult, epochs: int) -> float:
    vals = [h["val_acc"] for h in res.history if h.get("val_acc") is not None and h["epoch"] <= epochs]
    return max(vals) if vals else 0.0


def freeze_search(
    target: str | Path | DataSet,
    backbone: str | Backbone,
    config: FinetuneConfig,
    *,
    out: str | Path,
    candidates: Sequence[int],
    budget: float = DEFAULT_BUDGET,
    val: str | Path | DataSet | None = None,
    callbacks: Sequence[TrainCallback] = (),
    eta: int = 2,
) -> tuple[FinetuneResult, SearchResult]:
    """Successive halving over freeze depths (``candidates``), then the winner trained in full.

    Each depth's run lives in ``out/trials/freeze-K`` (resumable: rerunning the same search reuses
    what is there). The winner's ``result.json``, ``metrics.jsonl`` and ``best.pt`` are copied to
    ``out`` and the search's bookkeeping (:class:`SearchResult`) is written to ``out/search.json``.

    Returns
    -------
    (FinetuneResult, SearchResult)
        The winner's full run and the search.
    """
    outp = Path(out)
    cfg = config
    job = TrainJob.open(target, backbone, val)
    runs: dict[int, FinetuneResult] = {}

    def train_to(k: int, e: int) -> float:
        run_dir = outp / "trials" / f"freeze-{k}"
        cfg_k = replace(cfg, freeze=k)
        prev = check_run_folder(run_dir, cfg_k, resume=True, overwrite=False)
        if prev is None and (run_dir / "result.json").exists():
            prev = FinetuneResult.load(run_dir)
        if prev is not None and (prev.status == "completed" or prev.epochs_completed >= e):
            runs[k] = prev
            return _best_until(prev, e)
        stop = [_StopAfter(e)] if e < cfg.epochs else []
        runs[k] = run_job(job, cfg_k, run_dir, callbacks=[*callbacks, *stop], resume=True)
        return _best_until(runs[k], e)

    def n_val() -> int | None:
        return next((r.n_val for r in runs.values()), None)

    res = successive_halving(list(candidates), cfg.epochs, budget, train_to, eta=eta, n_val=n_val)
    win_dir = outp / "trials" / f"freeze-{res.winner}"
    for name in ("result.json", "metrics.jsonl", "best.pt"):
        if (win_dir / name).exists():
            atomic_write_bytes(outp / name, (win_dir / name).read_bytes())
    atomic_write_bytes(outp / SEARCH_FILE, (json.dumps(res.to_dict(), indent=1) + "\n").encode())
    return runs[res.winner], res
