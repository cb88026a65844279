"""The concept map: the probe images' concept vectors laid out on a plane, one marker per image.

Inputs are what a run stores: a probe (engine.records.Probe) and a snapshot
(engine.records.Snapshot), whose fields are documented there.

Positions (xy) come from a projector (PCA, UMAP, ...) outside this module. Every point's
customdata starts with its probe row, so a lasso or box selection maps back to probe images:
`rows = [p["customdata"][0] for p in selection["points"]]`.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from engine.records import Probe, Snapshot
from engine.viz.charts.style import (
    CORRECT,
    MAP_MARGIN,
    NEUTRAL,
    SPLIT_COLORS,
    SPLIT_NAMES,
    SPLIT_SIZES,
    SPLIT_SYMBOLS,
    WRONG,
    as_points,
    as_vector,
    check_choice,
    check_regions,
    finish,
    map_axes,
    note,
    palette,
    region_heatmap,
    region_note,
)

COLOR_BY = ("class", "split", "prediction", "correct")
PROBE_KEYS = ("split", "label", "class_name", "image_index")

# top right, on the title's row (the subtitle takes the left of the next rows)
# right of the map, clear of plotly's toolbar (top right) and the replay's slider (bottom)
_LEGEND = dict(orientation="v", x=1.01, xanchor="left", xref="paper", y=1.0, yanchor="top", yref="paper",
               title=dict(text="split"), font=dict(size=12))


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


def point_traces(xy: np.ndarray, probe: Probe, snapshot: Snapshot | None, color_by: str, colors: ClassColors,
                 splits: list[int] | None = None) -> list[go.Scattergl]:
    """One Scattergl per split present (in split order), markers shaped by split."""
    split = np.asarray(probe["split"])
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
        traces.append(go.Scattergl(
            x=xy[rows, 0].astype(np.float32), y=xy[rows, 1].astype(np.float32), mode="markers",
            name=SPLIT_NAMES[code], legendgroup=SPLIT_NAMES[code],
            marker=dict(symbol=SPLIT_SYMBOLS[code], size=SPLIT_SIZES[code], color=color, opacity=0.92,
                        line=dict(width=0.8, color="white")),
            customdata=custom, text=d_line[rows].tolist(), hovertemplate=HOVER))
    return traces


def point_updates(xy: np.ndarray, probe: Probe, snapshot: Snapshot | None, color_by: str, colors: ClassColors,
                  splits: list[int]) -> list[go.Scattergl]:
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
        out.append(go.Scattergl(**upd))
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


def region_colorer(probe, colors: ClassColors, regions):
    """Region class c -> colour. D's regions use the external classes' colours; other region grids
    (a task head's) use the palette in order."""
    ext = [str(n) for n in np.asarray(probe.get("external_classes", []))]
    if list(map(str, regions.class_names)) == ext or not ext:
        return colors.external
    pal = palette(len(regions.class_names))
    return lambda c: pal[c]


def subtitle_lines(color_by: str, snapshot, method_note: str | None) -> str:
    lines = [describe_colors(color_by, snapshot)]
    if method_note:
        lines.append(f"<i>{method_note}</i>")
    return "<br>".join(lines)


def concept_map(xy, probe: Probe, snapshot: Snapshot | None = None, color_by: str = "class", regions=None, title: str | None = None,
                uirevision: str = "concept-map", method_note: str | None = None, height: int = 560) -> go.Figure:
    """The probe images at positions xy (P, 2), coloured by class, split, the discriminator's
    prediction or whether it is right; marker shape = split (one trace per split). `regions` (a
    RegionGrid of D's predictions on this plane) is drawn behind the points with a note in the figure
    saying whether it is exact or approximate; `method_note` (e.g. "UMAP warming up: PCA shown")
    goes under the title."""
    check_choice(color_by, "color_by", COLOR_BY)
    rows = check_probe(probe)
    xy = as_points(xy, "xy", rows)
    check_snapshot(snapshot, rows, color_by)
    colors = ClassColors(probe)
    fig = go.Figure()
    if regions is not None:
        check_regions(regions)
        fig.add_trace(region_heatmap(regions, region_colorer(probe, colors, regions)))
    fig.add_traces(point_traces(xy, probe, snapshot, color_by, colors))
    step = snapshot.get("step") if snapshot is not None else None
    subtitle = subtitle_lines(color_by, snapshot, method_note)
    top = 64 + 18 * (subtitle.count("<br>") + 1)
    finish(fig, title=map_title(title, "Concept space", step), uirevision=uirevision, subtitle=subtitle,
           height=height, margin={**MAP_MARGIN, "t": top})
    map_axes(fig)
    if regions is not None:
        fig.add_annotation(note(region_note(regions), x=0.005, y=0.005, xanchor="left", yanchor="bottom", yshift=0,
                                size=11, name="regions", bgcolor="rgba(255,255,255,0.8)"))
    fig.update_layout(legend=_LEGEND, hovermode="closest")
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
