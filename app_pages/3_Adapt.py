"""Adapt: a trained run meets a new task, drawn from its held-out classes or uploaded."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import streamlit as st

from engine.data.images import MiB, size_text
from engine.errors import UserError
from engine.eval import checkpoints
from engine.eval.calibration import run_calibration
from engine.eval.twins import compare_held_out, find_twin, partner_label
from engine.services import adapt, catalog
from engine.services.task_files import confined_task_spec, read_task_classes
from engine.services.uploads import read_uploaded
from engine.viz.charts import adaptation_curves, episode_view
from ui import adapt_parts as parts
from ui.common import current_run, presenter, set_current_run

st.title("Adapt")
current_run()  # checks the link's ?run= first: one outside the runs folder is dropped, with a notice at the top
big_view = presenter()
THUMB_PX = 84
HELD_OUT, UPLOAD, FROM_DATA = "Held-out classes", "Upload your own", "Set from the Data page"
TWIN_HOWTO = ("No λ = 0 twin beside this run. Train one with the same settings and λ = 0 to compare: on the "
              "Train page tick **Also train the λ = 0 twin**, or run `python -m engine train ... --lam 0 "
              "--out runs/NAME-lam0` with this run's other settings.")


def thumb(image: np.ndarray) -> np.ndarray:
    """A small image scaled up by whole pixels (crisp), gray as 2-D."""
    s = max(1, THUMB_PX // max(image.shape[:2]))
    out = image.repeat(s, 0).repeat(s, 1)
    return out[..., 0] if out.shape[-1] == 1 else out


def short_names(names: list[str]) -> list[str]:
    """Class names for captions: the last part of a path-like name when no other class shares it."""
    last = [n.rsplit("/", 1)[-1] for n in names]
    return [part if last.count(part) == 1 else full for part, full in zip(last, names)]


def same(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


@st.cache_data(show_spinner=False, max_entries=32)
def held_out(run_dir, stamp, twin_dir, twin_stamp, ways, shots, queries, episodes, steps) -> dict:
    """engine.eval.twins.compare_held_out, cached per run, checkpoint and settings."""
    return compare_held_out(run_dir, twin_dir, ways, shots, queries, episodes, seed=0, steps=steps)


@st.cache_data(show_spinner="Calibrating the run's confidences on its validation tasks (once per checkpoint)…",
               max_entries=32)
def calibration(run_dir, stamp, steps):
    """engine.eval.calibration.run_calibration (kept in the run folder too), or the reason there is none."""
    try:
        return run_calibration(run_dir, steps), None
    except UserError as e:
        return None, str(e)


@st.cache_data(show_spinner=False, max_entries=8)
def data_page_task(cfg, path, stamp) -> adapt.Task:
    """The uploaded set the link's ?task= names, split into support (first half of each class) and queries."""
    return adapt.prepare_upload(cfg, read_task_classes(path, split=True))


# --- the run --------------------------------------------------------------------------------------
every_run = catalog.list_runs()
runs = [r for r in every_run if r.adaptable]
waiting = next((r for r in every_run if not r.adaptable and r.readable and same(current_run(), r.path)), None)
if waiting is not None:  # the person's own run, too young to adapt: say so, and keep it as the current run
    every = (waiting.config or {}).get("checkpoint_every")
    st.info(f"**{waiting.shown_name}** has no checkpoint yet (step {waiting.steps_done}"
            + (f"; its first is written at step {every}" if every else "") + "): Adapt can use it once it has one."
            + (" Meanwhile you can adapt another run below." if runs else ""))
if not runs:
    st.info("No trained run to adapt yet. Press **Start demo** on the Home page or start a run on the **Train** "
            "page; as soon as it has written a checkpoint it appears here. From a terminal: "
            "`python -m engine train --preset smoke --out runs/smoke` (well under a minute on a CPU).")
    st.stop()
paths = [r.path for r in runs]
by_path = {r.path: r for r in runs}
url = current_run()
if url != st.session_state.get("adapt_url") or "adapt_run" not in st.session_state:  # the URL names another run
    # (a refresh, another page), or the selector's value went with the page: follow the URL
    i = catalog.find(runs, url)
    if i is not None:
        st.session_state["adapt_run"] = paths[i]
if st.session_state.get("adapt_run") not in paths:
    st.session_state["adapt_run"] = paths[0]
run_dir = st.selectbox("Trained run", paths, key="adapt_run", format_func=lambda p: by_path[p].label(),
                       help="runs under the runs folder with at least one checkpoint; a run still training "
                            "is adapted from its newest checkpoint")
