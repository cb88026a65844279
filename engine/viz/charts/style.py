"""One look for every figure: the template, the split colours and symbols, a categorical palette
that stretches to many classes, and the small helpers the chart modules share (input checks,
colour mixing, the region layer's colour scale).

Nothing here draws a whole chart; every chart module imports from here so a change of taste is
made once.
"""
from __future__ import annotations

import colorsys
import textwrap

import numpy as np
import plotly.graph_objects as go

# --- splits ------------------------------------------------------------------------------------
SPLIT_NAMES = {0: "meta-train", 1: "meta-test", 2: "external"}
SPLIT_SYMBOLS = {0: "circle", 1: "diamond", 2: "square"}
SPLIT_COLORS = {0: "#3F6FB5", 1: "#E8871E", 2: "#8B5FBF"}  # blue, orange, violet
SPLIT_SIZES = {0: 9, 1: 10, 2: 8}  # diamonds and squares look bigger than circles of one size

# --- right / wrong / not applicable --------------------------------------------------------------
CORRECT = "#1A9850"
WRONG = "#D7301F"
NEUTRAL = "#B9BEC7"

# --- text and surfaces ---------------------------------------------------------------------------
FONT_FAMILY = "Inter, 'Segoe UI', 'Helvetica Neue', Arial, sans-serif"
TEXT = "#2A2F3A"
MUTED = "#6B7280"
GRID = "#E8EBF0"
AXIS_LINE = "#C9CED6"
PAPER = "white"
MARGIN = dict(l=56, r=24, t=72, b=56)
MAP_MARGIN = dict(l=16, r=16, t=72, b=16)

# A categorical palette, strongest and most distinct first (Tableau 20 order, reshuffled so that
# neighbours differ in hue and lightness, no greys: grey means "not applicable" in these charts).
_CURATED = [
    "#4E79A7", "#F28E2B", "#E15759", "#59A14F", "#B07AA1", "#EDC948", "#76B7B2", "#FF9DA7",
    "#9C755F", "#17BECF", "#2F4B7C", "#BCBD22", "#D37295", "#8CD17D", "#A0CBE8", "#FFBE7D",
    "#499894", "#7F3C8D", "#D4A6C8", "#B6992D", "#CF1C90", "#11A579", "#3969AC", "#E68310",
]


def figure() -> go.Figure:
    """An empty figure that skips plotly's per-property validation, for the figures the live view
    builds again on every refresh (concept maps, curves). Validation checks every colour of every
    point in Python, in the server process, holding the GIL against the training threads (a paired
    test: about 3.6x slower per figure); these figures' properties are this code's own, and the
    tests on fig.data / fig.layout check them. Traces go in with trace()."""
    return go.Figure(_validate=False)


def trace(cls, **props):
    """A plotly trace `cls` (go.Scattergl, go.Scatter, go.Heatmap) without validation: see figure()."""
    return cls(_validate=False, **props)


