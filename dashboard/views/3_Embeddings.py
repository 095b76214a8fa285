"""Embeddings: a 2-D map of source and target at one layer; filter, colour and select points to see the
samples behind them, find the samples that drive the shift, and export a selection.

The view (layer, map, colouring, filters, selection) lives in ``st.session_state`` (a non-widget key, so
it survives page switches) and in the URL's query parameters (so a view can be shared). Large maps are
thinned for drawing; a lasso or box still selects every point of the full map it covers. A selection made
on the chart is shown by the chart itself, and the page then sends the same figure, so the browser does
not draw the map again (rings mark a selection the chart does not show: from a button, the URL, or kept
through a colour, layer or filter change).
"""

from __future__ import annotations

import base64
import io
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers

import _common as ui
import _explorer as ex
import numpy as np
import streamlit as st

from diag.errors import DiagError
from diag.report import figures, tables
from diag.stats import projection

K_NEIGHBOURS = 3
PAGE_SIZE = 12
TOP_DRIVERS = 50
DRAWN_KEY = "emb_drawn"  # what the chart shows: its view, and whether it shows the selection itself
REV_KEY = "emb_chart_rev"

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


@st.cache_resource(show_spinner=False, max_entries=8)
def attribution(folder: str, mtime: int) -> object | None:
    """The report's drift attribution (diag.predict.attribution), or None for a report without it."""
    try:
        from diag.predict.attribution import load_attribution
    except ImportError:  # an older diag: no attribution
        return None
    try:
        return load_attribution(folder)
    except DiagError:
        return None


