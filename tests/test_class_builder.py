"""engine/services/class_builder.py: classes built in the browser, as a draft per session."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from engine.data import load_imageset
from engine.errors import UserError
from engine.services.class_builder import THUMB_PX, ClassBuilder, new_session
from engine.services.datasets import spec_kind
from engine.services.uploads import LIMITS


def png(seed: int, size=(20, 12), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L").save(buf, fmt)
    return buf.getvalue()


def sent(name: str, data: bytes):
    """What a browser upload looks like to the engine (Streamlit's UploadedFile)."""
    return SimpleNamespace(name=name, size=len(data), getvalue=lambda: data)


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CONCEPTSCAPE_UPLOADS", str(tmp_path / "uploads"))
    return tmp_path / "uploads"


@pytest.fixture
def builder(root) -> ClassBuilder:
    return ClassBuilder(new_session())


def test_a_new_draft_has_two_empty_classes_under_the_uploads_folder(builder, root):
    classes = builder.classes()
    assert [c.name for c in classes] == ["class 1", "class 2"] and [c.count for c in classes] == [0, 0]
    assert builder.root.parent.parent.resolve() == root.resolve()
    assert builder.totals() == (0, 0)


def test_counts_are_of_images_that_decode_and_the_rest_are_named(builder):
    key = builder.classes()[0].key
    problems = builder.add_files(key, [sent("a.png", png(1)), sent("notes.png", b"not an image at all"),
                                       sent("photo.jpg", png(2)),  # a PNG named .jpg: kept as .png
                                       sent("empty.png", b""), sent("huge.png", png(3, (5000, 2)))])
    c = builder.classes()[0]
    assert c.count == 2 and builder.totals()[0] == 2
    assert [i.source for i in c.images] == ["a.png", "photo.jpg"]
    assert all(i.path.suffix == ".png" and i.path.is_file() for i in c.images)  # the extension from the decoder
    assert len(problems) == 3 and c.problems == problems
    assert problems[0].startswith("notes.png: not a readable image")
    assert "empty.png" in problems[1] and "5000×2 px is over the 4,096 px limit per side" in problems[2]
    thumb = Image.open(c.images[0].thumb)
    assert max(thumb.size) <= THUMB_PX and thumb.format == "PNG"


def test_unaccepted_formats_are_refused_with_the_reason(builder):
    key = builder.classes()[0].key
    problems = builder.add_images(key, [("x.png", png(1, fmt="TGA"))])
    assert builder.classes()[0].count == 0
    assert problems == ["x.png: TGA images are not accepted (use PNG, JPEG, BMP, GIF, WebP or TIFF), left out"]


def test_the_upload_limits_count_all_classes_together(root):
    b = ClassBuilder(new_session(), dataclasses.replace(LIMITS, max_files=3))
    first, second = (c.key for c in b.classes())
    b.add_files(first, [sent(f"{i}.png", png(i)) for i in range(2)])
    problems = b.add_files(second, [sent(f"{i}.png", png(10 + i)) for i in range(2)])
    assert [c.count for c in b.classes()] == [2, 1]
    assert problems == ["1.png: over the 3-image limit of classes built in the browser, left out"]


def test_remove_an_image_and_a_class(builder):
    first, second = (c.key for c in builder.classes())
    builder.add_images(first, [("a.png", png(1)), ("b.png", png(2))])
    gone = builder.classes()[0].images[0]
    builder.remove_image(first, gone.file)
    assert [i.source for i in builder.classes()[0].images] == ["b.png"]
    assert not gone.path.exists() and not gone.thumb.exists()
    with pytest.raises(UserError, match="already removed"):
        builder.remove_image(first, gone.file)
    builder.remove_class(first)
    assert [c.key for c in builder.classes()] == [second]
    assert not (builder.root / first).exists()


def test_rename_cleans_the_name_and_refuses_a_taken_one(builder):
    first, second = (c.key for c in builder.classes())
    note = builder.rename_class(first, "../x")  # never a path: cleaned, and said so
    assert builder.classes()[0].name == "x"
    assert note == "Class name '../x' saved as 'x' (only letters, digits, spaces, '-' and '_' are kept in names)"
    assert builder.rename_class(second, "dogs") is None
    with pytest.raises(UserError, match="Class name 'X' is already taken by another class"):
        builder.rename_class(second, "X")
    with pytest.raises(UserError, match="Class name '/..' has no letters or digits"):
        builder.rename_class(second, "/..")
    with pytest.raises(UserError, match="Class name is empty"):
        builder.rename_class(second, "   ")
    assert [c.name for c in builder.classes()] == ["x", "dogs"]
    assert sorted(p.name for p in builder.root.iterdir()) == ["c1", "c2", "draft.json"]  # folders never named by people


def test_the_draft_survives_a_new_builder_and_refuses_foreign_names(builder, root):
    key = builder.classes()[0].key
    builder.add_images(key, [("a.png", png(1))])
    again = ClassBuilder(builder.root.name)
    assert again.classes() == builder.classes()
    for bad in ("../../etc", "0123456789abcdeg", ""):
        with pytest.raises(UserError, match="invalid name"):
            ClassBuilder(bad)
    with pytest.raises(UserError, match="already removed"):  # only the draft's own classes are touched
        builder.remove_class("../" + builder.root.name)
    assert builder.root.is_dir()


def test_save_writes_a_dataset_once_per_version(builder, root):
    first, second = (c.key for c in builder.classes())
    with pytest.raises(UserError, match=r"Add images to at least 2 classes .*; 'class 1', 'class 2' have none yet"):
        builder.save()
    builder.rename_class(first, "dots")
    builder.add_images(first, [("a.png", png(1)), ("b.jpg", png(2, fmt="JPEG"))])
    builder.add_images(second, [("c.png", png(3))])
    spec, problems = builder.save()
    assert problems == [] and spec_kind(spec) == "browser" and Path(spec).parent.resolve() == root.resolve()
    assert builder.save() == (spec, []) and builder.saved_spec() == spec  # unchanged: the same set
    data = load_imageset(spec)
    assert data.class_names == ["class 2", "dots"] and len(data.images) == 3
    builder.remove_image(first, builder.classes()[0].images[0].file)
    assert builder.saved_spec() is None
    assert builder.save()[0] != spec


def test_load_fills_the_draft_with_a_saved_set(builder, root):
    first, second = (c.key for c in builder.classes())
    builder.add_images(first, [("a.png", png(1))])
    builder.add_images(second, [("b.png", png(2)), ("c.png", png(3))])
    spec, _ = builder.save()
    other = ClassBuilder(new_session())
    other.load(spec)
    assert [(c.name, c.count) for c in other.classes()] == [("class 1", 1), ("class 2", 2)]
    assert other.saved_spec() == spec
    outside = root.parent / "elsewhere-browser"
    outside.mkdir()
    with pytest.raises(UserError, match="not a set of classes built"):
        other.load(outside)
    state = json.loads((other.root / "draft.json").read_text())
    assert state["saved"]["spec"] == spec


def test_drafts_untouched_for_a_week_are_removed_when_a_new_one_starts(builder, root):
    old = builder.root
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    stray = root / "drafts" / "not-a-draft"
    stray.mkdir()
    os.utime(stray, (week_ago, week_ago))
    ClassBuilder(new_session())
    assert not old.exists() and stray.is_dir()  # only the app's own drafts are touched
