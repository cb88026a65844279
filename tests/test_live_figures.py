"""The live view builds a figure again only when what it draws changed (building plotly figures in
the server holds the GIL against the training threads), and its maps keep their elements from the start."""
from __future__ import annotations

import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import glide_maps
from ui import live_maps


def test_cached_figure_builds_only_on_a_new_version(monkeypatch):
    st.session_state.pop(live_maps.FIGURES_KEY, None)
    built = []

    def build():
        built.append(1)
        return {"n": len(built)}

    first = live_maps.cached_figure("map", ("run", 10), build)
    assert live_maps.cached_figure("map", ("run", 10), build) is first and len(built) == 1  # nothing new
    assert live_maps.cached_figure("map", ("run", 20), build) == {"n": 2}  # a new snapshot: drawn again
    assert live_maps.cached_figure("curves", ("run", 20), build) == {"n": 3}  # figures kept by name
    # a minimum interval: a new version within it keeps the figure on screen, after it builds
    clock = iter([100.0, 100.5, 103.0])
    monkeypatch.setattr(live_maps.time, "monotonic", lambda: next(clock))
    kept = live_maps.cached_figure("curves2", (1,), build, min_interval=2.0)
    assert live_maps.cached_figure("curves2", (2,), build, min_interval=2.0) is kept
    assert live_maps.cached_figure("curves2", (3,), build, min_interval=2.0) is not kept


def test_recent_figure_is_the_kept_one_only_with_the_same_settings_and_within_the_time(monkeypatch):
    st.session_state.pop(live_maps.FIGURES_KEY, None)
    clock = iter([100.0, 101.0, 105.0])  # read when the settings match
    monkeypatch.setattr(live_maps.time, "monotonic", lambda: next(clock))
    fig = live_maps.cached_figure("twin", (("run", "umap"), 7), lambda: {"step": 7})  # built at 100
    assert live_maps.recent_figure("twin", ("run", "umap"), within=4.0) is fig  # 1 s later
    assert live_maps.recent_figure("twin", ("run", "pca"), within=4.0) is None  # a setting changed
    assert live_maps.recent_figure("twin", ("run", "umap"), within=4.0) is None  # 5 s later
    assert live_maps.recent_figure("other", ("run", "umap"), within=4.0) is None


def test_before_the_first_snapshots_both_maps_wait_in_their_own_elements():
    """A demo pair that is starting: the run's map and the twin's are drawn as messages, in the
    elements (same keys, same containers) where the maps will be, so nothing moves when they come."""
    def page():
        from engine.records import RunState
        from engine.viz.live import LiveMap
        from engine.viz.run_view import RunView
        from ui.live_maps import has_twin_map, map_pair

        view = RunView("runs/x-demo", "job", RunState.STARTING, twin_dir="runs/x-demo-lam0",
                       twin_state=RunState.STARTING)
        assert has_twin_map(view)
        map_pair(LiveMap(warm_up=False), view, "live", {"method": "umap", "color": "class", "regions": True},
                 height=420)

    at = AppTest.from_function(page, default_timeout=60).run()
    assert not at.exception, at.exception
    maps = glide_maps(at)
    assert list(maps) == ["live_map", "live_twin_map"]
    for fig in maps.values():
        assert [a["text"] for a in fig["layout"]["annotations"]][0].startswith("The concept map appears with the first snapshot")
        assert fig["layout"]["height"] == 420 and not fig.get("data")
