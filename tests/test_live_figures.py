"""The live view builds a figure again only when what it draws changed (building plotly figures in
the server holds the GIL against the training threads)."""
from __future__ import annotations

import streamlit as st

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
