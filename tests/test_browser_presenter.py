"""Presenter (kiosk) view in a real Chromium at 1366x768: no sidebar, no Streamlit toolbar or Deploy
button, the run's name as the headline, and the concept map and the curves on screen without
scrolling. Screenshots go to CONCEPTSCAPE_SHOTS (default: the test's temporary folder) for a person."""
from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest

from engine.config import preset
from engine.train.launch import start_run
from tests.test_browser import browser, server, settle  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TINY_DEMO = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=8, width=8, meta_batch=2, ext_batch=8,
                 val_every=4, val_episodes=8, snapshot_every=4, checkpoint_every=8, probe_classes=4,
                 probe_per_class=3)
BOX = """sel => { const e = document.querySelector(sel); if (!e) return null;
    const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left, right: r.right,
    visible: r.width > 0 && r.height > 0 && getComputedStyle(e).display !== 'none'}; }"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The server's runs folder, holding one finished tiny demo run (named as Start demo names them)."""
    root = tmp_path_factory.mktemp("app")
    trainer, run = start_run(preset("demo").with_overrides(**TINY_DEMO), str(root / "runs" / "20260101-120000-demo"))
    trainer.run(run)
    return root


def test_presenter_view_fits_a_1366x768_screen(browser, server, workdir, tmp_path):  # noqa: F811
    shots = Path(os.environ.get("CONCEPTSCAPE_SHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    run = str(workdir / "runs" / "20260101-120000-demo")
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{server}/?run={urllib.parse.quote(run)}&presenter=1")
        settle(page)
        page.wait_for_selector(".st-key-live_map .main-svg")
        page.wait_for_selector(".st-key-live_curves .main-svg")
        settle(page)
        page.screenshot(path=str(shots / "presenter-1366x768.png"))
        assert page.get_by_text("Demo · Prototypical networks DEML (λ = 1) · step 8/8").is_visible()
        for chrome in ("stToolbar", "stAppDeployButton", "stMainMenu", "stStatusWidget", "stDecoration"):
            box = page.evaluate(BOX, f'[data-testid="{chrome}"]')
            assert box is None or not box["visible"], f"{chrome} is shown in presenter view"
        sidebar = page.evaluate(BOX, '[data-testid="stSidebar"]')
        assert sidebar is None or not sidebar["visible"] or sidebar["right"] <= 0, "the sidebar is open"
        assert page.get_by_role("button", name="Start demo").count() == 0
        for chart in ("live_map", "live_curves"):
            box = page.evaluate(BOX, f".st-key-{chart} .main-svg")
            assert box["top"] >= 0 and box["left"] >= 0 and box["bottom"] <= 768 and box["right"] <= 1366, (chart, box)

        # the same page without presenter view: the sidebar and the controls are back
        page.goto(f"{server}/?run={urllib.parse.quote(run)}")
        settle(page)
        page.wait_for_selector(".st-key-live_map .main-svg")
        assert page.evaluate(BOX, '[data-testid="stSidebar"]')["right"] > 0
        assert page.get_by_role("button", name="Stop", exact=True).count() >= 1
        page.screenshot(path=str(shots / "home-run-1366x768.png"))
    finally:
        context.close()