def layer_attribution(
    folder: str, mtime: int, layer: str, target_ids: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Per-target arrays (target order) of the attribution at ``layer``; empty when there is none."""
    attr = attribution(folder, mtime)
    layers = getattr(attr, "layers", {}) or {}
    if layer not in layers:
        return {}
    a = layers[layer]
    pos = {i: k for k, i in enumerate(a.ids)}
    if tuple(a.ids) == tuple(target_ids):
        order = np.arange(len(target_ids))
    elif all(i in pos for i in target_ids):
        order = np.array([pos[i] for i in target_ids], dtype=np.int64)
    else:
        return {}
    return {
        "attribution": np.asarray(a.domain_probability, dtype=float)[order],
        "contribution": np.asarray(a.contribution, dtype=float)[order],
        "clusters": np.asarray(a.cluster)[order],
    }


@st.cache_data(show_spinner=False, max_entries=16)
def ranked_clusters(folder: str, mtime: int, layer: str) -> list[dict]:
    """The target's clusters at ``layer`` ranked by their share of the drift (no member lists)."""
    layers = getattr(attribution(folder, mtime), "layers", {}) or {}
    if layer not in layers:
        return []
    return [{k: v for k, v in c.items() if k != "ids"} for c in layers[layer].clusters()]


@st.cache_resource(show_spinner=False, max_entries=16)
def map_data(
    folder: str, mtime: int, layer: str, method: str, n_neighbors: int, min_dist: float
) -> ex.MapData:
    """The map's full arrays (the map from diag.stats.projection, cached on disk in the report folder)."""
    src = ui.embeddings(folder, mtime, "source")
    tgt = ui.embeddings(folder, mtime, "target")
    params = {"n_neighbors": n_neighbors, "min_dist": min_dist} if method == "umap" else {}
    proj = projection.joint_projection(
        src,
        tgt,
        layer,
        folder=folder,
        method=method,
        max_per_side=None if method == "pca" else 5000,
        **params,
    )
    ood = ui.ood_scores(folder, mtime).get(layer)
    at = layer_attribution(folder, mtime, layer, tuple(tgt.ids))
    return ex.build_map(
        layer, method, proj.coords, proj.source_rows, proj.target_rows, src, tgt, ood,
        at.get("attribution"), at.get("clusters"), at.get("contribution"),
    )  # fmt: skip


@st.cache_data(show_spinner=False, max_entries=4096)
def thumb(spec: str, item_id: str) -> str | None:
    """A small base64 PNG of an image item, or the first words of a text item (cached per server)."""
    item = ui.preview(spec, item_id, size=48)
    if item is None or isinstance(item, str):
        return None if item is None else item[:120]
    return ex.thumbnail_uri(item)


# ------------------------------------------------------------------------------------------------------
# The view: session first, then the URL, then defaults; widgets are seeded from it when they are new.

view = ex.load_view(st.session_state, st.query_params)
if view.report != folder:  # another report: keep the look, drop what belongs to the old one
    if view.report:
        view = ex.View(method=view.method, colour=view.colour, report=folder)
        for key in ("emb_layer", "emb_labels", "emb_clusters", "emb_ood", "emb_page", "emb_domains"):
            st.session_state.pop(key, None)
    view.report = folder
names = report.layer_names
onset = report.shift.onset_layer
if view.layer not in names:
    view.layer = onset if onset in names else names[-1]
src_emb = ui.embeddings(folder, mtime, "source")
tgt_emb = ui.embeddings(folder, mtime, "target")
has_labels = src_emb.labels is not None or tgt_emb.labels is not None


def seed(key: str, value: object) -> None:
    if key not in st.session_state:
        st.session_state[key] = value


c1, c2, c3 = st.columns([2, 4, 1.4])
seed("emb_layer", view.layer)
maps = report.sections.get("maps") if isinstance(report.sections.get("maps"), dict) else {}
ready = {k for k, v in (maps.get("layers") or {}).items() if isinstance(v, dict) and "error" not in v}
layer = str(
    c1.selectbox(
        "Layer",
        names,
        key="emb_layer",
        format_func=lambda n: f"{n} (map ready)" if n in ready else n,
        help="Layers marked 'map ready' had their UMAP map computed by `diag diagnose`: they open at once. "
        "Others are fitted when chosen (then cached in the report folder).",
    )
)
seed("emb_method", view.method if view.method in ex.METHODS else "UMAP")
method = str(c3.radio("Map", list(ex.METHODS), horizontal=True, key="emb_method"))
with st.expander("Map settings"):
    d1, d2 = st.columns(2)
    n_neighbors = d1.slider("UMAP neighbours", 5, 100, 15, key="emb_neighbors")
    min_dist = d2.slider("UMAP min_dist", 0.0, 1.0, 0.1, step=0.05, key="emb_min_dist")
    st.caption(
        "UMAP runs on the first 50 principal components, seeded (the same map every time). It keeps "
        "local neighbourhoods: distances between far-apart clusters mean little. Maps are cached in the "
        "report folder; `diag diagnose` precomputes the ones of its key layers."
    )

n_all = len(src_emb) + len(tgt_emb)
why = (
    f"Fitting UMAP to {min(len(src_emb), 5000) + min(len(tgt_emb), 5000):,} points at layer {layer} "
    "(about a minute at 10k points on two cores; the first map of a server process also compiles "
    "UMAP's numba kernels, tens of seconds). The map is then cached in the report folder."
    if method == "UMAP"
    else f"Projecting {n_all:,} points at layer {layer} on their two principal components."
)
with ui.shown_errors("Could not compute the map") as outcome, st.spinner(why):
    data = map_data(folder, mtime, layer, method.lower(), int(n_neighbors), float(min_dist))
if not outcome.ok:
    st.stop()
ui.mark("map")

has_attr = bool(np.isfinite(data.attribution[data.is_target]).any())
has_clusters = any(c is not None for c in data.cluster)
colour_options = [
    c
    for c in ex.COLOURS
    if (c != "label" or has_labels) and (c != "attribution" or has_attr) and (c != "cluster" or has_clusters)
]
seed("emb_colour", view.colour if view.colour in colour_options else "domain")
colour = str(c2.radio("Colour by", colour_options, horizontal=True, key="emb_colour"))

tgt_ood = data.ood[data.is_target]
finite_ood = tgt_ood[np.isfinite(tgt_ood)]
with st.expander("Filters", expanded=bool(view.labels or view.clusters or view.ood or len(view.domains) < 2)):
    f1, f2, f3, f4 = st.columns(4)
    seed("emb_domains", list(view.domains))
    domains = f1.multiselect("Domains", ["source", "target"], key="emb_domains")
    class_names = sorted({str(x) for x in data.labels if x is not None})
    seed("emb_labels", [x for x in view.labels if x in class_names])
    labels_f = f2.multiselect("Labels (none: all)", class_names, key="emb_labels", disabled=not class_names)
    ood_f: tuple[float, float] | None = None
    if len(finite_ood):
        lo, hi = float(np.floor(finite_ood.min() * 100) / 100), float(np.ceil(finite_ood.max() * 100) / 100)
        lo, hi = (lo, hi) if hi > lo else (lo, lo + 0.01)
        want = view.ood or (lo, hi)
        seed("emb_ood", (max(lo, min(want[0], hi)), min(hi, max(want[1], lo))))
        got = f3.slider("Target OOD score", lo, hi, key="emb_ood", step=0.01)
        ood_f = None if (got[0] <= lo and got[1] >= hi) else (float(got[0]), float(got[1]))
    cluster_names = sorted({str(x) for x in data.cluster if x is not None}, key=lambda c: int(c[1:]))
    seed("emb_clusters", [x for x in view.clusters if x in cluster_names])
    clusters_f = f4.multiselect(
        "Target clusters (none: all)", cluster_names, key="emb_clusters", disabled=not cluster_names
    )

view.layer, view.method, view.colour = layer, method, colour
view.domains, view.labels, view.clusters, view.ood = list(domains), list(labels_f), list(clusters_f), ood_f
mask = ex.visible(data, view)

# A new selection on the chart (read before the chart is drawn again): every visible point it covers.
event = st.session_state.get(ex.CHART_KEY)
sel_event = dict(event.get("selection") or {}) if event else {}
sig = ex.event_signature(sel_event)
from_chart = not ex.is_empty(sel_event) and sig != st.session_state.get(ex.EVENT_KEY)
if from_chart:
    st.session_state[ex.EVENT_KEY] = sig
    view = ex.with_selection(view, [str(k) for k in data.keys[ex.event_positions(data, sel_event, mask)]])

b1, b2, b3 = st.columns([2, 1.3, 3])
what = "domain probability" if has_attr else "OOD score"
if b1.button(
    "Show the samples that drive the shift",
    key="emb_drivers",
    help=f"Selects the {TOP_DRIVERS} target samples with the highest {what} and colours the map by it.",
):
    top, what = ex.top_driving(data, TOP_DRIVERS)
    view = ex.with_selection(view, [str(k) for k in data.keys[top]])
    view.colour = "attribution" if has_attr else "OOD score"
    st.session_state.pop("emb_colour", None)
    ex.save_view(st.session_state, st.query_params, view)
    st.rerun()
clusters_ranked = ranked_clusters(folder, mtime, layer)
if clusters_ranked:
    best = clusters_ranked[0]
    if b3.button(
        f"Select the top cluster C{best['cluster']} "
        f"({best['share']:.0%} of the drift, {best['size']} samples)",
        key="emb_top_cluster",
    ):
        members = data.is_target & (data.cluster.astype(str) == f"C{best['cluster']}")
        view = ex.with_selection(view, [str(k) for k in data.keys[members]])
if b2.button("Clear selection", key="emb_clear", disabled=not view.selection):
    view = ex.with_selection(view, [])
ui.mark("widgets and selection")
sel_pos = data.positions(view.selection)

# ------------------------------------------------------------------------------------------------------
# The map

spec_src, spec_tgt = report.source.get("spec"), report.target.get("spec")
COLOUR_KEY = {"domain": "domain", "label": "label", "OOD score": "ood", "attribution": "score",
              "cluster": "cluster"}  # fmt: skip


@st.cache_resource(show_spinner=False, max_entries=12)
def map_figure(
    folder: str,
    mtime: int,
    map_args: tuple[str, str, int, float],
    colour: str,
    filters: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[float, float] | None],
    ring: tuple[str, ...],
    rev: int,
    budget: int,
) -> dict:
    """The map's figure for one view (``ring``: the item keys drawn as rings, a selection the chart does not
    show itself), with its numbers of drawn and visible points, whether hover shows text snippets, and the
    drawn positions that get a hover thumbnail. Cached: a rerun that changes none of
    these (a selection made on the chart, a gallery page) sends the same figure, which the browser keeps
    as it is instead of drawing 10k points again; ``rev`` forces a fresh chart (a selection cleared);
    ``budget``: the most points drawn."""
    data = map_data(folder, mtime, *map_args)
    domains, labels, clusters, ood = filters
    look = ex.View(domains=list(domains), labels=list(labels), clusters=list(clusters), ood=ood)
    mask = ex.visible(data, look)
    shown = ex.thin(data.coords, mask, data.is_target, budget)
    snippets = ui.dataset(spec_tgt).modality == "text" if spec_tgt and len(shown) <= 3000 else False
    has_attr = bool(np.isfinite(data.attribution[data.is_target]).any())

    def hover_text(p: int) -> str:
        side = "target" if data.is_target[p] else "source"
        bits = [f"{side} {str(data.keys[p])[2:]}"]
        if data.labels[p] is not None:
            bits.append(str(data.labels[p]))
        if data.is_target[p]:
            bits.append(f"OOD {data.ood[p]:.2f}")
            if has_attr:
                bits.append(f"p(target) {data.attribution[p]:.2f}")
            if data.cluster[p] is not None:
                bits.append(str(data.cluster[p]))
        text = " · ".join(bits)
        if snippets:
            spec = spec_tgt if data.is_target[p] else spec_src
            snip = thumb(spec, str(data.keys[p])[2:]) if spec else None
            if snip:
                text += "<br>" + snip[:80].replace("<", "&lt;")
        return text

    ring_pos = data.positions(ring)
    ring_pos = ring_pos[mask[ring_pos]] if len(ring_pos) else ring_pos
    extra = np.setdiff1d(ring_pos, shown)[: ex.HIGHLIGHT_BUDGET]  # selected points the thinning left out
    draw = np.r_[shown, extra] if len(extra) else shown
    order = np.argsort(data.is_target[draw], kind="stable")  # source rows first, as embedding_figure expects
    draw = draw[order]
    fig, _ = figures.embedding_figure(
        data.coords[draw],
        int((~data.is_target[draw]).sum()),
        colour_by=COLOUR_KEY[colour],
        labels=list(data.cluster[draw] if colour == "cluster" else data.labels[draw]),
        target_scores=data.ood[draw][data.is_target[draw]],
        scores=data.attribution[draw],
        score_name="domain probability",
        hover=[hover_text(int(p)) for p in draw],
        rows=draw,
        highlight=np.flatnonzero(np.isin(draw, ring_pos))[: ex.HIGHLIGHT_BUDGET],
        title=f"{map_args[1].upper()} of source ({data.n_source:,}) and target "
        f"({len(data) - data.n_source:,}) at {map_args[0]}",
    )
    fig.update_layout(meta={"rev": rev})
    near = draw[np.linspace(0, len(draw) - 1, min(len(draw), ex.HOVER_THUMBS)).astype(int)]
    return {"fig": fig, "n_shown": len(shown), "n_visible": int(mask.sum()), "snippets": snippets,
            "near": tuple(int(p) for p in near)}  # fmt: skip


