"""The concept map over a whole run, as an animation: one frame per snapshot, a step slider and
Play / Pause. Positions must already be aligned across frames by the projector (a fixed PCA
basis, or UMAP initialised from the previous frame); axis ranges are fixed to cover every frame,
so nothing jumps. Frames carry trace data only (points, and the regions when given).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from engine.viz.charts.concept_map import (
    _LEGEND,
    COLOR_BY,
    ClassColors,
    check_probe,
    check_snapshot,
    map_title,
    point_traces,
    point_updates,
    region_keys,
    region_layer,
    split_keys,
    subtitle_lines,
)
from engine.viz.charts.style import (
    MAP_MARGIN,
    MUTED,
    SPLIT_NAMES,
    as_points,
    check_choice,
    check_regions,
    finish,
    map_axes,
    map_ranges,
    note,
    region_caption,
)

FRAME_MS = 450  # per frame while playing


def _empty_regions() -> go.Heatmap:
    """A frame without regions: the heatmap trace stays (so trace indices hold) but shows nothing."""
    return go.Heatmap(x=[0.0, 1.0], y=[0.0, 1.0], z=[[None, None], [None, None]], showscale=False, hoverinfo="skip",
                      colorscale=[[0, "white"], [1, "white"]], name="decision regions", showlegend=False)


def replay(frames, probe, snapshots=None, color_by: str = "class", regions=None, title: str | None = None,
           uirevision: str = "replay", height: int = 600, start: str = "last") -> go.Figure:
    """frames: [(step, xy (P, 2)), ...] in training order; snapshots: the matching snapshot dicts
    (needed for color_by "prediction"/"correct" and for D's line in the hover); regions: a list of
    RegionGrid or None per frame. The figure opens on the last frame (start="last") or the first."""
    check_choice(color_by, "color_by", COLOR_BY)
    check_choice(start, "start", ("first", "last"))
    rows = check_probe(probe)
    frames = list(frames)
    if not frames:
        raise ValueError("replay needs at least one frame (step, xy)")
    steps, points = [], []
    for i, fr in enumerate(frames):
        if not isinstance(fr, (tuple, list)) or len(fr) != 2:
            raise ValueError(f"frames[{i}] must be a (step, xy) pair")
        steps.append(int(fr[0]))
        points.append(as_points(fr[1], f"frames[{i}] xy", rows))
    if len(set(steps)) != len(steps):
        raise ValueError(f"frame steps must be distinct, got {steps}")
    n = len(frames)
    if snapshots is not None:
        snapshots = list(snapshots)
        if len(snapshots) != n:
            raise ValueError(f"snapshots has {len(snapshots)} entries, frames has {n}")
        for s in snapshots:
            check_snapshot(s, rows, color_by)
    elif color_by in ("prediction", "correct"):
        raise ValueError(f"color_by={color_by!r} needs snapshots with the discriminator's predictions")
    if regions is not None:
        regions = list(regions)
        if len(regions) != n:
            raise ValueError(f"regions has {len(regions)} entries, frames has {n} (use None for a frame without)")
        for i, r in enumerate(regions):
            if r is not None:
                check_regions(r, f"regions[{i}]")
        if all(r is None for r in regions):
            regions = None

    colors = ClassColors(probe)
    split = np.asarray(probe["split"])
    present = [c for c in SPLIT_NAMES if (split == c).any()]

    def frame_data(i: int, full: bool) -> list:
        """full: the figure's own traces; otherwise what a frame changes (positions, D's view)."""
        snap = snapshots[i] if snapshots is not None else None
        data = []
        if regions is not None:
            r = regions[i]
            data.append(_empty_regions() if r is None else region_layer(probe, colors, r, hover=False))
        make = point_traces if full else point_updates
        data += make(points[i], probe, snap, color_by, colors, present)
        return data

    def frame_note(i: int) -> str:
        r = regions[i] if regions is not None else None
        return region_caption(r) if r is not None else ""

    first = n - 1 if start == "last" else 0
    fig = go.Figure(data=frame_data(first, full=True))
    animated = list(range(len(fig.data)))  # the legend's entries below never change
    fig.add_traces(split_keys(present, color_by))
    keyed = next((r for r in regions if r is not None), None) if regions is not None else None
    if keyed is not None:
        fig.add_traces(region_keys(probe, colors, keyed))
    snap0 = snapshots[first] if snapshots is not None else None
    subtitle = subtitle_lines(color_by, snap0,
                              f"{n} snapshots, steps {steps[0]}–{steps[-1]}: press Play or drag the slider")
    captions = [frame_note(i) for i in range(n)]
    room = max((c.count("<br>") + 1) * 15 + 6 if c else 0 for c in captions)  # over the plot: the longest caption
    finish(fig, title=map_title(title, "Concept space during training", None), uirevision=uirevision,
           subtitle=subtitle, height=height, subtitle_shift=10 + room,
           margin={**MAP_MARGIN, "t": 60 + 17 * (subtitle.count("<br>") + 1) + room, "b": 24})
    xr, yr = map_ranges(points)  # over every frame: nothing jumps
    map_axes(fig, xr, yr)
    base_notes = list(fig.layout.annotations)

    def frame_layout(i: int):
        if regions is None:
            return None  # nothing in the layout changes between frames
        text = frame_note(i)  # frames replace layout.annotations whole: repeat the subtitle
        return dict(annotations=base_notes + ([_region_annotation(text)] if text else []))

    fig.frames = [go.Frame(name=str(s), data=frame_data(i, full=False), traces=animated,
                           layout=frame_layout(i)) for i, s in enumerate(steps)]
    if frame_note(first):
        fig.add_annotation(_region_annotation(frame_note(first)))
    play = dict(frame=dict(duration=FRAME_MS, redraw=True), transition=dict(duration=0), fromcurrent=True,
                mode="immediate")
    pause = dict(frame=dict(duration=0, redraw=False), transition=dict(duration=0), mode="immediate")
    fig.update_layout(
        legend=_LEGEND,
        hovermode="closest",
        updatemenus=[dict(type="buttons", direction="left", x=0.0, xanchor="left", y=-0.01, yanchor="top",
                          pad=dict(t=4, r=8), showactive=False, bgcolor="white", bordercolor="#C9CED6",
                          font=dict(size=12),
                          buttons=[dict(label="▶ Play", method="animate", args=[None, play]),
                                   dict(label="❚❚ Pause", method="animate", args=[[None], pause])])],
        sliders=[dict(active=first, x=0.16, len=0.84, y=-0.01, yanchor="top", pad=dict(t=4, b=4),
                      currentvalue=dict(prefix="step ", font=dict(size=13, color=MUTED), xanchor="left"),
                      tickcolor="#C9CED6", font=dict(size=10, color=MUTED),
                      steps=[dict(label=str(s), method="animate",
                                  args=[[str(s)], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                       transition=dict(duration=0))]) for s in steps])],
    )
    if keyed is not None:  # the regions' classes under the splits, right of the map
        fig.update_layout(legend2=dict(orientation="v", x=1.01, xanchor="left", xref="paper", y=0.72, yanchor="top",
                                       yref="paper", font=dict(size=12)))
    fig.update_layout(margin=dict(b=96))  # the slider and the buttons sit under the map
    return fig


def _region_annotation(text: str) -> dict:
    """The regions' caption, between the subtitle and the plot (never over the points)."""
    return note(text, y=1.0, yshift=6, size=11, name="regions")

