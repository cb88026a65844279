"""The Adapt page, driven through Streamlit's AppTest (no browser)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine.config import REPO
from engine.eval import checkpoints
from engine.services import adapt

PAGE = str(REPO / "app_pages" / "3_Adapt.py")


@pytest.fixture
def built(twin_runs):
    return twin_runs


@pytest.fixture
def page(built):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["adapt_episodes"] = 20  # keep the held-out comparison small
    return at


def chart_keys(at) -> list[str]:
    return [c.proto.id.rsplit("-", 1)[-1] for c in at.get("plotly_chart")]


def test_adapt_renders_empty_and_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(tmp_path / "none"))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Adapt"
    assert "Train" in at.info[0].value and "Start demo" in at.info[0].value
    assert not at.get("plotly_chart")


def test_adapt_shows_a_held_out_task_its_answers_and_the_twin(page, built):
    page.run()
    assert not page.exception, page.exception
    assert not page.error, [e.value for e in page.error]
    run = page.selectbox(key="adapt_run")
    assert run.label == "Trained run" and run.value in (str(built / "deml"), str(built / "deml-lam0"))
    assert page.query_params["run"] == run.value  # a refresh comes back to this run
    assert {"adapt_episode", "adapt_curves"} <= set(chart_keys(page))
    support, queries = page.image[:-1], page.image[-1]
    assert len(support) == 5 and all(len(s.value) == 1 for s in support)  # one row per class, K = 1
    assert len(queries.value) == 5 * 4 and all("%" in c and ("✓" in c or "✗" in c) for c in queries.captions)
    text = " ".join(m.value for m in page.markdown)
    assert "labelled queries answered right" in text and "twin" in text
    assert "Same 20 episodes for both (paired)" in text
    seed = page.number_input(key="adapt_seed").value
    page.button(key="adapt_new_task").click().run()
    assert not page.exception
    assert page.number_input(key="adapt_seed").value == seed + 1
    page.number_input(key="adapt_ways").set_value(3).run()
    assert not page.exception and not page.error


def test_adapt_follows_the_run_in_the_url(page, built):
    page.query_params["run"] = str(built / "deml-lam0")
    page.run()
    assert not page.exception
    assert page.selectbox(key="adapt_run").value == str(built / "deml-lam0")


def test_adapt_to_uploaded_images_names_a_bad_file(page, built):
    page.run()
    page.radio(key="adapt_source").set_value("Upload your own").run()
    assert not page.exception
    assert any("Limits:" in c.value for c in page.caption)
    cfg, _, _ = checkpoints.load_model(str(built / "deml"))
    task = adapt.sample_task(cfg, 2, 2, 2, seed=0)
    for c in range(2):
        page.text_input(key=f"adapt_class_name_{c}").set_value(["wave", "hook"][c])
        page.file_uploader(key=f"adapt_support_{c}").set_value(
            [(f"s{c}{i}.png", adapt.image_bytes(im), "image/png") for i, im in enumerate(task.support_of(c))])
        page.file_uploader(key=f"adapt_labelled_{c}").set_value(
            [(f"q{c}{i}.png", adapt.image_bytes(im), "image/png")
             for i, im in enumerate(task.query[task.query_labels == c])])
    page.file_uploader(key="adapt_queries_upload").set_value(
        [("mystery.png", adapt.image_bytes(task.query[0]), "image/png"), ("broken.png", b"not an image", "image/png")])
    page.toggle(key="adapt_camera_on").set_value(True).run()
    photo = io.BytesIO()
    Image.fromarray(np.repeat(task.query[1], 3, axis=2)).save(photo, format="JPEG")
    page.camera_input(key="adapt_camera").set_value(("photo.jpg", photo.getvalue(), "image/jpeg"))
    page.run()
    page.button(key="adapt_upload_go").click().run()
    assert not page.exception, page.exception
    errors = [e.value for e in page.error]
    assert len(errors) == 1 and errors[0].startswith("broken.png") and "not a readable image" in errors[0]
    assert "adapt_episode" in chart_keys(page)
    assert {"**wave**", "**hook**"} <= {m.value for m in page.markdown}  # the support set, by class
    answers = page.dataframe[0].value  # the answers table comes first
    assert list(answers["query"]) == ["q00.png", "q01.png", "q10.png", "q11.png", "mystery.png",
                                     "camera photo"]
    assert set(answers["answer"]) <= {"wave", "hook"} and answers["right"].iloc[-1] == ""
    page.text_input(key="adapt_class_name_0").set_value("ripple").run()  # changed inputs: results hidden
    assert any("changed" in i.value for i in page.info) and "adapt_episode" not in chart_keys(page)