# Whether the chart shows the selection itself (Plotly's own selected/dimmed points, after a lasso or a
# click on this very chart) or the figure must draw it as rings (a selection from a button, the URL, or
# kept through a colour, layer or filter change). When the chart shows it, the figure stays unchanged.
map_args = (layer, method.lower(), int(n_neighbors), float(min_dist))
filters = (tuple(domains), tuple(labels_f), tuple(clusters_f), ood_f)
fig_key = repr((map_args, colour, filters))
drawn = st.session_state.get(DRAWN_KEY) or {}
rev = int(st.session_state.get(REV_KEY, 0))
sel_sig = zlib.crc32("\n".join(view.selection).encode())
same_chart = drawn.get("key") == fig_key and drawn.get("rev") == rev
if from_chart:
    native = same_chart and not drawn.get("ring")
elif drawn.get("native") and drawn.get("sel") == sel_sig:
    native = same_chart
else:
    native = False
    if drawn.get("native") and same_chart:  # the chart shows a selection that is no longer wanted
        rev += 1
        st.session_state[REV_KEY] = rev
ring = () if native else tuple(view.selection)
drawing = map_figure(folder, mtime, map_args, colour, filters, ring, rev, ex.DISPLAY_BUDGET)
chart = [fig_key, rev, zlib.crc32("\n".join(ring).encode())]
if chart != drawn.get("chart"):  # a new chart: it starts without a selection of its own
    st.session_state[ex.EVENT_KEY] = ""
