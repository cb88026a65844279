"""Home: what DEML is, a one-click demo, and the live view of a run."""
from __future__ import annotations

import streamlit as st

from engine.config import preset, runs_root
from engine.errors import UserError
from engine.eval.twins import twin_dir_for
from engine.services.training import new_run_dir, start_runs
from engine.train.job import REGISTRY
from ui.common import current_run, presenter, set_current_run
from ui.live import live_view

show_presenter = presenter()


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
current_run()  # checks the link's ?run= first: one outside the runs folder is dropped, with a notice at the top
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

if st.button("Start demo", type="primary", key="start_demo",
             help="trains the demo preset on built-in glyphs (a few minutes on CPU)"):
    try:
        out = new_run_dir(runs_root(), "demo")
        start_runs(preset("demo"), out)
        set_current_run(out)
    except UserError as e:
        st.error(str(e))

run_dir = current_run()
live_view(run_dir, key="live", presenter=show_presenter,
          empty_hint="Press **Start demo** to train on built-in glyphs and watch concept space form.")

active = [j for j in REGISTRY.active() if j.run_dir not in (run_dir, run_dir and twin_dir_for(run_dir))]
if active:
    st.subheader("Other runs in progress")
    for other in active:
        p = other.progress()
        st.write(f"`{other.run_dir}`: {p['state']}, step {p['step']}/{p['steps']}")
