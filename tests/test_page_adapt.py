"""The Adapt page, driven through Streamlit's AppTest (no browser)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import streamlit as st
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


def test_a_run_in_the_url_without_a_checkpoint_yet_is_named_and_kept(page, built):
    import shutil

    young = built / "young"
    shutil.copytree(built / "deml", young)
    shutil.rmtree(young / "checkpoints")
    page.query_params["run"] = str(young)
    page.run()
    assert not page.exception
    assert any("has no checkpoint yet" in i.value and "young" in i.value for i in page.info)
    assert page.selectbox(key="adapt_run").value != str(young)  # another run is adapted meanwhile
    assert page.query_params["run"] == [str(young)] or page.query_params["run"] == str(young)  # the person's run stays


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


def test_twin_label_names_what_the_partner_is_whichever_is_selected(page, built):
    labels = {}
    for selected in ("deml", "deml-lam0"):
        at = AppTest.from_file(PAGE, default_timeout=60)
        at.session_state["adapt_episodes"] = 20
        at.query_params["run"] = str(built / selected)
        at.run()
        assert not at.exception, at.exception
        labels[selected] = at.caption[0].value
    assert "its λ = 0 twin: `deml-lam0`" in labels["deml"]
    assert "its DEML twin (λ = 1): `deml`" in labels["deml-lam0"] and "λ = 0 twin" not in labels["deml-lam0"]
    columns = list(at.dataframe[0].value.columns)  # the answers table, with the lambda = 0 run selected
    assert "DEML twin (λ = 1) answers" in columns and not any("λ = 0 twin" in c for c in columns)


def test_task_shape_survives_a_visit_to_another_page(built, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_RUNS", str(built))
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    app.session_state["adapt_episodes"] = 20
    app.query_params["run"] = str(built / "deml")
    app.switch_page("app_pages/3_Adapt.py").run()
    assert not app.exception, app.exception
    app.number_input(key="adapt_ways").set_value(3)
    app.number_input(key="adapt_shots").set_value(2)
    app.number_input(key="adapt_queries").set_value(2).run()
    app.number_input(key="adapt_seed").set_value(4).run()
    app.switch_page("app_pages/4_Runs.py").run()
    assert not app.exception
    assert "adapt_ways" not in app.session_state  # Streamlit dropped the widget's value with the page
    app.switch_page("app_pages/3_Adapt.py").run()
    assert not app.exception, app.exception
    got = [app.number_input(key=k).value for k in ("adapt_ways", "adapt_shots", "adapt_queries", "adapt_seed")]
    assert got == [3, 2, 2, 4]
    assert len(app.image[:-1]) == 3 and len(app.image[-1].value) == 3 * 2  # the task drawn with them


def test_a_data_page_set_in_the_link_is_the_task_and_unknowns_are_said(page, built, tmp_path, monkeypatch):
    uploads = tmp_path / "uploads"
    monkeypatch.setenv("CONCEPTSCAPE_UPLOADS", str(uploads))
    cfg, _, _ = checkpoints.load_model(str(built / "deml"))
    task = adapt.sample_task(cfg, 3, 2, 2, seed=1)
    for c, name in enumerate(["ka", "ga", "na"]):
        (uploads / "set" / name).mkdir(parents=True)
        for i, im in enumerate([*task.support_of(c), *task.query[task.query_labels == c]]):
            (uploads / "set" / name / f"{i}.png").write_bytes(adapt.image_bytes(im))
    page.query_params["task"] = str(uploads / "set")
    page.query_params["run"] = str(built / "deml")
    page.run()
    assert not page.exception, page.exception
    assert page.radio(key="adapt_source").value == "Set from the Data page"
    assert {"**ka**", "**ga**", "**na**"} <= {m.value for m in page.markdown}
    assert len(page.image[-1].value) == 3 * 2  # half of each class asked as queries
    page.query_params.pop("task")  # what the sidebar's links do: the session still has the set
    page.run()
    assert page.radio(key="adapt_source").value == "Set from the Data page" and page.query_params["task"]
    text = " ".join(c.value for c in page.caption)
    assert "Calibrated on" in text and "expected calibration error" in text and "none of these" in text.lower()
    # a threshold above every score in the run's calibration.json: every answer is "none of these"
    saved = json.loads((built / "deml" / "calibration.json").read_text())
    saved["entries"]["-"]["unknown_below"] = 1e9
    (built / "deml" / "calibration.json").write_text(json.dumps(saved))
    st.cache_data.clear()
    again = AppTest.from_file(PAGE, default_timeout=60)
    again.session_state["adapt_episodes"] = 20
    again.query_params.update(task="set", run=str(built / "deml"))
    again.run()
    assert not again.exception, again.exception
    assert all(c.startswith("none of these (closest: ") for c in again.image[-1].captions)
    assert set(again.dataframe[0].value["answer"]) == {"none of these"}
    assert again.get("download_button")


def test_a_task_link_outside_the_uploads_folder_is_refused(page, built, tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_UPLOADS", str(tmp_path / "uploads"))
    (tmp_path / "uploads").mkdir()
    page.query_params["task"] = str(built)
    page.run()
    assert not page.exception
    assert any("not a set under the uploads folder" in e.value for e in page.error)
    assert page.radio(key="adapt_source").value == "Held-out classes"


def test_webcam_shot_is_classified_against_the_support_set(page, built):
    page.run()
    page.toggle(key="adapt_webcam_on").set_value(True).run()
    assert not page.exception
    assert any("camera" in c.value and "permission" in c.value for c in page.caption)  # why it may be unavailable
    cfg, _, _ = checkpoints.load_model(str(built / "deml"))
    held = adapt.sample_task(cfg, 5, 1, 4, seed=0)  # the page's task (seed 0, the run's shape)
    photo = io.BytesIO()
    Image.fromarray(np.repeat(255 - held.support[0], 3, axis=2)).save(photo, format="JPEG")  # a support image, on paper
    page.camera_input(key="adapt_webcam").set_value(("shot.jpg", photo.getvalue(), "image/jpeg")).run()
    assert not page.exception, page.exception
    bars = page.get("progress")
    assert len(bars) == 5 and all(":" in b.proto.text and "%" in b.proto.text for b in bars)
    assert any(m.value.startswith("**") and ("·" in m.value or "none of these" in m.value) for m in page.markdown)
