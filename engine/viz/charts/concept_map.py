"""The concept map: the probe images' concept vectors laid out on a plane, one marker per image.

Inputs are what a run stores: a probe (engine.records.Probe) and a snapshot
(engine.records.Snapshot), whose fields are documented there.

Positions (xy) come from a projector (PCA, UMAP, ...) outside this module. Every point's
customdata starts with its probe row, so a lasso or box selection maps back to probe images:
`rows = [p["customdata"][0] for p in selection["points"]]`.
"""
from __future__ import annotations

import textwrap

import numpy as np
import plotly.graph_objects as go

from engine.records import Probe, Snapshot
from engine.viz.charts.style import (
    CORRECT,
    MAP_MARGIN,
    MUTED,
    NEUTRAL,
    NOTE_WIDTH,
    SPLIT_COLORS,
    SPLIT_NAMES,
    SPLIT_SIZES,
    SPLIT_SYMBOLS,
    WRONG,
    as_points,
    as_vector,
    check_choice,
    check_regions,
    figure,
    finish,
    key_trace,
    map_axes,
    map_ranges,
    note,
    palette,
    region_caption,
    region_heatmap,
    trace,
)
from engine.viz.regions import probe_external_classes

COLOR_BY = ("class", "split", "prediction", "correct")
PROBE_KEYS = ("split", "label", "class_name", "image_index")

# the replay's legend: right of the map, clear of plotly's toolbar (top right) and the slider (bottom)
_LEGEND = dict(orientation="v", x=1.01, xanchor="left", xref="paper", y=1.0, yanchor="top", yref="paper",
               title=dict(text="shape = split"), font=dict(size=12))
# the live map's legends, under the map across its width (a legend at the side would take a narrow
# screen's map; plotly grows the bottom margin to hold them and wraps their entries): the splits'
# shapes under the plot, the regions' classes at the very bottom
# (no legend titles: plotly 7 shifts a horizontal legend's entries right by its title and lets them
# run off a narrow figure; the regions' key starts with an entry of its own that says what it is)
MAP_LEGEND = dict(orientation="h", x=0.0, xanchor="left", xref="paper", y=-0.01, yanchor="top", yref="paper",
                  font=dict(size=12))
KEY_ROW_PX, KEY_COLUMNS = 19, 2  # the region key's height per row, and its entries per row
REGION_LEGEND = dict(orientation="h", x=0.0, xanchor="left", xref="paper", y=0.0, yanchor="bottom",
                     yref="container", font=dict(size=12),
                     traceorder="normal",  # one group: "normal" flows its entries in rows, not a column
                     entrywidth=1 / KEY_COLUMNS, entrywidthmode="fraction")  # so many to a row, whatever their names
REGION_KEY_HEADER = "<b>D's regions</b>"  # then how many of D's classes are shaded
SPLIT_KEY_COLOR = MUTED  # a split's legend marker when colour means class or D (shape is the split)
REGION_GROUP = "regions"


def check_probe(probe) -> int:
    """Number of probe rows P, after checking the fields the map uses agree on it."""
    if not hasattr(probe, "__getitem__") or not hasattr(probe, "keys"):
        raise ValueError(f"probe must be a dict as stored in probe.npz, got {type(probe).__name__}")
    missing = [k for k in PROBE_KEYS if k not in probe]
    if missing:
        raise ValueError(f"probe is missing {', '.join(missing)} (expected the arrays of probe.npz)")
    rows = len(np.asarray(probe["split"]))
    for k in PROBE_KEYS:
        as_vector(probe[k], f"probe[{k!r}]", rows)
    bad = set(np.unique(np.asarray(probe["split"])).tolist()) - set(SPLIT_NAMES)
    if bad:
        raise ValueError(f"probe['split'] holds unknown split codes {sorted(bad)} "
                         "(0 meta-train, 1 meta-test, 2 external)")
    return rows


