"""The concept maps of the live view (ui.live draws the rest): the run's map, the lambda = 0 twin's
map beside it (same method, same replay step, turned onto the run's map: engine.viz.live.LiveMap.twin_frame),
the replay slider with "▶ Play", and the images behind a selection. Keys: see ui.live.

The maps are drawn by ui.glide_map, a custom component that keeps one plot per key, so the points
glide from one snapshot's layout to the next. st.plotly_chart cannot (Streamlit 1.67): its element
id is computed from the figure itself (streamlit/elements/plotly_chart.py,
compute_and_register_element_id(..., key_as_main_identity=False, plotly_spec=...)), so a changed
figure is a new element whose plot is drawn afresh in a new graph div, and plotly's layout.transition
only animates Plotly.react on the same div (checked in Chromium on a minimal app: the div was
replaced at each change and x went straight from the old value to the new one)."""
from __future__ import annotations

import time

import numpy as np
import streamlit as st

from engine.eval.twins import method_label
from engine.records import ACTIVE
from engine.viz.charts import concept_map, nearest_neighbours, thumbnail_grid, waiting_map
from engine.viz.live import LiveMap, selected_rows
from ui.glide_map import glide_chart

METHODS = {"UMAP": "umap", "PCA": "pca", "t-SNE": "tsne"}
METHOD_LABELS = {v: k for k, v in METHODS.items()}
LATEST = "latest"
MAX_THUMBS = 64
NEIGHBOURS = 8
FIGURES_KEY = "_conceptscape_live_figures"  # st.session_state: name -> (version, figure, built at)
# while training, the twin's map is laid out and drawn again at most this often (the run's map: at every
# snapshot, ~2 s); drawn as often as the run's, it cost the browser and the server about 0.3 of a core of
# the 2 that training needs (BENCHMARKS.md, the watched demo)
TWIN_MAP_S = 4.0
PLAY_S = 10.0  # "▶ Play" replays from the first snapshot to the latest in this many seconds
# the plot toolbars keep only the tools these charts need, so they stay clear of the titles on narrow screens
_NOT_NEEDED = ["toImage", "zoomIn2d", "zoomOut2d", "autoScale2d"]
MAP_TOOLS = {"displaylogo": False, "modeBarButtonsToRemove": _NOT_NEEDED}
CURVE_TOOLS = {"displaylogo": False, "modeBarButtonsToRemove": _NOT_NEEDED + ["select2d", "lasso2d"]}


def cached_figure(name: str, version: tuple, build, min_interval: float = 0.0):
    """`build()`'s figure, built again only when `version` (what it is drawn from) changed, and then
    at most every `min_interval` seconds. A refresh with nothing new re-sends the same figure: building
    plotly figures in the server holds the GIL against the training threads (py-spy on a watched demo:
    figure building was the largest part of a refresh), so a refresh that changes nothing builds nothing."""
    store = st.session_state.setdefault(FIGURES_KEY, {})
    kept = store.get(name)
    now = time.monotonic()
    if kept is not None and (kept[0] == version or now - kept[2] < min_interval):
        return kept[1]
    fig = build()
    store[name] = (version, fig, now)
    return fig


def recent_figure(name: str, settings: tuple, within: float):
    """The figure cached_figure kept as `name` if it was built less than `within` s ago with these
    `settings` (the first item of its version), else None: what lets a caller skip the work that
    comes before building it."""
    kept = st.session_state.get(FIGURES_KEY, {}).get(name)
    if kept is not None and kept[0][0] == settings and time.monotonic() - kept[2] < within:
        return kept[1]
    return None


def has_twin_map(view) -> bool:
    """Whether the view shows the twin's map beside the run's: the twin has snapshots, or trains and
    will have them, on the same probe. Decided from the start of training, so that neither map's
    element moves (a moved element is a new frame that loads plotly.js again) when the first come."""
    if view.twin_dir is None or not (view.twin_snapshots or view.twin_state in ACTIVE):
        return False
    return view.twin_probe is None or view.probe is None or len(view.twin_probe["split"]) == len(view.probe["split"])


