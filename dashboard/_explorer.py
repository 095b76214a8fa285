"""The Embeddings explorer's state and arrays: one view (layer, map, colouring, filters, selection) kept in
``st.session_state`` under a non-widget key (it survives page switches) and mirrored in the URL's query
parameters (a view can be shared); the map's full arrays (every point the map places), thinned for
display, and selections mapped back to every point they cover.

The page (``views/3_Embeddings.py``) lays out widgets; what it needs beyond them is here, as plain
functions that tests call directly. The map itself and the nearest neighbours come from
``diag.stats.projection``; per-item drift attribution, when the report has it, from the report folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

VIEW_KEY = "emb_view"  # the persistent (non-widget) session key of the explorer's view
EVENT_KEY = "emb_last_event"  # signature of the last chart selection applied
CHART_KEY = "emb_chart"
COLOURS = ("domain", "label", "OOD score", "attribution", "cluster")
METHODS = ("UMAP", "PCA")
DISPLAY_BUDGET = 15_000  # points drawn at most; the rest stay selectable through the lasso/box geometry
HIGHLIGHT_BUDGET = 3_000  # selected points drawn as rings at most
HOVER_THUMBS = 600  # drawn image points that get a hover thumbnail at most (the page's payload)
URL_SELECTION_CHARS = 6_000  # a selection longer than this (encoded) stays out of the URL
URL_SELECTION_KEYS = 20_000  # nor is one of more keys packed at all (200k keys took a second to compress)


@dataclass
class View:
    """What the user looks at. ``selection`` holds item keys (``s:<id>`` / ``t:<id>``), never positions,
    so it survives a change of layer, map or colouring."""

    layer: str | None = None
    method: str = "UMAP"
    colour: str = "domain"
    domains: list[str] = field(default_factory=lambda: ["source", "target"])
    labels: list[str] = field(default_factory=list)  # empty: every label
    clusters: list[str] = field(default_factory=list)  # empty: every cluster
    ood: tuple[float, float] | None = None  # None: every OOD score
    selection: list[str] = field(default_factory=list)
    page: int = 0
    report: str | None = None  # the report folder the selection belongs to (not in the URL)

    def to_query(self) -> dict[str, str]:
        """Query parameters for the URL (short names; defaults left out)."""
        q: dict[str, str] = {}
        if self.layer:
            q["layer"] = self.layer
        if self.method != "UMAP":
            q["map"] = self.method
        if self.colour != "domain":
            q["colour"] = self.colour
        if sorted(self.domains) != ["source", "target"]:
            q["domains"] = ",".join(self.domains) or "none"
        if self.labels:
            q["labels"] = ",".join(self.labels)
        if self.clusters:
            q["clusters"] = ",".join(self.clusters)
        if self.ood is not None:
            q["ood"] = f"{self.ood[0]:.4g},{self.ood[1]:.4g}"
        if self.selection and len(self.selection) <= URL_SELECTION_KEYS:
            packed = pack_keys(self.selection)
            if len(packed) <= URL_SELECTION_CHARS:
                q["sel"] = packed
        return q

    @classmethod
    def from_query(cls, q: Mapping[str, str]) -> View:
        """The view a URL names (unknown or malformed values fall back to the defaults)."""
        v = cls()
        v.layer = q.get("layer") or None
        if q.get("map") in METHODS:
            v.method = str(q["map"])
        if q.get("colour") in COLOURS:
            v.colour = str(q["colour"])
        if "domains" in q:
            v.domains = [d for d in str(q["domains"]).split(",") if d in ("source", "target")]
        v.labels = [x for x in str(q.get("labels", "")).split(",") if x]
        v.clusters = [x for x in str(q.get("clusters", "")).split(",") if x]
        try:
            lo, hi = (float(x) for x in str(q["ood"]).split(","))
            v.ood = (min(lo, hi), max(lo, hi))
        except (KeyError, ValueError):
            v.ood = None
        if q.get("sel"):
            v.selection = unpack_keys(str(q["sel"]))
        return v


def pack_keys(keys: Sequence[str]) -> str:
    """Item keys as a short URL-safe string (zlib, then base64url)."""
    raw = "\n".join(keys).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def unpack_keys(text: str) -> list[str]:
    """The inverse of :func:`pack_keys`; an unreadable string gives no keys."""
    try:
        raw = zlib.decompress(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, zlib.error):
        return []
    return [k for k in raw.decode(errors="replace").split("\n") if k[:2] in ("s:", "t:")]


def load_view(session: Any, query: Mapping[str, str]) -> View:
    """The session's view; on the first visit, the one the URL names (or the defaults)."""
    stored = session.get(VIEW_KEY)
    if isinstance(stored, dict):
        return View(**stored)
    return View.from_query(query)


