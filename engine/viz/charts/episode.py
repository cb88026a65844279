"""One N-way K-shot task in concept space: the support images, the queries (ringed green where
the learner answers right, red where wrong), the prototypes of a metric learner and, for a
gradient learner, a slider over its inner steps that recolours the queries.

`detail` is an engine.viz.episode.EpisodeDetail (its fields are documented there); queries whose
label was not given (query_known False) are ringed grey and left out of the accuracy line.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from engine.viz.charts.style import (
    CORRECT,
    MAP_MARGIN,
    MUTED,
    TEXT,
    WRONG,
    as_points,
    as_vector,
    check_regions,
    finish,
    map_axes,
    note,
    palette,
    region_heatmap,
    region_note,
)

REQUIRED = ("support_xy", "support_labels", "query_xy", "query_labels", "query_pred", "class_names")


def _check(detail) -> dict:
    if not isinstance(detail, dict):
        raise ValueError(f"detail must be a dict (see engine.viz.charts.episode), got {type(detail).__name__}")
    missing = [k for k in REQUIRED if k not in detail]
    if missing:
        raise ValueError(f"episode detail is missing {', '.join(missing)}")
    names = [str(n) for n in detail["class_names"]]
    n = len(names)
    if n == 0:
        raise ValueError("episode detail has no classes (class_names is empty)")
    sxy = as_points(detail["support_xy"], "support_xy")
    slab = as_vector(detail["support_labels"], "support_labels", len(sxy), integer=True)
    qxy = as_points(detail["query_xy"], "query_xy")
    qlab = as_vector(detail["query_labels"], "query_labels", len(qxy), integer=True)
    qpred = as_vector(detail["query_pred"], "query_pred", len(qxy), integer=True)
    for key, arr in (("support_labels", slab), ("query_labels", qlab), ("query_pred", qpred)):
        if len(arr) and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"{key} must index class_names (0..{n - 1}), got values in [{arr.min()}, {arr.max()}]")
    out = dict(names=names, sxy=sxy, slab=slab, qxy=qxy, qlab=qlab, qpred=qpred, protos=None, steps=None,
               regions=detail.get("regions"))
    if detail.get("prototypes_xy") is not None:
        out["protos"] = as_points(detail["prototypes_xy"], "prototypes_xy", n)
    if detail.get("steps_pred") is not None:
        steps = np.asarray(detail["steps_pred"])
        if steps.ndim != 2 or steps.shape[1] != len(qxy) or steps.shape[0] < 1:
            raise ValueError(f"steps_pred must have shape (inner steps + 1, queries) = (S+1, {len(qxy)}), "
                             f"got {steps.shape}")
        if not np.issubdtype(steps.dtype, np.integer) or (steps.size and (steps.min() < 0 or steps.max() >= n)):
            raise ValueError(f"steps_pred must hold class indices 0..{n - 1}")
        out["steps"] = steps.astype(np.int64)
    if out["regions"] is not None:
        check_regions(out["regions"])
    for key, rows in (("support_images", len(sxy)), ("query_images", len(qxy))):
        out[key] = (as_vector(detail[key], key, rows) if detail.get(key) is not None else None)
    return out


def _query_traces(d: dict, pred: np.ndarray, colors: list[str]) -> list[go.Scattergl]:
    """Two traces, right and wrong, so the legend explains the rings."""
    names = np.asarray(d["names"], dtype=object)
    qlab, qxy = d["qlab"], d["qxy"]
    right = pred == qlab
    traces = []
    for ok, label, ring in ((True, "query, answered right", CORRECT), (False, "query, answered wrong", WRONG)):
        rows = np.flatnonzero(right == ok)
        custom = np.empty((len(rows), 4), dtype=object)
        custom[:, 0] = rows
        custom[:, 1] = names[qlab[rows]]
        custom[:, 2] = names[pred[rows]]
        custom[:, 3] = d["query_images"][rows] if d["query_images"] is not None else rows
        traces.append(go.Scattergl(
            x=qxy[rows, 0], y=qxy[rows, 1], mode="markers", name=label, legendgroup=label, legendrank=900 + ok,
            marker=dict(symbol="circle", size=11, color=[colors[c] for c in qlab[rows]],
                        line=dict(width=2.6, color=ring)),
            customdata=custom,
            hovertemplate="query: <b>%{customdata[1]}</b><br>answered: %{customdata[2]}"
                          + (" ✓" if ok else " ✗") + "<br>image %{customdata[3]}<extra></extra>"))
    return traces


def _accuracy(pred: np.ndarray, truth: np.ndarray) -> str:
    right = int((pred == truth).sum())
    return f"{right}/{len(truth)} queries right ({right / max(len(truth), 1):.0%})"


def episode_view(detail: dict, title: str | None = None, uirevision: str = "episode", height: int = 560) -> go.Figure:
    """One task in concept space (see the module docstring for `detail`)."""
    d = _check(detail)
    n = len(d["names"])
    colors = palette(n)
    names = d["names"]
    fig = go.Figure()
    learner = str(detail.get("learner") or "learner")
    if d["regions"] is not None:
        fig.add_trace(region_heatmap(d["regions"], lambda c: colors[c] if c < n else "#B9BEC7",
                                     label=f"{learner} answers"))
    for c in range(n):  # support: a large square per image, one trace per class (the legend lists the classes)
        rows = np.flatnonzero(d["slab"] == c)
        custom = np.empty((len(rows), 3), dtype=object)
        custom[:, 0] = rows
        custom[:, 1] = names[c]
        custom[:, 2] = d["support_images"][rows] if d["support_images"] is not None else rows
        fig.add_trace(go.Scattergl(
            x=d["sxy"][rows, 0], y=d["sxy"][rows, 1], mode="markers", name=names[c], legendgroup=f"class {c}",
            marker=dict(symbol="square", size=16, color=colors[c], line=dict(width=1.5, color="white")),
            customdata=custom,
            hovertemplate="support: <b>%{customdata[1]}</b><br>image %{customdata[2]}<extra></extra>"))
    if d["protos"] is not None:
        fig.add_trace(go.Scattergl(
            x=d["protos"][:, 0], y=d["protos"][:, 1], mode="markers", name="prototype (class mean)",
            legendrank=899, marker=dict(symbol="star", size=24, color=colors, line=dict(width=1.5, color=TEXT)),
            customdata=np.asarray([[c, names[c]] for c in range(n)], dtype=object),
            hovertemplate="prototype of <b>%{customdata[1]}</b><extra></extra>"))
    steps = d["steps"]
    pred = steps[-1] if steps is not None else d["qpred"]
    first_query = len(fig.data)
    fig.add_traces(_query_traces(d, pred, colors))
    ways = n
    shots = len(d["sxy"]) // n if n else 0
    shapes = ["Squares: support images", "stars: prototypes", "circles: queries"]
    if d["protos"] is None:
        shapes.remove("stars: prototypes")
    rings = (f"Rings: <span style='color:{CORRECT}'><b>green</b></span> = answered right, "
             f"<span style='color:{WRONG}'><b>red</b></span> = wrong; fill = true class")
    # the last line is the accuracy: the inner-step frames rewrite it
    subtitle = " · ".join(shapes) + "<br>" + rings + "<br>" + _accuracy(pred, d["qlab"]) + (
        f" after {len(steps) - 1} inner steps" if steps is not None else "")
    finish(fig, title=title or f"One {ways}-way {shots}-shot task in concept space ({learner})",
           uirevision=uirevision, subtitle=subtitle, height=height, margin={**MAP_MARGIN, "t": 118, "r": 8})
    map_axes(fig)
    if d["regions"] is not None:
        what = f"what the {learner} answers there" + (f" after {len(steps) - 1} steps" if steps is not None else "")
        fig.add_annotation(note(region_note(d["regions"], what), x=0.005, y=0.005,
                                yanchor="bottom", yshift=0, size=11, name="regions", bgcolor="rgba(255,255,255,0.8)"))
    fig.update_layout(legend=dict(orientation="v", x=1.01, xanchor="left", y=1.0, yanchor="top"),
                      hovermode="closest")
    if steps is not None:
        _add_step_slider(fig, d, steps, colors, first_query)
    return _mark_unlabelled(fig, detail)


def _add_step_slider(fig: go.Figure, d: dict, steps: np.ndarray, colors: list[str], first_query: int) -> None:
    """A frame per inner step, recolouring the queries; the slider opens on the last step."""
    base = [a.to_plotly_json() for a in fig.layout.annotations]
    last = len(steps) - 1

    def notes(k: int) -> list[dict]:  # frames replace layout.annotations whole: all of them, subtitle updated
        out = [dict(a) for a in base]
        for a in out:
            if a.get("name") == "subtitle":
                a["text"] = a["text"].rsplit("<br>", 1)[0] + "<br>" + _accuracy(steps[k], d["qlab"]) + (
                    " before any inner step" if k == 0 else f" after {k} inner step{'s' if k > 1 else ''}")
        return out

    fig.frames = [go.Frame(name=str(k), data=_query_traces(d, steps[k], colors), traces=[first_query, first_query + 1],
                           layout=dict(annotations=notes(k))) for k in range(len(steps))]
    fig.update_layout(
        sliders=[dict(active=last, x=0.0, len=1.0, y=-0.01, yanchor="top", pad=dict(t=6, b=4),
                      currentvalue=dict(prefix="inner steps taken: ", font=dict(size=13, color=MUTED)),
                      tickcolor="#C9CED6", font=dict(size=11, color=MUTED),
                      steps=[dict(label=str(k), method="animate",
                                  args=[[str(k)], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                       transition=dict(duration=0))]) for k in range(len(steps))])],
        margin=dict(b=84))


NO_LABEL_RING = "#9AA1AC"


def _mark_unlabelled(fig: go.Figure, detail: dict) -> go.Figure:
    """Queries whose class is unknown (detail["query_known"] False): a grey ring, "(no label)" in
    the hover, and left out of the accuracy line."""
    known = np.asarray(detail.get("query_known", np.ones(len(detail["query_xy"]), bool)), bool)
    if known.all():
        return fig
    for trace in fig.data:
        if not str(trace.name or "").startswith("query, answered") or trace.customdata is None:
            continue
        rows = np.asarray([int(r[0]) for r in trace.customdata])
        if not len(rows):
            continue
        unknown = ~known[rows]
        if not unknown.any():
            continue
        base = trace.marker.line.color
        trace.marker.line.color = [NO_LABEL_RING if u else base for u in unknown]
        custom = np.asarray(trace.customdata, dtype=object).copy()
        custom[unknown, 1] = "(no label)"
        trace.customdata = custom
        trace.hovertemplate = ("query: <b>%{customdata[1]}</b><br>answered: %{customdata[2]}"
                               "<br>image %{customdata[3]}<extra></extra>")
        if unknown.all():
            trace.name = "query without a label (fill = the answer)"
    for trace in fig.data:  # an empty right/wrong trace would only clutter the legend
        if str(trace.name or "").startswith("query, answered") and not len(trace.x if trace.x is not None else []):
            trace.showlegend = False
    right = int(((np.asarray(detail["query_pred"]) == np.asarray(detail["query_labels"])) & known).sum())
    line = (f"{right}/{int(known.sum())} labelled queries right" if known.any() else "no query is labelled") + \
        f" · {int((~known).sum())} without a label: grey ring, filled with the learner's answer"
    for a in fig.layout.annotations:
        if a.name == "subtitle":
            a.text = a.text.rsplit("<br>", 1)[0] + "<br>" + line
    return fig