def check_snapshot(snapshot, rows: int, color_by: str) -> None:
    if snapshot is None:
        if color_by in ("prediction", "correct"):
            raise ValueError(f"color_by={color_by!r} needs a snapshot with the discriminator's predictions")
        return
    if not hasattr(snapshot, "__getitem__") or not hasattr(snapshot, "keys"):
        raise ValueError(f"snapshot must be a dict as stored in snapshots/step_*.npz, got {type(snapshot).__name__}")
    has_d = "disc_pred" in snapshot
    if color_by in ("prediction", "correct") and not has_d:
        raise ValueError(f"color_by={color_by!r} needs the discriminator's predictions (snapshot['disc_pred']); "
                         "this run has no external set")
    if has_d:
        as_vector(snapshot["disc_pred"], "snapshot['disc_pred']", rows, integer=True)
        if "disc_conf" in snapshot:
            as_vector(snapshot["disc_conf"], "snapshot['disc_conf']", rows)


class ClassColors:
    """Colours keyed on (split, label), fixed by the probe so they hold across frames and refreshes.
    An external class has the same colour as a point (class colouring), as D's prediction and as a
    region, so "D is right" reads as "same colour"."""

    def __init__(self, probe):
        keys = sorted({(int(s), int(c)) for s, c in zip(np.asarray(probe["split"]), np.asarray(probe["label"]))})
        self._rank = {k: i for i, k in enumerate(keys)}
        self._n = len(keys)
        self._pal = palette(self._n + len(np.asarray(probe.get("external_classes", []))))

    def _at(self, i: int) -> str:
        if i >= len(self._pal):
            self._pal = palette(max(i + 1, 2 * len(self._pal)))
        return self._pal[i]

    def key(self, split: int, label: int) -> str:
        return self._at(self._rank[(int(split), int(label))])

    def external(self, c: int) -> str:
        """Colour of external class c (D's class c)."""
        i = self._rank.get((2, int(c)))
        return self._at(i if i is not None else self._n + int(c))


def _external_name(probe, c: int) -> str:
    names = np.asarray(probe.get("external_classes", []))
    return str(names[c]) if 0 <= c < len(names) else f"external class {c}"


def point_colors(probe, snapshot, color_by: str, colors: ClassColors) -> list[str]:
    """One colour per probe row for the given colouring."""
    split, label = np.asarray(probe["split"]), np.asarray(probe["label"])
    if color_by == "class":
        return [colors.key(s, c) for s, c in zip(split, label)]
    if color_by == "split":
        return [SPLIT_COLORS[int(s)] for s in split]
    pred = np.asarray(snapshot["disc_pred"])
    if color_by == "prediction":
        return [colors.external(p) for p in pred]
    return [NEUTRAL if s != 2 else (CORRECT if p == c else WRONG) for s, c, p in zip(split, label, pred)]


def _hover_d(probe, snapshot, rows: int) -> list[str]:
    """The discriminator's line of each point's hover ('' without a discriminator)."""
    if snapshot is None or "disc_pred" not in snapshot:
        return [""] * rows
    pred = np.asarray(snapshot["disc_pred"])
    conf = np.asarray(snapshot["disc_conf"]) if "disc_conf" in snapshot else None
    untrained = "disc_trained" in snapshot and not bool(snapshot["disc_trained"])
    who = "D (untrained, λ = 0)" if untrained else "D"
    split, label = np.asarray(probe["split"]), np.asarray(probe["label"])
    out = []
    for i in range(rows):
        p = int(pred[i])
        pct = f" ({conf[i] * 100:.0f}%)" if conf is not None else ""
        mark = (" ✓" if p == label[i] else " ✗") if split[i] == 2 else ""
        out.append(f"<br>{who} predicts <b>{_external_name(probe, p)}</b>{pct}{mark}")
    return out


# customdata = (probe row, class name, split, image index), fixed for a run; text = D's line, per snapshot
HOVER = "<b>%{customdata[1]}</b><br>%{customdata[2]} · image %{customdata[3]}%{text}<extra></extra>"