def save_view(session: Any, query: Any, view: View) -> None:
    """Store the view in the session (non-widget key) and write it to the URL's query parameters."""
    session[VIEW_KEY] = asdict(view)
    wanted = view.to_query()
    try:
        current = {k: query[k] for k in query}
    except Exception:  # a query-params object that cannot be listed: just write
        current = {}
    if current != wanted:
        query.from_dict(wanted)


# ------------------------------------------------------------------------------------------------------
# The map's arrays


@dataclass(frozen=True)
class MapData:
    """Every point of one map, source rows first. Arrays are read-only and shared between sessions."""

    layer: str
    method: str
    coords: np.ndarray  # (n, 2) float32
    is_target: np.ndarray  # (n,) bool
    row: np.ndarray  # (n,) the item's row in its side's embeddings
    keys: np.ndarray  # (n,) object: "s:<id>" / "t:<id>"
    labels: np.ndarray  # (n,) object: class name or None
    ood: np.ndarray  # (n,) float: the target's OOD score, NaN for source
    attribution: np.ndarray  # (n,) float: the target's out-of-fold domain probability, NaN where unknown
    contribution: np.ndarray  # (n,) float: the target's share of the layer's MMD² (sums to 1), or NaN
    cluster: np.ndarray  # (n,) object: the target's cluster name or None
    n_source_total: int
    n_target_total: int
    index: dict[str, int] = field(repr=False, default_factory=dict)

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def n_source(self) -> int:
        return int((~self.is_target).sum())

    def positions(self, keys: Sequence[str]) -> np.ndarray:
        """Positions of these item keys on the map (keys not on it are left out), sorted."""
        idx = self.index
        return np.array(sorted({idx[k] for k in keys if k in idx}), dtype=np.int64)


def class_names(emb: Any, rows: np.ndarray) -> np.ndarray:
    if emb.labels is None or not emb.classes:
        return np.full(len(rows), None, dtype=object)
    classes = np.asarray([str(c) for c in emb.classes], dtype=object)
    return classes[np.asarray(emb.labels)[rows]]


def build_map(
    layer: str,
    method: str,
    coords: np.ndarray,
    source_rows: np.ndarray,
    target_rows: np.ndarray,
    source: Any,
    target: Any,
    ood: np.ndarray | None,
    attribution: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    contribution: np.ndarray | None = None,
) -> MapData:
    """Assemble a :class:`MapData` from a joint projection and the report's per-target arrays.

    ``ood``, ``attribution``, ``contribution`` and ``clusters`` are per target item (target order,
    full length); ``clusters`` holds integer cluster ids (negative: none).
    """
    ns, nt = len(source_rows), len(target_rows)
    keys = np.array(
        [f"s:{source.ids[int(r)]}" for r in source_rows] + [f"t:{target.ids[int(r)]}" for r in target_rows],
        dtype=object,
    )

    def per_target(values: np.ndarray | None) -> np.ndarray:
        out = np.full(ns + nt, np.nan)
        if values is not None and len(values) == len(target):
            out[ns:] = np.asarray(values, dtype=float)[target_rows]
        return out

    cl = np.full(ns + nt, None, dtype=object)
    if clusters is not None and len(clusters) == len(target):
        c = np.asarray(clusters)[target_rows]
        cl[ns:] = np.array([f"C{int(x)}" if int(x) >= 0 else None for x in c], dtype=object)
    return MapData(
        layer=layer,
        method=method,
        coords=np.asarray(coords, dtype=np.float32),
        is_target=np.r_[np.zeros(ns, bool), np.ones(nt, bool)],
        row=np.r_[np.asarray(source_rows, np.int64), np.asarray(target_rows, np.int64)],
        keys=keys,
        labels=np.r_[class_names(source, source_rows), class_names(target, target_rows)],
        ood=per_target(ood),
        attribution=per_target(attribution),
        contribution=per_target(contribution),
        cluster=cl,
        n_source_total=len(source),
        n_target_total=len(target),
        index={str(k): i for i, k in enumerate(keys)},
    )


