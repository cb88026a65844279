"""Several runs side by side, for the Runs page: which runs it compares first (never two datasets),
a table of their results, what differs between them that the numbers do not show, and their
training curves overlaid. Nothing here imports streamlit."""
from __future__ import annotations

import os

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.records import train_records, val_records
from engine.runs import RunDir
from engine.services.catalog import RunSummary, fmt_acc


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    from engine.viz.charts import smooth
    return smooth(values, window)


def default_comparison(runs: list[RunSummary], current: str | None, twin: str | None = None) -> list[str]:
    """The runs compared when the page opens: the current run and its λ = 0 `twin` (when both are
    in `runs`), else the newest run with the next newest of the same dataset. Never two datasets."""
    readable = [r for r in runs if r.readable]
    first = next((r for r in readable if current and os.path.realpath(r.path) == os.path.realpath(current)),
                 readable[0] if readable else None)
    if first is None:
        return []
    others = [r for r in readable if r is not first and r.dataset == first.dataset]
    paired = next((r for r in others if twin and os.path.realpath(r.path) == os.path.realpath(twin)), None)
    if paired is None and current is None:
        paired = others[0] if others else None
    return [first.path] + ([paired.path] if paired is not None else [])


def comparison_notes(runs: list[RunSummary]) -> list[str]:
    """What differs between compared runs that their numbers do not show: datasets, tasks, and the
    episodes behind each accuracy (a table never mixes episode counts without saying so)."""
    notes = []

    def differ(values, what: str) -> None:
        shown = sorted({str(v) for v in values if v is not None})
        if len(shown) > 1:
            notes.append(f"{what}: {', '.join(shown)}")

    differ([r.dataset for r in runs], "different datasets, so the accuracies are not comparable")
    differ([f"{r.ways}-way {r.shots}-shot" for r in runs if r.ways], "different tasks")
    differ([(r.config or {}).get("val_episodes") for r in runs],
           "validation accuracies over different numbers of episodes")
    differ([(r.test or {}).get("episodes") for r in runs if r.test], "test accuracies over different numbers of episodes")
    return notes


def comparison_table(runs: list[RunSummary]) -> list[dict]:
    """Results of several runs side by side, accuracies with their 95% CIs and the episodes behind
    them (comparison_notes says when those differ)."""
    rows = []
    for s in runs:
        test = s.test or {}
        rows.append({
            "run": s.shown_name, "method": s.method, "dataset": s.dataset,
            "task": f"{s.ways}-way {s.shots}-shot" if s.ways else None,
            "steps": f"{s.steps_done}/{s.steps_total}" if s.steps_total else None,
            "validation accuracy (last)": fmt_acc(s.val_acc, s.val_ci95),
            "validation episodes": (s.config or {}).get("val_episodes"),
            "test accuracy": fmt_acc(test.get("accuracy"), test.get("ci95")),
            "test episodes": test.get("episodes"),
            "test task": f"{test.get('ways')}-way {test.get('shots')}-shot" if test else None,
        })
    return rows


def comparison_curves(runs: list[RunSummary], title: str = "Training curves") -> go.Figure:
    """Several runs overlaid: smoothed meta loss (left) and validation accuracy with its 95%
    band (right) against the training step, one colour per run (λ = 0 runs dashed)."""
    from engine.viz.charts.style import finish, palette, rgba

    if not runs:
        raise ValueError("comparison_curves needs at least one run")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("meta loss (smoothed)", "validation accuracy"),
                        horizontal_spacing=0.09)
    colors = palette(len(runs))
    for s, color in zip(runs, colors):
        metrics = RunDir(s.path).read_metrics()
        train = sorted(train_records(metrics), key=lambda m: m["step"])
        val = sorted(val_records(metrics), key=lambda m: m["step"])
        dash = "dash" if s.lam == 0 else None
        name = f"{s.shown_name} ({s.method})"
        if train:
            x = np.asarray([m["step"] for m in train], dtype=float)
            y = np.asarray([m.get("meta_loss") if m.get("meta_loss") is not None else np.nan for m in train], float)
            y = _smooth(y, int(np.clip(len(y) // 15, 1, 50)))
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, legendgroup=name,
                                     line=dict(color=color, width=2, dash=dash),
                                     hovertemplate=f"{s.shown_name}: %{{y:.3f}} at step %{{x}}<extra></extra>"), 1, 1)
        if val:
            x = np.asarray([m["step"] for m in val], dtype=float)
            y = np.asarray([m.get("val_acc") if m.get("val_acc") is not None else np.nan for m in val], float)
            ci = np.asarray([m.get("val_ci95") if m.get("val_ci95") is not None else 0.0 for m in val], float)
            if len(x) > 1:
                fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([y + ci, (y - ci)[::-1]]),
                                         mode="lines", fill="toself", fillcolor=rgba(color, 0.14), line=dict(width=0),
                                         hoverinfo="skip", showlegend=False, legendgroup=name), 1, 2)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, legendgroup=name, showlegend=not train,
                                     line=dict(color=color, width=2, dash=dash), marker=dict(size=6),
                                     customdata=ci,
                                     hovertemplate=f"{s.shown_name}: %{{y:.1%}} ± %{{customdata:.1%}} at step %{{x}}"
                                                   "<extra></extra>"), 1, 2)
    finish(fig, title=title, uirevision="runs-compare", subtitle="bands: 95% confidence interval of validation "
           "accuracy · dashed: λ = 0", height=440, subtitle_shift=34, margin=dict(l=60, r=20, t=110, b=110))
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02], row=1, col=2)
    fig.update_layout(legend=dict(orientation="h", y=-0.22, x=0))
    return fig