st.session_state[DRAWN_KEY] = {
    "key": fig_key, "rev": rev, "ring": bool(ring), "native": native, "sel": sel_sig, "chart": chart,
}  # fmt: skip
ui.mark("figure")


@st.cache_resource(show_spinner=False, max_entries=64)
def hover_thumbs(
    spec_src: str | None, spec_tgt: str | None, keys: tuple[str, ...], rows: tuple[int, ...]
) -> dict:
    """Thumbnails (data URIs) of image items, keyed by their map position, for the hover overlay."""
    out = {}
    for k, r in zip(keys, rows, strict=True):
        spec = spec_tgt if k.startswith("t:") else spec_src
        uri = thumb(spec, k[2:]) if spec else None
        if uri and uri.startswith("data:image"):
            out[str(r)] = uri
    return out


if not drawing["snippets"] and (spec_src or spec_tgt):
    near = np.asarray(drawing["near"], dtype=np.int64)
    try:
        overlay = st.components.v2.component("diag_hover_thumbs", js=ex.HOVER_JS)
        overlay(
            data={"thumbs": hover_thumbs(spec_src, spec_tgt, tuple(str(k) for k in data.keys[near]),
                                         tuple(int(p) for p in near))},
            key="emb_hover",
        )  # fmt: skip
    except (AttributeError, TypeError) as exc:  # a Streamlit without components v2: text hover only
        st.caption(f"(No hover thumbnails: {exc})")
