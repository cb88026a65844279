"""Home: what DEML is, a one-click demo, and the live view of a run."""
from __future__ import annotations

import streamlit as st

from engine.config import runs_root
from engine.errors import UserError
from engine.eval.twins import twin_dir_for
from engine.services.training import running_demo
from engine.services.training import start_demo as start_demo_pair
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

INTRO = (
    "**Deep meta-learning in concept space** (DEML, Zhou, Wu & Li 2018) learns to learn from a few "
    "examples by working on *concepts* instead of pixels. A **concept generator** turns images into "
    "concept vectors; a **meta-learner** learns from many small N-way K-shot tasks how to classify "
    "new classes from a handful of concepts; a **concept discriminator** is trained at the same "
    "time on an *external* labeled set, so the concepts also carry what those other classes teach. "
    "All three take one step together on `meta loss + λ · discrimination loss`; λ = 0 is the plain "
    "meta-learner it is compared against."
)


def start_demo(another: bool = False) -> None:
    """A button's callback (it runs before the page is drawn again, so the page draws the new run):
    the demo and its λ = 0 twin; a demo already training is shown instead unless `another`."""
    try:
        set_current_run(start_demo_pair(runs_root(), another=another))
    except UserError as e:
        st.session_state["_demo_refused"] = str(e)


def demo_buttons(shown: str | None) -> None:
    """Start demo; while a demo trains, the button shows it, and starting another is a second button."""
    running = running_demo()
    if running is None:
        st.button("Start demo", type="primary", key="start_demo", on_click=start_demo,
                  help="trains the demo preset on built-in glyphs, DEML and its λ = 0 twin side by side "
                       "(a few minutes on CPU)")
    elif running == shown:
        st.button("Start another demo", key="start_another_demo", on_click=start_demo, args=(True,),
                  help="a second demo run beside this one (the two share the CPU cores)")
    else:
        c1, c2 = st.columns(2)
        c1.button("Show the running demo", type="primary", key="start_demo", width="stretch",
                  on_click=set_current_run, args=(running,), help="a demo is training on this server: show it")
        c2.button("Start another demo", key="start_another_demo", width="stretch", on_click=start_demo,
                  args=(True,), help="a second demo run beside the one training (the two share the CPU cores)")
    if refused := st.session_state.pop("_demo_refused", None):
        st.error(refused)


if not show_presenter:
    st.title("Conceptscape")
run_dir = current_run()  # checks the link's ?run= first: one outside the runs folder is dropped, with a notice
if show_presenter and run_dir is None:
    st.title("Conceptscape")  # presenter view titles a run by its name (ui.live); with none, the app's
if not show_presenter:
    if run_dir is None:
        st.markdown(INTRO)
        st.graphviz_chart(DIAGRAM)
        demo_buttons(run_dir)
    else:  # a run is shown: the introduction folds away, beside the demo's buttons, so the live view is on screen
        intro, buttons = st.columns([3, 2], vertical_alignment="center")
        with intro.expander("What DEML is"):
            st.markdown(INTRO)
            st.graphviz_chart(DIAGRAM)
        with buttons:
            demo_buttons(run_dir)

live_view(run_dir, key="live", presenter=show_presenter,
          empty_hint="Press **Start demo** to train on built-in glyphs and watch concept space form.")

active = [j for j in REGISTRY.active() if j.run_dir not in (run_dir, run_dir and twin_dir_for(run_dir))]
if active and not show_presenter:
    st.subheader("Other runs in progress")
    for other in active:
        p = other.progress()
        st.write(f"`{other.run_dir}`: {p['state']}, step {p['step']}/{p['steps']}")
