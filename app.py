"""Conceptscape home: what DEML is, a one-click demo, and the live view of a run."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import streamlit as st

from engine.charts import concept_map_pca, training_curves
from engine.config import preset
from engine.errors import UserError
from engine.job import REGISTRY, TrainingJob
from engine.runs import RunDir

st.set_page_config(page_title="Conceptscape", layout="wide")


DIAGRAM = """digraph {
  rankdir=LR; node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica"];
  img [label="images\\n(few-shot tasks)"]; ext [label="external labeled\\nimages"];
  G [label="concept generator G\\n(CNN)", fillcolor="#d7e6fb"];
  M [label="meta-learner M\\n(ProtoNet, MAML, ...)"]; D [label="concept discriminator D"];
  img -> G; ext -> G; G -> M [label="concepts"]; G -> D [label="concepts"];
  M -> L [label="meta loss"]; D -> L [label="λ · discrimination loss"];
  L [label="one optimizer step\\nover G, D and M", shape=ellipse, fillcolor="#fdf1dc"];
}"""

st.title("Conceptscape")
st.markdown(
    "**Deep meta-learning in concept space** (DEML, Zhou, Wu & Li 2018) learns to learn from a few "
    "examples by working on *concepts* instead of pixels. A **concept generator** turns images into "
    "concept vectors; a **meta-learner** learns from many small N-way K-shot tasks how to classify "
    "new classes from a handful of concepts; a **concept discriminator** is trained at the same "
    "time on an *external* labeled set, so the concepts also carry what those other classes teach. "
    "All three take one step together on `meta loss + λ · discrimination loss`; λ = 0 is the plain "
    "meta-learner it is compared against."
)
st.graphviz_chart(DIAGRAM)

if st.button("Start demo", type="primary", help="trains the demo preset on built-in glyphs (a few minutes on CPU)"):
    out = f"runs/{datetime.now():%Y%m%d-%H%M%S}-demo"
    try:
        REGISTRY.start(TrainingJob(preset("demo"), out=out))
        st.query_params["run"] = out
    except UserError as e:
        st.error(str(e))

run_dir = st.query_params.get("run")
job = REGISTRY.get(run_dir)
polling = job is not None and not job.done


@st.fragment(run_every=1.0 if polling else None)
def live_view() -> None:
    job = REGISTRY.get(run_dir)
    if job is not None:
        p = job.progress()
        eta = f", about {p['eta_seconds']:.0f} s left" if p["eta_seconds"] is not None else ""
        st.progress(p["fraction"], text=f"{run_dir}: {p['state']}, step {p['step']}/{p['steps']}{eta}")
        if job.error:
            st.error(job.error)
        if job.trainer is not None:
            st.caption(f"training on {job.trainer.device.type.upper()}")
        cols = st.columns(3)
        cols[0].button("Pause", on_click=job.pause, disabled=job.state != "running")
        cols[1].button("Resume", on_click=job.resume, disabled=job.state != "paused")
        cols[2].button("Stop", on_click=job.stop, disabled=job.done)
        metrics, snapshots = job.metrics(), job.snapshots()
        if polling and job.done:  # one full rerun of the page turns the polling off
            st.rerun(scope="app")
    elif run_dir and (Path(run_dir) / "config.json").is_file():
        run = RunDir(run_dir)
        metrics = run.read_metrics()
        steps = run.snapshot_steps()
        snapshots = [run.load_snapshot(steps[-1])] if steps else []
        st.info(f"{run_dir}: saved run, {metrics[-1]['step'] if metrics else 0} steps")
    else:
        st.caption("Press **Start demo** to train on built-in glyphs and watch concept space form.")
        return
    left, right = st.columns([3, 2])
    if metrics:
        left.plotly_chart(training_curves(metrics), key="curves", width="stretch", theme=None)
    probe_file = Path(run_dir) / "snapshots" / "probe.npz"
    if snapshots and probe_file.is_file():
        right.plotly_chart(concept_map_pca(RunDir(run_dir).load_probe(), snapshots[-1]), key="map",
                           width="stretch", theme=None)


live_view()

active = [j for j in REGISTRY.active() if j.run_dir != run_dir]
if active:
    st.subheader("Other runs in progress")
    for other in active:
        p = other.progress()
        st.write(f"`{other.run_dir}`: {p['state']}, step {p['step']}/{p['steps']}")