st.plotly_chart(
    drawing["fig"],
    key=ex.CHART_KEY,
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
    width="stretch",
)
notes = [
    "Draw a lasso or a box to select every sample inside it (also those the drawing leaves out); "
    "click one point to see it."
]
if colour == "OOD score":
    notes.append(
        "Source points are grey: the score is a target sample's k-NN distance to the source, relative to "
        "the source's own spread (a typical source sample scores about 1)."
    )
if drawing["n_shown"] < drawing["n_visible"]:
    notes.append(
        f"Drawing {drawing['n_shown']:,} of {drawing['n_visible']:,} points: dense regions thinned, sparse "
        "ones and outliers kept whole, both domains in every region."
    )
if len(data) < n_all:
    notes.append(
        f"The map places a seeded subset: {data.n_source:,} of {len(src_emb):,} source and "
        f"{len(data) - data.n_source:,} of {len(tgt_emb):,} target samples."
    )
if method == "UMAP" and len(data) < projection.MIN_UMAP_SAMPLES:
    notes.append("Too few points for UMAP: this is the PCA map.")
if not has_attr:
    at_layers = list(getattr(attribution(folder, mtime), "layers", {}) or {})
    notes.append(
        f"Drift attribution is computed at {', '.join(at_layers)}: pick one for the domain probability, "
        "the clusters and a selection's share of the drift."
        if at_layers
        else "This report has no drift attribution (run `diag diagnose` again to add it)."
    )
