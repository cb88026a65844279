"""Figures: pure functions from run data to plotly figures (no UI calls)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.decomposition import PCA

SPLIT_NAMES = {0: "meta-train", 1: "meta-test", 2: "external"}
SPLIT_SYMBOLS = {0: "circle", 1: "diamond", 2: "x"}


def training_curves(metrics: list[dict], title: str = "Training") -> go.Figure:
    """Meta and discrimination loss (left), their accuracies and validation accuracy with its
    95% CI band (right), against the step."""
    train = [m for m in metrics if m.get("kind") == "train"]
    val = [m for m in metrics if m.get("kind") == "val"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    steps = [m["step"] for m in train]
    for key, name, col in (("meta_loss", "meta loss", 1), ("disc_loss", "discrimination loss", 1),
                           ("meta_acc", "meta accuracy (train tasks)", 2), ("disc_acc", "discrimination accuracy", 2)):
        ys = [m.get(key) for m in train]
        if any(y is not None for y in ys):
            fig.add_trace(go.Scatter(x=steps, y=_smooth(ys), name=name, mode="lines"), row=1, col=col)
    if val:
        vx = [m["step"] for m in val]
        lo = [m["val_acc"] - m["val_ci95"] for m in val]
        hi = [m["val_acc"] + m["val_ci95"] for m in val]
        fig.add_trace(go.Scatter(x=vx + vx[::-1], y=hi + lo[::-1], fill="toself", line=dict(width=0),
                                 fillcolor="rgba(214,39,40,0.15)", hoverinfo="skip", showlegend=False), row=1, col=2)
        fig.add_trace(go.Scatter(x=vx, y=[m["val_acc"] for m in val], name="validation accuracy (95% CI)",
                                 mode="lines+markers", line=dict(color="rgb(214,39,40)")), row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(title=title, uirevision="training-curves", height=360, margin=dict(t=60, b=40, l=40, r=20),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def _smooth(values: list, window: int = 20) -> list:
    """Moving average that keeps gaps (None) as gaps; raw per-step values are too noisy to read."""
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    if len(arr) < window:
        return [None if np.isnan(v) else float(v) for v in arr]
    kernel = np.ones(window) / window
    out = np.convolve(np.nan_to_num(arr), kernel, mode="full")[: len(arr)]
    counts = np.convolve(~np.isnan(arr), kernel, mode="full")[: len(arr)]
    res = np.where(counts > 0, out / np.maximum(counts, 1e-9), np.nan)
    return [None if np.isnan(v) else float(v) for v in res]


def concept_map_pca(probe: dict, snapshot: dict, title: str = "Concept space (PCA)") -> go.Figure:
    """The probe images' concept vectors on their first two principal components, coloured by
    class, one marker symbol per split. probe/snapshot are as stored in a run's snapshots/."""
    z = snapshot["concepts"]  # (P, D)
    xy = PCA(n_components=2, random_state=0).fit_transform(z - z.mean(0))  # (P, 2)
    fig = go.Figure()
    for code, split in SPLIT_NAMES.items():
        mask = probe["split"] == code
        if not mask.any():
            continue
        names = probe["class_name"][mask]
        fig.add_trace(go.Scatter(
            x=xy[mask, 0], y=xy[mask, 1], mode="markers", name=split,
            marker=dict(symbol=SPLIT_SYMBOLS[code], size=9, color=probe["label"][mask] + 100 * code,
                        colorscale="Turbo", line=dict(width=0.5, color="white")),
            text=names, hovertemplate="%{text}<extra>" + split + "</extra>",
        ))
    fig.update_layout(title=f"{title}, step {int(snapshot['step'])}", uirevision="concept-map", height=480,
                      margin=dict(t=60, b=20, l=20, r=20), xaxis=dict(showticklabels=False),
                      yaxis=dict(showticklabels=False, scaleanchor="x"))
    return fig
