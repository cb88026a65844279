"""The home page, driven through Streamlit's AppTest (no browser)."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine import config
from engine.config import REPO
from engine.eval.twins import twin_dir_for
from engine.services.training import is_demo_dir
from engine.train.job import REGISTRY
from tests.conftest import glide_maps, kept_plots
from ui.common import RUN_KEY

TINY_DEMO = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=8, width=8, meta_batch=2, ext_batch=8,
                 val_every=4, val_episodes=8, snapshot_every=4, checkpoint_every=8)


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo writes runs/ into the working directory
    monkeypatch.setitem(config.PRESETS, "demo", TINY_DEMO)
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=60)


def test_home_renders_empty(app):
    app.run()
    assert not app.exception
    assert app.title[0].value == "Conceptscape"
    assert [b.label for b in app.button] == ["Start demo"]
    assert not app.get("plotly_chart")


def test_start_demo_trains_and_shows_live_view(app, tmp_path):
    app.run()
    app.button[0].click().run()
    assert not app.exception
    run_dir = app.query_params["run"]
    assert run_dir.startswith("runs/") and run_dir.endswith("-demo")
    running = REGISTRY.get(run_dir)  # jobs live in the process-wide registry, not the session
    twin = REGISTRY.get(twin_dir_for(run_dir))  # Start demo trains its λ = 0 twin beside it
    assert running is not None and twin is not None
    assert running.join(60) and twin.join(60), "the demo jobs did not finish"
    assert running.state == twin.state == "finished", (running.error, twin.error)
    app.run()  # AppTest does not fire run_every by itself: rerun after the job ends
    assert not app.exception
    # the DEML map and the λ = 0 twin's beside it, the training curves and the adaptation curves
    assert list(glide_maps(app)) == ["live_map", "live_twin_map"]
    assert [k for k in kept_plots(app) if k not in glide_maps(app)] == ["live_curves", "live_adaptation"]
    assert any(m.value.startswith("**DEML vs vanilla:") for m in app.markdown)  # the paired headline
    assert (tmp_path / run_dir / "metrics.jsonl").is_file()
    assert any("step 8/8" in p.proto.text for p in app.get("progress"))


def test_router_serves_every_page_under_one_presenter_toggle(app, tmp_path, monkeypatch):
    """app.py runs the page asked for; the Presenter view toggle is the router's, so it keeps its state
    from page to page (a widget drawn by a page is that page's own)."""
    assert not (REPO / "pages").exists()  # that name puts Streamlit in its legacy page mode (see app.py)
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(tmp_path / "runs"))
    app.run()
    app.toggle(key="presenter").set_value(True).run()
    for path, title in (("app_pages/1_Data.py", "Data"), ("app_pages/2_Train.py", "Train"),
                        ("app_pages/3_Adapt.py", "Adapt"), ("app_pages/4_Runs.py", "Runs"),
                        ("app_pages/0_Home.py", "Conceptscape")):
        app.switch_page(path).run()
        assert not app.exception, (path, app.exception)
        assert app.title[0].value == title
        assert len(app.sidebar.toggle) == 1 and app.toggle(key="presenter").value, path


def test_run_kept_across_pages(app, tmp_path, monkeypatch):
    """The sidebar's page links carry no ?run=: the router puts the session's run back in the URL."""
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(tmp_path / "runs"))
    (tmp_path / "runs" / "kept").mkdir(parents=True)
    run = str(tmp_path / "runs" / "kept")
    app.query_params["run"] = run
    app.switch_page("app_pages/2_Train.py").run()
    assert not app.exception
    for path in ("app_pages/1_Data.py", "app_pages/4_Runs.py", "app_pages/0_Home.py", "app_pages/2_Train.py"):
        app.query_params.pop("run", None)  # what a sidebar link does
        app.switch_page(path).run()
        assert not app.exception, (path, app.exception)
        assert app.query_params.get("run") == run, path


def test_refused_run_is_not_kept(app, tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    app.query_params["run"] = str(tmp_path)  # the runs root's parent: refused
    app.run()
    assert "run" not in app.query_params
    assert any("outside this app's runs folder" in w.value for w in app.warning)
    app.switch_page("app_pages/1_Data.py").run()
    assert "run" not in app.query_params and not app.warning


def test_start_demo_twice_is_one_demo(app):
    app.run()
    app.button(key="start_demo").click().run()
    assert not app.exception
    first = app.query_params["run"]
    job = REGISTRY.get(first)
    job.pause()  # keep it training (paused counts) while the page is used again
    try:
        assert app.button[0].label == "Start another demo"  # the demo shown is the one training
        app.query_params.pop("run")  # e.g. a fresh visitor: the page offers the running demo
        app.session_state[RUN_KEY] = None
        app.run()
        assert [b.label for b in app.button][:2] == ["Show the running demo", "Start another demo"]
        app.button(key="start_demo").click().run()
        assert not app.exception
        assert app.query_params["run"] == first
        demos = [j.run_dir for j in REGISTRY.active() if is_demo_dir(j.run_dir)]
        assert demos == [first]
        assert sorted(j.run_dir for j in REGISTRY.active()) == [first, twin_dir_for(first)]  # one pair
    finally:
        for j in (job, REGISTRY.get(twin_dir_for(first))):
            j.stop()
            j.resume()
            j.join(60)


def test_presenter_from_url(app, tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(tmp_path / "runs"))
    app.query_params["presenter"] = "1"
    app.run()
    assert not app.exception
    assert app.toggle(key="presenter").value
    assert not app.button  # no Start demo in presenter view
    assert any("stToolbar" in h.proto.body for h in app.get("html"))
