"""Embeddings: a 2-D map of source and target at one layer; select points to see the samples behind them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import numpy as np
import streamlit as st

from diag.report import figures, tables
from diag.stats import projection

K_NEIGHBOURS = 3
MAX_GALLERY = 12

ui.page_setup("Embeddings")
report = ui.require_report()
folder, mtime = ui.report_version(report)

st.title("Embeddings")
st.caption(tables.report_title(report))
if tables.is_source_free(report):
    st.info(
        "No map for a source-free report: it compares the target with the backbone's BatchNorm running "
        "statistics, so there are no source embeddings to place beside the target's. Build a reference "
        "from data (`diag reference build`) and run `diag check` for a report with both sides."
    )
    st.stop()


@st.cache_data(show_spinner=False, max_entries=32)
def joint_map(folder: str, mtime: int, layer: str, method: str, n_neighbors: int, min_dist: float) -> dict:
    """The map's arrays (computed by diag.stats.projection, cached on disk in the report folder too)."""
    src = ui.embeddings(folder, mtime, "source")
    tgt = ui.embeddings(folder, mtime, "target")
    proj = projection.joint_projection(
        src, tgt, layer, folder=folder, method=method, n_neighbors=n_neighbors, min_dist=min_dist
    )
    return {
        "coords": proj.coords,
        "source_rows": proj.source_rows,
        "target_rows": proj.target_rows,
    }


names = report.layer_names
onset = report.shift.onset_layer
c1, c2, c3 = st.columns([2, 2, 2])
layer = c1.selectbox(
    "Layer", names, index=names.index(onset) if onset in names else len(names) - 1, key="emb_layer"
)
src_emb = ui.embeddings(folder, mtime, "source")
tgt_emb = ui.embeddings(folder, mtime, "target")
has_labels = src_emb.labels is not None or tgt_emb.labels is not None
colour_options = ["domain", "OOD score", *(["label"] if has_labels else [])]
colour = c2.radio("Colour by", colour_options, horizontal=True, key="emb_colour")
method = c3.radio("Map", ["UMAP", "PCA"], horizontal=True, key="emb_method")
with st.expander("Map settings"):
    d1, d2 = st.columns(2)
    n_neighbors = d1.slider("UMAP neighbours", 5, 100, 15, key="emb_neighbors")
    min_dist = d2.slider("UMAP min_dist", 0.0, 1.0, 0.1, step=0.05, key="emb_min_dist")
    st.caption(
        "UMAP runs on the first 50 principal components, seeded (the same map every time). It keeps "
        "local neighbourhoods: distances between far-apart clusters mean little. Maps are cached in the "
        "report folder."
    )

with (
    ui.shown_errors("Could not compute the map") as outcome,
    st.spinner(f"Computing the {method} map of {len(src_emb) + len(tgt_emb)} points (cached afterwards)…"),
):
    m = joint_map(folder, mtime, layer, method.lower(), int(n_neighbors), float(min_dist))
if not outcome.ok:
    st.stop()

coords, src_rows, tgt_rows = m["coords"], m["source_rows"], m["target_rows"]
n_src = len(src_rows)
ood_all = ui.ood_scores(folder, mtime)
ood_layer = np.asarray(ood_all.get(layer, np.full(len(tgt_emb), np.nan)), dtype=float)
tgt_scores = ood_layer[tgt_rows]


def _label(emb, row: int) -> str | None:
    if emb.labels is None or not emb.classes:
        return None
    return str(emb.classes[int(emb.labels[row])])


labels = [_label(src_emb, int(r)) for r in src_rows] + [_label(tgt_emb, int(r)) for r in tgt_rows]
hover = [
    f"source {src_emb.ids[int(r)]}" + (f" · {labels[i]}" if labels[i] else "") for i, r in enumerate(src_rows)
]
hover += [
    f"target {tgt_emb.ids[int(r)]}" + (f" · {labels[n_src + i]}" if labels[n_src + i] else "")
    + f" · OOD {tgt_scores[i]:.2f}"
    for i, r in enumerate(tgt_rows)
]  # fmt: skip
colour_key = {"domain": "domain", "OOD score": "ood", "label": "label"}[colour]
fig, trace_rows = figures.embedding_figure(
    coords,
    n_src,
    colour_by=colour_key,
    labels=labels,
    target_scores=tgt_scores,
    hover=hover,
    title=f"{method} of source ({n_src}) and target ({len(tgt_rows)}) at {layer}",
)
event = st.plotly_chart(fig, key="emb_chart", on_select="rerun", selection_mode=("lasso", "box"))
notes = [
    "Draw a lasso or a box on the map to see the samples inside (double-click clears).",
    "Source points are grey when colouring by OOD score: the score is a target sample's k-NN distance to "
    "the source, relative to the source's own spread (a typical source sample scores about 1).",
]
if len(src_rows) < len(src_emb) or len(tgt_rows) < len(tgt_emb):
    notes.append(
        f"Showing a seeded random subset: {n_src} of {len(src_emb)} source and "
        f"{len(tgt_rows)} of {len(tgt_emb)} target samples."
    )