def map_pair(lm: LiveMap, view, key: str, prefs: dict, height: int, presenter: bool = False,
             maps=None, replay=None, redraw_every: float | None = None, on_redraw=None) -> None:
    """The run's map, and the twin's beside it (same method, same step, aligned onto the run's map)
    when it has one, drawn in the container `maps`; the replay slider in `replay` (both default to
    where this is called, the slider above the maps). While training waits for its first snapshot,
    each map's element holds a message: its page and plotly.js load meanwhile.
    `redraw_every` (s; while training, the replay at the latest snapshot): the maps alone are drawn
    again this often, from the run read afresh, in a fragment of their own (a Streamlit redraw costs
    the browser by the elements it redraws: the rest of the live view can redraw less often; bench
    live --browser, BENCHMARKS.md). `on_redraw(view)` is called with the view each drawing of the maps
    shows, before them: what must agree with the maps (the step) is drawn with them."""
    replay = replay or st.container(horizontal=True, vertical_alignment="bottom")
    maps = maps or st.container()
    on_redraw = on_redraw or (lambda _: None)
    drawable = bool(view.snapshots) and view.probe is not None
    if not drawable and not view.active:
        on_redraw(view)
        return
    step = None
    if drawable:
        with replay:
            step = _replay_step(view, key)
    drawn = []  # the first drawing is part of the page's: the same view as the rest of it

    # always inside this fragment, polling or not: a map drawn at another place in the page would be a
    # new element, a new frame that loads plotly.js again (as when the first snapshot came)
    @st.fragment(run_every=redraw_every if step is None else None)
    def _maps_fragment() -> None:
        fresh = lm.read(view.run_dir) if drawn else view
        drawn.append(True)
        on_redraw(fresh)
        _maps(lm, fresh, key, prefs, height, step, presenter)

    with maps:
        _maps_fragment()


def _maps(lm: LiveMap, view, key: str, prefs: dict, height: int, step: int | None, presenter: bool) -> None:
    if not has_twin_map(view):
        _map_panel(lm, view, key, prefs, height, step, presenter=presenter)
        return
    with st.container(horizontal=True, gap="small"):  # ui.live's CSS: one under the other when narrow
        left, right = st.container(key=f"{key}_side_run"), st.container(key=f"{key}_side_twin")
    with left:
        ref, snap, top = _map_panel(lm, view, key, prefs, height, step, title=_side_title(view.lam),
                                    presenter=presenter)
    with right:
        _twin_map(lm, view, key, prefs, height, ref, int(snap["step"]) if snap is not None else 0,
                  live=step is None and view.active, top=top)


def _waiting(key: str, title: str, height: int) -> None:
    """A map's element before its first snapshot (the same element the map is drawn in)."""
    glide_chart(waiting_map("The concept map appears with the first snapshot,<br>a few seconds after training starts.",
                            title=title, height=height), key=key, height=height, config=MAP_TOOLS)


def _side_title(lam) -> str:
    return "Concept space" if lam is None else method_label(lam)


