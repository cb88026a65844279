"""Presenter (kiosk) view in a real Chromium at 1366x768 and 1920x1080: both concept maps (DEML and its λ = 0 twin), the paired headline, no sidebar, no Streamlit toolbar or Deploy
button, the run's name as the headline, and the concept map and the curves on screen without
scrolling. Screenshots go to CONCEPTSCAPE_SHOTS (default: the test's temporary folder) for a person."""
from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest

from engine.config import preset
from engine.eval.twins import twin_dir_for
from engine.train.launch import start_run
from tests.test_browser import browser, server, settle, wait_for_map  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TINY_DEMO = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=8, width=8, meta_batch=2, ext_batch=8,
                 val_every=4, val_episodes=8, snapshot_every=4, checkpoint_every=8, probe_classes=4,
                 probe_per_class=3)
BOX = """sel => { const e = document.querySelector(sel); if (!e) return null;
    const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left, right: r.right,
    visible: r.width > 0 && r.height > 0 && getComputedStyle(e).display !== 'none'}; }"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The server's runs folder, holding one finished tiny demo run and its λ = 0 twin (named as
    Start demo names them)."""
    root = tmp_path_factory.mktemp("app")
    cfg = preset("demo").with_overrides(**TINY_DEMO, train_limit=0)  # 3 tiny alphabets: all meta-train
    out = str(root / "runs" / "20260101-120000-demo")
    for c, d in ((cfg, out), (cfg.with_overrides(lam=0.0), twin_dir_for(out))):
        trainer, run = start_run(c, d)
        trainer.run(run)
    return root


def _in_viewport(page, selector: str, width: int, height: int) -> dict:
    box = page.evaluate(BOX, selector)
    assert box is not None and box["visible"], f"{selector} is not shown"
    assert box["top"] >= 0 and box["left"] >= 0 and box["bottom"] <= height and box["right"] <= width, (selector, box)
    return box


@pytest.mark.parametrize("width,height", [(1366, 768), (1920, 1080)])
def test_presenter_view_fits_the_screen(browser, server, workdir, tmp_path, width, height):  # noqa: F811
    """Both concept maps (DEML and its λ = 0 twin), their plots level, the training and adaptation
    curves and the paired headline on one screen."""
    shots = Path(os.environ.get("CONCEPTSCAPE_SHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    run = str(workdir / "runs" / "20260101-120000-demo")
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{server}/?run={urllib.parse.quote(run)}&presenter=1")
        settle(page)
        for chart in ("live_map", "live_twin_map"):
            wait_for_map(page, chart)
        page.frame_locator(".st-key-live_curves iframe").locator(".main-svg").first.wait_for()
        settle(page)
        page.screenshot(path=str(shots / f"presenter-{width}x{height}.png"))
        assert page.get_by_text("Demo · Prototypical networks DEML (λ = 3) · step 8/8").is_visible()
        assert page.title() == "Demo · Conceptscape"  # the tab names the run
        headline = page.get_by_text("DEML vs vanilla:").first
        assert headline.is_visible() and "validation accuracy, 8 episodes, paired" in headline.inner_text()
        hb = headline.bounding_box()
        assert hb["y"] >= 0 and hb["y"] + hb["height"] <= height
        for chrome in ("stToolbar", "stAppDeployButton", "stMainMenu", "stStatusWidget", "stDecoration"):
            box = page.evaluate(BOX, f'[data-testid="{chrome}"]')
            assert box is None or not box["visible"], f"{chrome} is shown in presenter view"
        sidebar = page.evaluate(BOX, '[data-testid="stSidebar"]')
        assert sidebar is None or not sidebar["visible"] or sidebar["right"] <= 0, "the sidebar is open"
        assert page.get_by_role("button", name="Start demo").count() == 0
        maps = [_in_viewport(page, f".st-key-{c} iframe", width, height) for c in ("live_map", "live_twin_map")]
        assert maps[0]["right"] <= maps[1]["left"]  # side by side, the DEML map first
        _in_viewport(page, ".st-key-live_curves iframe", width, height)
        _in_viewport(page, ".st-key-live_adaptation iframe", width, height)  # whole, not cut at the bottom
        # the two maps' plots level with each other (D's region caption over the DEML one only)
        plots = [page.frame_locator(f".st-key-{c} iframe").locator(".nsewdrag").first.bounding_box()
                 for c in ("live_map", "live_twin_map")]
        assert abs(plots[0]["y"] - plots[1]["y"]) <= 2, plots
        title = page.frame_locator(".st-key-live_twin_map iframe").locator(".gtitle").first.text_content()
        assert title.startswith("vanilla (λ = 0) · step 8")

        # the same page without presenter view: the sidebar and the controls are back
        page.goto(f"{server}/?run={urllib.parse.quote(run)}")
        settle(page)
        wait_for_map(page)
        assert page.evaluate(BOX, '[data-testid="stSidebar"]')["right"] > 0
        assert page.get_by_role("button", name="Stop", exact=True).count() >= 1
        page.screenshot(path=str(shots / f"home-run-{width}x{height}.png"))
    finally:
        context.close()


def test_plot_toolbars_never_cover_titles_on_a_phone(browser, server, workdir, tmp_path):  # noqa: F811
    """At 390 px the plots' toolbars (shown while the pointer is over a plot) stand clear of the titles."""
    shots = Path(os.environ.get("CONCEPTSCAPE_SHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    run = str(workdir / "runs" / "20260101-120000-demo")
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{server}/?run={urllib.parse.quote(run)}")
        settle(page)
        wait_for_map(page)
        for key in ("live_map", "live_twin_map", "live_curves", "live_adaptation"):
            frame = page.frame_locator(f".st-key-{key} iframe")
            frame.locator(".main-svg").first.wait_for()
            page.locator(f".st-key-{key}").scroll_into_view_if_needed()
            frame.locator(".main-svg").first.hover()
            bar = frame.locator(".modebar").first
            bar.wait_for()
            b, t = bar.bounding_box(), frame.locator(".gtitle").first.bounding_box()
            assert b and t, key
            apart = (b["x"] >= t["x"] + t["width"] or t["x"] >= b["x"] + b["width"]
                     or b["y"] >= t["y"] + t["height"] or t["y"] >= b["y"] + b["height"])
            assert apart, (key, b, t)
            page.screenshot(path=str(shots / f"toolbar-390-{key}.png"))
    finally:
        context.close()


def test_a_replay_plays_the_map_through_its_steps_without_fading(browser, server, workdir):  # noqa: F811
    """▶ Play redraws the view every 0.4 s: the map's title walks through the snapshot steps, and nothing
    of the live view takes Streamlit's faded "stale" look meanwhile (it did, at a third of full opacity)."""
    run = str(workdir / "runs" / "20260101-120000-demo")
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.set_default_timeout(60_000)
    faded = """() => Math.min(...[...document.querySelectorAll('[data-testid=stElementContainer]')]
        .filter(e => e.closest('[class*=st-key-live_]')).map(e => +getComputedStyle(e).opacity))"""
    try:
        page.goto(f"{server}/?run={urllib.parse.quote(run)}")
        settle(page)
        wait_for_map(page)
        title = page.frame_locator(".st-key-live_map iframe").locator(".gtitle").first
        page.get_by_role("button", name="▶ Play").click()
        opacities, titles = [], set()
        for _ in range(30):
            page.wait_for_timeout(150)
            opacities.append(page.evaluate(faded))
            titles.add(title.text_content())
        assert min(opacities) == 1, opacities
        assert len(titles) >= 2, titles  # the replay moved the map through earlier steps
    finally:
        context.close()