# A probe of a few hundred points is drawn as SVG: on a machine without a GPU, Chromium reads a WebGL
# canvas back on every redraw (GLES2::ReadPixels in a trace of a watched demo), CPU a 2-core machine
# takes from training (BENCHMARKS.md, the watched demo). WebGL from here up, where SVG gets slow.
WEBGL_FROM = 1000


def point_kind(rows: int) -> type[go.Scatter] | type[go.Scattergl]:
    """The plotly trace class for a point set of `rows` points (see WEBGL_FROM)."""
    return go.Scattergl if rows >= WEBGL_FROM else go.Scatter


def point_traces(xy: np.ndarray, probe: Probe, snapshot: Snapshot | None, color_by: str, colors: ClassColors,
                 splits: list[int] | None = None) -> list[go.Scatter | go.Scattergl]:
    """One points trace per split present (in split order), markers shaped by split."""
    split = np.asarray(probe["split"])
    kind = point_kind(len(split))
    present = splits if splits is not None else [c for c in SPLIT_NAMES if (split == c).any()]
    fill = np.asarray(point_colors(probe, snapshot, color_by, colors), dtype=object)
    d_line = np.asarray(_hover_d(probe, snapshot, len(split)), dtype=object)
    names, index = np.asarray(probe["class_name"]).astype(str), np.asarray(probe["image_index"])
    traces = []
    for code in present:
        rows = np.flatnonzero(split == code)
        custom = np.empty((len(rows), 4), dtype=object)
        custom[:, 0] = rows
        custom[:, 1] = names[rows]
        custom[:, 2] = SPLIT_NAMES[code]
        custom[:, 3] = index[rows]
        color = SPLIT_COLORS[code] if color_by == "split" else fill[rows].tolist()
        traces.append(trace(kind,
            x=xy[rows, 0].astype(np.float32), y=xy[rows, 1].astype(np.float32), mode="markers",
            name=SPLIT_NAMES[code], legendgroup=SPLIT_NAMES[code], showlegend=False,
            marker=dict(symbol=SPLIT_SYMBOLS[code], size=SPLIT_SIZES[code], color=color, opacity=0.92,
                        line=dict(width=0.8, color="white")),
            customdata=custom, text=d_line[rows].tolist(), hovertemplate=HOVER))
    return traces


def point_updates(xy: np.ndarray, probe: Probe, snapshot: Snapshot | None, color_by: str, colors: ClassColors,
                  splits: list[int]) -> list[go.Scatter | go.Scattergl]:
    """What changes between two snapshots of point_traces (positions, D's hover line, colours
    that depend on D): an animation frame carries only this."""
    split = np.asarray(probe["split"])
    fill = np.asarray(point_colors(probe, snapshot, color_by, colors), dtype=object) \
        if color_by in ("prediction", "correct") else None
    d_line = np.asarray(_hover_d(probe, snapshot, len(split)), dtype=object) if snapshot is not None else None
    out = []
    for code in splits:
        rows = np.flatnonzero(split == code)
        upd = dict(x=xy[rows, 0].astype(np.float32), y=xy[rows, 1].astype(np.float32))
        if d_line is not None:
            upd["text"] = d_line[rows].tolist()
        if fill is not None:
            upd["marker"] = dict(color=fill[rows].tolist())
        out.append(trace(point_kind(len(split)), **upd))
    return out


def describe_colors(color_by: str, snapshot) -> str:
    """The subtitle line(s) saying what colour and shape mean (short: the map may be narrow)."""
    text = {
        "class": "Colour: class · shape: split",
        "split": "Colour and shape: split",
        "prediction": "Colour: the discriminator's prediction · shape: split",
        "correct": f"External images: <span style='color:{CORRECT}'><b>green</b></span> = discriminator right, "
                   f"<span style='color:{WRONG}'><b>red</b></span> = wrong · others grey",
    }[color_by]
    if color_by in ("prediction", "correct") and snapshot is not None and "disc_trained" in snapshot \
            and not bool(snapshot["disc_trained"]):
        text += "<br>Discriminator untrained (λ = 0): its predictions are chance"
    return text


def map_title(title: str | None, base: str, step) -> str:
    if title is not None:
        return title
    return base if step is None else f"{base} at step {int(step)}"