def _twin_map(lm: LiveMap, view, key: str, prefs: dict, height: int, ref_xy, step: int, live: bool = False,
              top: int = 0) -> None:
    """The twin's map: its snapshot at (or just before) the step on the run's map, aligned onto it,
    its plot level with it (`top`: the run's map's top margin, taller with D's region caption).
    `live` (training, no replay): laid out and drawn again at most every TWIN_MAP_S, unless a setting
    changed (each laid-out frame costs a UMAP refit that a 2-core machine takes from training), and
    its regions (if any) without hover, as the run's map."""
    twin, method = view.twin_dir, prefs["method"]
    name = "its DEML run" if view.lam == 0 else method_label(0.0)
    if ref_xy is None or not view.twin_snapshots or view.twin_probe is None:
        _waiting(f"{key}_twin_map", name, height)
        return
    settings = (twin, method, prefs["color"], prefs["regions"], name, height)
    fig = recent_figure(f"{key}_twin_map", settings, TWIN_MAP_S) if live else None
    try:
        if fig is None:
            xy, regions, snap = lm.twin_frame(view.twin_snapshots, view.twin_probe, ref_xy, step, run=twin,
                                              method=method, regions=prefs["regions"])
            if xy is None:
                _waiting(f"{key}_twin_map", name, height)
                return
            shown = lm.method_shown(twin, method) or method
            color = prefs["color"] if prefs["color"] in ("class", "split") or "disc_pred" in snap else "class"
            note = f"{METHOD_LABELS.get(shown, shown)}, turned to match the map beside it"
            if prefs["regions"] and regions is None and not bool(snap.get("disc_trained", True)):
                # why one map is shaded and not the other ("λ = 0" kept on one line: no-break spaces)
                note += ". No shading: with λ\u00a0=\u00a00 the discriminator never trains"
            fig = cached_figure(f"{key}_twin_map", (settings, int(snap["step"]), lm.layout_version(twin, method),
                                                    lm.layout_version(view.run_dir, method), note, regions is not None,
                                                    top, live),
                                lambda: concept_map(xy, view.twin_probe, snap, color_by=color, regions=regions,
                                                    method_note=note, title=f"{name} · step {int(snap['step'])}",
                                                    uirevision=f"{key}-twinmap-{twin}-{method}", height=height,
                                                    min_top=top, region_hover=not live))
    except ValueError as e:
        st.warning(f"The twin's concept map cannot be drawn: {e}")
        return
    glide_chart(fig, key=f"{key}_twin_map", height=height, config=MAP_TOOLS)


def _replay_step(view, key: str) -> int | None:
    """The snapshot step the replay slider points at (None: the latest, i.e. live). "▶ Play" beside it
    steps the slider through the snapshots in PLAY_S seconds, time spaced by training step."""
    steps = [int(s["step"]) for s in view.snapshots]
    if len(steps) < 2:
        return None
    options = steps[:-1] + [LATEST]
    playing = f"_{key}_playing"
    frame = None  # while playing: the snapshot step on screen
    if (play := st.session_state.get(playing)) is not None:
        started, first, last = play
        at = first + (time.monotonic() - started) / PLAY_S * (last - first)
        if at >= last:  # played to the end of its span (training may have gone on): the map is live again
            st.session_state.pop(playing)
        else:
            frame = max([s for s in steps if s <= at] or steps[:1])
    row = st.container(horizontal=True, vertical_alignment="bottom", key=f"{key}_replayrow")
    c1, c2 = row.container(width="stretch"), row.container(width="content")
    label = lambda o: f"latest (step {steps[-1]})" if o == LATEST else f"step {o}"  # noqa: E731
    if frame is None:
        choice = c1.select_slider("Replay", options=options, value=LATEST, key=f"{key}_replay", format_func=label,
                                  help="scrub through the snapshots of concept space taken during training")
    else:  # the slider follows the replay (a new one each frame: its value is the frame's step)
        choice = frame if frame != steps[-1] else LATEST
        c1.select_slider("Replay", options=options, value=choice, key=f"{key}_replay_at_{frame}",
                         format_func=label, disabled=True, help="replaying: ■ Stop to scrub by hand")
    on = frame is not None
    c2.button("■ Stop" if on else "▶ Play", key=f"{key}_play", width="stretch", on_click=_play,
              args=(key, None if on else (steps[0], steps[-1])),
              help="stop the replay" if on else f"replay training from step {steps[0]} in {PLAY_S:.0f} s")
    return None if choice == LATEST else int(choice)


def _play(key: str, span: tuple[int, int] | None) -> None:
    """Play's callback: start the replay over `span` (first, last step) now, or stop it (None)."""
    if span is None:
        st.session_state.pop(f"_{key}_playing", None)
    else:
        st.session_state[f"_{key}_playing"] = (time.monotonic(), *span)


