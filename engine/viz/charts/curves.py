"""Curves against time or effort: training curves (loss and accuracy against the step, with the
lambda = 0 twin dashed) and adaptation curves (query accuracy against inner steps or shots).

metrics records are those of a run's metrics.jsonl:
  kind "train": step, meta_loss, meta_acc, disc_loss, disc_acc (None without a trained D), lr, seconds
  kind "val":   step, val_acc, val_ci95, seconds
An adaptation curve is what engine.eval.evaluate.adaptation_curve returns: axis "steps" | "shots",
steps [..], accuracy, accuracy_ci95, loss, loss_ci95 (one value per point), learner, ways, shots.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.records import train_records, val_records
from engine.viz.charts.style import (
    MUTED,
    bottom_legend,
    check_choice,
    figure,
    finish,
    palette,
    rgba,
    trace,
)

SERIES = {  # key -> (legend name, subplot column, colour): a colour per series, none shared
    "meta_loss": ("meta loss", 1, "#3F6FB5"),  # blue
    "disc_loss": ("discrimination loss", 1, "#8B5FBF"),  # violet
    "meta_acc": ("meta accuracy", 2, "#2A9D8F"),  # teal
    "disc_acc": ("discrimination accuracy", 2, "#E8871E"),  # orange
}
VAL_COLOR = "#D7301F"  # red
CHANCE_DASH = "dot"
# short: on a phone each panel is ~150 px wide, and "Loss (cross-entropy)" ran into "Accuracy"
LOSS_TITLE, ACC_TITLE = "Loss", "Accuracy"
DEFAULT_HEIGHT = 440  # the plot's own height, before the legend under it
TWIN = "λ = 0"
MAX_POINTS = 1500  # per drawn series; longer runs are thinned (smoothing sees every step)


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def smooth(values, window: int | None = None) -> np.ndarray:
    """Trailing moving average that skips gaps (NaN) and keeps them as gaps; the first points
    average what there is. window None: about 1/15 of the series, 1..50 steps."""
    arr = np.asarray([_num(v) for v in values], dtype=float)
    n = len(arr)
    if window is None:
        window = int(np.clip(n // 15, 1, 50))
    if n == 0 or window <= 1:
        return arr
    ok = ~np.isnan(arr)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, arr, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(1, n + 1)
    lo = np.maximum(idx - window, 0)
    total, count = csum[idx] - csum[lo], ccount[idx] - ccount[lo]
    out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    out[~ok] = np.nan
    return out


def _thin(n: int, most: int = MAX_POINTS) -> np.ndarray:
    return np.arange(n) if n <= most else np.unique(np.linspace(0, n - 1, most).round().astype(int))


def _check_metrics(metrics, name: str) -> tuple[list[dict], list[dict]]:
    if not isinstance(metrics, (list, tuple)):
        raise ValueError(f"{name} must be a list of metrics records (dicts), got {type(metrics).__name__}")
    for i, m in enumerate(metrics):
        if not isinstance(m, dict):
            raise ValueError(f"{name}[{i}] must be a dict, got {type(m).__name__}")
        if m.get("kind") in ("train", "val") and "step" not in m:
            raise ValueError(f"{name}[{i}] (kind {m.get('kind')!r}) has no 'step'")
    train = sorted(train_records(metrics), key=lambda m: m["step"])
    val = sorted(val_records(metrics), key=lambda m: m["step"])
    return train, val


def _band(x, mean, half, color: str, alpha: float, group: str) -> go.Scatter | None:
    """The CI band as one closed polygon (upper edge, then the lower edge reversed); points with
    no CI are left out."""
    x, mean, half = (np.asarray(v, dtype=float) for v in (x, mean, half))
    ok = np.isfinite(mean) & np.isfinite(half) & np.isfinite(x)
    if ok.sum() == 0:
        return None
    xs, lo, hi = x[ok], (mean - half)[ok], (mean + half)[ok]
    return trace(go.Scatter, x=np.concatenate([xs, xs[::-1]]), y=np.concatenate([hi, lo[::-1]]), fill="toself",
                      fillcolor=rgba(color, alpha), line=dict(width=0), mode="lines", hoverinfo="skip",
                      showlegend=False, legendgroup=group, name=f"{group} 95% CI")


def _add_run(fig: go.Figure, train: list[dict], val: list[dict], twin: bool, smooth_window,
             max_points: int = MAX_POINTS) -> None:
    suffix, dash = (f" ({TWIN})", "dash") if twin else ("", None)
    steps = np.asarray([m["step"] for m in train], dtype=float)
    keep = _thin(len(steps), max_points)
    for key, (name, col, color) in SERIES.items():
        raw = np.asarray([_num(m.get(key)) for m in train], dtype=float)
        if not np.isfinite(raw).any():
            continue
        group = "twin" if twin else name
        if not twin:  # the raw values, faint, behind (the twin's would only add noise)
            fig.add_trace(trace(go.Scatter, x=steps[keep], y=raw[keep], mode="lines", name=f"{group} (raw)",
                                     line=dict(color=rgba(color, 0.22), width=1), hoverinfo="skip",
                                     showlegend=False, legendgroup=group), row=1, col=col)
        fmt = ".1%" if col == 2 else ".3f"
        label = name + suffix
        fig.add_trace(trace(go.Scatter, x=steps[keep], y=smooth(raw, smooth_window)[keep], mode="lines", name=label,
                                 legendgroup=group, showlegend=not twin,
                                 line=dict(color=color, width=2.2 if not twin else 1.8, dash=dash),
                                 hovertemplate=f"{label}: %{{y:{fmt}}}<extra></extra>"), row=1, col=col)
    if val:
        vx = [m["step"] for m in val]
        vy = [_num(m.get("val_acc")) for m in val]
        vci = [_num(m.get("val_ci95")) for m in val]
        label = f"validation accuracy{suffix}"
        group = "twin" if twin else label
        band = _band(vx, vy, vci, VAL_COLOR, 0.08 if twin else 0.16, group)
        if band is not None:
            fig.add_trace(band, row=1, col=2)
        fig.add_trace(trace(go.Scatter,
            x=vx, y=vy, mode="lines+markers", name=f"validation accuracy ± 95% CI{suffix}", legendgroup=group,
            showlegend=not twin,
            line=dict(color=VAL_COLOR, width=2.4 if not twin else 1.8, dash=dash),
            marker=dict(size=6 if not twin else 5, symbol="circle" if not twin else "circle-open"),
            customdata=np.asarray(vci, dtype=float),
            hovertemplate=f"{label}: %{{y:.1%}} ± %{{customdata:.1%}}<extra></extra>"), row=1, col=2)
    if twin:  # one legend entry for all of the twin's curves (a click shows or hides them together)
        fig.add_trace(trace(go.Scatter, x=[None], y=[None], mode="lines", name=f"{TWIN} twin (dashed)", legendgroup="twin",
                                 line=dict(color=MUTED, width=1.8, dash=dash), hoverinfo="skip"), row=1, col=1)


def _count(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 2:
        raise ValueError(f"{name} must be a whole number of classes >= 2, got {value!r}")
    return int(value)


def _from_records(records: list[dict], key: str) -> int | None:
    """The last whole value >= 2 of `key` in the records (a run may record its ways there)."""
    for m in reversed(records):
        v = m.get(key)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and int(v) >= 2:
            return int(v)
    return None


def _chance(fig: go.Figure, level: float, name: str, color: str, x0: float, x1: float) -> None:
    """A dotted horizontal line at a chance accuracy over the steps drawn, in the accuracy panel."""
    fig.add_trace(trace(go.Scatter, x=[x0, x1], y=[level, level], mode="lines", name=name, legendgroup=name,
                             line=dict(color=rgba(color, 0.85), width=1.6, dash=CHANCE_DASH),
                             hoverinfo="skip"), row=1, col=2)


def training_curves(metrics, twin_metrics=None, title: str = "Training", uirevision: str = "training-curves",
                    smooth_window: int | None = None, height: int | None = None, ways: int | None = None,
                    external_classes: int | None = None, max_points: int = MAX_POINTS) -> go.Figure:
    """Loss (left) and accuracy (right) against the step: meta and discrimination loss/accuracy
    (moving average over the raw values drawn faintly behind) and validation accuracy with its
    95% CI band, each series its own colour. twin_metrics (the lambda = 0 twin's records) are
    overlaid dashed, "(λ = 0)" in the legend. Chance levels are dotted lines: 1/ways for meta and
    validation accuracy (`ways`, else a "ways" field of the records) and 1/external_classes for the
    discriminator (`external_classes`, else an "external_classes" field; drawn only with a D curve).
    `height`: the figure's height in pixels (default: DEFAULT_HEIGHT plus the legend). `max_points`:
    each series is thinned to at most this many steps (smoothing still sees every step)."""
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 2:
        raise ValueError(f"max_points must be a whole number >= 2, got {max_points!r}")
    train, val = _check_metrics(metrics, "metrics")
    ways = _count(ways, "ways") or _from_records(list(metrics), "ways")
    external_classes = _count(external_classes, "external_classes") or _from_records(list(metrics), "external_classes")
    fig = make_subplots(figure=figure(), rows=1, cols=2, subplot_titles=(LOSS_TITLE, ACC_TITLE), horizontal_spacing=0.1)
    _add_run(fig, train, val, twin=False, smooth_window=smooth_window, max_points=max_points)
    if twin_metrics is not None:
        ttrain, tval = _check_metrics(twin_metrics, "twin_metrics")
        _add_run(fig, ttrain, tval, twin=True, smooth_window=smooth_window, max_points=max_points)
    steps = [m["step"] for m in train + val]
    if steps:
        x0, x1 = 0.0, float(max(steps))
        if ways:
            _chance(fig, 1.0 / ways, f"chance, {ways}-way (1/{ways})", SERIES["meta_acc"][2], x0, x1)
        has_d = any(np.isfinite(_num(m.get("disc_acc"))) for m in train)
        if external_classes and has_d:
            _chance(fig, 1.0 / external_classes, f"D's chance (1/{external_classes} external classes)",
                    SERIES["disc_acc"][2], x0, x1)
    subtitle = "Smoothed (raw values pale) · validation: held-out tasks"  # short: the panel may be narrow
    notes = []
    if twin_metrics is not None:
        notes.append(f"dashed: the same run with {TWIN} (no D)")
    if any(t.line.dash == CHANCE_DASH for t in fig.data if t.line is not None):
        notes.append("dotted: chance")
    if notes:
        line = " · ".join(notes)
        subtitle += "<br>" + line[0].upper() + line[1:]
    lines = subtitle.count("<br>") + 1
    finish(fig, title=title, uirevision=uirevision, subtitle=subtitle, height=height,
           margin=dict(l=56, r=20, t=74 + 18 * lines, b=40), subtitle_shift=30)
    starts = {LOSS_TITLE: fig.layout.xaxis.domain[0], ACC_TITLE: fig.layout.xaxis2.domain[0]}
    for ann in fig.layout.annotations:  # subplot titles: over each panel's left edge, bold
        if ann.text in starts:
            ann.update(text=f"<b>{ann.text}</b>", x=starts[ann.text], xanchor="left", font=dict(size=14))
    fig.update_xaxes(title_text="training step", rangemode="tozero")
    # no y-axis titles: the panels' titles name them, and a title between narrow panels runs into the left one
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_layout(hovermode="x unified")
    extra = bottom_legend(fig, sum(1 for t in fig.data if t.showlegend is not False))
    fig.update_layout(height=height or DEFAULT_HEIGHT + extra)
    if not train and not val:
        fig.add_annotation(text="no training records yet", xref="paper", yref="paper", x=0.5, y=0.5,
                           showarrow=False, font=dict(size=14, color=MUTED), name="empty")
    return fig


AXIS_TITLES = {"steps": "inner gradient steps on the support set", "shots": "shots per class (K)"}
METRICS = {"accuracy": ("query accuracy", ".1%"), "loss": ("query loss (cross-entropy)", ".3f")}


def adaptation_curves(curves, metric: str = "accuracy", title: str | None = None,
                      uirevision: str = "adaptation", height: int | None = None) -> go.Figure:
    """Several runs / learners overlaid: `curves` = [(name, adaptation_curve dict), ...]; x = the
    curve's steps (inner steps or shots, never mixed), y = accuracy or loss with its 95% CI band.
    A name containing "λ = 0" or "vanilla" is drawn dashed."""
    check_choice(metric, "metric", tuple(METRICS))
    curves = list(curves) if curves is not None else []
    if not curves:
        raise ValueError("adaptation_curves needs at least one (name, curve) pair")
    axes = set()
    for i, item in enumerate(curves):
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[1], dict):
            raise ValueError(f"curves[{i}] must be a (name, curve dict) pair")
        name, c = item
        for k in ("axis", "steps", metric, f"{metric}_ci95"):
            if k not in c:
                raise ValueError(f"curve {name!r} has no {k!r} (expected engine.eval.evaluate.adaptation_curve's output)")
        check_choice(c["axis"], f"curve {name!r} axis", tuple(AXIS_TITLES))
        n = len(c["steps"])
        if n == 0 or len(c[metric]) != n or len(c[f"{metric}_ci95"]) != n:
            raise ValueError(f"curve {name!r}: steps, {metric} and {metric}_ci95 must have the same nonzero length, "
                             f"got {n}, {len(c[metric])}, {len(c[f'{metric}_ci95'])}")
        axes.add(c["axis"])
    if len(axes) > 1:
        raise ValueError("cannot overlay curves against inner steps with curves against shots; "
                         f"got axes {sorted(axes)} (gradient learners adapt by steps, metric learners by shots)")
    axis = axes.pop()
    ylabel, fmt = METRICS[metric]
    colors = palette(len(curves))
    fig = go.Figure()
    for (name, c), color in zip(curves, colors):
        x = np.asarray(c["steps"], dtype=float)
        y = np.asarray([_num(v) for v in c[metric]], dtype=float)
        ci = np.asarray([_num(v) for v in c[f"{metric}_ci95"]], dtype=float)
        band = _band(x, y, ci, color, 0.15, str(name))
        if band is not None:
            fig.add_trace(band)
        dashed = "λ = 0" in str(name) or "vanilla" in str(name).lower()
        single = len(x) == 1  # a band of one point has no width: show the interval as an error bar
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=str(name), legendgroup=str(name),
            line=dict(color=color, width=2.4, dash="dash" if dashed else None), marker=dict(size=7),
            error_y=dict(type="data", array=np.nan_to_num(ci), visible=True, color=color, thickness=1.5)
            if single else None,
            customdata=ci, hovertemplate=f"{name}: %{{y:{fmt}}} ± %{{customdata:{fmt}}}<extra></extra>"))
    first = curves[0][1]
    ways, shots = first.get("ways", "?"), first.get("shots", "?")
    what = f"{ways}-way {shots}-shot" if axis == "steps" else f"{ways}-way"
    default = f"Adaptation: {ylabel.split(' (')[0]} vs {'inner steps' if axis == 'steps' else 'shots'}"
    finish(fig, title=title or default, uirevision=uirevision,
           subtitle=f"{what} tasks on held-out classes · bands: 95% confidence interval over episodes",
           height=height, margin=dict(l=64, r=20, t=80, b=52))
    ticks = sorted({float(s) for _, c in curves for s in c["steps"]})
    fig.update_xaxes(title_text=AXIS_TITLES[axis], tickmode="array" if len(ticks) <= 12 else "auto",
                     tickvals=ticks if len(ticks) <= 12 else None, showgrid=False)
    yaxis = dict(title_text=ylabel, tickformat=".0%" if metric == "accuracy" else None)
    if metric == "accuracy":
        yaxis["range"] = [0, 1.02]
    else:
        yaxis["rangemode"] = "tozero"
    fig.update_yaxes(**yaxis)
    fig.update_layout(hovermode="x unified")
    extra = bottom_legend(fig, len(curves))
    fig.update_layout(height=height or 340 + extra)
    return fig
