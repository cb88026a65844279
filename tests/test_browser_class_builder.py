"""Classes built in the browser, in a real Chromium: two classes of Omniglot characters dropped as
PNGs show as thumbnails (<img>), and "Use as an Adapt task" opens /Adapt?task=<the saved set>.
Screenshots at 1366x768 and 390 px wide go to CONCEPTSCAPE_SHOTS (default: the test's temporary folder)."""
from __future__ import annotations

import os
import re
import urllib.parse
import zipfile
from pathlib import Path

import pytest

from tests.test_browser import browser, server, settle  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHARACTERS = ("Greek/character01", "Greek/character02")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The server's folders (no run is needed: the Adapt page is only opened)."""
    root = tmp_path_factory.mktemp("app")
    (root / "runs").mkdir()
    return root


def omniglot_pngs(omniglot_dir: Path, character: str, count: int = 3) -> list[dict]:
    """PNGs of one character, cut in memory from the shared small background zip (never extracted)."""
    with zipfile.ZipFile(omniglot_dir / "images_background_small2.zip") as z:
        names = sorted(n for n in z.namelist() if n.startswith(f"images_background_small2/{character}/")
                       and n.endswith(".png"))[:count]
        assert len(names) == count, character
        return [{"name": Path(n).name, "mimeType": "image/png", "buffer": z.read(n)} for n in names]


def drop(page, key: str, files: list[dict]) -> None:
    page.locator(f'[class*="st-key-bc_files_{key}_"] input[type=file]').set_input_files(files)
    page.locator(f".st-key-bc_thumbs_{key} img").nth(len(files) - 1).wait_for()
    settle(page)


def build_two_classes(page, url: str, omniglot_dir) -> None:
    page.goto(f"{url}/Data")
    settle(page)
    page.get_by_text("Build classes in the browser").click()
    settle(page)
    for key, character in zip(("c1", "c2"), CHARACTERS):
        drop(page, key, omniglot_pngs(omniglot_dir, character))
    page.locator('[class*="st-key-bc_files_c1_"] input[type=file]').set_input_files(
        [{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}])
    page.get_by_text("notes.png: not a readable image").wait_for()
    settle(page)


def new_page(browser, width: int, height: int):  # noqa: F811
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(60_000)
    return context, page


def test_two_classes_as_thumbnails_then_an_adapt_task(browser, server, workdir, omniglot_dir, tmp_path):  # noqa: F811
    shots = Path(os.environ.get("CONCEPTSCAPE_SHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    context, page = new_page(browser, 1366, 768)
    try:
        build_two_classes(page, server, omniglot_dir)
        for key in ("c1", "c2"):
            thumbs = page.locator(f".st-key-bc_thumbs_{key} img")
            assert thumbs.count() == 3, key
            assert all(thumbs.nth(i).evaluate("img => img.naturalWidth > 0") for i in range(3)), key
        assert page.get_by_text("3 images", exact=True).count() == 2  # the file that is no image is not counted
        page.screenshot(path=str(shots / "class-builder-1366x768.png"))
        page.set_viewport_size({"width": 1366, "height": 1500})  # the whole builder at once, for a person
        settle(page)
        page.screenshot(path=str(shots / "class-builder-1366-whole.png"))
        page.set_viewport_size({"width": 1366, "height": 768})

        page.get_by_role("button", name="Use as an Adapt task").click()
        page.wait_for_url(re.compile(r"/Adapt\?.*task="))
        settle(page)
        task = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["task"][0]
        assert Path(task).parent.resolve() == (workdir / "uploads").resolve() and task.endswith("-browser")
        assert sorted(p.name for p in Path(task).iterdir()) == ["class 1", "class 2"]
        assert len(list((Path(task) / "class 1").iterdir())) == 3
        page.screenshot(path=str(shots / "class-builder-adapt.png"))
    finally:
        context.close()


def test_the_builder_on_a_phone(browser, server, workdir, omniglot_dir, tmp_path):  # noqa: F811
    shots = Path(os.environ.get("CONCEPTSCAPE_SHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    context, page = new_page(browser, 390, 2600)
    try:
        build_two_classes(page, server, omniglot_dir)
        page.screenshot(path=str(shots / "class-builder-390-whole.png"))
        for key in ("c1", "c2"):  # three thumbnails side by side, not one per row
            tops = [page.locator(f".st-key-bc_thumbs_{key} img").nth(i).bounding_box()["y"] for i in range(3)]
            assert max(tops) - min(tops) < 5, tops
        box = page.get_by_role("button", name="Use as an Adapt task").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    finally:
        context.close()