ui.mark("chart")
st.caption(" ".join(notes))
if clusters_ranked:
    with st.expander(f"Target clusters at {layer}, ranked by their share of the drift"):
        st.dataframe(
            [
                {"cluster": f"C{c['cluster']}", "size": c["size"], "share of the drift": f"{c['share']:.1%}",
                 "lift": None if c.get("lift") is None else round(float(c["lift"]), 2),
                 "mean domain probability": round(float(c["mean_domain_probability"]), 3)}
                for c in clusters_ranked
            ],
            hide_index=True,
        )  # fmt: skip
        st.caption(
            "k-means of the target at this layer. Share: the cluster's part of the MMD²; lift: share over "
            "the cluster's fraction of the target (> 1 concentrates the drift)."
        )

# ------------------------------------------------------------------------------------------------------
# Selection: numbers, drift contribution, export


@st.cache_data(show_spinner=False, max_entries=4096)
def preview_item(spec: str, item_id: str) -> str | None:
    """The gallery's preview of one item: a ``data:`` PNG URI, or a text; None without one. Cached per
    server process (encoded once)."""
    try:
        item = ui.preview(spec, item_id)
    except Exception:  # a missing or unreadable item: no preview
        return None
    if item is None or isinstance(item, str):
        return item
    buf = io.BytesIO()
    item.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def cell(spec: str | None, item_id: str, caption: str) -> ex.Cell:
    return (preview_item(spec, item_id) if spec else None, caption)