if not same(url, run_dir) and waiting is None:
    set_current_run(run_dir)
st.session_state["adapt_url"] = current_run()

try:
    cfg, model, device = adapt.load_run(run_dir)
except UserError as e:
    st.error(str(e))
    st.stop()
summary = by_path[run_dir]
try:
    twin_dir = find_twin(run_dir)
    twin = adapt.load_run(twin_dir) if twin_dir else None
except UserError:
    twin_dir, twin = None, None
twin_name = partner_label(twin[0].lam) if twin else ""
st.caption(f"{summary.method} on `{cfg.dataset}` · trained {summary.steps_done}/{summary.steps_total} steps · "
           f"{cfg.image_size} px {'gray' if cfg.channels == 1 else 'RGB'} · inference on {device.type.upper()}"
           + (f" · {twin_name}: `{os.path.basename(twin_dir)}`" if twin_dir else ""))

# a new run starts from its own task shape; coming back from another page keeps what was chosen
parts.restore_settings(run_dir, dict(adapt_ways=cfg.ways, adapt_shots=cfg.shots, adapt_queries=cfg.queries,
                                     adapt_steps=cfg.inner_steps))
for key, value in (("adapt_seed", 0), ("adapt_episodes", 100), ("adapt_n_classes", 2)):
    st.session_state.setdefault(key, value)
task_spec, task_path = st.query_params.get("task") or st.session_state.get("adapt_task_spec"), None
if task_spec:  # a link's ?task= (or the one this session followed: the sidebar's links drop it)
    try:
        task_path = confined_task_spec(task_spec)
    except UserError as e:
        st.error(str(e))
    if task_path and st.session_state.get("adapt_task_spec") != task_spec:  # a new link: its set, pre-selected
        st.session_state.update(adapt_source=FROM_DATA, adapt_task_spec=task_spec)
    if task_path:
        st.query_params["task"] = task_spec
sources = [HELD_OUT, UPLOAD] + ([FROM_DATA] if task_path else [])
if st.session_state.get("adapt_source") not in sources:
    st.session_state["adapt_source"] = HELD_OUT
steps = None
if model.learner.adapts_by_steps:
    steps = int(st.number_input("Inner steps", min_value=0, max_value=50, key="adapt_steps",
                                help="gradient steps the learner takes on the support set"))

# --- the task -------------------------------------------------------------------------------------
source = st.radio("Task", sources, key="adapt_source", horizontal=True,
                  help="a task from classes the run never trained on, or your own images")
parts.save_settings(run_dir)
cal, cal_why = calibration(run_dir, checkpoints.checkpoint_stamp(run_dir), steps)
task = None
compare_shape = (cfg.ways, cfg.shots, cfg.queries)
if source == FROM_DATA:
    st.caption(f"`{os.path.basename(task_path)}` from the Data page: the first half of each class's images (at most "
               f"{adapt.LIMITS.max_support}) are its support set, the rest are asked as queries.")
    try:
        task = data_page_task(cfg, task_path, os.stat(task_path).st_mtime_ns)
    except (UserError, OSError) as e:
        st.error(str(e))
elif source == HELD_OUT:
    cols = st.columns([1, 1, 1, 1, 1])
    ways = int(cols[0].number_input("Ways (N)", min_value=2, max_value=50, key="adapt_ways"))
    shots = int(cols[1].number_input("Shots (K)", min_value=1, max_value=50, key="adapt_shots"))
    queries = int(cols[2].number_input("Queries per class (Q)", min_value=1, max_value=50, key="adapt_queries"))
    cols[3].number_input("Task seed", min_value=0, max_value=10**9, key="adapt_seed")

    def next_task() -> None:
        st.session_state["adapt_seed"] += 1

    cols[4].button("New task", key="adapt_new_task", on_click=next_task, type="primary",
                   help="draw another task from the held-out classes")
    try:
        task = adapt.sample_task(cfg, ways, shots, queries, int(st.session_state["adapt_seed"]))
    except UserError as e:
        st.error(str(e))
    compare_shape = (ways, shots, queries)
    parts.save_settings(run_dir)
