"""The adaptation curves a run records at each validation, drawn as they form: query accuracy after
0..S inner steps (gradient learners) or against 1..K' shots (metric learners), on fixed validation
episodes. The latest curve is bold, earlier ones fade with age; the lambda = 0 twin is dashed beside
its DEML run; a dotted line marks chance (1/N).

  live_adaptation_curves(records, twin_records=None, title=...)

records are a run's metric records (any kinds: only the well-formed kind "adaptation" ones are
drawn, engine.records.AdaptationRecord): step, axis "inner_steps" | "shots", x, accuracy, ways.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from engine.records import adaptation_records
from engine.viz.charts.style import MUTED, bottom_legend, figure, finish, trace

AXIS_LABELS = {"inner_steps": "inner steps", "shots": "shots"}
COLOR = "#3F6FB5"  # the run (as in the training curves)
TWIN_COLOR = "#E8871E"  # its lambda = 0 twin, dashed
MAX_CURVES = 8  # per run: evenly spaced over its validations, always the latest
LATEST_WIDTH, EARLIER_WIDTH = 3.4, 1.5
OLDEST_OPACITY = 0.18


def _shown(records: list[dict], max_curves: int) -> list[dict]:
    """At most max_curves of the records (by step), evenly spaced from the first to the latest."""
    records = sorted(records, key=lambda r: r["step"])
    if len(records) <= max_curves:
        return records
    picks = np.unique(np.round(np.linspace(0, len(records) - 1, max_curves)).astype(int))
    return [records[i] for i in picks]


def _opacity(age: int, count: int) -> float:
    """1 for the latest (age 0), falling linearly to OLDEST_OPACITY for the oldest shown."""
    return 1.0 if count <= 1 else round(1.0 - (1.0 - OLDEST_OPACITY) * age / (count - 1), 3)


def live_adaptation_curves(records, twin_records=None, title: str | None = "Adaptation at each validation",
                           name: str = "this run", twin_name: str = "λ = 0 twin",
                           uirevision: str = "adaptation-live", height: int | None = None,
                           max_curves: int = MAX_CURVES) -> go.Figure:
    """One trace per adaptation curve shown (at most `max_curves` per run, the latest widest and
    opaque, earlier ones thinner and fading), the twin's dashed, plus a dotted chance line at 1/N.
    x: inner steps or shots (one axis: a run and its twin never mix them); y: accuracy, 0-100 %.
    The twin's curves go no further than the run's latest: the twin (no discriminator to train) runs
    ahead, and the two bold curves are to compare the same step."""
    if not isinstance(max_curves, int) or isinstance(max_curves, bool) or max_curves < 1:
        raise ValueError(f"max_curves must be a whole number >= 1, got {max_curves!r}")
    runs = []
    for label, recs, color, dash in ((name, records, COLOR, None), (twin_name, twin_records, TWIN_COLOR, "dash")):
        if recs is None:
            continue
        if isinstance(recs, (str, bytes, dict)):
            raise ValueError(f"{label}'s records must be a list of metric records, got {type(recs).__name__}")
        curves = adaptation_records(recs)
        if runs and label == twin_name:
            curves = [c for c in curves if c["step"] <= max(r["step"] for r in runs[0][1])]
        if curves:
            runs.append((label, _shown(curves, max_curves), color, dash))
    axes = {c["axis"] for _, curves, _, _ in runs for c in curves}
    if len(axes) > 1:
        raise ValueError("cannot draw curves against inner steps with curves against shots on one axis; "
                         f"got {sorted(axes)}")
    axis = axes.pop() if axes else None
    fig = figure()
    for label, curves, color, dash in runs:
        for age, c in enumerate(reversed(curves)):  # the latest first, so it also leads the legend group
            newest = age == 0
            fig.add_trace(trace(go.Scatter,
                x=c["x"], y=c["accuracy"], mode="lines+markers" if newest else "lines",
                name=f"{label}, step {c['step']}",
                legendgroup=label, showlegend=newest, opacity=_opacity(age, len(curves)),
                line=dict(color=color, width=LATEST_WIDTH if newest else EARLIER_WIDTH, dash=dash),
                marker=dict(size=7, color=color), meta={"run": label, "step": int(c["step"]), "latest": newest},
                hovertemplate=f"{label}, step {c['step']}: %{{y:.1%}} at {AXIS_LABELS[c['axis']]} = %{{x}}"
                              "<extra></extra>"))
    ways = next((int(c["ways"]) for _, curves, _, _ in runs for c in reversed(curves) if c.get("ways")), None)
    xs = [v for _, curves, _, _ in runs for c in curves for v in c["x"]]
    if ways and xs:
        fig.add_trace(trace(go.Scatter,
            x=[min(xs), max(xs)], y=[1 / ways, 1 / ways], mode="lines", name=f"chance (1/{ways})",
            line=dict(color=MUTED, width=1.2, dash="dot"), hoverinfo="skip", meta={"chance": True}))
    what = f"{ways}-way" if ways else "fixed"
    finish(fig, title=title, uirevision=uirevision,
           subtitle=f"{what} validation tasks · latest bold, earlier fade",
           height=height, margin=dict(l=60, r=20, t=76, b=52))
    ticks = sorted(set(xs))
    fig.update_xaxes(title_text=AXIS_LABELS.get(axis, "inner steps or shots"), showgrid=False,
                     tickmode="array" if 0 < len(ticks) <= 12 else "auto", tickvals=ticks if 0 < len(ticks) <= 12 else None)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], tickformat=".0%")
    extra = bottom_legend(fig, sum(1 for t in fig.data if t.showlegend is not False), per_row=2)
    fig.update_layout(height=height or 320 + extra, hovermode="closest")
    if not runs:
        fig.add_annotation(text="the adaptation curve appears with the first validation", xref="paper",
                           yref="paper", x=0.5, y=0.5, showarrow=False, font=dict(size=14, color=MUTED), name="empty")
    return fig
