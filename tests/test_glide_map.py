"""ui.glide_map: the concept maps' component (its page and plotly.js served from one folder; the figure
handed over whole, as tall as the figure). The gliding itself is checked in Chromium (tests/test_browser.py)."""
from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from ui import glide_map


def test_the_component_folder_holds_the_page_and_plotly_js(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_CACHE", str(tmp_path))
    folder = glide_map.component_folder()
    assert (folder / "index.html").read_bytes() == glide_map.PAGE.read_bytes()
    assert (folder / "plotly.min.js").stat().st_size == glide_map.PLOTLY_JS.stat().st_size
    assert glide_map.component_folder() == folder  # made once per version
    assert [p.name for p in (tmp_path / "components").iterdir()] == [folder.name]  # no staging folder left


def test_the_figure_goes_whole_and_the_frame_is_as_tall_as_the_figure():
    def page():
        import plotly.graph_objects as go

        from ui.glide_map import glide_chart

        fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4], customdata=[[0], [1]]), layout={"height": 700})
        glide_chart(fig, key="m", height=500, config={"displaylogo": False})

    at = AppTest.from_function(page, default_timeout=60).run()
    assert not at.exception
    (element,) = at.get("component_instance")
    args = json.loads(element.proto.json_args)
    assert element.key == "m" and args["height"] == 700 and args["glide"] is True  # a region key makes maps taller
    assert json.loads(args["spec"])["data"][0]["customdata"] == [[0], [1]] and args["config"] == {"displaylogo": False}
