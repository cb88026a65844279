"""Runs: every saved run with its configuration and results; compare, evaluate, download, delete."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import streamlit as st

from engine.config import runs_root
from engine.data.images import size_text
from engine.errors import UserError
from engine.eval.evaluate import run_evaluation
from engine.eval.twins import find_twin
from engine.records import RunState
from engine.runs import NAME_MAX_CHARS
from engine.services import catalog, compare
from engine.viz.charts import adaptation_curves
from engine.viz.project import umap_status
from engine.viz.report import build_report
from ui.common import clear_current_run, current_run, presenter, set_current_run

st.title("Runs")
current_run()  # checks the link's ?run= first: one outside the runs folder is dropped, with a notice at the top
presenter()
st.session_state.setdefault("runs_eval_episodes", 600)
for kind, text in st.session_state.pop("runs_flash", []):
    getattr(st, kind)(text)

runs = catalog.list_runs()
if not runs:
    st.info(f"No saved runs under `{runs_root()}` yet. Press **Start demo** on the Home page or start one on the "
            "**Train** page; from a terminal: `python -m engine train --preset smoke --out runs/smoke`.")
    st.stop()
by_path = {r.path: r for r in runs}
readable = [r for r in runs if r.readable]


@st.fragment(run_every=2.0 if any(r.state in (RunState.RUNNING, RunState.ELSEWHERE) for r in runs) else None)
def table() -> None:
    """The runs table; refreshed every 2 s while a run trains."""
    rows = []
    for r in catalog.list_runs():
        row = r.row()
        if not r.readable:
            row["state"] = f"unreadable: {r.detail}"
        rows.append(row)
    st.dataframe(rows, hide_index=True, key="runs_table")


overview = st.container()  # filled last, so it shows what the actions below have just recorded

# --- compare --------------------------------------------------------------------------------------
st.subheader("Compare runs")
if "runs_compare" not in st.session_state:  # the URL's run and its twin, else the newest two of one dataset
    i = catalog.find(readable, current_run())
    current = readable[i].path if i is not None else None
    st.session_state["runs_compare"] = compare.default_comparison(readable, current,
                                                                  find_twin(current) if current else None)
st.session_state["runs_compare"] = [p for p in st.session_state["runs_compare"] if p in by_path and by_path[p].readable]
chosen = st.multiselect("Runs to compare", [r.path for r in readable], key="runs_compare",
                        format_func=lambda p: by_path[p].label())
if chosen:
    picked = [by_path[p] for p in chosen]
    st.plotly_chart(compare.comparison_curves(picked), key="runs_compare_curves", theme=None, width="stretch")
    if notes := compare.comparison_notes(picked):
        st.warning("**Not like for like:** " + "; ".join(notes) + ".")
    st.dataframe(compare.comparison_table(picked), hide_index=True, key="runs_compare_table")
    recorded = [r for r in picked if r.curve]
    for axis in ("steps", "shots"):
        group = [(f"{r.name} ({r.method})", r.curve) for r in recorded if r.curve.get("axis") == axis]
        if group:
            st.plotly_chart(adaptation_curves(group, title="Adaptation curves (recorded)"),
                            key=f"runs_compare_adaptation_{axis}", theme=None, width="stretch")
    missing = [r for r in picked if not r.curve and r.adaptable]
    if missing:
        st.caption("No adaptation curve recorded for " + ", ".join(r.name for r in missing) + ".")
        if st.button("Record their adaptation curves (100 episodes)", key="runs_record_curves"):
            bar = st.progress(0.0, text="recording adaptation curves")
            try:
                for j, r in enumerate(missing):
                    run_evaluation(r.path, "curve", episodes=100,
                                   progress=lambda done, total, j=j, name=r.name: bar.progress(
                                       min(1.0, (j + done / max(total, 1)) / len(missing)),
                                       text=f"{name}: {done}/{total}"))
            except UserError as e:
                st.error(str(e))
            else:
                st.rerun()

# --- one run: evaluate, download, delete ----------------------------------------------------------
st.subheader("One run")
paths = [r.path for r in runs]
if st.session_state.get("runs_selected") not in paths:
    i = catalog.find(runs, current_run())
    st.session_state["runs_selected"] = paths[i if i is not None else 0]


def on_select() -> None:
    st.session_state["runs_delete_confirm"] = False  # a confirmation is for the run it was given for
    if st.session_state["runs_selected"] in paths:  # a rename changes the labels; only a real choice moves the run
        set_current_run(st.session_state["runs_selected"])


selected = st.selectbox("Run", paths, key="runs_selected", format_func=lambda p: by_path[p].label(),
                        on_change=on_select)
if selected not in by_path:  # a label from before a rename, sent back by the browser
    selected = paths[catalog.find(runs, current_run()) or 0]
run = by_path[selected]
if run.state == RunState.RUNNING:
    st.caption("This run is training: evaluation and downloads use its newest checkpoint.")
elif run.state == RunState.ELSEWHERE:
    st.caption(f"Another process trains this run ({run.detail}): evaluation and downloads use its newest "
               "checkpoint; it cannot be resumed or deleted here until that training ends.")
def rename(path: str) -> None:
    """Runs before the page is drawn again, so every list shows the new name."""
    try:
        kept = catalog.rename_run(path, st.session_state.get(f"runs_name_{path}", ""))
    except UserError as e:
        st.session_state["runs_flash"] = [("error", str(e))]
        return
    st.session_state["runs_selected"] = path  # set again, so the list shows the run under its new label
    st.session_state["runs_flash"] = [("success", f"Renamed {os.path.basename(path)} to “{kept}”" if kept
                                       else f"{os.path.basename(path)} has no name now")]


name_col, button_col = st.columns([3, 1], vertical_alignment="bottom")
name_col.text_input("Name", value=run.title or "", key=f"runs_name_{selected}", max_chars=NAME_MAX_CHARS,
                    placeholder=run.name, help="shown in the tables and lists; the folder keeps its name")
button_col.button("Rename", key="runs_rename", disabled=not run.readable, on_click=rename, args=(selected,))
left, mid, right = st.columns(3)

with left:
    st.markdown("**Full evaluation**")
    episodes = int(st.number_input("Evaluation episodes", min_value=10, max_value=10_000, step=100,
                                   key="runs_eval_episodes",
                                   help="tasks drawn from the held-out classes; 600 is the usual standard"))
    if st.button("Run full evaluation", key="runs_evaluate", disabled=not run.adaptable):
        bar = st.progress(0.0, text=f"evaluating on {episodes} episodes")
        try:
            res = run_evaluation(selected, "evaluate", episodes=episodes,
                                 progress=lambda done, total: bar.progress(done / max(total, 1),
                                                                           text=f"{done}/{total} episodes"))
        except Exception as e:  # noqa: BLE001 - said on the page; the app and running jobs go on
            st.error(str(e) if isinstance(e, UserError) else f"evaluation failed: {type(e).__name__}: {e}")
        else:
            st.success(f"{run.name}: test accuracy {catalog.fmt_acc(res['accuracy'], res['ci95'])} (95% CI) over "
                       f"{res['episodes']} {res['ways']}-way {res['shots']}-shot episodes; recorded in evaluations.jsonl")

with mid:
    st.markdown("**Downloads**")
    if st.button("Build HTML report", key="runs_build_report", disabled=not run.adaptable,
                 help="configuration, results with 95% CIs, curves, the concept-space replay; one offline file"):
        with st.spinner("Building the report (evaluating where nothing is recorded yet, laying out the replay)..."):
            folder = tempfile.mkdtemp(prefix="conceptscape-report-")
            try:
                out = Path(folder) / f"{run.name}-report.html"
                build_report(selected, str(out), method="umap" if umap_status() == "ready" else "pca")
                st.session_state["runs_report"] = (selected, out.name, out.read_bytes())
            except Exception as e:  # noqa: BLE001 - said on the page; the app and running jobs go on
                st.error(str(e) if isinstance(e, UserError) else f"the report failed: {type(e).__name__}: {e}")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    report = st.session_state.get("runs_report")
    if report and report[0] == selected:
        st.download_button("Download HTML report", data=report[2], file_name=report[1], mime="text/html",
                           key="runs_download_report", on_click="ignore")
    checkpoint = catalog.newest_checkpoint(selected)  # a regular step_NNNNNNN.pt, never a symlink
    try:
        size = os.lstat(checkpoint).st_size if checkpoint is not None else None
    except OSError:  # removed since (the trainer keeps the newest two)
        checkpoint = size = None
    if checkpoint is not None:
        def checkpoint_bytes(path=checkpoint) -> bytes:
            try:  # opened without following symlinks; a newer one if the trainer replaced it since
                data, note = catalog.read_offered_checkpoint(selected, path)
            except UserError as e:
                st.session_state["runs_flash"] = [("error", str(e))]
                return b""
            if note:
                st.session_state["runs_flash"] = [("info", note)]
            return data

        st.download_button(f"Download checkpoint ({size_text(size)})",
                           data=checkpoint_bytes, file_name=f"{run.name}-{checkpoint.name}",
                           mime="application/octet-stream", key="runs_download_checkpoint", on_click="ignore")
    else:
        st.caption("No checkpoint yet.")


def delete(path: str) -> None:
    """Runs before the page is drawn again, so the list never shows a half-deleted run."""
    try:
        done = catalog.delete_run(path)
    except UserError as e:
        st.session_state["runs_flash"] = [("error", str(e))]
        return
    st.session_state["runs_delete_confirm"] = False
    st.session_state.pop("runs_selected", None)
    if current_run() and os.path.realpath(current_run()) == done["deleted"]:
        clear_current_run()
    st.session_state["runs_flash"] = [("success", f"Deleted {os.path.basename(path)}"
                                       + (" (its training job was stopped first)" if done["stopped_job"] else ""))]


with right:
    st.markdown("**Delete**")
    elsewhere = run.state == RunState.ELSEWHERE
    confirmed = st.checkbox(f"Yes, delete {run.name} and all its files"
                            + (" (its training is stopped first)" if run.state == RunState.RUNNING else ""),
                            key="runs_delete_confirm", disabled=elsewhere)
    st.button("Delete run", key="runs_delete", disabled=elsewhere or not confirmed, on_click=delete,
              args=(selected,), help="tick the box first; this cannot be undone")
    if elsewhere:
        st.caption("Delete is refused while another process trains this run; stop that training first.")

with overview:
    table()
    st.markdown("**Configurations**")
    for r in catalog.list_runs():
        with st.expander(f"{r.label()}: configuration" if r.readable else f"{r.name}: unreadable"):
            if r.readable:
                st.json(r.config)
            else:
                st.error(f"{r.name}: {r.detail}")
