"""Embedding through the cache, and the diagnosis of a source against a target (or two halves of one).

The shift profile, then, with a labelled target, the per-layer transfer curve, the negative-transfer verdict
and the freeze depth; the report assembles their results without editing them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from diag.config import DiagnoseConfig, ensure_writable, with_overrides
from diag.data import DataSet, open_data, stratified_halves
from diag.device import resolve_device, resolve_precision
from diag.engine import cache
from diag.engine.distributed import extract_ray
from diag.engine.embeddings import Embeddings
from diag.engine.extract import ExtractConfig, extract
from diag.errors import DataError, DiagError
from diag.models import Backbone, load
from diag.predict.attribution import drift_attribution
from diag.predict.effect import graded_effect
from diag.predict.freeze import recommend_freeze
from diag.predict.layers import TRANSFER_MAX_ITEMS, layer_transfer, transfer_subsample
from diag.predict.negative import SCALE_QUANTILE, negative_transfer, weight_scale
from diag.predict.profile import check_permutations, min_permutations, shift_profile
from diag.progress import ProgressCallback, stage
from diag.provenance import report_provenance
from diag.reference import (
    REFERENCE_PREFIX,
    Reference,
    as_reference_path,
    load_reference,
    reference_comparison,
)
from diag.report.schema import Report
from diag.stats.projection import precompute_maps
from diag.train import FinetuneConfig, freeze_units, relative_gradient_norms

__all__ = ["diagnose", "embed", "freeze_blocks", "split_halves"]

log = logging.getLogger(__name__)


def embed(
    data: str | Path | DataSet,
    backbone: str | Backbone,
    config: ExtractConfig | None = None,
    *,
    pretrained: bool = True,
    image_size: int | None = None,
    use_cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> Embeddings:
    """Embed a data set at every probe point of a backbone, reusing the on-disk cache.

    Parameters
    ----------
    data : path, ``samples:NAME`` or DataSet
    backbone : name or Backbone
        See :func:`diag.models.load` for names.
    config : ExtractConfig, optional
        Device, precision, batch size, workers; ``engine="ray"`` runs the forward passes on a Ray cluster
        (:func:`diag.engine.distributed.extract_ray`: the same embeddings and the same cache key).
    pretrained, image_size
        Passed to :func:`diag.models.load` when ``backbone`` is a name.
    use_cache : bool, default True
        Read and write the cache (``$DIAG_CACHE_DIR``, default ``~/.cache/diag``).

    Returns
    -------
    Embeddings
        ``emb.from_cache`` tells whether a forward pass ran.
    """
    cfg = config or ExtractConfig()
    t0 = time.perf_counter()
    ds = open_data(data)
    bb = (
        backbone
        if isinstance(backbone, Backbone)
        else load(backbone, pretrained=pretrained, image_size=image_size)
    )
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    key = cache.cache_key(bb, ds, precision=precision)
    prep_s = time.perf_counter() - t0
    if use_cache:
        hit = cache.lookup(key, root=cache_dir)
        if hit is not None:
            log.info("cache hit %s for %s [%s]", key[:12], ds.name, bb.name)
            timings = {**hit.manifest.get("timings", {}), "prepare_s": round(prep_s, 4)}
            return hit.with_manifest(timings=timings)
    emb = (extract_ray if cfg.engine == "ray" else extract)(bb, ds, cfg, progress=progress)
    timings = {**emb.manifest["timings"], "prepare_s": round(prep_s, 4)}
    emb = emb.with_manifest(cache_key=key, timings=timings, from_cache=False)
    if use_cache:
        cache.store(emb, root=cache_dir)
    return emb


DataLike = str | Path | DataSet | Embeddings


def split_halves(emb: Embeddings, *, seed: int = 0) -> tuple[Embeddings, Embeddings]:
    """Two disjoint random halves of one embedded data set (stratified by label when labelled).

    The null check: a calibrated test finds no shift between them (about ``alpha`` of the time).
    """
    if emb.labels is None:
        perm = np.random.default_rng(seed).permutation(len(emb))
        a, b = perm[: len(emb) // 2], perm[len(emb) // 2 :]
    else:
        a, b = stratified_halves(emb.labels, seed)
    name = emb.manifest.get("data", {}).get("name", "data")
    return emb.subset(a, name=f"{name} (half A)"), emb.subset(b, name=f"{name} (half B)")


def diagnose(
    source: DataLike,
    target: DataLike | None,
    backbone: str | Backbone | Callable[[], Backbone],
    config: DiagnoseConfig | ExtractConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: ProgressCallback | None = None,
    strict: bool = False,
    pretrained: bool | None = None,
    image_size: int | None = None,
    max_length: int | None = None,
    n_permutations: int | None = None,
    alpha: float | None = None,
    seed: int | None = None,
    use_cache: bool | None = None,
    cache_dir: str | Path | None = None,
    data_options: dict[str, str] | None = None,
    transfer: bool | None = None,
    rgn: bool | None = None,
) -> Report:
    """Embed source and target (once each, cached), profile the shift layer by layer, write the report.

    Parameters
    ----------
    source, target : path, ``samples:NAME``, DataSet or Embeddings
        ``target=None`` compares two disjoint random halves of ``source`` (a null check).
    backbone : name, Backbone, or a function returning one
        A function is called once, when the backbone is first needed (after the inputs are opened).
    config : DiagnoseConfig or ExtractConfig, optional
        Every option with its default (:class:`diag.config.DiagnoseConfig`); an ``ExtractConfig`` alone
        stands for ``DiagnoseConfig(extract=config)``.
    out : folder, optional
        Where to write ``report.json`` and its sidecars; nothing is written when None.
    progress : ProgressCallback, optional
    strict : bool, default False
        Refuse (:class:`~diag.errors.ConfigError`, before anything is embedded) a number of permutations
        with which no shift could be reported over the backbone's layers at ``alpha``
        (:func:`diag.predict.profile.min_permutations`); otherwise a warning, and the verdict says so.
    pretrained, image_size, max_length, n_permutations, alpha, seed, use_cache, cache_dir, transfer, rgn
        Each replaces the field of the same name of ``config`` when given (not None); see
        :class:`~diag.config.DiagnoseConfig` for their meaning and defaults. ``transfer`` adds, when the
        target has labels (2+ classes), the per-layer transferability of the pretrained backbone and of
        its random-init twin (one more forward pass over the target), the negative-transfer verdict and
        the freeze-depth recommendation (:mod:`diag.predict`); without labels the report says why these
        sections are missing. ``rgn`` adds the relative gradient norm of each block on a few target
        batches (:mod:`diag.train.rgn`, Auto-RGN), evidence for the freeze depth.
    data_options : dict, optional
        ``text_column`` / ``label_column`` for tables (replace the config's).

    Returns
    -------
    Report
    """
    base = config if isinstance(config, DiagnoseConfig) else DiagnoseConfig(extract=config or ExtractConfig())
    opts = {k: v for k, v in (data_options or {}).items() if v is not None}
    settings: DiagnoseConfig = with_overrides(
        base,
        {
            "pretrained": pretrained, "image_size": image_size, "max_length": max_length,
            "n_permutations": n_permutations, "alpha": alpha, "seed": seed, "use_cache": use_cache,
            "cache_dir": cache_dir, "transfer": transfer, "rgn": rgn, **opts,
        },
    )  # fmt: skip
    cfg = settings.extract
    seed = settings.seed
    t0 = time.perf_counter()
    if out is not None:  # before anything is computed: a run must not end on an unwritable folder
        ensure_writable(out, name="out")
    bb: Backbone | None = None

    def get_backbone() -> Backbone:
        nonlocal bb
        if bb is None:
            if isinstance(backbone, Backbone):
                bb = backbone
            elif callable(backbone):
                bb = backbone()
            else:
                bb = load(
                    backbone,
                    pretrained=settings.pretrained,
                    seed=seed,
                    image_size=settings.image_size,
                    max_length=settings.max_length,
                )
        return bb

    timings: dict[str, Any] = {}

    datasets: dict[str, DataSet | None] = {}
    references: dict[str, Reference] = {}

    # Open every input first (cheap: file lists, tables, reference summaries), so a bad data set is
    # reported before the backbone is loaded or anything is embedded.
    inputs: dict[str, DataSet | Reference | Embeddings] = {}
    specs: dict[str, str | None] = {}
    folders: dict[str, str] = {}
    for what, data in (("source", source), ("target", target)):
        if data is None:
            continue
        specs[what] = str(data) if isinstance(data, (str, Path)) else None
        ref_folder = as_reference_path(data)
        if ref_folder is not None:
            inputs[what] = references[what] = load_reference(ref_folder)
            specs[what] = f"{REFERENCE_PREFIX}{ref_folder}"
            folders[what] = str(ref_folder)
        elif isinstance(data, Embeddings):
            inputs[what] = data
        else:
            inputs[what] = open_data(data, **settings.data_options)
    _check_permutations(inputs, get_backbone, settings, strict=strict)

    def side(what: str) -> tuple[Embeddings, dict[str, Any]]:
        name = getattr(inputs[what], "name", None)
        with stage(progress, f"embed-{what}", f"embed the {what}" + (f" ({name})" if name else "")) as note:
            emb, info = embed_side(what)
            note["message"] = "from cache" if timings.get(f"{what}_from_cache") else None
        return emb, info

    def embed_side(what: str) -> tuple[Embeddings, dict[str, Any]]:
        t = time.perf_counter()
        item = inputs[what]
        if isinstance(item, Reference):  # a saved reference stands in for the data: its reservoir samples it
            item.require_same_backbone(get_backbone().describe(), what=f"backbone {get_backbone().name!r}")
            emb = item.sample()
            datasets[what] = None
            timings[f"embed_{what}_s"] = round(time.perf_counter() - t, 3)
            info = {"spec": specs[what], "name": item.name, "n": item.n, "reference": folders[what]}
            return emb, info
        if isinstance(item, Embeddings):
            emb = item
            datasets[what] = None
        else:
            datasets[what] = item
            emb = embed(
                item, get_backbone(), cfg, use_cache=settings.use_cache, cache_dir=settings.cache_dir,
                progress=progress,
            )  # fmt: skip
        timings[f"embed_{what}_s"] = round(time.perf_counter() - t, 3)
        timings[f"{what}_from_cache"] = emb.from_cache
        return emb, {"spec": specs[what], **emb.manifest.get("data", {})}

    src, src_info = side("source")
    if target is None:
        src, tgt = split_halves(src, seed=seed)
        tgt_info = {"spec": src_info["spec"], **tgt.manifest["data"]}
        src_info = {"spec": src_info["spec"], **src.manifest["data"]}
        parent = datasets["source"]
        datasets["target"] = None if parent is None else _rows_of(parent, tgt)
    else:
        tgt, tgt_info = side("target")
    for info in (src_info, tgt_info):
        info.pop("rows", None)  # the split's row list lives in the sidecar manifests, not the report

    t = time.perf_counter()
    dev = resolve_device(cfg.device)
    with stage(progress, "shift", f"shift statistics per layer ({len(src.probes)} layers)"):
        profile = shift_profile(
            src, tgt, n_permutations=settings.n_permutations, alpha=settings.alpha, random_state=seed,
            device=str(dev), progress=progress, streaming_above=settings.streaming_above,
        )  # fmt: skip
        graded = graded_effect(src, tgt, [x.name for x in profile.layers], random_state=seed, device=str(dev))
    timings["shift_s"] = round(time.perf_counter() - t, 3)
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    layers = [x.to_dict() for x in profile.layers]
    shift = profile.verdict.to_dict()
    sections: dict[str, Any] = {"graded_effect": graded}
    if "source" in references:
        sections["reference"] = reference_comparison(references["source"], tgt, random_state=seed)
    if settings.transfer:
        t = time.perf_counter()
        layers, predicted = _predictions(
            layers, shift, tgt, datasets["target"], get_backbone, settings, progress=progress
        )
        sections.update(predicted)
        timings["transfer_s"] = round(time.perf_counter() - t, 3)
    attribution = None
    map_layers = _map_layers(shift, sections.get("freeze"), [x.name for x in profile.layers])
    if settings.attribution or (settings.maps and out is not None):
        t = time.perf_counter()
        with stage(progress, "map", f"drift attribution and 2-D maps at {', '.join(map_layers)}"):
            if settings.attribution:
                attribution = drift_attribution(
                    src, tgt, tgt.ids, map_layers, {x.name: x.bandwidths for x in profile.layers},
                    random_state=seed, device=str(dev), progress=progress,
                )  # fmt: skip
                sections["attribution"] = attribution.to_dict()
            if settings.maps and out is not None:
                sections["maps"] = precompute_maps(src, tgt, map_layers, out, seed=0, progress=progress)
        timings["map_s"] = round(time.perf_counter() - t, 3)
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    backbone_info = src.manifest.get("backbone", {})
    report = Report(
        backbone={k: v for k, v in backbone_info.items() if k != "probes"},
        source=src_info,
        target=tgt_info,
        n_source=profile.n_source,
        n_target=profile.n_target,
        layers=layers,
        shift=shift,
        label_shift=profile.label_shift,
        class_conditional=profile.class_conditional,
        meta={
            **report_provenance(dev, seed=seed),
            "timings": timings,
            "config": {
                "extract": asdict(cfg),
                "shift": profile.config,
                "pretrained": backbone_info.get("pretrained", settings.pretrained),
                "null_split": target is None,
            },
            "embeddings": {"source_cache_key": src.cache_key, "target_cache_key": tgt.cache_key},
        },
        sections=sections,
    )
    if out is not None:
        with stage(progress, "write", f"write the report to {out}"):
            if attribution is not None:
                attribution.save(out)
            report = report.save(out, source=src, target=tgt, ood_scores=profile.ood_scores)
    return report


def _map_layers(shift: dict[str, Any], freeze: Any, names: list[str]) -> list[str]:
    """The layers a reader opens first, once each: the shift's onset (without one, the layer where the
    AUC peaks: on MNIST with 10% injected items and no shift found, the drift's samples ranked and
    clustered there as they were at the onset when one was found, benchmarks/bench_attribution.py),
    the freeze boundary, the deepest."""
    frozen = list((freeze or {}).get("frozen") or []) if isinstance(freeze, dict) else []
    first = shift.get("onset_layer") or (shift.get("peak") or {}).get("layer")
    wanted = [first, frozen[-1] if frozen else None, names[-1]]
    return list(dict.fromkeys(x for x in wanted if x in names))


def _check_permutations(
    inputs: dict[str, DataSet | Reference | Embeddings],
    get_backbone: Callable[[], Backbone],
    settings: DiagnoseConfig,
    *,
    strict: bool,
) -> None:
    """Before embedding: can ``settings.n_permutations`` reach ``alpha`` over the layers to be profiled?

    The layers are a reference's, the given embeddings', or the backbone's probe points.
    """
    items = list(inputs.values())
    refs = [x for x in items if isinstance(x, Reference)]
    if refs:
        n_layers = len(refs[0].layers)
    elif items and all(isinstance(x, Embeddings) for x in items):
        n_layers = len(next(x for x in items if isinstance(x, Embeddings)).probes)
    else:
        n_layers = len(get_backbone().probes)
    if strict:
        check_permutations(settings.n_permutations, n_layers, settings.alpha)
    elif settings.n_permutations < min_permutations(n_layers, settings.alpha):
        log.warning(
            "%d permutations over %d layers cannot reach alpha %g; the verdict will be 'no shift'",
            settings.n_permutations, n_layers, settings.alpha,
        )  # fmt: skip


def _rows_of(data: DataSet, half: Embeddings) -> DataSet:
    """The items of ``data`` that a split half of its embeddings holds (by id, in the half's order)."""
    pos = {i: k for k, i in enumerate(data.ids)}
    return data.subset([pos[i] for i in half.ids], name=half.manifest["data"]["name"])


def freeze_blocks(backbone: Backbone) -> list[str]:
    """The backbone's blocks in freeze order (names = probe points), from the fine-tuning engine."""
    return [u.name for u in freeze_units(backbone)]


def _predictions(
    layers: list[dict[str, Any]],
    shift: dict[str, Any],
    target: Embeddings,
    target_data: DataSet | None,
    get_backbone: Callable[[], Backbone],
    settings: DiagnoseConfig,
    *,
    progress: ProgressCallback | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Transferability per layer (pretrained and random-init twin), negative transfer, freeze depth.

    Returns the shift ``layers`` with each one's transfer scores added, and the report sections
    (``transferability``; ``negative_transfer`` and ``freeze`` when the target allows them).
    """
    cfg, seed = settings.extract, settings.seed
    device = str(resolve_device(cfg.device))
    with stage(progress, "transfer", "transferability per layer (pretrained)") as note:
        # One stratified subsample above TRANSFER_MAX_ITEMS, for the pretrained curve, the twin's and the
        # gradient norms alike (None: every item).
        idx = None if target.labels is None else transfer_subsample(target.labels, TRANSFER_MAX_ITEMS, seed)
        sub_target = target if idx is None else target.subset(idx)
        try:
            pre = layer_transfer(sub_target, random_state=seed, device=device, max_items=None)
        except DataError as exc:
            log.info("no transfer predictions: %s", exc)
            note["message"] = f"skipped: {exc}"
            return layers, {"transferability": {"skipped": str(exc)}}
    if target_data is None:
        msg = "the target was given as embeddings, so its random-init twin cannot embed it"
        return layers, {"transferability": {"skipped": msg}}
    probe_skips = [e["skipped"].get("linear_probe_accuracy") for e in pre.values()]
    if all(reason is not None for reason in probe_skips):  # e.g. one item per class (numeric labels)
        msg = (
            f"the linear probe cannot run on the target ({probe_skips[-1]}), and negative transfer and the "
            "freeze depth are read from it. Give a target with several items per class; the shift report "
            "is still produced."
        )
        log.info("no transfer predictions: %s", msg)
        return layers, {"transferability": {"skipped": msg}}
    assert target.labels is not None
    sub_data = target_data
    if idx is not None:
        row = {id_: k for k, id_ in enumerate(target_data.ids)}  # embedding rows -> data rows (skips)
        sub_data = target_data.subset([row[id_] for id_ in sub_target.ids])
    bb = get_backbone()
    pre_kw = bb.preprocessing
    with stage(progress, "random-init", "random-init twin: embed the target, transferability per layer"):
        twin, rnd = _twin_transfer(bb, pre_kw, sub_target, sub_data, settings, device, progress)
    n_classes = len(np.unique(target.labels))
    grads = None
    if settings.rgn:
        with stage(progress, "gradient-norms", "relative gradient norms per block"):
            grads = _gradient_norms(sub_data, bb, cfg.device, seed)
    layers, sections = _transfer_sections(layers, shift, target, bb, twin, pre, rnd, grads, n_classes, seed)
    sections["transferability"]["items"] = {
        "n_target": len(target),
        "n_fitted": len(sub_target),
        "max_items": TRANSFER_MAX_ITEMS,
        "subsampled": idx is not None,
    }
    return layers, sections


def _twin_transfer(
    bb: Backbone,
    pre_kw: dict[str, Any],
    target: Embeddings,
    target_data: DataSet,
    settings: DiagnoseConfig,
    device: str,
    progress: ProgressCallback | None,
) -> tuple[Backbone, dict[str, Any]]:
    """The random-init twin of ``bb``, and its per-layer transferability on the target."""
    cfg, seed = settings.extract, settings.seed
    twin = load(
        bb.name,
        pretrained=False,
        seed=seed,
        image_size=pre_kw["input_size"][1] if bb.modality == "image" else None,
        max_length=pre_kw.get("max_length") if bb.modality == "text" else None,
    )
    twin_emb = embed(
        target_data, twin, cfg, use_cache=settings.use_cache, cache_dir=settings.cache_dir, progress=progress
    )
    if twin_emb.ids != target.ids:  # the same items in the same order (skips are content-determined)
        pos = {i: k for k, i in enumerate(twin_emb.ids)}
        twin_emb = twin_emb.subset([pos[i] for i in target.ids])
    return twin, layer_transfer(twin_emb, random_state=seed, device=device, max_items=None)  # subsampled


def _gradient_norms(target_data: DataSet, bb: Backbone, device: str, seed: int) -> Any:
    """Relative gradient norms per block (None, logged, when they cannot be computed)."""
    t = time.perf_counter()
    try:  # input size and token length: the loaded backbone's own (the config leaves them unset)
        grads = relative_gradient_norms(target_data, bb, FinetuneConfig(device=device), seed=seed)
    except DiagError as exc:
        log.info("no relative gradient norms: %s", exc)
        return None
    log.info("relative gradient norms in %.1f s", time.perf_counter() - t)
    return grads


def _transfer_sections(
    layers: list[dict[str, Any]],
    shift: dict[str, Any],
    target: Embeddings,
    bb: Backbone,
    twin: Backbone,
    pre: dict[str, Any],
    rnd: dict[str, Any],
    grads: Any,
    n_classes: int,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Negative transfer and the freeze depth from the scores, and the transfer scores per layer."""
    rgn = None if grads is None else grads.normalized
    nt = negative_transfer(
        pre, rnd, n_target=len(target), n_classes=n_classes, shift=shift, rgn=rgn,
        scale=weight_scale(bb.model), twin_scale=weight_scale(twin.model),
        scale_top=weight_scale(bb.model, SCALE_QUANTILE),
    )  # fmt: skip
    fr = recommend_freeze(
        pre, freeze_blocks(bb), n_target=len(target), n_classes=n_classes, shift=shift,
        shift_layers=layers, rgn=rgn, negative=nt, weight_scale=nt.signals["weight_scale"],
    )  # fmt: skip
    layers = [
        {
            **lay,
            "transfer": {"pretrained": pre[lay["name"]]["scores"], "random_init": rnd[lay["name"]]["scores"]},
        }
        if lay["name"] in pre
        else lay
        for lay in layers
    ]
    last = layers[-1]["name"]
    transferability = {
        "backbone": bb.name,
        "layer": last,
        "scores": pre[last]["scores"],
        "random_init_scores": rnd[last]["scores"],
        "best_layer": nt.signals["pretrained_best_layer"],
        "layers": pre,
        "random_init_layers": rnd,
        "random_init": {"seed": seed, "weights_sha256": twin.weights_fingerprint()},
    }
    return layers, {
        "transferability": transferability,
        "negative_transfer": nt.to_dict(),
        "freeze": fr.to_dict(),
    }
