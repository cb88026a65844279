"""A self-contained HTML report of a run (python -m engine report RUN_DIR -o FILE.html): the
configuration, final metrics with 95% CIs, training curves, the replay of concept space with the
discriminator's regions, adaptation curves, and DEML against its lambda = 0 twin when there is one.
plotly.js is embedded once, so the file opens offline and can be sent as it is."""
from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path

import numpy as np

from engine.errors import UserError
from engine.eval.evaluate import recorded_or_new
from engine.eval.twins import find_twin, run_label
from engine.records import val_records
from engine.runs import RunDir
from engine.viz.charts import adaptation_curves, replay, training_curves
from engine.viz.live import LiveMap
from engine.viz.project import start_umap_warmup, wait_for_umap
from engine.viz.regions import normalise_frame

MAX_REPLAY_FRAMES = 40  # evenly chosen snapshots (first and last kept): the file stays a few MB


def replay_frames(run: RunDir, method: str = "umap", seed: int = 0):
    """(frames [(step, xy)], regions per frame, probe, snapshots, method used, skipped) of up to
    MAX_REPLAY_FRAMES snapshots, laid out by the app's own replay (LiveMap.frame_at: backwards from
    the latest snapshot on one stable map), each frame centred and scaled for a fixed-axis animation.
    Damaged snapshots are left out, one line each in `skipped`; a damaged probe leaves no frames."""
    try:
        probe = run.load_probe()
    except UserError as e:
        return [], [], None, [], method, [str(e)]
    steps = run.snapshot_steps()
    if len(steps) > MAX_REPLAY_FRAMES:  # chosen before loading: a long run holds thousands of snapshots
        keep = np.unique(np.linspace(0, len(steps) - 1, MAX_REPLAY_FRAMES).round().astype(int))
        steps = [steps[i] for i in keep]
    snapshots, skipped = run.load_snapshots(steps, rows=len(probe["images"]))
    steps = [int(s["step"]) for s in snapshots]
    live = LiveMap(seed=seed, warm_up=False, threads=None)
    frames, regions = [], []
    for step in steps:
        xy, grid, _ = live.frame_at(snapshots, probe, step, method=method, regions=True)
        xy, grid = normalise_frame(xy, grid)
        frames.append((int(step), xy))
        regions.append(grid)
    return frames, regions, probe, snapshots, live.method_shown("", method) or method, skipped


def _acc(rec: dict | None, acc_key: str = "accuracy", ci_key: str = "ci95") -> str:
    if not rec or rec.get(acc_key) is None:
        return "–"
    ci = rec.get(ci_key)
    return f"<b>{rec[acc_key]:.3f}</b>" + (f" ± {ci:.3f}" if ci is not None else "")


