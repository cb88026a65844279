"""The Data page, driven through Streamlit's AppTest (no browser)."""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine.config import REPO
from engine.data import load_imageset
from engine.data.plan import GLYPHS_EXTERNAL


def png(seed: int, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(buf, "PNG")
    return buf.getvalue()


def class_zip(classes: int = 6, per_class: int = 6, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c in range(classes):
            for i in range(per_class):
                zf.writestr(f"shapes/kind{c}/{i}.png", png(100 * c + i))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def page(uploads) -> AppTest:
    at = AppTest.from_file(str(REPO / "app_pages" / "1_Data.py"), default_timeout=60)
    at.run()
    assert not at.exception
    return at


def captions(at: AppTest) -> list[str]:
    return [img.proto.imgs[0].caption for img in at.get("image")]


def warnings_text(at: AppTest) -> str:
    """The page's warnings as plain text (the page escapes markdown in file and class names)."""
    return re.sub(r"\\(.)", r"\1", "\n".join(w.value for w in at.warning))


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def use_source(at: AppTest, label: str) -> AppTest:
    at.radio(key="data_source").set_value(label).run()
    assert not at.exception
    return at


def test_empty_state_shows_the_built_in_glyphs(page):
    assert page.title[0].value == "Data"
    assert page.radio(key="data_source").value == "Built-in glyphs"
    assert metrics(page)["Classes"] == "200"
    shown = captions(page)
    assert len(shown) == 12 and shown[0] == "alphabet00/char000: 20 images"
    assert not page.error
    splits = page.dataframe[-1].value  # the split table
    assert list(splits["split"]) == ["meta-train", "meta-val", "meta-test", "external"]
    assert page.button(key="data_use").disabled is False
    assert any("2,000 images and 100 MiB per upload" in c.value for c in page.caption)
    page.number_input(key="data_first_class:glyphs").set_value(13).run()  # the next page of classes
    assert min(captions(page)).startswith(load_imageset("glyphs").class_names[12] + ":")


def test_choosing_digits_shows_ten_classes(page):
    use_source(page, "Built-in digits")
    assert metrics(page)["Classes"] == "10"
    assert sorted(c.split(":")[0] for c in captions(page)) == [str(d) for d in range(10)]


def test_valid_zip_upload_is_saved_shown_and_used(page, uploads):
    use_source(page, "Upload a zip")
    assert page.file_uploader(key="data_zip").label == "Zip of class folders"
    assert not page.get("image")  # nothing chosen yet
    data = class_zip(extra={"shapes/kind0/broken.png": b"\x89PNG not really"})
    page.file_uploader(key="data_zip").upload("shapes.zip", data, "application/zip").run()
    assert not page.exception and not page.error
    spec = page.session_state["data_zip_saved"]["spec"]
    assert Path(spec).parent.resolve() == uploads.resolve() and Path(spec).is_file()
    assert spec in page.success[0].value
    assert "kind0/broken.png: not a readable image" in warnings_text(page)
    assert metrics(page)["Classes"] == "6"
    assert captions(page)[0] == "kind0: 6 images"
    page.run()  # a rerun does not save the same upload again
    assert len(list(uploads.iterdir())) == 1
    page.button(key="data_use").click().run()
    overrides = page.session_state["data_overrides"]
    assert overrides["dataset"] == spec and overrides["external"] == GLYPHS_EXTERNAL  # the plan's choice
    assert "The Train page will use" in page.success[-1].value
    assert spec in page.caption[0].value  # "The Train page uses: ..." at the top is up to date


def test_broken_zip_shows_an_error_and_the_page_still_works(page, uploads):
    use_source(page, "Upload a zip")
    page.file_uploader(key="data_zip").upload("broken.zip", b"PK\x03\x04 truncated", "application/zip").run()
    assert not page.exception
    assert "broken.zip is not a readable zip archive" in page.error[0].value
    assert not page.get("image")
    assert not uploads.exists() or not any(uploads.iterdir())
    use_source(page, "Built-in digits")
    assert metrics(page)["Classes"] == "10" and not page.error


def test_use_this_data_stores_the_split_choice(page):
    page.selectbox(key="data_image_size").set_value(32)
    page.radio(key="data_external").set_value("Built-in digits").run()  # the plan's fields start again on a change
    page.number_input(key="data_val_split").set_value(2.0)
    page.number_input(key="data_train_limit").set_value(3).run()
    assert not page.exception and not page.error
    rows = {r["split"]: r for r in page.dataframe[-1].value.to_dict("records")}
    assert rows["external"]["source"] == "digits" and rows["external"]["classes"] == 10
    assert metrics(page)["Image size"].startswith("32×32")
    page.button(key="data_use").click().run()
    assert page.session_state["data_overrides"] == {
        "dataset": "glyphs", "external": "digits", "val_split": 2.0, "test_split": 0.2, "external_split": 0.2,
        "train_limit": 3, "rotations": False, "image_size": 32, "ways": 5, "shots": 1, "queries": 5, "lam": 1.0,
        "validation": "classes"}


def test_the_stored_choice_is_shown_when_the_page_opens(uploads):
    at = AppTest.from_file(str(REPO / "app_pages" / "1_Data.py"), default_timeout=60)
    at.session_state["data_overrides"] = {"dataset": "digits", "external": "glyphs", "val_split": 2.0,
                                          "test_split": 2.0, "rotations": True}
    at.run()
    assert not at.exception
    assert at.radio(key="data_source").value == "Built-in digits"
    assert at.radio(key="data_external").value == "Built-in glyphs"
    assert at.number_input(key="data_test_split").value == 2.0 and at.checkbox(key="data_rotations").value
    assert metrics(at)["Classes"] == "10"


def test_classes_built_in_the_browser(page, uploads):
    """The builder itself is tests/test_page_class_builder.py's; here: the page previews what it saves."""
    use_source(page, "Build classes in the browser")
    page.text_input(key="bc_name_c1").input("dots").run()
    page.file_uploader(key="bc_files_c1_0").set_value([(f"{i}.png", png(i), "image/png") for i in range(3)]).run()
    page.text_input(key="bc_name_c2").input("../lines").run()
    assert "saved as 'lines'" in page.info[0].value
    page.file_uploader(key="bc_files_c2_0").set_value([("a.png", png(9), "image/png"),
                                                      ("bad.png", b"nope", "image/png")]).run()
    page.button(key="bc_save").click().run()
    assert not page.exception
    spec = page.session_state["data_browser_saved"]["spec"]
    assert Path(spec).parent.resolve() == uploads.resolve()
    assert sorted(p.name for p in Path(spec).iterdir()) == ["dots", "lines"]
    problems = warnings_text(page)
    assert "bad.png: not a readable image" in problems
    assert captions(page)[-2:] == ["dots: 3 images", "lines: 1 image"]
    assert "needs at least 2 classes of 2 or more images" in page.error[0].value  # 'lines' has one: said plainly
    assert page.button(key="data_use").disabled


def test_a_small_upload_gets_a_plan_that_carries_to_train(page, uploads):
    use_source(page, "Upload a zip")
    page.file_uploader(key="data_zip").upload("six.zip", class_zip(6, 6), "application/zip").run()
    assert not page.exception and not page.error
    plan = next(i.value for i in page.info if i.value.startswith("**Plan:**"))
    assert "6 classes: trains as 3\\-way 1\\-shot" in plan and "held\\-out images" in plan
    assert page.number_input(key="data_ways").value == 3  # the Ways box shows the plan's value
    assert page.button(key="data_use").disabled is False
    page.number_input(key="data_shots").set_value(2).run()  # an edit within what fits: the plan follows
    assert page.number_input(key="data_ways").value == 3 and not page.error
    page.number_input(key="data_ways").set_value(7).run()  # one that cannot fit: the reason, in field words
    assert page.button(key="data_use").disabled
    assert "Ways (N) = 7 needs 7 classes" in page.error[-1].value and "at most Ways (N) = 3" in page.error[-1].value  # with Test = 3 as the field says
    page.number_input(key="data_ways").set_value(3).run()
    page.button(key="data_use").click().run()
    chosen = page.session_state["data_overrides"]
    assert (chosen["ways"], chosen["shots"], chosen["validation"]) == (3, 2, "images")
    choice_id = page.query_params["data"]  # kept for a refresh

    train = AppTest.from_file(str(REPO / "app_pages" / "2_Train.py"), default_timeout=60)
    train.query_params["data"] = choice_id  # a fresh session (a refresh): only the link
    train.run()
    assert not train.exception
    assert chosen["dataset"] in train.caption[0].value
    assert train.number_input(key="train_ways").value == 3 and train.number_input(key="train_shots").value == 2
    assert train.number_input(key="train_queries").value == chosen["queries"]