def palette(n: int) -> list[str]:
    """n distinct colours: the curated ones, then golden-angle hues at alternating lightness
    (deterministic, so a class keeps its colour across refreshes)."""
    if n < 0:
        raise ValueError(f"palette size must be >= 0, got {n}")
    out = list(_CURATED[:n])
    i = 0
    while len(out) < n:
        hue = (0.07 + i * 0.618033988749895) % 1.0
        light = (0.42, 0.60, 0.32, 0.70)[i % 4]
        sat = (0.65, 0.55, 0.70, 0.50)[(i // 4) % 4]
        r, g, b = colorsys.hls_to_rgb(hue, light, sat)
        out.append(f"#{round(r * 255):02X}{round(g * 255):02X}{round(b * 255):02X}")
        i += 1
    return out


def rgb(color: str) -> tuple[int, int, int]:
    """'#RRGGBB' -> (r, g, b)."""
    c = color.lstrip("#")
    if len(c) != 6:
        raise ValueError(f"expected a colour like '#RRGGBB', got {color!r}")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def mix(color: str, strength: float, base=(255, 255, 255)) -> str:
    """`color` laid over `base` (white) at `strength` in [0, 1], as 'rgb(r,g,b)'."""
    s = float(np.clip(strength, 0.0, 1.0))
    r, g, b = (round(b0 + (c - b0) * s) for c, b0 in zip(rgb(color), base))
    return f"rgb({r},{g},{b})"


def rgba(color: str, alpha: float) -> str:
    r, g, b = rgb(color)
    return f"rgba({r},{g},{b},{alpha:g})"


# --- the template ------------------------------------------------------------------------------------
def _template() -> go.layout.Template:
    axis = dict(gridcolor=GRID, zerolinecolor=GRID, linecolor=AXIS_LINE, showline=True, ticks="outside",
                tickcolor=AXIS_LINE, ticklen=4, title=dict(standoff=8, font=dict(size=13, color=MUTED)),
                tickfont=dict(size=11, color=MUTED), automargin=True)
    return go.layout.Template(layout=dict(
        font=dict(family=FONT_FAMILY, size=13, color=TEXT),
        title=dict(font=dict(size=17, color=TEXT), x=0.0, xanchor="left", xref="paper", y=0.97, yanchor="top",
                   pad=dict(l=4)),
        paper_bgcolor=PAPER, plot_bgcolor=PAPER, colorway=_CURATED[:10],
        xaxis=axis, yaxis=axis, margin=MARGIN,
        hoverlabel=dict(font=dict(family=FONT_FAMILY, size=12), bgcolor="white", bordercolor=AXIS_LINE),
        legend=dict(font=dict(size=12), bgcolor="rgba(255,255,255,0.85)", itemsizing="constant"),
        colorscale=dict(sequential="Blues"),
    ))


TEMPLATE = _template()


def note(text: str, *, y: float = 1.0, x: float = 0.0, yshift: int = 8, size: int = 12, color: str = MUTED,
         xanchor: str = "left", yanchor: str = "bottom", name: str = "note", **kw) -> dict:
    """A line of small text in paper coordinates (subtitles, method notes, region notes).
    Annotations render in every plotly.js version, unlike layout.title.subtitle."""
    return dict(text=text, x=x, y=y, xref="paper", yref="paper", xanchor=xanchor, yanchor=yanchor,
                showarrow=False, yshift=yshift, align="left", font=dict(size=size, color=color), name=name, **kw)


def finish(fig: go.Figure, *, title: str | None, uirevision: str, subtitle: str | None = None,
           height: int | None = None, margin: dict | None = None, subtitle_shift: int = 10) -> go.Figure:
    """Template, title (with an optional muted subtitle line under it), uirevision, size."""
    if not isinstance(uirevision, str) or not uirevision:
        raise ValueError(f"uirevision must be a non-empty string, got {uirevision!r}")
    fig.update_layout(template=TEMPLATE, uirevision=uirevision, margin=margin or MARGIN)
    if title:
        fig.update_layout(title=dict(text=f"<b>{title}</b>"))
    if subtitle:
        fig.add_annotation(note(subtitle, y=1.0, yshift=subtitle_shift, name="subtitle"))
    if height:
        fig.update_layout(height=height)
    return fig


def bottom_legend(fig: go.Figure, entries: int, per_row: int = 3, axis_room: int = 52) -> int:
    """A horizontal legend at the very bottom of the figure, under the x-axis title (a legend in
    paper coordinates would sit on that title), with the bottom margin grown to hold it. Returns
    the pixels added for it."""
    rows = max(1, -(-entries // per_row))
    fig.update_layout(legend=dict(orientation="h", x=0.0, xanchor="left", xref="paper", y=0.0, yanchor="bottom",
                                  yref="container", font=dict(size=12), tracegroupgap=4),
                      margin=dict(b=axis_room + 8 + 22 * rows))
    return 8 + 22 * rows


MAP_PAD = 0.06  # padding around a map's points, as a fraction of their larger extent (the same on every side)


def map_ranges(points, pad: float = MAP_PAD) -> tuple[list[float], list[float]]:
    """x and y ranges that hold every point of `points` ((N, 2) arrays) with the same padding on
    every side (`pad` x the larger of the two extents): equal scale keeps that padding equal on screen."""
    allxy = np.concatenate([np.asarray(p, dtype=float).reshape(-1, 2) for p in points])
    lo, hi = allxy.min(0), allxy.max(0)
    margin = max(float((hi - lo).max()), 1e-6) * pad
    return [float(lo[0] - margin), float(hi[0] + margin)], [float(lo[1] - margin), float(hi[1] + margin)]


def map_axes(fig: go.Figure, xrange=None, yrange=None, **kw) -> None:
    """Axes of a 2-D map: no units, so no tick labels or grid; equal scale on x and y; a light
    frame. The plot keeps the whole panel (constrain="range": plotly widens the shorter range to
    the panel's shape instead of shrinking the plot into a strip); given ranges are fixed."""
    common = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="", showline=True, mirror=True,
                  linecolor=AXIS_LINE, title=None)
    fig.update_xaxes(**common, constrain="range", **kw)
    fig.update_yaxes(**common, scaleanchor="x", scaleratio=1, constrain="range", **kw)
    if xrange is not None and yrange is not None:
        fig.update_xaxes(range=list(xrange), autorange=False)
        fig.update_yaxes(range=list(yrange), autorange=False)


# --- input checks -------------------------------------------------------------------------------------
def as_points(xy, name: str, rows: int | None = None) -> np.ndarray:
    """A finite float (P, 2) array, or a ValueError that says what was wrong."""
    try:
        arr = np.asarray(xy, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric (points, 2) array: {e}") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (points, 2), got {np.shape(xy)}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows, expected {rows}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite positions")
    return arr


def as_vector(values, name: str, rows: int | None = None, *, integer: bool = False) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if rows is not None and len(arr) != rows:
        raise ValueError(f"{name} has {len(arr)} entries, expected {rows}")
    if integer:
        whole = np.issubdtype(arr.dtype, np.integer) or (np.issubdtype(arr.dtype, np.floating)
                                                          and bool(np.all(np.mod(arr, 1) == 0)))
        if len(arr) and not whole:
            raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    return arr


def check_choice(value, name: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


# --- the region layer -------------------------------------------------------------------------------------
NOTE_WIDTH = 58  # characters per line of an in-figure note: maps can be narrow, annotations do not wrap
REGION_LEVELS = 5  # confidence bands: lightness steps of a region's class colour


def region_strength(level: int) -> float:
    """How strongly band `level` (0 = least confident) shows its class colour over white."""
    return 0.12 + 0.60 * (level + 0.5) / REGION_LEVELS


def check_regions(regions, name: str = "regions") -> None:
    """A RegionGrid (duck-typed: x, y, pred, conf, exact, method, class_names) with consistent shapes."""
    missing = [k for k in ("x", "y", "pred", "conf", "exact", "method", "class_names") if not hasattr(regions, k)]
    if missing:
        raise ValueError(f"{name} must be an engine.viz.regions.RegionGrid; missing {', '.join(missing)}")
    gx, gy = np.asarray(regions.x), np.asarray(regions.y)
    if gx.ndim != 1 or gy.ndim != 1 or len(gx) < 2 or len(gy) < 2:
        raise ValueError(f"{name}.x and {name}.y must be 1-D grids of at least 2 points, got {gx.shape} and {gy.shape}")
    for field in ("pred", "conf"):
        shape = np.shape(getattr(regions, field))
        if shape != (len(gy), len(gx)):
            raise ValueError(f"{name}.{field} must have shape (len(y), len(x)) = {(len(gy), len(gx))}, got {shape}")
    pred = np.asarray(regions.pred)
    if pred.size and (pred.min() < 0 or pred.max() >= len(regions.class_names)):
        raise ValueError(f"{name}.pred indexes {name}.class_names ({len(regions.class_names)} names) "
                         f"but holds values in [{pred.min()}, {pred.max()}]")


def region_heatmap(regions, class_color, *, hover: bool = True, label: str = "D predicts",
                   shown=None, legendgroup: str | None = None, legend: str | None = None) -> go.Heatmap:
    """The decision regions as one heatmap: hue = predicted class (class_color(c) -> '#RRGGBB'),
    strength over the white paper = confidence (REGION_LEVELS bands). Classes are packed to those
    present, so the colour scale stays short. `shown` (class indices): only these classes are
    shaded, cells answering any other class are left blank (a gap: no colour, no hover)."""
    check_regions(regions)
    pred = np.asarray(regions.pred, dtype=np.int64)
    conf = np.clip(np.nan_to_num(np.asarray(regions.conf, dtype=float)), 0.0, 1.0)
    keep = np.ones(pred.shape, bool) if shown is None else np.isin(pred, np.asarray(list(shown), dtype=np.int64))
    present = np.unique(pred[keep])
    if len(present) == 0:  # nothing to shade: an empty layer keeps the trace (and its index)
        present = np.unique(pred)[:1]
    packed = np.searchsorted(present, pred)  # (Gy, Gx) in 0..len(present)-1 where kept
    level = np.minimum((conf * REGION_LEVELS).astype(np.int64), REGION_LEVELS - 1)
    z = np.where(keep, packed * REGION_LEVELS + level, np.nan).astype(np.float32)  # small integers: exact
    bands = len(present) * REGION_LEVELS
    scale = []
    for i, c in enumerate(present):
        for lv in range(REGION_LEVELS):
            band = i * REGION_LEVELS + lv
            col = mix(class_color(int(c)), region_strength(lv))
            scale += [[band / bands, col], [(band + 1) / bands, col]]
    scale[-1][0] = 1.0
    # z = k lands at (k + 0.5) / bands on the scale: the middle of band k's two stops
    spec = dict(x=np.asarray(regions.x, dtype=float), y=np.asarray(regions.y, dtype=float), z=z,
                 zmin=-0.5, zmax=bands - 0.5, colorscale=scale, showscale=False, zsmooth=False,
                 name="decision regions", showlegend=False, hoverongaps=False)
    if legendgroup:
        spec["legendgroup"] = legendgroup
    if legend:
        spec["legend"] = legend
    if keep.all():  # plain integers (as before) when every cell is shaded
        spec["z"] = z.astype(np.int64)
    if hover:
        names = np.asarray(regions.class_names, dtype=object)
        pct = np.char.mod("%.0f%%", conf * 100)
        spec.update(text=np.char.add(np.char.add(names[pred].astype(str), " · "), pct),
                     hovertemplate=f"{label}: %{{text}} confident<extra>region</extra>")
    else:
        spec.update(hoverinfo="skip")
    return trace(go.Heatmap, **spec)


def region_note(regions, what: str = "the discriminator's prediction") -> str:
    """The note in the figure that says what the shading is and whether it is exact."""
    kind = "exact" if bool(regions.exact) else "approximate"
    method = str(regions.method or "").strip()
    how = method if method.lower().startswith(kind) else (f"{kind}: {method}" if method else kind)
    lines = textwrap.wrap(f"Regions {how}", NOTE_WIDTH, break_long_words=False) or [""]
    return "<br>".join([f"Shading: {what}, paler = less sure", *lines])


REGION_CAPTION = "Shading: concept discriminator D's answer · deeper = surer"


def region_method_line(regions) -> str:
    """Exact or approximate, and how (the words of RegionGrid.method)."""
    kind = "exact" if bool(regions.exact) else "approximate"
    method = str(regions.method or "").strip()
    how = method if method.lower().startswith(kind) else (f"{kind}: {method}" if method else kind)
    return f"Regions {how}"


def region_caption(regions, width: int = NOTE_WIDTH) -> str:
    """The caption over a concept map with D's regions, two short lines: what D is and what the
    shading means, then whether the regions are exact or approximate (wrapped to `width` characters)."""
    lines = textwrap.wrap(REGION_CAPTION, width, break_long_words=False)
    lines += textwrap.wrap(region_method_line(regions), width, break_long_words=False)
    return "<br>".join(lines)


def key_trace(name: str, color: str, symbol: str, *, group: str, legend: str = "legend",
              size: int = 11) -> go.Scatter:
    """A legend entry only (no data drawn): a marker of `symbol` and `color` named `name`, in legend
    group `group` (clicking it shows or hides the group's traces) of the figure's legend `legend`."""
    return trace(go.Scatter, x=[None], y=[None], mode="markers", name=name, legendgroup=group, legend=legend,
                      showlegend=True, hoverinfo="skip",
                      marker=dict(symbol=symbol, color=color, size=size, line=dict(width=0.8, color="white")))
