"""The Data page's classes built in the browser (ui/class_builder.py), driven through AppTest."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine.config import REPO


def png(seed: int, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def page(uploads) -> AppTest:
    at = AppTest.from_file(str(REPO / "app_pages" / "1_Data.py"), default_timeout=60)
    at.run()
    at.radio(key="data_source").set_value("Build classes in the browser").run()
    assert not at.exception
    return at


def drop(at: AppTest, key: str, files: list[tuple[str, bytes]]) -> AppTest:
    uploader = next(u for u in at.get("file_uploader") if u.key.startswith(f"bc_files_{key}_"))
    uploader.set_value([(name, data, "image/png") for name, data in files]).run()
    assert not at.exception
    return at


def thumbnails(at: AppTest) -> list[list[str]]:
    """The captions of each st.image element (one per class with images)."""
    return [[img.caption for img in el.proto.imgs] for el in at.get("image")]


def counts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**") and "image" in m.value]


def test_dropped_images_show_as_thumbnails_with_counts_of_images_only(page, uploads):
    drop(page, "c1", [("a.png", png(1)), ("b.png", png(2)), ("readme.png", b"not an image")])
    assert thumbnails(page) == [["a.png", "b.png"]]
    shown = page.get("image")[0].proto.imgs
    assert all(re.fullmatch(r"/(mock/)?media/\w+\.png", img.url) for img in shown)  # images, not file icons
    assert counts(page) == ["**2 images**", "**0 images**"]
    assert "readme.png: not a readable image" in page.warning[0].value.replace("\\", "")
    # the uploader is emptied once its files are kept: the thumbnails are what the class holds
    assert all(not u.value for u in page.get("file_uploader"))
    drop(page, "c2", [("c.png", png(3))])
    assert thumbnails(page) == [["a.png", "b.png"], ["c.png"]]
    assert counts(page) == ["**2 images**", "**1 image**"]


def test_remove_an_image_and_a_class_and_rename(page):
    drop(page, "c1", [("a.png", png(1)), ("b.png", png(2))])
    drop(page, "c2", [("c.png", png(3))])
    page.multiselect(key="bc_pick_c1").select("01.png").run()
    page.button(key="bc_remove_images_c1").click().run()
    assert thumbnails(page) == [["b.png"], ["c.png"]]
    page.text_input(key="bc_name_c2").input("../x").run()
    assert page.text_input(key="bc_name_c2").value == "x"
    assert "saved as 'x'" in page.info[0].value
    page.text_input(key="bc_name_c2").input("class 1").run()
    assert page.text_input(key="bc_name_c2").value == "x"
    assert "already taken" in page.error[0].value
    assert page.button(key="bc_remove_c1").disabled  # two classes: a task needs both
    page.button(key="bc_add").click().run()
    assert sorted((t.key, t.value) for t in page.text_input) == [
        ("bc_name_c1", "class 1"), ("bc_name_c2", "x"), ("bc_name_c3", "class 3")]
    page.button(key="bc_remove_c1").click().run()
    assert sorted((t.key, t.value) for t in page.text_input) == [("bc_name_c2", "x"), ("bc_name_c3", "class 3")]
    assert thumbnails(page) == [["c.png"]]


def test_save_shows_what_they_hold_and_changes_ask_to_save_again(page, uploads):
    drop(page, "c1", [(f"{i}.png", png(i)) for i in range(3)])
    drop(page, "c2", [("a.png", png(9))])
    page.button(key="bc_save").click().run()
    spec = page.session_state["data_browser_saved"]["spec"]
    assert Path(spec).parent.resolve() == uploads.resolve()
    assert sorted(p.name for p in Path(spec).iterdir()) == ["class 1", "class 2"]
    assert "class 1: 3 images" in [img.caption for el in page.get("image") for img in el.proto.imgs]
    assert page.metric[0].label == "Classes" and page.metric[0].value == "2"
    drop(page, "c2", [("b.png", png(10))])
    assert "changed since they were saved" in page.info[0].value
    assert not page.metric  # nothing is previewed until saved again


def test_saving_too_few_classes_says_what_to_do(page):
    drop(page, "c1", [("a.png", png(1))])
    page.button(key="bc_adapt").click().run()
    assert not page.exception
    assert "Add images to at least 2 classes (a few-shot task tells classes apart); 'class 2' has none yet" \
        == page.error[0].value


def test_use_as_an_adapt_task_opens_adapt_with_the_saved_set(uploads, tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(tmp_path / "runs"))
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    app.switch_page("app_pages/1_Data.py").run()
    app.radio(key="data_source").set_value("Build classes in the browser").run()
    drop(app, "c1", [("a.png", png(1)), ("b.png", png(2))])
    drop(app, "c2", [("c.png", png(3)), ("d.png", png(4))])
    app.button(key="bc_adapt").click().run()
    assert not app.exception
    assert app.title[0].value == "Adapt"
    spec = app.query_params["task"]
    assert Path(spec).parent.resolve() == uploads.resolve() and spec.endswith("-browser")
    assert sorted(p.name for p in Path(spec).iterdir()) == ["class 1", "class 2"]
    app.switch_page("app_pages/1_Data.py").run()  # back on Data: the same set, not saved twice
    app.radio(key="data_source").set_value("Build classes in the browser").run()
    assert thumbnails(app)[:2] == [["a.png", "b.png"], ["c.png", "d.png"]]  # then the saved set's preview
    app.button(key="bc_adapt").click().run()
    assert app.query_params["task"] == spec
    assert len([p for p in uploads.iterdir() if p.name.endswith("-browser")]) == 1


def test_a_large_class_shows_its_latest_thumbnails_until_asked_for_all(page, monkeypatch):
    monkeypatch.setattr("ui.class_builder.SHOWN_THUMBS", 2)
    drop(page, "c1", [(f"{i}.png", png(i)) for i in range(3)])
    assert thumbnails(page) == [["1.png", "2.png"]] and counts(page)[0] == "**3 images**"
    page.toggle(key="bc_all_c1").set_value(True).run()
    assert thumbnails(page) == [["0.png", "1.png", "2.png"]]


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    return buf.getvalue()


def test_camera_photos_join_the_class_and_the_camera_is_ready_for_the_next(page):
    page.toggle(key="bc_camera_on_c2").set_value(True).run()
    camera = next(c for c in page.get("camera_input") if c.key.startswith("bc_camera_c2_"))
    camera.set_value(("photo.jpg", jpeg(1), "image/jpeg")).run()
    assert not page.exception
    assert counts(page) == ["**0 images**", "**1 image**"]
    assert thumbnails(page)[0][0].startswith("camera photo ")
    camera = next(c for c in page.get("camera_input") if c.key.startswith("bc_camera_c2_"))
    assert camera.value is None  # a new, empty camera: the next photo is one click away
    camera.set_value(("photo.jpg", b"not a jpeg", "image/jpeg")).run()
    assert counts(page) == ["**0 images**", "**1 image**"]
    assert "not a readable image" in page.warning[0].value