def is_d_regions(probe, regions) -> bool:
    """Whether `regions` are the concept discriminator D's (its classes are the probe's external classes)."""
    ext = [str(n) for n in np.asarray(probe.get("external_classes", []))]
    return list(map(str, regions.class_names)) == ext or not ext


def region_colorer(probe, colors: ClassColors, regions):
    """Region class c -> colour. D's regions use the external classes' colours; other region grids
    (a task head's) use the palette in order."""
    if is_d_regions(probe, regions):
        return colors.external
    pal = palette(len(regions.class_names))
    return lambda c: pal[c]


def shown_region_classes(probe, regions) -> np.ndarray | None:
    """The region classes a map shades: for D's regions, the external classes the probe shows
    (about ten of D's many); None (all) for other region grids."""
    return probe_external_classes(probe) if is_d_regions(probe, regions) else None


def region_layer(probe, colors: ClassColors, regions, *, hover: bool = True) -> go.Heatmap:
    """D's regions for the probe's external classes, coloured like their points, others blank."""
    return region_heatmap(regions, region_colorer(probe, colors, regions), hover=hover,
                          shown=shown_region_classes(probe, regions), legendgroup=REGION_GROUP, legend="legend2")


def region_keys(probe, colors: ClassColors, regions) -> list[go.Scatter]:
    """Legend entries naming the shaded classes, in their colours, after a header entry saying what
    they are (clicking one hides the regions)."""
    shown = shown_region_classes(probe, regions)
    classes = shown if shown is not None else np.unique(np.asarray(regions.pred))
    color = region_colorer(probe, colors, regions)
    names = list(map(str, regions.class_names))
    total = len(names)
    count = f" ({len(classes)} of {total})" if shown is not None and len(classes) < total else ""  # short: 2 to a row
    header = key_trace(f"{REGION_KEY_HEADER}{count}:", "rgba(0,0,0,0)", "square", group=REGION_GROUP, legend="legend2")
    header.marker.line.width = 0
    return [header] + [key_trace(names[c] if 0 <= c < len(names) else f"class {c}", color(int(c)), "square",
                                 group=REGION_GROUP, legend="legend2")
                       for c in np.asarray(classes, dtype=np.int64).tolist()]


def split_keys(present: list[int], color_by: str) -> list[go.Scatter]:
    """One legend entry per split shown: its marker shape (in the split's colour when colour means
    split, grey otherwise); clicking it shows or hides that split's points."""
    return [key_trace(SPLIT_NAMES[c], SPLIT_COLORS[c] if color_by == "split" else SPLIT_KEY_COLOR,
                      SPLIT_SYMBOLS[c], group=SPLIT_NAMES[c], size=SPLIT_SIZES[c] + 2) for c in present]


def subtitle_lines(color_by: str, snapshot, method_note: str | None) -> str:
    lines = [describe_colors(color_by, snapshot)]
    if method_note:  # wrapped: an annotation does not wrap itself, and the map may be narrow
        lines += [f"<i>{line}</i>" for line in textwrap.wrap(str(method_note), NOTE_WIDTH, break_long_words=False)]
    return "<br>".join(lines)


def top_notes(fig: go.Figure, subtitle: str, regions_text: str | None) -> int:
    """The subtitle under the title and, between it and the plot, the regions' caption (nothing
    is drawn over the plot area). Returns the top margin they need."""
    sub_lines = subtitle.count("<br>") + 1
    reg = (regions_text.count("<br>") + 1) * 15 + 6 if regions_text else 0
    if regions_text:
        fig.add_annotation(note(regions_text, y=1.0, yshift=6, size=11, name="regions"))
    fig.add_annotation(note(subtitle, y=1.0, yshift=10 + reg, name="subtitle"))
    return 60 + 17 * sub_lines + reg


