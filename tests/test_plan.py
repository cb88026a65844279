"""The plan fitted to the data (engine.data.plan): the rule across class and image counts, and
`python -m engine train --dataset SMALL.zip` training with no other flags."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from engine.config import TrainConfig, shared_dir, train_page_start
from engine.data.plan import FLAGS, GLYPHS_EXTERNAL, Words, counts_fit, fit_plan
from engine.errors import UserError
from engine.runs import RunDir
from tests.test_cli import assert_one_error_line, run_cli, strict_json

BASE = TrainConfig()
OMNIGLOT_ZIP = shared_dir() / "data" / "omniglot" / "images_background_small2.zip"
# a tiny model and few steps, as tests/test_cli.py trains
TINY = ["--steps", "2", "--val-every", "2", "--val-episodes", "4", "--snapshot-every", "2", "--checkpoint-every", "2",
        "--width", "8", "--concept-dim", "16", "--meta-batch", "2", "--ext-batch", "8", "--probe-per-class", "2",
        "--probe-classes", "3"]


def small_zip(path: Path, classes: int, per_class: int) -> Path:
    """`classes` Omniglot characters with `per_class` drawings each, cut from the shared zip in memory."""
    with zipfile.ZipFile(OMNIGLOT_ZIP) as src:
        members: dict[str, list[str]] = {}
        for name in sorted(src.namelist()):
            if name.endswith(".png"):
                members.setdefault(name.rsplit("/", 1)[0], []).append(name)
        chosen = sorted(members)[:classes]
        with zipfile.ZipFile(path, "w") as out:
            for folder in chosen:
                for name in members[folder][:per_class]:
                    out.writestr(f"{folder.replace('/', '_')}/{name.rsplit('/', 1)[1]}", src.read(name))
    return path


# --- the rule ---------------------------------------------------------------------------------
def test_settings_that_fit_are_kept_unchanged():
    plan = fit_plan([20] * 400, True, BASE)
    assert not plan.fitted and plan.overrides() == {}
    assert (plan.ways, plan.shots, plan.queries, plan.validation) == (5, 1, 5, "classes")
    start = train_page_start()  # the Train page's starting point fits the built-in data as it is
    assert start.train_limit == 0 and fit_plan([20] * 400, True, start).overrides() == {}


@pytest.mark.parametrize("classes, per_class, gray, ways, validation, external", [
    (6, 6, True, 3, "images", GLYPHS_EXTERNAL),  # 3 train + 3 test; validation on held-out images
    (2, 3, True, 2, "images", GLYPHS_EXTERNAL),  # no class to test on
    (2, 2, True, 2, "train", GLYPHS_EXTERNAL),  # too few images to hold any out
    (10, 6, False, 5, "images", "none"),  # colour: the glyphs do not fit, so no discriminator
    (30, 6, True, 5, "classes", "auto"),  # enough classes to lend some to the discriminator
])
def test_small_data_gets_a_plan_that_trains(classes, per_class, gray, ways, validation, external):
    counts = [per_class] * classes
    plan = fit_plan(counts, gray, BASE)
    assert plan.fitted and (plan.ways, plan.validation, plan.external) == (ways, validation, external)
    assert plan.ways <= plan.train_classes and plan.shots + plan.queries <= per_class
    assert counts_fit(counts, BASE.with_overrides(**plan.overrides()))
    assert (plan.lam == 0) == (external == "none")
    text = plan.describe()
    assert text.startswith(f"{classes} classes: trains as {ways}-way 1-shot")
    assert ("held-out image" in text) == (validation == "images")


def test_shots_and_queries_fit_the_smallest_class():
    plan = fit_plan([9, 4, 9, 9, 9, 9], True, BASE)  # one class of 4: K + 2Q <= 4 with held-out images
    assert (plan.shots, plan.queries, plan.smallest) == (1, 1, 4)


def test_one_class_or_one_image_cannot_train():
    for counts in ([50], [1, 1, 1], [5, 1]):
        with pytest.raises(UserError, match="at least 2 classes of 2 or more images"):
            fit_plan(counts, True, BASE)


def test_explicit_settings_stay_or_say_what_fits_in_the_words_of_where_they_were_typed():
    plan = fit_plan([6] * 6, True, BASE.with_overrides(shots=2), {"shots"})
    assert plan.shots == 2 and plan.queries == 2  # 2 + 2 queries + 2 held out = 6 images
    with pytest.raises(UserError) as e:
        fit_plan([6] * 6, True, BASE.with_overrides(ways=7), {"ways"})
    assert str(e.value).startswith("--ways 7 needs 7 classes in meta-train") and "at most --ways 6" in str(e.value)
    with pytest.raises(UserError) as e:
        fit_plan([3] * 6, True, BASE.with_overrides(shots=5), {"shots"}, Words({"shots": "Shots (K)"}))
    assert str(e.value).startswith("Shots (K) = 5 needs more images") and "at most Shots (K) = 2" in str(e.value)
    assert FLAGS.setting("val_split", 2) == "--val-split 2"


# --- the command line ---------------------------------------------------------------------------
needs_omniglot = pytest.mark.skipif(not OMNIGLOT_ZIP.exists(), reason=f"{OMNIGLOT_ZIP} is not there")


@needs_omniglot
@pytest.mark.parametrize("classes, per_class, validation", [(6, 6, "images"), (2, 3, "images")])
def test_a_small_zip_trains_with_no_flags(tmp_path, classes, per_class, validation):
    data = small_zip(tmp_path / f"{classes}-classes.zip", classes, per_class)
    out = tmp_path / "run"
    code, stdout, err = run_cli("train", "--dataset", data, "--out", out, "--name", "my first set", *TINY)
    assert code == 0, err
    assert f"plan: {classes} classes: trains as" in err
    assert strict_json(stdout)["steps"] == 2
    run = RunDir.open(out)
    cfg = run.config()
    assert cfg["validation"] == validation and cfg["ways"] == min(3, classes)
    plan = json.loads((out / "splits.json").read_text())["plan"]
    assert plan["fitted"] and plan["description"] in err and plan["validation"] == validation
    assert run.run_name() == "my first set"


@needs_omniglot
def test_a_flag_that_cannot_fit_gives_one_error_line(tmp_path):
    data = small_zip(tmp_path / "six.zip", 6, 6)
    code, out, err = run_cli("train", "--dataset", data, "--out", tmp_path / "run", "--ways", "7", *TINY)
    assert_one_error_line(code, out, err)
    assert "--ways 7 needs 7 classes in meta-train" in err and "at most --ways 6" in err
    assert not (tmp_path / "run").exists()


def test_small_zip_keeps_class_folders(tmp_path):
    if not OMNIGLOT_ZIP.exists():
        pytest.skip("no Omniglot zip")
    with zipfile.ZipFile(small_zip(tmp_path / "z.zip", 2, 3)) as z:
        folders = {n.split("/")[0] for n in z.namelist()}
        assert len(folders) == 2 and len(z.namelist()) == 6
        assert io.BytesIO(z.read(z.namelist()[0])).read(4) == b"\x89PNG"