else:
    lim = adapt.LIMITS
    st.caption(f"**Limits:** {adapt.limits_text()}. Images are prepared like the run's training data "
               f"({cfg.image_size} px, {'grayscale' if cfg.channels == 1 else 'RGB'}"
               + (", dark backgrounds: a task on white paper is flipped" if cfg.polarity == "auto"
                  and cfg.channels == 1 else "") + ").")
    n_classes = int(st.number_input("Number of new classes", min_value=lim.min_classes, max_value=lim.max_classes,
                                    key="adapt_n_classes"))
    mb = max(1, lim.max_file_bytes // MiB)  # Streamlit takes the per-file limit in MiB
    budget, left_out = [lim.max_upload_bytes], []  # bytes the task may still take, files refused
    queries_words = f"over the {lim.max_queries} query images of a task"

    def take(files, most: int, count_words: str) -> list[adapt.Upload]:
        """An uploader's files, sizes and count checked before any bytes are read (uploads.read_uploaded)."""
        kept, refused = read_uploaded(files, lim, budget=budget[0], max_files=most, count_words=count_words,
                                      budget_words=f"would take the task past its {size_text(lim.max_upload_bytes)} limit")
        budget[0] -= sum(len(data) for _, data in kept)
        left_out.extend(refused)
        return [adapt.Upload(name, data) for name, data in kept]

    def show_problems(lines: list[str]) -> None:
        for line in lines[:10]:
            st.warning(line)
        if len(lines) > 10:
            st.warning(f"… and {len(lines) - 10} more files left out")
    classes, digest = [], hashlib.sha256(run_dir.encode())
    for i in range(n_classes):
        with st.container(border=True):
            a, b, c = st.columns([1, 2, 2])
            name = a.text_input(f"Name of class {i + 1}", key=f"adapt_class_name_{i}", placeholder=f"class {i + 1}",
                                max_chars=lim.max_name_chars)
            sup = b.file_uploader(f"Support images of class {i + 1} (1-{lim.max_support})", type=list(adapt.IMAGE_TYPES),
                                  accept_multiple_files=True, key=f"adapt_support_{i}", max_upload_size=mb)
            lab = c.file_uploader(f"Query images of class {i + 1} (optional: answers are then marked right or wrong)",
                                  type=list(adapt.IMAGE_TYPES), accept_multiple_files=True,
                                  key=f"adapt_labelled_{i}", max_upload_size=mb)
            support = take(sup, lim.max_support, f"over the {lim.max_support} support images of a class")
            classes.append(adapt.NewClass(name, support, take(lab, lim.max_queries, queries_words)))
    unlabelled = st.file_uploader("Query images (class unknown)", type=list(adapt.IMAGE_TYPES),
                                  accept_multiple_files=True, key="adapt_queries_upload", max_upload_size=mb)
    extra = take(unlabelled, lim.max_queries, queries_words)
    show_problems(left_out)
    if st.toggle("Add a camera photo as a query", key="adapt_camera_on"):
        photo = st.camera_input("Take a query photo", key="adapt_camera")
        if photo is not None:
            extra.append(adapt.Upload("camera photo", photo.getvalue()))
    for c in classes:
        digest.update(repr((c.name, [(u.name, len(u.data), hashlib.sha1(u.data).digest()) for u in c.support + c.queries])).encode())
    digest.update(repr([(u.name, len(u.data), hashlib.sha1(u.data).digest()) for u in extra]).encode())
    signature = digest.hexdigest()
    if st.button("Adapt to these images", key="adapt_upload_go", type="primary"):
        try:
            st.session_state["adapt_upload_task"] = (signature, adapt.prepare_upload(cfg, classes, extra))
        except UserError as e:
            st.session_state.pop("adapt_upload_task", None)
            st.error(str(e))
    stored = st.session_state.get("adapt_upload_task")
    if stored is not None and stored[0] == signature:
        task = stored[1]
        for line in task.problems:
            (st.error if "left out" in line else st.warning)(line)
    elif stored is not None:
        st.info("The images or names changed: press **Adapt to these images** again.")
    else:
        st.caption("Give each class a name and its support images, add query images, then press "
                   "**Adapt to these images**.")
    parts.save_settings(run_dir)

# --- the task's answers ---------------------------------------------------------------------------
if task is not None:
    result = adapt.classify(model, task, device, steps, cal)
    twin_cal = calibration(twin_dir, checkpoints.checkpoint_stamp(twin_dir), steps)[0] if twin else None
    twin_result = adapt.classify(twin[1], task, twin[2], steps, twin_cal) if twin else None
    st.subheader("Support set")
    if task.inverted:
        st.caption("These images were flipped to bright ink on a dark background, as the run's training data was "
                   "prepared; they are shown as the model sees them.")
    per_row = min(task.ways, 5)
    for first in range(0, task.ways, per_row):
        for col, c in zip(st.columns(per_row), range(first, min(first + per_row, task.ways))):
            col.markdown(f"**{task.class_names[c]}**")
            shots_c = np.flatnonzero(task.support_labels == c)
            col.image([thumb(task.support[i]) for i in shots_c], caption=[task.support_names[i] for i in shots_c],
                      width=THUMB_PX)

    st.subheader("Queries")
    names = task.class_names
    known = task.labelled
    if result["accuracy"] is not None:
        right_n = int(result["correct"].sum())
        line = f"**{right_n}/{result['labelled']} labelled queries answered right ({result['accuracy']:.0%})**"
        if (n_unknown := int((result["unknown"] & known).sum())):
            line += f" ({n_unknown} of them answered \"{parts.NONE_OF_THESE}\", which counts as not right)"
        if twin_result is not None:
            line += (f" · {twin_name}: {int(twin_result['correct'].sum())}/{twin_result['labelled']} "
                     f"({twin_result['accuracy']:.0%}) on the same task")
        st.markdown(line)
    parts.trust_note(cal, cal_why)
    short = short_names(names)
    captions = []
    for i in range(len(task.query)):
        cap = parts.answer_text(result, short, i)
        if known[i]:
            cap += " ✓" if result["correct"][i] else f" ✗ (is {short[task.query_labels[i]]})"
        captions.append(cap)
    st.image([thumb(q) for q in task.query], caption=captions, width=THUMB_PX)
    rows = []
    for i in range(len(task.query)):
        row = {"query": task.query_names[i],
               "answer": parts.NONE_OF_THESE if result["unknown"][i] else names[int(result["pred"][i])],
               "closest class": names[int(result["pred"][i])], "confidence": f"{result['confidence'][i]:.0%}",
               "true class": names[task.query_labels[i]] if known[i] else "",
               "right": ("yes" if result["correct"][i] else "no") if known[i] else ""}
        if twin_result is not None:
            row[f"{twin_name.removeprefix('its ')} answers"] = parts.answer_text(twin_result, names, i)
        rows.append(row)
    if not big_view:
        st.dataframe(rows, hide_index=True, key="adapt_answers")
        parts.download_button(model, task, device, steps, cal, os.path.basename(run_dir))
        parts.webcam(model, task, device, steps, cal)

    st.subheader("The task in concept space")
    detail = adapt.task_detail(model, task, device, steps)
    fig = episode_view(detail)
    if big_view:
        fig.update_layout(height=760)
    st.plotly_chart(fig, key="adapt_episode", theme=None, width="stretch")

# --- adaptation on held-out tasks, next to the twin -----------------------------------------------
st.subheader("Adaptation on held-out tasks" + (": DEML next to its λ = 0 twin" if twin else ""))
episodes = int(st.columns(4)[0].number_input(
    "Held-out episodes", min_value=10, max_value=2000, step=50, key="adapt_episodes",
    help="tasks drawn once from the held-out classes; every model is scored on the same ones"))
w, k, q = compare_shape
try:
    with st.spinner(f"Scoring {episodes} held-out {w}-way {k}-shot tasks" + (" for both runs" if twin else "")):
        comp = held_out(run_dir, checkpoints.checkpoint_stamp(run_dir), twin_dir,
                        checkpoints.checkpoint_stamp(twin_dir) if twin_dir else None, w, k, q, episodes, steps)
except UserError as e:
    st.error(str(e))
else:
    for line in comp["warnings"]:
        st.warning(line)
    st.plotly_chart(adaptation_curves([(r["label"], r["curve"]) for r in comp["runs"]]),
                    key="adapt_curves", theme=None, width="stretch")
    table = [{"run": os.path.basename(r["run_dir"]), "method": r["label"],
              f"accuracy, {comp['ways']}-way {comp['shots']}-shot"
              + (f", {comp['steps']} inner steps" if comp["steps"] is not None else ""):
                  catalog.fmt_acc(r["accuracy"], r["ci95"]),
              "episodes": comp["episodes"]} for r in comp["runs"]]
    st.dataframe(table, hide_index=True, key="adapt_compare_table")
    diff = comp["difference"]
    if diff is not None:
        st.markdown(f"Same {comp['episodes']} episodes for both (paired): DEML − λ = 0 = "
                    f"**{diff['accuracy'] * 100:+.1f} ± {diff['ci95'] * 100:.1f} points** (95% CI); DEML better on "
                    f"{diff['wins']}, worse on {diff['losses']}, tied on {diff['ties']} episodes.")
    else:
        st.info(TWIN_HOWTO)
