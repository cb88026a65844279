"""The built-in generator (--head-start): the shipped asset, when a run starts from it, and its errors."""
from __future__ import annotations

import contextlib
import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.cli import main
from engine.config import HEAD_START_UNSEEN, PRESETS, TrainConfig
from engine.data.sources import load_imageset
from engine.errors import UserError
from engine.models import build_generator, head_start
from engine.models.deml import seeded_model
from engine.train.trainer import Trainer

README = head_start.ASSET.parent / "README.md"


def test_the_asset_is_small_loads_as_weights_only_and_fits_the_default_gray_generator():
    assert head_start.ASSET.stat().st_size < 2 * 2**20
    state = head_start.load_state()
    fit = head_start.FIT
    generator = build_generator(fit.backbone, fit.channels, fit.concept_dim, fit.width, fit.norm)
    generator.load_state_dict(state)  # strict: every key, every shape
    cfg = TrainConfig(image_size=28)
    assert fit.problems(cfg, channels=1) == [] and TrainConfig().backbone == fit.backbone
    assert fit.problems(cfg, channels=3) == ["--channels 3 (the built-in generator's: 1)"]


def test_the_asset_sha256_is_the_one_its_readme_states():
    stated = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", README.read_text())
    assert stated, "assets/README.md states no sha256"
    assert hashlib.sha256(head_start.ASSET.read_bytes()).hexdigest() == stated.group(1)


def test_gitignore_does_not_leave_the_asset_out():
    ignored = (Path(__file__).parents[1] / ".gitignore").read_text().split()
    assert not any(p in ignored for p in ("assets/", "*.pt", "assets"))


def test_the_preset_leaves_out_every_alphabet_of_the_small_zips(omniglot_dir):
    in_zips = set()
    for name in ("images_background_small1.zip", "images_background_small2.zip"):
        with zipfile.ZipFile(omniglot_dir / name) as z:  # <top>/<Alphabet>/characterNN/IIII_KK.png
            in_zips |= {n.split("/")[1] for n in z.namelist() if n.endswith(".png")}
    assert set(HEAD_START_UNSEEN) == in_zips
    assert PRESETS["head-start"]["exclude_groups"].split(",") == list(HEAD_START_UNSEEN)
    data = load_imageset(str(omniglot_dir / "images_background.npz")).without_groups(",".join(HEAD_START_UNSEEN))
    assert not set(data.groups) & in_zips and len(set(data.groups)) == 30 - len(in_zips)


def test_leaving_out_a_group_that_is_not_there_names_the_flag_and_the_groups():
    data = load_imageset("glyphs:classes=20,drawings=4,alphabets=4,seed=0")
    with pytest.raises(UserError, match="--exclude-groups: Klingon is not a group of"):
        data.without_groups("Klingon")
    assert data.without_groups("") is data
    kept = data.without_groups(data.groups[0])
    assert data.groups[0] not in kept.groups and kept.num_classes < data.num_classes


def _upload(root: Path, mode: str = "L", classes: int = 10, images: int = 4) -> str:
    """A folder of class folders of small random images (what a person uploads)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(images):
            shape = (32, 32) if mode == "L" else (32, 32, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"class{c}" / f"{i}.png")
    return str(root)


UPLOAD_SETTINGS = dict(ways=2, shots=1, queries=1, meta_batch=1, ext_batch=4, val_split=2, test_split=2,
                       external_split=2, steps=1, val_episodes=2, probe_classes=2, probe_per_class=1)


@pytest.mark.parametrize("setting, starts_from_asset", [("auto", True), ("on", True), ("off", False)])
def test_a_gray_upload_starts_from_the_asset_unless_off(tmp_path, setting, starts_from_asset):
    cfg = TrainConfig(dataset=_upload(tmp_path / "up"), head_start=setting, **UPLOAD_SETTINGS)
    trainer = Trainer(cfg)
    assert trainer.cfg.head_start == ("on" if starts_from_asset else "off")  # what config.json records
    asset, own = head_start.load_state(), trainer.model.generator.state_dict()
    same = all(torch.equal(asset[k], own[k].cpu()) for k in asset)
    assert same == starts_from_asset


def test_built_in_glyph_runs_start_as_before():
    cfg = TrainConfig(dataset="glyphs:classes=40,drawings=4,seed=0", **{**UPLOAD_SETTINGS, "val_split": 0.2})
    trainer = Trainer(cfg)
    assert trainer.cfg.head_start == "off"
    fresh = seeded_model(trainer.cfg, 1, trainer.model.external_classes, cfg.seed).generator.state_dict()
    assert all(torch.equal(v, trainer.model.generator.state_dict()[k].cpu()) for k, v in fresh.items())


def test_a_color_upload_under_on_is_one_error_line_saying_what_to_do(tmp_path):
    folder = _upload(tmp_path / "rgb", mode="RGB")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "--dataset", folder, "--head-start", "on", "--ways", "2", "--shots", "1",
                     "--queries", "1", "--val-split", "2", "--test-split", "2", "--external-split", "2",
                     "--steps", "1", "--out", str(tmp_path / "run")])
    message = err.getvalue()
    assert code == 2 and message.count("\n") == 1 and message.startswith("error: --head-start on"), message
    assert "--channels 3 (the built-in generator's: 1)" in message and "--head-start off" in message
    # auto on the same set quietly trains from scratch
    cfg = TrainConfig(dataset=folder, **UPLOAD_SETTINGS)
    assert head_start.resolve(cfg.with_overrides(image_size=64), channels=3).head_start == "off"


def test_a_generator_of_other_settings_is_refused_when_loading():
    cfg = TrainConfig(width=32, head_start="on")
    generator = build_generator("conv4", 1, cfg.concept_dim, cfg.width, cfg.norm)
    with pytest.raises(UserError, match="--width 32"):
        head_start.apply(generator, cfg)
    with pytest.raises(UserError, match="--head-start must be auto, on or off"):
        TrainConfig(head_start="yes")
    assert TrainConfig.from_dict({"head_start": "on"}).head_start == "on"


def test_the_train_page_offers_the_head_start_for_an_upload_only(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from engine.config import REPO
    from engine.services import training

    monkeypatch.chdir(tmp_path)
    sent = []

    def refuse(cfg, out, **kwargs):  # record what Start sends, train nothing
        sent.append(cfg)
        raise UserError("recorded")

    monkeypatch.setattr(training, "start_runs", refuse)
    at = AppTest.from_file(str(REPO / "app_pages" / "2_Train.py"), default_timeout=60)
    at.run()
    assert not at.exception and not [c for c in at.checkbox if c.key == "train_head_start"]  # built-in glyphs
    at = AppTest.from_file(str(REPO / "app_pages" / "2_Train.py"), default_timeout=60)  # a new visit to Train
    at.session_state["data_overrides"] = {"dataset": _upload(tmp_path / "up"), "ways": 2, "shots": 1, "queries": 1}  # as the Data page sends it
    at.run()
    box = at.checkbox(key="train_head_start")
    assert box.value is True and "Omniglot" in box.label
    assert any("from scratch" in c.value for c in at.caption)
    box.set_value(False)
    at.button(key="train_start").click().run()
    assert [e.value for e in at.error] == ["recorded"] and sent[-1].head_start == "off"


def test_a_run_recorded_before_the_head_start_resumes_from_scratch():
    from engine.config import TrainConfig

    assert TrainConfig().head_start == "auto"  # new runs decide by their data
    assert TrainConfig.from_dict({"dataset": "some.zip"}).head_start == "off"  # an old config.json: as it trained
    assert TrainConfig.from_dict({"head_start": "on"}).head_start == "on"
