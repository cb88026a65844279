"""The live view of a run, shared by Home and Train: progress, controls, the concept map, the
training curves, the replay slider and the images behind a selection.

    live_view(run_dir, presenter=presenter())

While the run (or the lambda = 0 twin beside it) trains, the view is a fragment redrawn every PANELS_S
(6 s: progress, headline, curves), and the maps inside it a fragment of their own redrawn every
REFRESH_S (2 s), so the rest of the page never reruns and nothing blocks; until the first snapshot the
whole view redraws every FIRST_MAP_S, so the first map comes as soon as it can. When the run ends, the
fragment that was polling asks for ONE full rerun, which draws the page without polling; a fragment
that was not polling never does (that is what keeps it from rerunning forever). State kept between
refreshes (the projectors) lives in engine.viz.live.LiveMap, one per session.

Stable keys (browser tests and zoom that survives refreshes use them; `key` defaults to "live"):
  {key}_map        the concept map (plotly; lasso / box / click select -> images below it)
  {key}_curves     the training curves (plotly; the lambda = 0 twin dashed)
  {key}_adaptation the adaptation curve at each validation (plotly; latest bold, the twin dashed)
  {key}_thumbs     the images of the selected points, or a clicked point and its nearest neighbours
  {key}_method     "Map" (UMAP / PCA / t-SNE)      {key}_color    "Colour by"
  {key}_regions    "Decision regions" toggle        {key}_replay   "Replay" slider (snapshot steps)
  {key}_play     "▶ Play" (steps the replay through the snapshots, spaced by training step)
  {key}_pause, {key}_resume, {key}_stop, {key}_clear   buttons "Pause", "Resume", "Stop", "Clear selection"
  {key}_controls   the row above the maps: both runs' progress bars, Pause / Resume / Stop
  {key}_settings   the row under the maps: Map, Colour by, Decision regions, and the replay ({key}_replayrow)
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine.errors import UserError
from engine.eval.headline import paired_headline
from engine.eval.twins import method_label
from engine.learners import LEARNERS
from engine.records import PAUSABLE, RunState, adaptation_records
from engine.runs import RunDir
from engine.services.training import (
    awaits_first_snapshot,
    is_active,
    is_demo_dir,
    pause_runs,
    resume_runs,
    stop_runs,
)
from engine.viz.charts import live_adaptation_curves, training_curves
from engine.viz.live import LiveMap
from engine.viz.run_view import val_summary
from ui.glide_map import kept_chart
from ui.live_maps import CURVE_TOOLS, METHOD_LABELS, METHODS, cached_figure, has_twin_map, map_pair

COLOR_LABELS = {"class": "class", "split": "split", "prediction": "discriminator's prediction",
                "correct": "discriminator right / wrong"}
SESSION_KEY = "_conceptscape_live_map"  # st.session_state[SESSION_KEY]: this session's LiveMap
# while training, the maps redraw every 2 s: a map moves at each redraw (a snapshot comes every ~1.5 s), and
# each redraw costs the browser CPU that a 2-core machine takes from training (bench live --browser)
REFRESH_S = 2.0
# while training, the rest of the view (progress, headlines, curves) redraws this often: Streamlit's redraw of
# the whole view every 2 s was the largest part of the browser's work (BENCHMARKS.md, the watched demo)
PANELS_S = 6.0
FIRST_MAP_S = 0.5  # until the first snapshot, so the first map is drawn as soon as there is one
# the live curves' points per series: the figure goes to the browser at every redraw, and with every
# step drawn (up to engine.viz.charts.curves.MAX_POINTS) it grew with the run, ~280 bytes a step
CURVE_POINTS = 300
PLAY_TICK_S = 0.4  # the replay's frame interval
SETTING_WIDTH = 200  # px, the map's settings' select boxes
# map and curves side by side where both have room (3 : 2), else the curves below the map
PANELS_CSS = """<style>
[data-testid="stLayoutWrapper"]:has(> .st-key-KEY_mapcol) {flex: MAPFLEX !important; min-width: 0;}
[data-testid="stLayoutWrapper"]:has(> .st-key-KEY_curvescol) {flex: 2 1 340px !important; min-width: 0;}
[data-testid="stLayoutWrapper"]:has(> .st-key-KEY_progress) {flex: 1 1 420px !important; min-width: 0;}
.st-key-KEY_progress > [data-testid="stElementContainer"] {flex: 1 1 200px !important; min-width: 0;}
[data-testid="stLayoutWrapper"]:has(> .st-key-KEY_replayrow) {flex: 1 1 320px !important; min-width: 0;}
[data-testid="stLayoutWrapper"]:has(> [class*="st-key-KEY_side_"]) {flex: 1 1 PAIRMIN !important; min-width: 0;}
[class*="st-key-KEY_"] [data-stale="true"] {opacity: 1 !important; transition: none !important;}
</style>"""  # the progress bars: side by side, one under the other on a phone; Pause / Resume / Stop beside or under them;
# no fading of what a redraw has not reached yet (Streamlit's "stale" look): a replay redraws every 0.4 s
MAP_FLEX = "3 1 480px"  # one map
PAIR_FLEX = {True: "4 1 720px",  # presenter view: the two maps and the curves in one row on a 1366 px screen
             False: "1 1 100%"}  # beside the controls: the two maps take the row, the curves go below them
# the two maps side by side while each is at least this wide, else one under the other (a narrower
# map cuts its captions); presenter view keeps them side by side, sized for the screen
PAIR_MIN = {True: "0px", False: "380px"}
PRESENTER_MAP_HEIGHT = 470  # px: headline, status and replay above it still fit a 768 px high screen
PRESENTER_PAIR_HEIGHT = 400  # px, each of the two maps (D's key adds its rows below the DEML one) on 768 px
# px, presenter view: the training curves and the adaptation curves under them, together as tall as the
# maps with the replay under them (a 768 px high screen shows both whole, under the headline)
PRESENTER_CURVES_HEIGHTS = (390, 230)
MAP_HEIGHT = 560  # px, outside presenter view (one map)
PAIR_HEIGHT = 520  # px, outside presenter view, each of the two maps side by side


def live_map() -> LiveMap:
    """This session's LiveMap (projectors and cached reads survive the page's reruns)."""
    if SESSION_KEY not in st.session_state:
        st.session_state[SESSION_KEY] = LiveMap()
    return st.session_state[SESSION_KEY]


def live_view(run_dir: str | None, *, key: str = "live", presenter: bool = False,
              empty_hint: str | None = None) -> None:
    """Draw the live view of `run_dir` (None: only `empty_hint`). `presenter` hides the controls and
    enlarges the map and the curves."""
    every = _interval(run_dir, key)
    if presenter and run_dir:  # the browser tab names the run too (a room sees the tab on a shared screen)
        st.set_page_config(page_title=f"{'Demo' if is_demo_dir(run_dir) else Path(run_dir).name} · Conceptscape")

    def rerun_if_changed() -> None:
        if _interval(run_dir, key) != every:
            # the run started or ended, or a replay started or ended, since the page was drawn: one full
            # rerun sets the polling right. Only a fragment whose polling is now wrong asks, so the
            # rerun cannot repeat.
            st.rerun(scope="app")

    @st.fragment(run_every=every)
    def _live() -> None:
        _render(run_dir, key, presenter, empty_hint,
                maps_every=REFRESH_S if every == PANELS_S else None, after_status=rerun_if_changed)
        rerun_if_changed()

    _live()


def _interval(run_dir: str | None, key: str) -> float | None:
    """How often the live view redraws itself: quickly while a replay plays or the first snapshot is
    awaited, every PANELS_S while the run trains (the maps in it every REFRESH_S), never otherwise."""
    if st.session_state.get(f"_{key}_playing") is not None:
        return PLAY_TICK_S
    if not is_active(run_dir):
        return None
    return FIRST_MAP_S if awaits_first_snapshot(run_dir) else PANELS_S


# ------------------------------------------------------------------------------------------------
def _render(run_dir: str | None, key: str, presenter: bool, empty_hint: str | None,
            maps_every: float | None = None, after_status=None) -> None:
    """The view once; `maps_every` (s): the maps redraw this often by themselves (ui.live_maps.map_pair),
    and with them the progress (presenter view: the headline), then `after_status()`."""
    lm = live_map()
    view = lm.read(run_dir)
    if view.source == "none":
        if run_dir and view.error:
            st.warning(f"{view.error}. It may have been deleted; start a new run.")
        elif empty_hint:
            st.caption(empty_hint)
        return
    pair = has_twin_map(view)
    st.html(PANELS_CSS.replace("KEY", key).replace("MAPFLEX", PAIR_FLEX[presenter] if pair else MAP_FLEX)
            .replace("PAIRMIN", PAIR_MIN[presenter]))
    if presenter:
        status = st.container()
        _notes(view, presenter)
        _paired_headline(view)
        prefs = _settings(view, key, presenter)
    else:  # one compact row (progress of both runs, Pause / Resume / Stop), the headline, then the maps:
        # a 1366x768 screen shows the maps without scrolling; the map's settings and the replay go under the maps
        with st.container(horizontal=True, vertical_alignment="bottom", key=f"{key}_controls"):
            status = st.container(horizontal=True, vertical_alignment="bottom", key=f"{key}_progress")
            with st.container(horizontal=True, width="content"):
                _controls(view, key)
        _notes(view, presenter)
        if refused := st.session_state.pop(f"_{key}_resume_refused", None):
            st.error(refused)
        _paired_headline(view)

    def on_redraw(v) -> None:  # the step said above the maps is the maps' own
        with status:
            if presenter:
                st.subheader(headline(v), anchor=False)
            else:
                _status(v, key)
        if after_status is not None:
            after_status()

    # map and curves side by side (in presenter view sized so both fit a 1366x768 screen with the
    # headline); on a narrow screen the curves wrap below the map (PANELS_CSS) instead of squeezing it
    with st.container(horizontal=True, gap="medium", key=f"{key}_panels"):
        with st.container(key=f"{key}_mapcol"):
            maps, below = st.container(), None
            if not presenter:
                below = st.container(horizontal=True, vertical_alignment="bottom", key=f"{key}_settings")
                with below:
                    prefs = _settings(view, key, presenter)
            heights = (PRESENTER_PAIR_HEIGHT, PAIR_HEIGHT) if pair else (PRESENTER_MAP_HEIGHT, MAP_HEIGHT)
            map_pair(lm, view, key, prefs, height=heights[0] if presenter else heights[1], presenter=presenter,
                     maps=maps, replay=below, redraw_every=maps_every, on_redraw=on_redraw)
        with st.container(key=f"{key}_curvescol"):
            curve_heights = PRESENTER_CURVES_HEIGHTS if presenter else (None, None)
            _curves_panel(view, key, height=curve_heights[0], adaptation_height=curve_heights[1],
                          metric=not (presenter and pair))


def headline(view) -> str:
    """The run by its name, for presenter view: "Demo · ProtoNet DEML (λ = 3) · step 120/300"."""
    p = view.progress or {}
    what = "Demo" if is_demo_dir(view.run_dir) else Path(view.run_dir).name
    try:
        learner = str(RunDir(view.run_dir).config().get("learner", ""))
    except UserError:
        learner = ""
    name = LEARNERS[learner].display_name if learner in LEARNERS else learner
    kind = "" if view.lam is None else ("vanilla (λ = 0)" if view.lam == 0 else f"DEML (λ = {view.lam:g})")
    model = " ".join(x for x in (name, kind) if x)
    return " · ".join(x for x in (what, model, step_text(p)) if x)


def step_text(p: dict) -> str:
    """"step 120/300"; a run bounded by time (train --minutes, whose steps are only an upper bound
    until it ends): "step 120, 40% of 5 min"."""
    step, steps, minutes = p.get("step", 0), p.get("steps", 0), p.get("minutes") or 0
    if minutes and step < steps:
        return f"step {step}, {float(p.get('fraction', 0.0)):.0%} of {round(minutes, 2):g} min"
    return f"step {step}/{steps}"


def _paired_headline(view) -> None:
    """DEML against its λ = 0 twin on the same validation episodes (engine.eval.headline), once both
    have validated; a line saying it is coming while they train."""
    if view.twin_metrics is None or view.lam is None:
        return
    deml, vanilla = (view.metrics, view.twin_metrics) if view.lam > 0 else (view.twin_metrics, view.metrics)
    h = paired_headline(deml, vanilla)
    if h is not None:
        st.markdown(f"**{h.text}** <small style='color:#666'>· step {h.step}; DEML {h.deml:.1%}, "
                    f"vanilla {h.vanilla:.1%}</small>", unsafe_allow_html=True)
    elif view.active:
        st.markdown("**DEML vs vanilla:** the paired comparison appears when both runs have validated.")


def _status(view, key: str) -> None:
    """The progress of the run and (beside it) of its twin, one bar each (presenter view: none, the
    headline says the step). The run is named by what it is when its twin is beside it."""
    p = view.progress or {}
    eta = f", {_left(p['eta_seconds'])}" if p.get("eta_seconds") is not None and view.active else ""
    twin = view.twin_progress
    paired = view.lam is not None and (twin is not None or view.twin_dir is not None)  # its twin may be starting
    where = f" on {view.device}" if view.device and view.active and not paired else ""
    name = method_label(view.lam) if paired else Path(view.run_dir).name
    st.progress(min(1.0, float(p.get("fraction", 0.0))), width="stretch",
                text=f"{name}{where}: {view.state}, {step_text(p)}{eta}")
    if twin is not None:
        st.progress(min(1.0, float(twin.get("fraction", 0.0))), width="stretch",
                    text=f"{_twin_label(view)}: {view.twin_state}, {step_text(twin)}")


def _left(seconds: float) -> str:
    return f"about {seconds:.0f} s left" if seconds < 120 else f"about {seconds / 60:.0f} min left"


def _notes(view, presenter: bool) -> None:
    """What the progress bars do not say: an error, warnings, who trained the run, how it was saved."""
    p = view.progress or {}
    if view.error:
        st.error(view.error)
    for w in view.warnings[-3:]:
        st.warning(w)
    if view.device and not view.active and view.source != "disk" and not presenter:
        st.caption(f"trained on {view.device}")
    elif view.state == RunState.ELSEWHERE:
        st.caption(f"another process trains this run ({view.holder}): what it has written so far is shown; "
                   "Resume is off until that training ends")
    elif view.source == "disk" and not presenter:  # presenter view: the headline says the step
        secs = p.get("seconds") or 0.0
        st.caption(f"saved run: {p.get('step', 0)} of {p.get('steps', 0)} steps, {secs:.0f} s of training")
        if view.twin_state == RunState.ELSEWHERE:
            st.caption("its λ = 0 twin is being trained by another process: Resume is off until that ends")
    elif view.state == RunState.STARTING:
        st.caption("preparing the data and the model…")


def _controls(view, key: str) -> None:
    running = view.state in PAUSABLE or view.twin_state in PAUSABLE
    paused = RunState.PAUSED in (view.state, view.twin_state)
    st.button("Pause", key=f"{key}_pause", on_click=_act, args=(pause_runs, view.run_dir), disabled=not running)
    st.button("Resume", key=f"{key}_resume", on_click=_resume, args=(view.run_dir, key),
              disabled=not (paused or view.resumable),
              help="continue a paused run, or a stopped one from its last checkpoint")
    st.button("Stop", key=f"{key}_stop", on_click=_act, args=(stop_runs, view.run_dir), disabled=not view.active,
              help="stops after the current step and saves a checkpoint")


def _resume(run_dir: str, key: str) -> None:
    """Resume's callback: a refusal (the server's job limit, a run already training) is shown under the buttons."""
    try:
        resume_runs(run_dir)
    except UserError as e:
        st.session_state[f"_{key}_resume_refused"] = str(e)


def _act(action, run_dir: str) -> None:
    """A control's callback: the service refuses a run outside the runs root (UserError), said on the page."""
    try:
        action(run_dir)
    except UserError as e:
        st.error(str(e))