def _map_panel(lm: LiveMap, view, key: str, prefs: dict, height: int, step: int | None,
               title: str | None = None, presenter: bool = False) -> tuple[np.ndarray | None, dict | None, int]:
    """The run's map at replay `step` (None: live); returns what the twin's map beside it follows:
    (xy, snapshot) shown and the figure's top margin (0 when none is drawn)."""
    run, method, want_regions = view.run_dir, prefs["method"], prefs["regions"]
    if not view.snapshots or view.probe is None:
        _waiting(f"{key}_map", title or "Concept space", height)
        return None, None, 0
    try:
        if step is None:
            xy, regions, note = lm.refresh(view.snapshots, view.probe, run=run, method=method, regions=want_regions)
            snap = view.snapshots[-1]
        else:
            with st.spinner("laying out earlier snapshots on the same map…"):
                xy, regions, snap = lm.frame_at(view.snapshots, view.probe, step, run=run, method=method,
                                                regions=want_regions)
            note = ""
        shown = lm.method_shown(run, method) or method
        n = len(view.probe["split"])
        method_note = note or f"{METHOD_LABELS.get(shown, shown)} of {n} probe images' concepts"
        color = prefs["color"] if prefs["color"] in ("class", "split") or "disc_pred" in snap else "class"
        rows_key = f"_{key}_rows"
        kept_run, rows = st.session_state.get(rows_key, (None, []))
        rows = [r for r in rows if r < n] if kept_run == run else []
        live = step is None and view.active  # redrawn every 2 s: regions without hover (~100 KB lighter)

        def build():
            fig = concept_map(xy, view.probe, snap, color_by=color, regions=regions, method_note=method_note,
                              title=title and f"{title} · step {int(snap['step'])}",
                              uirevision=f"{key}-map-{run}-{method}", height=height, region_hover=not live)
            _highlight(fig, rows)
            return fig

        fig = cached_figure(f"{key}_map", (run, int(snap["step"]), lm.layout_version(run, method), regions is not None, method_note,
                                           color, title, height, tuple(rows), live), build)
    except ValueError as e:  # e.g. concepts went NaN: say so, keep the page
        st.warning(f"The concept map cannot be drawn: {e}")
        return None, None, 0
    picked = selected_rows(glide_chart(fig, key=f"{key}_map", height=height, config=MAP_TOOLS))
    if picked and picked != st.session_state.get(f"_{key}_taken"):
        # the map hands back its last selection at every redraw: so the rows are kept here, drawn as
        # the selection until a different one or "Clear selection", and a selection is taken once
        st.session_state[rows_key] = (run, picked)
        st.session_state[f"_{key}_taken"] = rows = picked
    if rows:
        _selection_panel(view, snap, rows, key)
    elif not presenter:  # a room watches presenter view: no how-to under the map
        st.caption("Lasso or box-select points (tools at the top right of the map) to see their images; "
                   "click one point to see its nearest neighbours in concept space.")
    return xy, snap, int(fig.layout.margin.t or 0)


def _highlight(fig, rows: list[int]) -> None:
    """Show `rows` as the map's selected points (others dimmed)."""
    wanted = set(rows)
    for trace in fig.data:
        cd = getattr(trace, "customdata", None)
        if cd is None or trace.type not in ("scatter", "scattergl"):
            continue
        trace.selectedpoints = [i for i, c in enumerate(cd) if int(c[0]) in wanted] if wanted else None


def _selection_panel(view, snap: dict, rows: list[int], key: str) -> None:
    probe = view.probe
    names = np.asarray(probe["class_name"]).astype(str)
    if len(rows) == 1:
        r = rows[0]
        nn = nearest_neighbours(np.asarray(snap["concepts"]), r, k=NEIGHBOURS).tolist()
        shown = [r] + nn
        captions = [f"selected: {names[r]}"] + [f"#{i + 1} nearest: {names[j]}" for i, j in enumerate(nn)]
        title = f"{names[r]} and its {len(nn)} nearest neighbours in concept space (step {int(snap['step'])})"
    else:
        shown = rows[:MAX_THUMBS]
        captions = [names[j] for j in shown]
        more = f" (first {MAX_THUMBS})" if len(rows) > MAX_THUMBS else ""
        title = f"{len(rows)} selected images{more}"
    st.plotly_chart(thumbnail_grid(probe["images"][shown], captions=captions, columns=9, title=title,
                                   uirevision=f"{key}-thumbs"), key=f"{key}_thumbs", width="stretch", theme=None)
    st.button("Clear selection", key=f"{key}_clear", on_click=_clear, args=(f"_{key}_rows",))


def _clear(rows_key: str) -> None:
    st.session_state.pop(rows_key, None)
