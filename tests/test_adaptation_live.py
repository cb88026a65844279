"""The live adaptation curves: the pure figure (engine.viz.charts.adaptation_live) and its place in
the live view of the Train page (AppTest on a finished tiny run)."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine import config
from engine.config import REPO
from engine.train.job import REGISTRY
from engine.viz import project
from engine.viz.charts import live_adaptation_curves
from engine.viz.charts.adaptation_live import EARLIER_WIDTH, LATEST_WIDTH, MAX_CURVES
from tests.conftest import kept_plots


def curve(step, acc, axis="shots", ways=5):
    x = list(range(1, len(acc) + 1)) if axis == "shots" else list(range(len(acc)))
    return {"kind": "adaptation", "step": step, "axis": axis, "x": x, "accuracy": acc, "ways": ways}


RUN = [{"kind": "train", "step": 1, "meta_loss": 1.0}, curve(10, [0.3, 0.4, 0.45]),
       {"kind": "val", "step": 10, "val_acc": 0.4}, curve(20, [0.35, 0.5, 0.55]), curve(30, [0.4, 0.6, 0.7])]
TWIN = [curve(10, [0.3, 0.35, 0.4]), curve(20, [0.3, 0.4, 0.5])]


def curves_of(fig, run):
    return [t for t in fig.data if (t.meta or {}).get("run") == run]


def test_one_trace_per_curve_latest_widest_older_fading_twin_dashed_and_chance():
    fig = live_adaptation_curves(RUN, TWIN, name="DEML", twin_name="λ = 0 twin")
    main, twin = curves_of(fig, "DEML"), curves_of(fig, "λ = 0 twin")
    assert len(main) == 3 and len(twin) == 2  # one trace per curve, train and val records ignored
    assert [t.meta["step"] for t in main] == [30, 20, 10]  # the latest first (it leads the legend)
    assert list(main[0].y) == [0.4, 0.6, 0.7] and list(main[0].x) == [1, 2, 3]
    assert main[0].line.width == LATEST_WIDTH and all(t.line.width == EARLIER_WIDTH < LATEST_WIDTH for t in main[1:])
    opacities = [t.opacity for t in main]
    assert opacities[0] == 1.0 and opacities == sorted(opacities, reverse=True) and opacities[-1] < 0.5
    assert [t.showlegend for t in main] == [True, False, False]
    assert all(t.line.dash == "dash" for t in twin) and all(t.line.dash is None for t in main)
    assert twin[0].opacity == 1.0 and twin[1].opacity < 1.0
    chance = [t for t in fig.data if (t.meta or {}).get("chance")]
    assert len(chance) == 1 and list(chance[0].y) == [0.2, 0.2] and chance[0].name == "chance (1/5)"
    assert list(chance[0].x) == [1, 3] and chance[0].line.dash == "dot"
    assert len(fig.data) == 3 + 2 + 1
    assert fig.layout.xaxis.title.text == "shots"
    assert tuple(fig.layout.yaxis.range) == (0, 1.02) and fig.layout.yaxis.tickformat == ".0%"
    assert fig.layout.uirevision == "adaptation-live"


def test_the_twin_is_drawn_no_further_than_the_run():
    """The twin trains faster (no discriminator): its bold curve is at the run's latest step, not beyond."""
    fig = live_adaptation_curves(RUN[:2], TWIN, name="DEML", twin_name="λ = 0 twin")  # DEML validated at step 10 only
    assert [t.meta["step"] for t in curves_of(fig, "λ = 0 twin")] == [10]
    assert curves_of(fig, "λ = 0 twin")[0].name == "λ = 0 twin, step 10"


def test_inner_steps_axis_and_a_run_alone():
    fig = live_adaptation_curves([curve(5, [0.2, 0.5, 0.6], axis="inner_steps", ways=4)])
    assert fig.layout.xaxis.title.text == "inner steps"
    (only,) = curves_of(fig, "this run")
    assert list(only.x) == [0, 1, 2] and only.line.width == LATEST_WIDTH and only.opacity == 1.0
    assert [t.name for t in fig.data if (t.meta or {}).get("chance")] == ["chance (1/4)"]


def test_many_validations_show_evenly_spaced_curves_always_the_latest():
    many = [curve(s, [0.2, 0.3]) for s in range(10, 1010, 10)]
    fig = live_adaptation_curves(many)
    steps = [t.meta["step"] for t in curves_of(fig, "this run")]
    assert len(steps) == MAX_CURVES and steps[0] == 1000 and steps[-1] == 10


def test_no_curves_yet_and_malformed_ones_give_an_empty_chart():
    bad = {**curve(10, [0.3, 0.4]), "accuracy": [0.3, 7.0]}
    fig = live_adaptation_curves([{"kind": "train", "step": 1}, bad])
    assert not fig.data
    assert any(a.name == "empty" for a in fig.layout.annotations)


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="inner steps with curves against shots"):
        live_adaptation_curves([curve(1, [0.2, 0.3])], [curve(1, [0.2, 0.3], axis="inner_steps")])
    with pytest.raises(ValueError, match="list of metric records"):
        live_adaptation_curves(curve(1, [0.2]))
    with pytest.raises(ValueError, match="max_curves"):
        live_adaptation_curves(RUN, max_curves=0)


# ------------------------------------------------------------------------------ the live view
TINY_DEMO = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=8, width=8, meta_batch=2, ext_batch=8,
                 val_every=4, val_episodes=8, snapshot_every=4, checkpoint_every=8, probe_classes=4,
                 probe_per_class=3)


def test_train_page_shows_the_adaptation_chart_of_a_finished_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONCEPTSCAPE_RUNS", raising=False)
    monkeypatch.setitem(config.PRESETS, "demo", TINY_DEMO)
    monkeypatch.setattr(project, "start_umap_warmup", lambda: None)
    at = AppTest.from_file(str(REPO / "app_pages" / "2_Train.py"), default_timeout=60).run()
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    job = REGISTRY.get(at.query_params.get("run"))
    assert job.join(60) and job.state == "finished", job.error
    at.run()
    assert not at.exception
    fig = kept_plots(at)["live_adaptation"]
    assert fig["layout"]["title"]["text"] == "<b>Adaptation at each validation</b>"
    lines = [t for t in fig["data"] if (t.get("meta") or {}).get("run")]
    assert [t["meta"]["step"] for t in lines] == [8, 4]  # validations at 4 and 8, the latest first
    assert fig["layout"]["xaxis"]["title"]["text"] == "shots"  # the demo's learner is a metric learner
