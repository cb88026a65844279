"""The Train page, driven through Streamlit's AppTest (no browser). AppTest does not fire the
fragment's run_every, so each test waits on the job itself and then reruns the page."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine import config
from engine.config import REPO
from engine.eval.twins import find_twin, twin_dir_for
from engine.runs import RunDir
from engine.train.job import REGISTRY
from engine.viz import project
from tests.conftest import glide_maps, kept_plots
from ui import live, live_maps

TINY_DEMO = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=8, width=8, meta_batch=2, ext_batch=8,
                 val_every=4, val_episodes=8, snapshot_every=4, checkpoint_every=8, probe_classes=4,
                 probe_per_class=3)


@pytest.fixture
def page(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ is created in the working directory
    monkeypatch.delenv("CONCEPTSCAPE_RUNS", raising=False)
    monkeypatch.setitem(config.PRESETS, "demo", TINY_DEMO)
    monkeypatch.setattr(project, "start_umap_warmup", lambda: None)  # no background compile in tests
    return AppTest.from_file(str(REPO / "app_pages" / "2_Train.py"), default_timeout=60)


def start(at: AppTest, **values) -> str:
    for key, value in values.items():
        widget = at.checkbox(key=key) if key == "train_twin" else at.number_input(key=key)
        widget.set_value(value)
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    return at.query_params.get("run")


def wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_renders_empty(page):
    page.run()
    assert not page.exception
    assert page.title[0].value == "Train"
    assert [b.label for b in page.button] == ["Start"]
    assert page.number_input(key="train_steps").value == TINY_DEMO["steps"]  # the demo preset's settings
    assert not page.get("plotly_chart")


def test_start_pause_resume_stop(page):
    page.run()
    run = start(page, train_steps=100_000)
    assert run and run.startswith("runs/")
    job = REGISTRY.get(run)  # the process-wide registry holds it: a refresh finds it again
    assert job is not None
    try:
        wait_for(lambda: job.state == "running" or job.done)
        assert job.state == "running", job.error
        wait_for(lambda: len(job.snapshots()) >= 1 or job.done)
        page.run()
        # while it trains, the map (drawn again every 2 s) shades D's regions without a name per cell
        (heat,) = [t for t in glide_maps(page)["live_map"]["data"] if t["type"] == "heatmap"]
        assert heat.get("hoverinfo") == "skip" and "text" not in heat
        page.button(key="live_pause").click().run()
        assert job.state == "paused"
        step = job.progress()["step"]
        time.sleep(0.3)
        assert job.progress()["step"] <= step + 1  # at most the step under way when paused
        page.button(key="live_resume").click().run()
        assert job.state == "running"
        page.button(key="live_stop").click().run()
        assert job.join(60) and job.state == "stopped"
    finally:
        job.stop()
        job.join(60)
    page.run()
    assert not page.exception
    assert any("stopped" in p.proto.text for p in page.get("progress"))
    assert not page.button(key="live_resume").disabled  # a stopped run can continue from its checkpoint


def test_finished_short_run_shows_map_curves_and_replay(page):
    page.run()
    run = start(page)
    job = REGISTRY.get(run)
    assert job.join(60) and job.state == "finished", job.error
    page.run()
    assert not page.exception
    # the concept map, the training curves and the adaptation curves
    assert list(kept_plots(page)) == ["live_map", "live_curves", "live_adaptation"]
    assert glide_maps(page)["live_map"]["layout"]["title"]["text"] == "<b>Concept space at step 8</b>"
    (heat,) = [t for t in glide_maps(page)["live_map"]["data"] if t["type"] == "heatmap"]
    assert "D predicts" in heat["hovertemplate"]  # a finished run's map: the regions say what D predicts
    assert any(t.get("name") == "meta loss" for t in kept_plots(page)["live_curves"]["data"])
    assert page.metric[0].label == "Validation accuracy"
    assert any("step 8/8" in p.proto.text for p in page.get("progress"))
    replay = page.select_slider(key="live_replay")
    replay.set_value(4).run()  # an earlier snapshot, on the same map
    assert not page.exception
    assert glide_maps(page)["live_map"]["layout"]["title"]["text"] == "<b>Concept space at step 4</b>"
    page.selectbox(key="live_method").set_value("t-SNE").run()
    page.selectbox(key="live_color").set_value("correct").run()
    page.toggle(key="live_regions").set_value(False).run()
    assert not page.exception
    page.toggle(key="presenter").set_value(True).run()  # presenter view: no controls, bigger charts
    assert not page.exception
    # no Start, Pause, Resume, Stop, no settings: only the replay's Play
    assert [b.key for b in page.button] == ["live_play"] and not page.selectbox
    plots = kept_plots(page)
    assert list(plots) == ["live_map", "live_curves", "live_adaptation"]
    assert plots["live_map"]["layout"]["height"] == live.PRESENTER_MAP_HEIGHT


def test_play_steps_the_replay_through_the_snapshots(page, monkeypatch):
    monkeypatch.setattr(live_maps, "PLAY_S", 1.0)
    page.run()
    job = REGISTRY.get(start(page))
    assert job.join(60) and job.state == "finished", job.error
    page.run()
    steps = [int(s["step"]) for s in job.snapshots()]
    assert page.select_slider(key="live_replay").value == "latest"
    page.button(key="live_play").click().run()
    assert not page.exception
    title = lambda: glide_maps(page)["live_map"]["layout"]["title"]["text"]  # noqa: E731
    assert title() == f"<b>Concept space at step {steps[0]}</b>"  # from the first snapshot
    assert page.button(key="live_play").label == "■ Stop"
    seen = set()
    deadline = time.monotonic() + 10
    while page.button(key="live_play").label == "■ Stop" and time.monotonic() < deadline:
        time.sleep(0.1)
        page.run()  # AppTest does not fire the fragment's run_every: rerun by hand
        seen.add(title())
    assert title() == f"<b>Concept space at step {steps[-1]}</b>"  # played to the end: live again
    assert page.select_slider(key="live_replay").value == "latest"
    assert page.button(key="live_play").label == "▶ Play"
    assert len(seen) >= 2  # it went through snapshots on the way


def test_bad_settings_show_the_engines_message(page):
    page.run()
    run = start(page, train_lr=0.0)
    assert run is None  # nothing started
    assert "learning rates must be positive" in page.error[0].value
    start(page, train_lr=0.001, train_ways=1)
    assert "--ways must be at least 2" in page.error[0].value


def test_twin_trains_beside_the_run_and_pairs(page):
    page.run()
    run = start(page, train_twin=True, train_steps=4)
    twin = twin_dir_for(run)
    jobs = [REGISTRY.get(run), REGISTRY.get(twin)]
    assert all(j is not None for j in jobs)
    for j in jobs:
        assert j.join(60) and j.state == "finished", j.error
    assert find_twin(run) == twin and find_twin(twin) == run
    assert json.loads((Path(twin) / "config.json").read_text())["config"]["lam"] == 0
    page.run()
    assert not page.exception
    charts = kept_plots(page)
    assert list(charts)[:3] == ["live_map", "live_twin_map", "live_curves"]  # the twin's map beside the run's
    assert charts["live_twin_map"]["layout"]["title"]["text"].startswith("<b>vanilla (λ = 0) · step")
    notes = " ".join(a["text"] for a in charts["live_twin_map"]["layout"]["annotations"]).replace("<br>", " ")
    assert "No shading: with λ\u00a0=\u00a00 the discriminator never trains" in notes.replace("</i> <i>", " ")  # why unshaded
    curves = charts["live_curves"]
    assert any("λ = 0" in (t.get("name") or "") for t in curves["data"])  # the twin, dashed beside it
    assert any("λ = 0 twin: finished" in p.proto.text for p in page.get("progress"))
    page.query_params["run"] = twin  # the twin's own view: the DEML run is drawn solid beside it
    page.run()
    assert not page.exception
    charts = kept_plots(page)
    assert "λ = 0 run dashed" in charts["live_curves"]["layout"]["title"]["text"]
    assert charts["live_twin_map"]["layout"]["title"]["text"].startswith("<b>its DEML run · step")
    assert "No shading" not in str(charts["live_twin_map"]["layout"]["annotations"])  # the DEML run's D trains



def test_settings_the_data_cannot_fit_say_what_fits_in_the_forms_words_and_a_run_gets_its_name(page):
    page.run()
    assert start(page, train_ways=100) is None  # 60 classes
    assert page.error[0].value.startswith("N (ways) = 100 needs 100 classes in meta-train")
    assert "--ways" not in page.error[0].value
    page.text_input(key="train_name").set_value("  tiny   letters ")
    run = start(page, train_ways=5)
    assert run is not None
    wait_for(lambda: (Path(run) / "name.json").exists())
    assert RunDir(run).run_name() == "tiny letters"
    REGISTRY.get(run).stop()