def concept_map(xy, probe: Probe, snapshot: Snapshot | None = None, color_by: str = "class", regions=None, title: str | None = None,
                uirevision: str = "concept-map", method_note: str | None = None, height: int = 560,
                min_top: int = 0, region_hover: bool = True) -> go.Figure:
    """The probe images at positions xy (P, 2), coloured by class, split, the discriminator's
    prediction or whether it is right; marker shape = split (one trace per split, a legend entry
    per split under the map). `regions` (a RegionGrid of D's predictions on this plane) is drawn
    behind the points for the external classes the probe shows, with their names in the legend and
    a caption over the plot saying what D is, what the shading means and whether it is exact or
    approximate; `method_note` (e.g. "UMAP warming up: PCA shown") goes under the title. Equal
    scale on x and y, ranges fitted to the points with a fixed margin; `height` in pixels, and the
    region key, when shown, adds its rows below (KEY_ROW_PX each, KEY_COLUMNS to a row) so it never
    squeezes the plot into a strip. `min_top`: the top margin (px) at least this, so a map beside one
    with more notes (D's region caption) keeps its plot level with it. `region_hover`: the regions say
    what D predicts under the pointer; off, the figure is ~100 KB lighter (one name per grid cell):
    the live view's maps while training, which the browser gets again every 2 s."""
    check_choice(color_by, "color_by", COLOR_BY)
    rows = check_probe(probe)
    xy = as_points(xy, "xy", rows)
    check_snapshot(snapshot, rows, color_by)
    colors = ClassColors(probe)
    fig = figure()
    if regions is not None:
        check_regions(regions)
        fig.add_trace(region_layer(probe, colors, regions, hover=region_hover))
    split = np.asarray(probe["split"])
    present = [c for c in SPLIT_NAMES if (split == c).any()]
    fig.add_traces(point_traces(xy, probe, snapshot, color_by, colors, present))
    fig.add_traces(split_keys(present, color_by))
    if regions is not None:
        keys = region_keys(probe, colors, regions)
        fig.add_traces(keys)
        height += KEY_ROW_PX * -(-len(keys) // KEY_COLUMNS)
    step = snapshot.get("step") if snapshot is not None else None
    subtitle = subtitle_lines(color_by, snapshot, method_note)
    top = max(int(min_top), top_notes(fig, subtitle, region_caption(regions) if regions is not None else None))
    finish(fig, title=map_title(title, "Concept space", step), uirevision=uirevision,
           height=height, margin={**MAP_MARGIN, "t": top})
    xr, yr = map_ranges([xy])
    map_axes(fig, xr, yr)
    fig.update_layout(legend=MAP_LEGEND, hovermode="closest")
    if regions is not None:
        fig.update_layout(legend2=REGION_LEGEND)
    return fig


def waiting_map(message: str, title: str = "Concept space", height: int = 560) -> go.Figure:
    """The concept map's frame before its first snapshot: `message` where the points will be (the
    app draws it in the map's own element, so the map appears in place, with nothing to load)."""
    fig = figure()
    fig.add_annotation(text=message, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                       font=dict(size=14, color=MUTED), name="waiting")
    finish(fig, title=title, uirevision="waiting-map", height=height, margin=MAP_MARGIN)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def pca_2d(concepts) -> np.ndarray:
    """(P, D) -> (P, 2) on the first two principal components (deterministic signs; zeros pad a
    missing second component)."""
    z = np.asarray(concepts, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"concepts must have shape (points, dims), got {z.shape}")
    z = z - z.mean(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    vt = vt[:2]
    vt *= np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(1)] < 0, -1.0, 1.0)[:, None]
    xy = z @ vt.T
    if xy.shape[1] < 2:
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    return xy


def concept_map_pca(probe: Probe, snapshot: Snapshot | None, title: str | None = None, **kw) -> go.Figure:
    """concept_map on the snapshot's first two principal components (the quick default view)."""
    if snapshot is None or "concepts" not in snapshot:
        raise ValueError("concept_map_pca needs a snapshot with 'concepts'")
    step = snapshot.get("step")
    return concept_map(pca_2d(snapshot["concepts"]), probe, snapshot,
                       title=map_title(title, "Concept space (PCA)", step), **kw)
