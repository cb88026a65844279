"""The home page, driven through Streamlit's AppTest (no browser)."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine import config
from engine.config import REPO
from engine.train.job import REGISTRY

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
    assert running is not None
    assert running.join(60), "the demo job did not finish"
    assert running.state == "finished", running.error
    app.run()  # AppTest does not fire run_every by itself: rerun after the job ends
    assert not app.exception
    charts = app.get("plotly_chart")
    assert len(charts) == 2  # training curves and the concept map
    assert (tmp_path / run_dir / "metrics.jsonl").is_file()
    assert any("step 8/8" in p.proto.text for p in app.get("progress"))
