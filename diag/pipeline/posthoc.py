"""After fine-tuning: what changed inside the model (:func:`compare`), what it forgot, and whether it
survives int8 deployment (:func:`deploy_check`).

:func:`compare` reads ``diag finetune``/``diag sweep`` run folders and, per block, puts the fine-tuned body
beside its pretrained backbone on the same target items: linear CKA of their features (Kornblith et
al., ICML 2019, :func:`diag.stats.similarity.linear_cka`), the relative weight change
``||θ_ft − θ_pre|| / ||θ_pre||`` and the per-layer shift between the two feature sets
(:func:`diag.predict.profile.shift_profile`: MMD test, C2ST AUC with its CI). A frozen block must come
out bit-identical with CKA 1: that is checked on every run. With ``reference`` data (the source task or
any held-out labelled set) it measures forgetting: the out-of-fold linear-probe and k-NN accuracy of
the pretrained vs the fine-tuned pooled features (the protocol of the transferability scores,
:mod:`diag.stats.transfer`) and, for a backbone with a source head, how often the source head's top-1
stays the same on the fine-tuned body (catastrophic forgetting: McCloskey & Cohen 1989; Kirkpatrick et
al., PNAS 2017). Several runs of one sweep give the trade-off curve: target accuracy vs forgetting per
freeze depth.

:func:`deploy_check` quantizes the fine-tuned body to int8 (:func:`diag.models.quantize.quantize_backbone`)
and reports accuracy fp32 vs int8 on labelled data with a paired bootstrap CI of the drop, the size and
CPU latency ratios (batch 1 and 32, medians of interleaved rounds) and the per-layer fp32-vs-int8 drift.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diag.data import DataSet, open_data
from diag.engine.embeddings import Embeddings
from diag.engine.extract import ExtractConfig, extract
from diag.errors import ConfigError, DataError
from diag.models import Backbone, load
from diag.models.quantize import quantize_backbone, resolve_method
from diag.models.weights import read_weights
from diag.predict.profile import holm
from diag.report.posthoc import (
    BlockChange,
    CompareReport,
    DeployReport,
    Forgetting,
    LayerDrift,
    RunComparison,
)
from diag.stats.shift import c2st, mmd_test
from diag.stats.similarity import linear_cka, paired_bootstrap_diff, relative_change
from diag.stats.transfer import knn_accuracy, linear_probe_accuracy
from diag.train.blocks import units_of_model
from diag.train.config import FinetuneConfig
from diag.train.result import FinetuneResult
from diag.train.sweep import SweepResult

__all__ = ["compare", "deploy_check", "finetuned_backbone", "open_runs"]

log = logging.getLogger(__name__)

#: CKA below 1 by more than this, at a frozen block, fails the built-in check (float round-off only).
CKA_TOL = 1e-6


def open_runs(runs: Sequence[str | Path]) -> list[Path]:
    """Run folders from folders of runs or of a sweep (``SWEEP/runs/*``, ``sweep.json`` present)."""
    out: list[Path] = []
    for r in runs:
        p = Path(r)
        if (p / SweepResult.FILE).is_file() and (p / "runs").is_dir():
            out += sorted(d for d in (p / "runs").iterdir() if (d / FinetuneResult.FILE).is_file())
        else:
            out.append(p)
    if not out:
        raise ConfigError(f"runs: no run folders in {', '.join(map(str, runs))}.")
    return out


def _result(path: Path) -> FinetuneResult:
    if not (path / FinetuneResult.FILE).is_file():
        raise DataError(
            f"{path}: not a diag finetune run folder (no {FinetuneResult.FILE}). Pass the --out folder of "
            "diag finetune, or one of SWEEP/runs/*."
        )
    return FinetuneResult.load(path)


def finetuned_backbone(run: str | Path) -> tuple[Backbone, Backbone, FinetuneResult, dict[str, torch.Tensor]]:
    """The pretrained backbone of a run, the same backbone with the run's fine-tuned body (its source
    head, when it has one, kept from the pretrained weights), the run's result and its task head.

    Raises
    ------
    DataError
        Not a run folder, no checkpoint (``best.pt``/``last.pt``), a checkpoint of another backbone.
    """
    path = Path(run)
    res = _result(path)
    ckpt = next((path / f for f in ("best.pt", "last.pt") if (path / f).is_file()), None)
    if ckpt is None:
        raise DataError(
            f"{path}: holds no checkpoint (best.pt or last.pt): the run was made with --no-save-best and "
            "without --keep-checkpoint, so its weights are gone. Rerun it with --save-best (the default)."
        )
    name = str(res.backbone["name"])
    cfg = FinetuneConfig.from_dict(res.config)
    body, head = read_weights(name, ckpt)
    # A run from a random-init backbone (from_scratch, a tiny test net) compares with that same init.
    pretrained, seed = bool(res.backbone.get("pretrained", True)), int(res.backbone.get("seed") or 0)
    pre, ft = (
        load(name, pretrained=pretrained, seed=seed, image_size=cfg.image_size, max_length=cfg.max_length)
        for _ in range(2)
    )
    excluded = pre.block_layout(pre.model).exclude
    missing, unexpected = ft.model.load_state_dict(body, strict=False)
    stray = [k for k in missing if not any(k == e or k.startswith(e + ".") for e in excluded)]
    if unexpected or stray:
        raise DataError(
            f"{ckpt}: its weights do not fit backbone {name!r} named in {path / FinetuneResult.FILE} "
            f"({len(stray)} tensor(s) missing, e.g. {stray[:2]}; {len(unexpected)} unexpected, e.g. "
            f"{unexpected[:2]}). The checkpoint comes from a different backbone; rerun the fine-tuning."
        )
    ft.model.eval()
    ft.weights = f"file:{ckpt}"
    return pre, ft, res, head


def _open(data: str | Path | DataSet) -> DataSet:
    return data if isinstance(data, DataSet) else open_data(data)


def _sample(ds: DataSet, max_items: int, seed: int = 0) -> DataSet:
    if len(ds) <= max_items:
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), max_items, replace=False))
    return ds.subset(idx)


def _probe_accuracy(emb: Embeddings) -> dict[str, float]:
    assert emb.labels is not None
    x = emb["pooled"]
    n_min = int(np.bincount(emb.labels).min(initial=0)) if emb.labels.size else 0
    splits = max(2, min(5, n_min))
    lin = linear_probe_accuracy(x, emb.labels, n_splits=splits, random_state=0)
    knn = knn_accuracy(x, emb.labels, k=5, n_splits=splits, random_state=0, device="cpu")
    return {"linear": lin.accuracy, "knn": knn.accuracy}


def _paired_shift(
    a: Embeddings, b: Embeddings, n_permutations: int, device: str
) -> dict[str, dict[str, Any]]:
    """Per probe point: MMD² with its permutation p-value (Holm-adjusted over the layers) and the C2ST
    AUC with its CI, between two feature sets of the same items from two networks (pretrained vs
    fine-tuned, fp32 vs int8), so :func:`diag.predict.profile.shift_profile`'s same-weights check does
    not apply."""
    rows: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(a.probes):
        x, y = a[p.name], b[p.name]
        mmd = mmd_test(x, y, n_permutations=n_permutations, random_state=1009 * i, device=device)
        clf = c2st(x, y, random_state=1009 * i)
        rows[p.name] = {"mmd2": float(mmd.mmd2), "p_value": float(mmd.p_value), "c2st_auc": float(clf.auc),
                        "c2st_auc_ci": [float(v) for v in clf.auc_ci]}  # fmt: skip
    for r, adj in zip(rows.values(), holm([r["p_value"] for r in rows.values()]), strict=True):
        r["p_adjusted"] = float(adj)
    return rows


def compare(
    runs: Sequence[str | Path],
    *,
    data: str | Path | DataSet | None = None,
    reference: str | Path | DataSet | None = None,
    max_items: int = 500,
    n_permutations: int = 200,
    shift: bool = True,
    device: str = "cpu",
    save: bool = True,
) -> CompareReport:
    """Compare fine-tuned runs with their pretrained backbone (see the module docstring).

    Parameters
    ----------
    runs : sequence of run folders (or a sweep folder: its runs)
    data : the target items to read features on (default: the first run's training target)
    reference : labelled source / held-out data for forgetting (optional)
    max_items : at most this many items of each (a seeded random subset)
    n_permutations : MMD permutations per layer of the pretrained-vs-fine-tuned shift
    shift : run the per-layer shift statistics (the slowest part)
    device : where features and statistics run
    save : write ``RUN/compare.json`` (+ ``.md``/``.html``) for each run, and ``compare.json`` in the
        sweep's folder for several runs of one sweep

    Raises
    ------
    DataError
        A run without checkpoint, runs of different backbones, unlabelled reference data.
    """
    paths = open_runs(runs)
    names = {str(_result(p).backbone["name"]) for p in paths}
    if len(names) > 1:
        raise DataError(
            f"runs: they fine-tune different backbones ({', '.join(sorted(names))}); compare runs of one "
            "backbone at a time (one sweep)."
        )
    ref = None
    if reference is not None:
        ref = _sample(_open(reference), max_items)
        if not ref.has_labels:
            raise DataError(
                f"reference {ref.name}: has no labels; forgetting is a probe accuracy and needs labelled "
                "data (an image folder with one subfolder per class, a table with a label column)."
            )
    target = _open(data if data is not None else str(_result(paths[0]).target.get("name")))
    target = _sample(target, max_items)
    opened = [finetuned_backbone(p) for p in paths]
    cfg = ExtractConfig(device=device, precision="fp32")
    pre = opened[0][0]
    pre_t = extract(pre, target, cfg)
    pre_r = extract(pre, ref, cfg) if ref is not None else None
    pre_acc = _probe_accuracy(pre_r) if pre_r is not None else None
    before = pre.model.state_dict()
    rows: list[RunComparison] = []
    for path, (_, ft, res, _head) in zip(paths, opened, strict=True):
        t0 = time.perf_counter()
        ft_t = extract(ft, target, cfg)
        after = ft.model.state_dict()
        units = units_of_model(pre.model, pre)
        frozen_n = int(res.freeze)
        prof = _paired_shift(pre_t, ft_t, n_permutations, device) if shift else {}
        blocks: list[BlockChange] = []
        for u in units:
            buffers = [
                k for k in before if k.startswith(tuple(m + "." for m in u.modules)) and k not in u.params
            ]
            change, identical = relative_change(before, after, list(u.params))
            _, buf_same = relative_change(before, after, buffers) if buffers else (0.0, True)
            cka = linear_cka(pre_t[u.name], ft_t[u.name]) if u.name in pre_t.features else None
            layer = prof.get(u.name)
            blocks.append(
                BlockChange(
                    name=u.name,
                    index=u.index,
                    frozen=u.index < frozen_n,
                    n_params=u.n_params,
                    weight_change=change,
                    bit_identical=identical and buf_same,
                    cka=cka,
                    c2st_auc=None if layer is None else layer["c2st_auc"],
                    c2st_auc_ci=None if layer is None else layer["c2st_auc_ci"],
                    mmd2=None if layer is None else layer["mmd2"],
                    p_adjusted=None if layer is None else layer["p_adjusted"],
                )
            )
        violations = [
            b.name
            for b in blocks
            if b.frozen and (not b.bit_identical or (b.cka is not None and b.cka < 1 - CKA_TOL))
        ]
        if violations:
            log.warning("%s: frozen blocks changed: %s", path, ", ".join(violations))
        forgetting = None
        if ref is not None and pre_r is not None and pre_acc is not None:
            ft_r = extract(ft, ref, cfg)
            ft_acc = _probe_accuracy(ft_r)
            agree = None
            if pre_r.logits is not None and ft_r.logits is not None:
                agree = float(np.mean(pre_r.logits.argmax(1) == ft_r.logits.argmax(1)))
            forgetting = Forgetting(
                reference=ref.name,
                n=len(ft_r),
                linear_pretrained=pre_acc["linear"],
                linear_finetuned=ft_acc["linear"],
                knn_pretrained=pre_acc["knn"],
                knn_finetuned=ft_acc["knn"],
                source_top1_agreement=agree,
                pooled_cka=linear_cka(pre_r["pooled"], ft_r["pooled"]),
            )
        rows.append(
            RunComparison(
                run=str(path),
                backbone=str(res.backbone["name"]),
                freeze=frozen_n,
                n_blocks=int(res.n_blocks),
                target_accuracy=res.best_val_accuracy,
                data=target.name,
                n_items=len(ft_t),
                blocks=blocks,
                frozen_check_ok=not violations,
                frozen_check_violations=violations,
                forgetting=forgetting,
                seconds=round(time.perf_counter() - t0, 2),
            )
        )
    report = CompareReport(runs=rows, config={"max_items": max_items, "n_permutations": n_permutations,
                                               "shift": shift, "device": device})  # fmt: skip
    if save:
        for row in rows:
            CompareReport(runs=[row], config=report.config).save(Path(row.run))
        parents = {Path(r.run).parent.parent for r in rows}
        if len(rows) > 1 and len(parents) == 1 and (next(iter(parents)) / SweepResult.FILE).is_file():
            report.save(next(iter(parents)))
    return report


def _class_codes(ds: DataSet, classes: Sequence[str], what: str) -> np.ndarray:
    if not ds.has_labels or ds.labels is None:
        raise DataError(
            f"{what} {ds.name}: has no labels; an accuracy needs labelled data (an image folder with one "
            "subfolder per class, a table with a label column)."
        )
    index = {c: i for i, c in enumerate(classes)}
    names = [str(ds.classes[i]) for i in ds.labels]
    unknown = sorted({n for n in names if n not in index})
    if unknown:
        raise DataError(
            f"{what} {ds.name}: classes {unknown[:5]} are not among the run's classes {list(classes)[:10]}; "
            "pass data labelled with the classes the model was fine-tuned on."
        )
    return np.array([index[n] for n in names])


def _latency(fp32: Backbone, int8: Backbone, batch: Any, rounds: int) -> tuple[float, float]:
    """Median seconds of ``capture(batch)`` for each model, rounds interleaved (fp32, int8, fp32, ...)."""
    t32: list[float] = []
    t8: list[float] = []
    with torch.inference_mode():
        fp32.capture(batch), int8.capture(batch)  # warm-up
        for _ in range(rounds):
            for bb, out in ((fp32, t32), (int8, t8)):
                t0 = time.perf_counter()
                bb.capture(batch)
                out.append(time.perf_counter() - t0)
    return float(np.median(t32)), float(np.median(t8))


def deploy_check(
    run: str | Path,
    data: str | Path | DataSet,
    *,
    method: str = "auto",
    n_calibration: int = 256,
    max_items: int = 1000,
    n_permutations: int = 200,
    latency_rounds: int = 20,
    n_resamples: int = 2000,
    save: bool = True,
) -> DeployReport:
    """Post-training int8 quantization of a fine-tuned run on the CPU, checked on labelled ``data``.

    ``n_calibration`` items of ``data`` (a seeded random subset, at most half) calibrate static
    quantization and are left out of the accuracy (dynamic quantization needs none); the accuracy
    uses at most ``max_items`` of the rest. See the module
    docstring for what is measured. Writes ``RUN/deploy.json`` (+ ``.md``/``.html``) with ``save``.

    Raises
    ------
    DataError
        A run without checkpoint, unlabelled data or classes the run does not know.
    """
    ds = _open(data)
    _class_codes(ds, _result(Path(run)).classes, "data")  # refuse bad data before loading anything
    _, ft, res, head = finetuned_backbone(run)
    ft.strip_source_head(ft.model)  # deploy the body and the task head only
    if "weight" not in head:
        raise DataError(f"{run}: the checkpoint holds no task head (head.weight); rerun the fine-tuning.")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ds))
    method = resolve_method(ft.model, method)
    n_cal = min(n_calibration, len(ds) // 2) if method == "static" else 0
    test = _sample(ds.subset(np.sort(order[n_cal:])), max_items)
    cal_batches = []
    if n_cal:
        cal = ds.subset(np.sort(order[:n_cal]))
        cal_batches = [b for _, b, _ in ft.batches(cal, 32, 0, pin=False) if b is not None]
    with torch.no_grad():
        qbb, qrep = quantize_backbone(ft, cal_batches, method=method)
    cfg = ExtractConfig(device="cpu", precision="fp32", batch_size=32)
    e32, e8 = extract(ft, test, cfg), extract(qbb, test, cfg)
    y = _class_codes(test, res.classes, "data")
    keep = [test.ids.index(i) for i in e32.ids] if len(e32) != len(test) else list(range(len(test)))
    y = y[keep]
    w, b = head["weight"].double().numpy(), head["bias"].double().numpy()
    ok32 = (np.argmax(e32["pooled"] @ w.T + b, axis=1) == y).astype(float)
    ok8 = (np.argmax(e8["pooled"] @ w.T + b, axis=1) == y).astype(float)
    drop, ci = paired_bootstrap_diff(ok32, ok8, n_resamples=n_resamples)
    prof = _paired_shift(e32, e8, n_permutations, "cpu")
    drift = []
    for p in ft.probes:
        a, q = e32[p.name], e8[p.name]
        lay = prof[p.name]
        drift.append(
            LayerDrift(
                name=p.name,
                index=p.index,
                relative_error=float(np.linalg.norm(a - q)) / max(float(np.linalg.norm(a)), 1e-12),
                cka=linear_cka(a, q),
                c2st_auc=lay["c2st_auc"],
                c2st_auc_ci=lay["c2st_auc_ci"],
                mmd2=lay["mmd2"],
                p_adjusted=lay["p_adjusted"],
            )
        )
    first32 = next(b for _, b, _ in ft.batches(test, 32, 0, pin=False) if b is not None)
    first1 = next(b for _, b, _ in ft.batches(test, 1, 0, pin=False) if b is not None)
    lat = {}
    for name, batch in (("batch_1", first1), ("batch_32", first32)):
        s32, s8 = _latency(ft, qbb, batch, latency_rounds)
        lat[name] = {
            "fp32_ms": round(1e3 * s32, 3),
            "int8_ms": round(1e3 * s8, 3),
            "ratio": round(s8 / s32, 4),
        }
    report = DeployReport(
        run=str(run),
        backbone=str(res.backbone["name"]),
        data=ds.name,
        n_items=int(ok32.size),
        n_calibration=qrep.n_calibration,
        accuracy_fp32=float(ok32.mean()),
        accuracy_int8=float(ok8.mean()),
        accuracy_drop=drop,
        accuracy_drop_ci=ci,
        agreement=float(np.mean(ok32 == ok8)),
        quantization=qrep.to_dict(),
        size_ratio=qrep.size_ratio,
        latency=lat,
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count() or 1,
        layers=drift,
    )
    if save:
        report.save(Path(run))
    return report