def visible(data: MapData, view: View) -> np.ndarray:
    """Boolean mask of the points the view's filters keep (domain, label, OOD range, cluster).

    The OOD range and the cluster filter apply to target points (source points have neither).
    """
    keep = np.zeros(len(data), dtype=bool)
    if "source" in view.domains:
        keep |= ~data.is_target
    if "target" in view.domains:
        keep |= data.is_target
    if view.labels:
        keep &= np.isin(data.labels.astype(str), view.labels)
    if view.ood is not None:
        lo, hi = view.ood
        ok = (data.ood >= lo) & (data.ood <= hi)
        keep &= ~data.is_target | ok
    if view.clusters:
        keep &= ~data.is_target | np.isin(data.cluster.astype(str), view.clusters)
    return keep


def thin(
    coords: np.ndarray, mask: np.ndarray, groups: np.ndarray, budget: int, *, grid: int = 64
) -> np.ndarray:
    """Positions of at most ``budget`` points of ``mask`` to draw, density-flattening and stratified.

    Every occupied cell of a ``grid`` × ``grid`` raster of the map keeps up to ``t`` of its points per
    group (domain), ``t`` the largest cap that fits the budget: sparse regions and outliers are drawn in
    full, dense cores are thinned (as a density raster would show them), and both domains stay present
    in each cell. Which points a cell keeps is a seeded random choice (the same every run).
    """
    pos = np.flatnonzero(mask)
    if len(pos) <= budget:
        return pos
    xy = coords[pos].astype(np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    cell = np.minimum(((xy - lo) / span * grid).astype(np.int64), grid - 1)
    stratum = (cell[:, 0] * grid + cell[:, 1]) * 2 + groups[pos].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(pos))
    stratum_o = stratum[order]
    sort = np.argsort(stratum_o, kind="stable")
    _, starts, counts = np.unique(stratum_o[sort], return_index=True, return_counts=True)
    # The largest cap t with sum(min(count, t)) <= budget (binary search on integers).
    lo_t, hi_t = 0, int(counts.max())
    while lo_t < hi_t:
        mid = (lo_t + hi_t + 1) // 2
        if int(np.minimum(counts, mid).sum()) <= budget:
            lo_t = mid
        else:
            hi_t = mid - 1
    rank = np.arange(len(pos)) - np.repeat(starts, counts)
    chosen = order[sort[rank < max(lo_t, 1)]]
    return np.sort(pos[chosen])