def build_report(run_dir: str, out: str, twin: str | None = "auto", method: str = "umap", episodes: int = 300,
                 curve_episodes: int = 100, progress=None) -> dict:
    say = progress or (lambda msg: None)
    run = RunDir.open(run_dir)
    cfg = run.train_config().to_dict()
    if method == "umap":
        start_umap_warmup()
        if not wait_for_umap(timeout=120):
            method = "pca"  # numba could not compile in time: a PCA replay is still faithful
    twin_dir = find_twin(run) if twin == "auto" else twin
    twin_run = RunDir.open(twin_dir) if twin_dir else None
    twin_cfg = twin_run.train_config().to_dict() if twin_run else None

    say("evaluating on the meta-test classes")
    test = recorded_or_new(run, "evaluate", episodes)
    curve = recorded_or_new(run, "curve", curve_episodes)
    twin_test = recorded_or_new(twin_run, "evaluate", episodes) if twin_run else None
    twin_curve = recorded_or_new(twin_run, "curve", curve_episodes) if twin_run else None

    say("laying out the replay")
    metrics = run.read_metrics()
    twin_metrics = twin_run.read_metrics() if twin_run else None
    frames, regions, probe, snapshots, shown, skipped = replay_frames(run, method)
    for line in skipped:
        say(f"warning: left out of the replay: {line}")

    def label(c):
        return run_label(c["learner"], c["lam"])

    figures = [
        ("Training", "Losses and accuracies per step (smoothed); validation accuracy on fixed episodes "
                     "of held-out classes with its 95% confidence band.",
         training_curves(metrics, twin_metrics, title=f"Training: {label(cfg)}")),
        ("How concept space formed", f"Concept vectors of a fixed set of probe images at each snapshot, laid "
                                     f"out by {shown.upper()} so that points glide between frames; "
                                     "the background is the concept discriminator's decision regions. "
                                     "Press play or drag the slider.",
         replay(frames, probe, snapshots, color_by="class", regions=regions, title="Concept space over training")
         if frames else None),
        ("Adaptation to new tasks", "Query accuracy on new tasks from the meta-test classes, with 95% confidence "
                                    "bands, against " + ("inner gradient steps" if curve["axis"] == "steps"
                                                         else "the number of shots") + ".",
         adaptation_curves([(label(cfg), curve)] + ([(label(twin_cfg), twin_curve)] if twin_run else []),
                           title="Adaptation curves")),
    ]
    last_val = next(reversed(val_records(metrics)), None)
    twin_val = next(reversed(val_records(twin_metrics)), None) if twin_run else None
    task = f"{cfg['ways']}-way {cfg['shots']}-shot"
    rows = [
        (f"meta-test accuracy, {task} ({test['episodes']} episodes)", _acc(test), _acc(twin_test)),
        ("meta-validation accuracy (last)", _acc(last_val, "val_acc", "val_ci95"),
         _acc(twin_val, "val_acc", "val_ci95")),
        ("training steps", str(cfg["steps"]), str(twin_cfg["steps"]) if twin_run else ""),
    ]
    names = [label(cfg)] + ([label(twin_cfg)] if twin_run else [])
    table = "<tr><th></th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>" + "".join(
        f"<tr><th>{html.escape(name)}</th><td>{mine}</td>" + (f"<td>{theirs}</td>" if twin_run else "") + "</tr>"
        for name, mine, theirs in rows)
    sections = []
    for i, (title, caption, fig) in enumerate(figures):
        if fig is None:  # no snapshot could be read: say why instead of the replay
            caption = "No replay: " + ("; ".join(skipped) if skipped else "the run has no snapshots yet") + "."
            sections.append(f"<section><h2>{title}</h2><p class='cap'>{html.escape(caption)}</p></section>")
            continue
        if skipped and fig is figures[1][2]:
            caption += f" {len(skipped)} damaged snapshot(s) left out: " + html.escape("; ".join(skipped))
        body = fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        sections.append(f"<section><h2>{title}</h2><p class='cap'>{caption}</p>{body}</section>")
    config_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in cfg.items())
    page = TEMPLATE.format(
        title=html.escape(f"Conceptscape report: {Path(run_dir).name}"),
        generated=datetime.now().strftime("%Y-%m-%d %H:%M"),
        subtitle=html.escape(f"{label(cfg)} on {cfg['dataset']} · {task} · {cfg['backbone']} generator"),
        results=table,
        twin_note=("" if twin_run else "<p class='cap'>No λ = 0 twin of this run was found beside it; start one "
                                       "with the same settings and <code>--lam 0</code> to compare.</p>"),
        sections="".join(sections),
        config=config_rows,
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(page, encoding="utf-8")
    return {"report": str(out), "run_dir": str(run_dir), "twin": str(twin_dir) if twin_dir else None,
            "frames": len(frames), "method": shown, "test_accuracy": test["accuracy"],
            "test_ci95": test["ci95"], "bytes": Path(out).stat().st_size}


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2a37; margin: 0;
       background: #f6f8fb; }}
header {{ background: #17324d; color: white; padding: 28px 40px 20px; }}
header h1 {{ margin: 0 0 6px; font-weight: 600; }}
header p {{ margin: 0; opacity: .85; }}
main {{ max-width: 1180px; margin: 0 auto; padding: 10px 40px 40px; }}
section {{ background: white; border-radius: 10px; padding: 18px 22px; margin: 22px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }}
h2 {{ margin: 0 0 4px; font-size: 1.25em; }}
.cap {{ color: #52606d; margin: 0 0 10px; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: 6px 14px; border-bottom: 1px solid #e4e7eb; vertical-align: top; }}
details summary {{ cursor: pointer; font-weight: 600; }}
</style></head>
<body>
<header><h1>{title}</h1><p>{subtitle}</p><p>Generated {generated} by Conceptscape.</p></header>
<main>
<section><h2>Results</h2>
<p class="cap">Accuracy is the mean over many few-shot tasks drawn from classes never used in training;
± is the half-width of its 95% confidence interval. λ weighs the concept discriminator's loss: DEML
(λ &gt; 0) trains it jointly; λ = 0 is the plain meta-learner it is compared with.</p>
<table>{results}</table>{twin_note}</section>
{sections}
<section><details><summary>Configuration (everything needed to rebuild the run)</summary>
<table>{config}</table></details></section>
<section><h2>What is DEML?</h2><p class="cap">Deep meta-learning in concept space (Zhou, Wu &amp; Li 2018):
a concept generator turns images into concept vectors; a meta-learner learns from many small tasks how to
classify new classes from a handful of concepts; a concept discriminator, trained at the same time on an
external labeled set, makes the concepts carry what those other classes teach. One optimizer step per
iteration on meta loss + λ · discrimination loss.</p></section>
</main></body></html>
"""