if len(coords) < projection.MIN_UMAP_SAMPLES and method == "UMAP":
    notes.append("Too few points for UMAP: this is the PCA map.")
st.caption(" ".join(notes))

points = []
try:
    points = list(event.selection.points) if event is not None else []
except AttributeError:
    points = []
selected = figures.selection_rows(points, trace_rows)
sel_src = [r for r in selected if r < n_src]
sel_tgt = [r - n_src for r in selected if r >= n_src]

source_spec = report.source.get("spec")
target_spec = report.target.get("spec")


def show_item(container, spec: str | None, item_id: str, caption: str) -> None:
    item = None
    if spec:
        try:
            item = ui.preview(spec, item_id)
        except Exception:
            item = None
    if item is None:
        container.caption(f"{caption} (no preview)")
    elif isinstance(item, str):
        container.markdown(f"> {item}")
        container.caption(caption)
    else:
        container.image(item, caption=caption)


def gallery(target_positions: list[int], title: str) -> None:
    """Target samples (positions into the shown target rows) with their nearest source samples."""
    st.markdown(f"**{title}**")
    shown = target_positions[:MAX_GALLERY]
    rows = tgt_rows[shown]
    idx, dist = projection.nearest_source(src_emb[layer], tgt_emb[layer][rows], k=K_NEIGHBOURS)
    head = st.columns(1 + K_NEIGHBOURS)
    head[0].caption("target sample")
    for j in range(K_NEIGHBOURS):
        head[1 + j].caption(f"nearest source #{j + 1} (in {layer} features)")
    for row, nn, dd in zip(rows, idx, dist, strict=True):
        cols = st.columns(1 + K_NEIGHBOURS)
        lab = _label(tgt_emb, int(row))
        cap = f"{tgt_emb.ids[int(row)]}" + (f" · {lab}" if lab else "") + f" · OOD {ood_layer[int(row)]:.2f}"
        show_item(cols[0], target_spec, tgt_emb.ids[int(row)], cap)
        for j, (s, d) in enumerate(zip(nn, dd, strict=True)):
            slab = _label(src_emb, int(s))
            scap = f"{src_emb.ids[int(s)]}" + (f" · {slab}" if slab else "") + f" · dist {d:.2f}"
            show_item(cols[1 + j], source_spec, src_emb.ids[int(s)], scap)
    if len(target_positions) > MAX_GALLERY:
        st.caption(f"… and {len(target_positions) - MAX_GALLERY} more target samples in the selection.")


st.subheader("Selection")
if selected:
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Selected points", len(selected), help="source + target")
    m2.metric("Target samples", len(sel_tgt))
    m3.metric("Share of the target", f"{len(sel_tgt) / max(len(tgt_rows), 1):.1%}")
    mean_ood = float(np.nanmean(tgt_scores[sel_tgt])) if sel_tgt else float("nan")
    m4.metric(
        "Mean OOD score (selected target)",
        "n/a" if not sel_tgt else f"{mean_ood:.2f}",
        help=f"Target mean at this layer: {np.nanmean(tgt_scores):.2f}",
    )
    if sel_tgt:
        order = sorted(sel_tgt, key=lambda p: -tgt_scores[p])
        gallery(order, "Selected target samples (most out-of-distribution first) and their nearest source")
    if sel_src:
        st.markdown(f"**Selected source samples** ({len(sel_src)})")
        cols = st.columns(6)
        for i, r in enumerate(sel_src[:MAX_GALLERY]):
            row = int(src_rows[r])
            show_item(cols[i % 6], source_spec, src_emb.ids[row], str(src_emb.ids[row]))
else:
    st.info("No selection yet. Meanwhile, the most out-of-distribution target samples at this layer:")
    order = [int(i) for i in np.argsort(-np.nan_to_num(tgt_scores, nan=-np.inf), kind="stable")]
    gallery(
        order[:MAX_GALLERY], f"The {min(MAX_GALLERY, len(order))} most out-of-distribution target samples"
    )
