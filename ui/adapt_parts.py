"""Pieces of the Adapt page: its settings kept across pages, how far its answers can be trusted,
the webcam preview and the model download."""
from __future__ import annotations

from urllib.parse import urlparse

import numpy as np
import streamlit as st

from engine.errors import UserError
from engine.eval.calibration import Calibration
from engine.services import adapt
from engine.services.export import export_task, representation

SHAPE_KEYS = ("adapt_ways", "adapt_shots", "adapt_queries", "adapt_steps")  # per run
PAGE_KEYS = ("adapt_source", "adapt_seed", "adapt_episodes", "adapt_n_classes")  # for every run
NONE_OF_THESE = "none of these"


def restore_settings(run_dir: str, defaults: dict) -> None:
    """Put back the page's settings that Streamlit dropped while another page was open (widget values
    live only while their widget is on screen): the task shape chosen for this run, else the run's own
    (`defaults`), and the page's other choices."""
    kept = st.session_state.setdefault("adapt_kept", {"runs": {}, "page": {}})
    shape = kept["runs"].get(run_dir, defaults)
    for key in SHAPE_KEYS:
        if key not in st.session_state or st.session_state.get("adapt_shape_for") != run_dir:
            st.session_state[key] = shape.get(key, defaults[key])
    st.session_state["adapt_shape_for"] = run_dir
    for key, value in kept["page"].items():
        st.session_state.setdefault(key, value)


def save_settings(run_dir: str) -> None:
    kept = st.session_state["adapt_kept"]
    kept["runs"][run_dir] = {k: st.session_state[k] for k in SHAPE_KEYS if k in st.session_state}
    kept["page"].update({k: st.session_state[k] for k in PAGE_KEYS if k in st.session_state})


def answer_text(result: dict, names: list[str], i: int) -> str:
    """A query's answer: its class and calibrated confidence, or "none of these" with its closest class."""
    p = int(result["pred"][i])
    if result["unknown"][i]:
        return f"{NONE_OF_THESE} (closest: {names[p]})"
    return f"{names[p]} · {result['confidence'][i]:.0%}"


def trust_note(cal: Calibration | None, why: str | None) -> None:
    """How the confidences were calibrated and when the page answers "none of these"."""
    if cal is None:
        st.caption(f"Confidences are the learner's raw softmax and every query gets a class: {why}")
        return
    t = f"divided by a temperature of {cal.temperature:.3g}" if cal.temperature != 1 else "left as they are (a temperature did not help)"
    st.caption(f"**Calibrated on {cal.episodes} validation tasks** ({cal.ways}-way {cal.shots}-shot, the run's meta-val "
               f"classes{f', {cal.steps} inner steps' if cal.steps is not None else ''}): scores are {t}; expected "
               f"calibration error {cal.ece_before:.1%} before, **{cal.ece_after:.1%} after**. "
               f"**\"{NONE_OF_THESE.capitalize()}\"**: {cal.rule()}.")


def camera_hint() -> str:
    """Why a browser may refuse the camera here, from the address the page was opened at."""
    try:
        url = urlparse(st.context.url or "")
    except Exception:  # noqa: BLE001 - an odd address is no reason to fail the page
        url = urlparse("")
    if url.scheme == "http" and url.hostname not in ("localhost", "127.0.0.1", "::1", None):
        return (f"This page was opened at http://{url.hostname}: browsers allow the camera only on https:// or on "
                "localhost, so no picture can be taken here. Open the app at http://localhost on this machine, or "
                "serve it over https.")
    return ("No camera box, or a black one? The browser needs your permission (the camera icon in its address "
            "bar) and a camera that no other program is using.")


def webcam(model, task: adapt.Task, device, steps, cal: Calibration | None) -> None:
    """The camera's shot classified against this task's support set, every time a shot is taken."""
    st.subheader("Webcam")
    if not st.toggle("Classify camera shots against this support set", key="adapt_webcam_on",
                     help="like Teachable Machine's preview: each shot is answered as soon as it is taken"):
        return
    st.caption(camera_hint())
    shot = st.camera_input("Take a shot", key="adapt_webcam")
    if shot is None:
        return
    try:
        one = adapt.photo_task(task, adapt.Upload("camera shot", shot.getvalue()))
    except UserError as e:
        st.error(str(e))
        return
    result = adapt.classify(model, one, device, steps, cal)
    a, b = st.columns([1, 3])
    image = one.query[0]
    a.image(image[..., 0] if image.shape[-1] == 1 else image, caption="as the model sees it", width=112)
    b.markdown(f"**{answer_text(result, task.class_names, 0)}**")
    order = np.argsort(-result["probs"][0])
    for c in order[:5]:
        b.progress(float(result["probs"][0][c]), text=f"{task.class_names[c]}: {result['probs'][0][c]:.0%}")


def download_button(model, task: adapt.Task, device, steps, cal: Calibration | None, run_name: str) -> None:
    """Download this support set with the run as one TorchScript file (made when the button is pressed)."""
    def make() -> bytes:
        return export_task(model, task, int(task.support.shape[1]), int(task.support.shape[-1]), device, steps,
                           cal).data
    try:
        representation(model, task, device, steps)
    except UserError as e:
        st.caption(f"No download for this run: {e}")
        return
    st.download_button("Download this model (.pt)", data=make, file_name=f"{run_name}-task.pt",
                       mime="application/octet-stream", key="adapt_download", icon=":material/download:",
                       on_click="ignore",
                       help="one TorchScript file: the run's generator and preprocessing, this support set's "
                            "classes, the calibration and the \"none of these\" threshold; load it with "
                            "torch.jit.load (see the README's \"Use your own images\")")