def gallery(positions: np.ndarray, title: str) -> None:
    """Target samples (map positions), a page at a time, each with its nearest source samples; a
    neighbour of another class than its target sample is flagged."""
    st.markdown(f"**{title}**")
    n_pages = max(1, -(-len(positions) // PAGE_SIZE))
    if n_pages > 1:
        seed("emb_page", min(view.page, n_pages - 1) + 1)
        if int(st.session_state["emb_page"]) > n_pages:
            st.session_state["emb_page"] = n_pages
        page_no = int(st.number_input(f"Page (of {n_pages})", 1, n_pages, key="emb_page")) - 1
    else:
        page_no = 0
    view.page = page_no
    chunk = positions[page_no * PAGE_SIZE : (page_no + 1) * PAGE_SIZE]
    rows = data.row[chunk]
    idx, dist = projection.nearest_source(src_emb[layer], tgt_emb[layer][rows], k=K_NEIGHBOURS)
    header = ["target sample"] + [
        f"nearest source #{j + 1} (in {layer} features)" for j in range(K_NEIGHBOURS)
    ]
    src_classes = ex.class_names(src_emb, np.arange(len(src_emb))) if src_emb.labels is not None else None
    cells = []
    for p, row, nn, dd in zip(chunk, rows, idx, dist, strict=True):
        lab = data.labels[p]
        cap = (
            f"{str(data.keys[p])[2:]}"
            + (f" · {lab}" if lab is not None else "")
            + f" · OOD {data.ood[p]:.2f}"
        )
        if np.isfinite(data.attribution[p]):
            cap += f" · p(target) {data.attribution[p]:.2f}"
        line = [cell(spec_tgt, str(tgt_emb.ids[int(row)]), cap)]
        for s, d in zip(nn, dd, strict=True):
            slab = None if src_classes is None else src_classes[int(s)]
            scap = f"{src_emb.ids[int(s)]}" + (f" · {slab}" if slab is not None else "") + f" · dist {d:.2f}"
            if lab is not None and slab is not None and str(slab) != str(lab):
                scap = f"⚠ other class · {scap}"
            line.append(cell(spec_src, str(src_emb.ids[int(s)]), scap))
        cells.append(line)
    st.html(ex.gallery_html(cells, header))
    if n_pages > 1:
        st.caption(
            f"Samples {page_no * PAGE_SIZE + 1}–{page_no * PAGE_SIZE + len(chunk)} of {len(positions)}."
        )


ui.mark("clusters")
st.subheader("Selection")
if len(sel_pos):
    sel_tgt = sel_pos[data.is_target[sel_pos]]
    sel_src = sel_pos[~data.is_target[sel_pos]]
    n_tgt_map = len(data) - data.n_source
    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("Selected points", len(sel_pos), help="source + target, on the whole map (drawn or not)")
    m2.metric("Target samples", len(sel_tgt))
    m3.metric("Share of the target", f"{len(sel_tgt) / max(n_tgt_map, 1):.1%}")
    mean_ood = float(np.nanmean(data.ood[sel_tgt])) if len(sel_tgt) else float("nan")
    m4.metric(
        "Mean OOD score (selected target)",
        "n/a" if not len(sel_tgt) else f"{mean_ood:.2f}",
        help=f"Target mean at this layer: {np.nanmean(data.ood[data.is_target]):.2f}",
    )
    share = ex.drift_share(data, sel_pos)
    m5.metric(
        "Share of the drift",
        "n/a" if share is None else f"{share:.1%}",
        help="The selection's part of the layer's MMD² (each target sample's contribution through the MMD "
        "witness; the target's sum to 100%; negative where the source is denser); n/a when the report "
        "has no drift attribution at this layer.",
    )
    paths = {}
    for side, spec in (("source", spec_src), ("target", spec_tgt)):
        ds = ui.dataset(spec) if spec else None
        paths[side] = ds.paths if ds is not None and ds.paths is not None else None
    meta = {"report": folder, "layer": layer, "map": method, "n_items": len(sel_pos)}

    def export(fmt: str) -> Callable[[], bytes]:
        """The file, built only when its button is clicked (a large selection's table costs ~0.15 s)."""
        return lambda: ex.export_bytes(ex.selection_table(data, sel_pos, paths), fmt, meta)

    e1, e2, _ = st.columns([1, 1, 4])
    e1.download_button("Export CSV", export("csv"), "selection.csv", "text/csv", key="emb_export_csv")
    e2.download_button(
        "Export JSON", export("json"), "selection.json", "application/json", key="emb_export_json"
    )
    if len(sel_tgt):
        key = np.nan_to_num(data.attribution[sel_tgt] if has_attr else data.ood[sel_tgt], nan=-np.inf)
        gallery(
            sel_tgt[np.argsort(-key, kind="stable")],
            f"Selected target samples (highest {what} first) and their nearest source",
        )
    if len(sel_src):
        st.markdown(f"**Selected source samples** ({len(sel_src)})")
        sids = [str(src_emb.ids[int(data.row[p])]) for p in sel_src[:PAGE_SIZE]]
        grid = [[cell(spec_src, sid, sid) for sid in sids[i : i + 6]] for i in range(0, len(sids), 6)]
        st.html(ex.gallery_html(grid, columns=6))
else:
    st.info("No selection yet. Meanwhile, the most out-of-distribution target samples at this layer:")
    tgt_pos = np.flatnonzero(data.is_target & mask)
    order = tgt_pos[np.argsort(-np.nan_to_num(data.ood[tgt_pos], nan=-np.inf), kind="stable")]
    gallery(order, "Target samples, the most out-of-distribution first")
ui.mark("selection and gallery")

ex.save_view(st.session_state, st.query_params, view)