def _inside_polygon(xy: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Even-odd rule: which points of ``xy`` lie inside the polygon (px, py) (vectorised over points)."""
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    inside = np.zeros(len(xy), dtype=bool)
    n = len(px)
    for i in range(n):
        x1, y1, x2, y2 = px[i], py[i], px[(i + 1) % n], py[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        xint = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < xint)
    return inside


def covered(coords: np.ndarray, selection: Mapping[str, Any]) -> np.ndarray | None:
    """Positions of ``coords`` inside the selection's box(es) or lasso(s), or None without geometry.

    This maps a selection drawn on the thinned display back to every point of the full map it covers.
    """
    boxes, lassos = list(selection.get("box") or []), list(selection.get("lasso") or [])
    if not boxes and not lassos:
        return None
    hit = np.zeros(len(coords), dtype=bool)
    for b in boxes:
        try:
            x0, x1 = sorted(float(v) for v in b["x"][:2])
            y0, y1 = sorted(float(v) for v in b["y"][:2])
        except (KeyError, TypeError, ValueError):
            continue
        hit |= (coords[:, 0] >= x0) & (coords[:, 0] <= x1) & (coords[:, 1] >= y0) & (coords[:, 1] <= y1)
    for shape in lassos:
        try:
            px = np.asarray(shape["x"], dtype=np.float64)
            py = np.asarray(shape["y"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            continue
        if len(px) >= 3 and len(px) == len(py):
            hit |= _inside_polygon(coords, px, py)
    return np.flatnonzero(hit)


def event_positions(data: MapData, selection: Mapping[str, Any], mask: np.ndarray) -> np.ndarray:
    """Positions a chart selection covers: every visible point inside its box/lasso, else its points."""
    region = covered(data.coords, selection)
    if region is not None:
        return region[mask[region]]
    out: set[int] = set()
    for p in selection.get("points") or []:
        cd = p.get("customdata")
        if isinstance(cd, (list, tuple)) and cd:
            cd = cd[0]
        if isinstance(cd, (int, float)) and not isinstance(cd, bool) and 0 <= int(cd) < len(data):
            out.add(int(cd))
    return np.array(sorted(out), dtype=np.int64)


def event_signature(selection: Mapping[str, Any] | None) -> str:
    """A short key of a chart selection (its box/lasso geometry and which points of which trace), to tell
    a new selection from the one already applied. The points' other fields (coordinates, hover text,
    customdata: a lasso over 6,000 points sends about a megabyte) stay out of it."""
    if not selection:
        return ""
    points = [
        (p.get("curve_number"), p.get("point_index", p.get("point_number")))
        for p in selection.get("points") or []
        if isinstance(p, Mapping)
    ]
    keep = {"box": selection.get("box"), "lasso": selection.get("lasso"), "points": points}
    blob = json.dumps(keep, sort_keys=True, default=str)
    return f"{len(blob)}:{zlib.crc32(blob.encode()):08x}"


def is_empty(selection: Mapping[str, Any] | None) -> bool:
    return not selection or not any(selection.get(k) for k in ("points", "box", "lasso"))


# ------------------------------------------------------------------------------------------------------
# Selection: scores and export


def selection_table(data: MapData, positions: np.ndarray, paths: Mapping[str, Sequence[str] | None]) -> Any:
    """A pandas table of the selected items: side, id, path, label, OOD score, attribution, cluster.

    ``paths`` maps ``"source"``/``"target"`` to the item paths in embedding row order (or None).
    """
    import pandas as pd

    pos = np.asarray(positions, dtype=np.int64)
    side = np.where(data.is_target[pos], "target", "source")
    rows = data.row[pos]
    path_col = []
    for s, r in zip(side, rows, strict=True):
        ps = paths.get(str(s))
        path_col.append(str(ps[int(r)]) if ps is not None and int(r) < len(ps) else "")
    return pd.DataFrame(
        {
            "side": side,
            "id": [str(k)[2:] for k in data.keys[pos]],
            "path": path_col,
            "label": [None if x is None else str(x) for x in data.labels[pos]],
            "ood_score": data.ood[pos],
            "attribution": data.attribution[pos],
            "cluster": [None if x is None else str(x) for x in data.cluster[pos]],
        }
    )


def export_bytes(table: Any, fmt: str, meta: Mapping[str, Any]) -> bytes:
    """The selection as CSV, or as JSON ``{"meta": ..., "items": [...]}`` (NaN written as null)."""
    if fmt == "csv":
        return str(table.to_csv(index=False)).encode()
    items = json.loads(table.to_json(orient="records"))
    return (json.dumps({"meta": dict(meta), "items": items}, indent=1) + "\n").encode()


def drift_share(data: MapData, positions: np.ndarray) -> float | None:
    """The selection's share of the layer's drift (None without attribution).

    Each target item's ``contribution`` is its part of the unbiased MMD² (they sum to 1 over the
    target, ``diag.predict.attribution``); a selection's share is the sum over its target items.
    Source items contribute nothing. Signed: items where the source is denser lower the share.
    """
    c = data.contribution
    if not np.isfinite(c[data.is_target]).any():
        return None
    pos = np.asarray(positions, dtype=np.int64)
    pos = pos[data.is_target[pos]]
    return float(np.nansum(c[pos]))


def top_driving(data: MapData, k: int) -> tuple[np.ndarray, str]:
    """The ``k`` target positions that drive the shift most: by attribution, else by OOD score."""
    score, what = data.attribution, "drift attribution"
    if not np.isfinite(score[data.is_target]).any():
        score, what = data.ood, "OOD score"
    s = np.where(data.is_target, np.nan_to_num(score, nan=-np.inf), -np.inf)
    order = np.argsort(-s, kind="stable")
    order = order[np.isfinite(s[order])]
    return np.sort(order[:k]), what


def thumbnail_uri(image: Any, size: int = 48) -> str:
    """A small PNG of a PIL image as a ``data:`` URI (pixels kept sharp when upscaling)."""
    from PIL import Image

    img = image.convert("L") if image.mode not in ("L", "RGB") else image
    scale = max(1, size // max(img.size))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    else:
        img = img.copy()
        img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


#: One gallery cell: the item (a ``data:`` image URI, a text, or None without a preview) and its caption.
Cell = tuple[str | None, str]


def gallery_html(
    rows: Sequence[Sequence[Cell]], header: Sequence[str] = (), *, columns: int | None = None
) -> str:
    """A gallery page as one HTML block (``st.html``): a grid of cells, a row per target sample.

    One element instead of a Streamlit column and image per cell (a page of 12 targets with 3 neighbours
    each was 48 images, 60 containers and 48 image requests); images are inline ``data:`` URIs, so the
    browser fetches nothing. Captions are escaped; a caption starting with "⚠" is drawn in the warning
    colour.
    """
    n = columns or max([len(r) for r in rows] + [len(header), 1])
    cell_style = "margin:0;min-width:0;overflow-wrap:anywhere"
    parts = [f'<div class="diag-gallery" style="display:grid;grid-template-columns:repeat({n},minmax(0,1fr));'
             'gap:10px 12px;align-items:start">']  # fmt: skip
    for h in header:
        parts.append(f'<div style="font-size:0.8em;opacity:0.7">{html.escape(h)}</div>')
    for row in rows:
        for item, caption in row:
            warn = caption.startswith("⚠")
            cap = (
                f'<figcaption style="font-size:0.8em;{"color:#b45309;" if warn else "opacity:0.75;"}">'
                f"{html.escape(caption)}</figcaption>"
            )
            if item is None:
                body = '<div style="font-size:0.8em;opacity:0.6">(no preview)</div>'
            elif item.startswith("data:image/"):
                body = f'<img src="{item}" alt="" style="width:84px;height:auto;image-rendering:pixelated">'
            else:
                body = f'<blockquote style="margin:0;font-size:0.85em">{html.escape(item)}</blockquote>'
            parts.append(f'<figure style="{cell_style}">{body}{cap}</figure>')
    parts.append("</div>")
    return "".join(parts)


def gallery_captions(block: str) -> list[str]:
    """The captions of a :func:`gallery_html` block, in order (for tests and checks)."""
    return [html.unescape(c) for c in re.findall(r"<figcaption[^>]*>(.*?)</figcaption>", block, flags=re.S)]


def with_selection(view: View, keys: Sequence[str]) -> View:
    return replace(view, selection=list(keys), page=0)


#: Hover thumbnails: a script-only Streamlit component (components v2 run in the page, not an iframe)
#: that listens to the map's ``plotly_hover`` and shows the hovered item's thumbnail (``data.thumbs``,
#: keyed by the point's ``customdata``) beside the cursor. It re-attaches when the chart is redrawn.
HOVER_JS = """
export default function(component) {
  const thumbs = (component.data && component.data.thumbs) || {};
  let tip = document.getElementById('diag-hover-thumb');
  if (!tip) {
    tip = document.createElement('img');
    tip.id = 'diag-hover-thumb';
    Object.assign(tip.style, {position: 'fixed', zIndex: 100000, pointerEvents: 'none', display: 'none',
      width: '72px', height: '72px', imageRendering: 'pixelated', border: '1px solid #888',
      background: '#fff', boxShadow: '0 1px 4px rgba(0,0,0,.3)'});
    document.body.appendChild(tip);
  }
  const attach = () => {
    document.querySelectorAll('.js-plotly-plot').forEach((gd) => {
      gd.__diagThumbs = thumbs;
      if (gd.__diagHooked || !gd.on) return;
      gd.__diagHooked = true;
      gd.on('plotly_hover', (ev) => {
        const p = ev.points && ev.points[0];
        const src = p && gd.__diagThumbs && gd.__diagThumbs[String(p.customdata)];
        if (!src) { tip.style.display = 'none'; return; }
        tip.src = src;
        const e = ev.event || {};
        tip.style.left = ((e.clientX || 0) + 18) + 'px';
        tip.style.top = ((e.clientY || 0) - 90) + 'px';
        tip.style.display = 'block';
      });
      gd.on('plotly_unhover', () => { tip.style.display = 'none'; });
    });
  };
  attach();
  const timer = setInterval(attach, 400);
  return () => { clearInterval(timer); tip.style.display = 'none'; };
}
"""