def _settings(view, key: str, presenter: bool) -> dict:
    """The map's settings: widgets, or (presenter view, widgets hidden) the last values chosen."""
    saved = st.session_state.setdefault(f"_{key}_prefs", {"method": "umap", "color": "class", "regions": True})
    has_d = bool(view.snapshots) and "disc_pred" in view.snapshots[-1]
    colors = [c for c in COLOR_LABELS if has_d or c in ("class", "split")]
    if presenter:
        return {**saved, "color": saved["color"] if saved["color"] in colors else "class"}
    labels = list(METHODS)
    method = st.selectbox("Map", labels, index=labels.index(METHOD_LABELS[saved["method"]]), key=f"{key}_method", width=SETTING_WIDTH,
                          help="UMAP keeps neighbourhoods; PCA is a linear view (exact decision regions); "
                               "t-SNE separates clusters most")
    color = st.selectbox("Colour by", colors, index=colors.index(saved["color"]) if saved["color"] in colors else 0,
                         format_func=COLOR_LABELS.get, key=f"{key}_color", width=SETTING_WIDTH)
    regions = st.toggle("Decision regions", value=saved["regions"], key=f"{key}_regions", disabled=not has_d,
                        help="what the concept discriminator predicts across the map (exact on PCA, "
                             "from the nearest points on UMAP / t-SNE)")
    saved.update(method=METHODS[method], color=color, regions=bool(regions))
    return dict(saved)


