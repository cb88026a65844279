"""Confusion matrix: counts as text, colour = share of the true class's row (so rare classes
read as clearly as common ones). Each cell's customdata is (row, col): the app lists the images
of a clicked cell from its own data."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from engine.viz.charts.style import MUTED, finish

COLORSCALE = [[0.0, "#F7F9FC"], [0.15, "#D6E4F5"], [0.4, "#93B7E3"], [0.7, "#4A7FC4"], [1.0, "#1F3F7A"]]
MAX_TEXT_CLASSES = 30  # beyond this the counts would not fit their cells: hover only


def confusion_matrix(matrix, class_names, title: str | None = None, uirevision: str = "confusion",
                     height: int | None = None) -> go.Figure:
    """matrix (C, C) of counts, true classes in rows, predicted in columns."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square (classes, classes), got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.number) or np.issubdtype(m.dtype, np.complexfloating):
        raise ValueError(f"matrix must hold counts, got dtype {m.dtype}")
    if m.size and (not np.isfinite(m).all() or (m < 0).any() or (np.mod(m, 1) != 0).any()):
        raise ValueError("matrix must hold non-negative whole counts")
    names = [str(n) for n in class_names]
    c = m.shape[0]
    if len(names) != c:
        raise ValueError(f"class_names has {len(names)} names for a {c}x{c} matrix")
    if len(set(names)) != c:
        raise ValueError("class_names must be distinct (they label the axes)")
    m = m.astype(np.int64)
    rows = m.sum(1, keepdims=True)
    share = np.where(rows > 0, m / np.maximum(rows, 1), 0.0)
    rr, cc = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
    custom = np.stack([rr, cc, np.round(share * 100, 1)], -1)  # (C, C, 3): row, col, % of the row
    counts = m.astype(str)
    trace = dict(z=share, x=names, y=names, text=counts, customdata=custom, colorscale=COLORSCALE, zmin=0, zmax=1,
                 xgap=1, ygap=1, name="confusion",
                 hovertemplate="true <b>%{y}</b> predicted as <b>%{x}</b>: %{text} images"
                               " (%{customdata[2]}% of %{y})<extra></extra>",
                 colorbar=dict(title=dict(text="share of<br>true class", font=dict(size=11, color=MUTED)),
                               tickformat=".0%", thickness=12, len=0.8, outlinewidth=0))
    if c <= MAX_TEXT_CLASSES:
        trace.update(texttemplate="%{text}", textfont=dict(size=12 if c <= 12 else 9))
    fig = go.Figure(go.Heatmap(**trace))
    total, right = int(m.sum()), int(np.trace(m))
    acc = f"{right} of {total} right ({right / total:.1%})" if total else "no predictions"
    side = max(360, min(900, 140 + 34 * c))
    finish(fig, title=title or "Confusion matrix", uirevision=uirevision,
           subtitle=f"{acc} · rows: true class, columns: predicted · colour: share of the row",
           height=height or side, margin=dict(l=24, r=24, t=84, b=24))
    fig.update_xaxes(title_text="predicted class", type="category", side="bottom", showgrid=False, showline=False,
                     ticks="",
                     tickangle=-45 if c > 6 or max(map(len, names), default=0) > 10 else 0, constrain="domain")
    fig.update_yaxes(title_text="true class", type="category", autorange="reversed", showgrid=False, showline=False,
                     ticks="",
                     scaleanchor="x", scaleratio=1, constrain="domain")
    return fig