def _twin_label(view) -> str:
    """What the run beside this one is: its λ = 0 twin, or (for a λ = 0 run) its DEML run."""
    return "its DEML run (λ > 0)" if view.lam == 0 else "λ = 0 twin"


def _curves_panel(view, key: str, height: int | None, adaptation_height: int | None = None,
                  metric: bool = True) -> None:
    """The validation accuracy (`metric`; presenter view with the pair has the headline instead), the
    training curves and the adaptation curves."""
    summary = val_summary(view.metrics, view.twin_metrics) if metric else None
    if summary is not None:
        vs = "DEML" if view.lam == 0 else "λ = 0"
        delta = f"{summary['delta'] * 100:+.1f} pts vs {vs}" if summary["delta"] is not None else None
        ci = f" ± {summary['ci95']:.1%}" if summary.get("ci95") is not None else ""
        st.metric("Validation accuracy", f"{summary['acc']:.1%}", delta=delta,
                  help=f"on fixed held-out validation tasks at step {summary['step']}{ci} (95% CI)")
    if not view.metrics:
        st.caption("Training curves appear after the first steps.")
        return
    main, twin, title = view.metrics, view.twin_metrics or None, "Training"
    if twin is not None and view.lam == 0:  # viewing the λ = 0 side: the DEML run is drawn solid
        main, twin, title = twin, main, "Training: this λ = 0 run dashed, its DEML run solid"
    try:
        curves = adaptation_records(main)  # they carry the task's ways: chance is 1/ways
        externals = len(view.probe["external_classes"]) if view.probe is not None else 0
        version = (view.run_dir, len(main), main[-1].get("step"), len(twin or []), title, height, externals)
        fig = cached_figure(f"{key}_curves", version, lambda: training_curves(
            main, twin, title=title, uirevision=f"{key}-curves-{view.run_dir}", height=height,
            ways=curves[-1].get("ways") if curves else None, external_classes=externals or None,
            max_points=CURVE_POINTS),
            min_interval=PANELS_S if view.active else 0.0)  # a replay plays, or the first map is awaited, faster
    except ValueError as e:
        st.warning(f"The training curves cannot be drawn: {e}")
        return
    kept_chart(fig, key=f"{key}_curves", config=CURVE_TOOLS)
    _adaptation_panel(view, key, adaptation_height)


def _adaptation_panel(view, key: str, height: int | None = None) -> None:
    """Under the training curves: the adaptation curve measured at each validation (the DEML run solid,
    its λ = 0 twin dashed; the latest bold, earlier ones fading)."""
    main, twin = view.metrics, view.twin_metrics or None
    if twin is not None and view.lam == 0:
        main, twin = twin, main
    if not adaptation_records(main) and not adaptation_records(twin or []):
        if view.active:
            st.caption("The adaptation curve appears with the first validation.")
        return
    try:
        version = (view.run_dir, len(adaptation_records(main)), len(adaptation_records(twin or [])), twin is None, height)
        fig = cached_figure(f"{key}_adaptation", version, lambda: live_adaptation_curves(
            main, twin, name="DEML" if twin is not None else "this run", uirevision=f"{key}-adaptation-{view.run_dir}",
            height=height))
    except ValueError as e:
        st.warning(f"The adaptation curves cannot be drawn: {e}")
        return
    kept_chart(fig, key=f"{key}_adaptation", config=CURVE_TOOLS)
