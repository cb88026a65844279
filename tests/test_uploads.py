"""engine/services/uploads.py: upload limits, safe names, saving zips and browser-built classes, previews."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import load_imageset, sources
from engine.errors import UserError
from engine.services import uploads
from engine.services.datasets import preview, spec_kind, split_preview
from engine.services.uploads import (
    UploadLimits,
    check_dimensions,
    check_limits,
    safe_name,
    save_browser_classes,
    save_zip,
)


def png(seed: int, size=(8, 8), fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L").save(buf, fmt)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def classes_zip(names="abc", per_class=3, size=(8, 8)) -> dict[str, bytes]:
    return {f"set/{c}/{i}.png": png(10 * k + i, size) for k, c in enumerate(names) for i in range(per_class)}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.fixture
def root(tmp_path, monkeypatch):
    """uploads_root() in tmp; the working directory beside it must stay empty (nothing written outside)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("CONCEPTSCAPE_UPLOADS", str(tmp_path / "uploads"))
    sources.clear_cache()
    yield tmp_path / "uploads"
    sources.clear_cache()
    assert files_under(work) == set(), "something was written outside the uploads folder"
    assert {p.name for p in tmp_path.iterdir()} <= {"cwd", "uploads"}


# ----------------------------------------------------------------------------------- names, limits


@pytest.mark.parametrize("raw, expected", [
    ("Été 中文", "Été 中文"),
    ("हिन्दी", "हिन्दी"),  # combining vowel signs are kept with their letters
    ("red-apple_2", "red-apple_2"),
    ("../x", "x"),
    ("a/b", "a_b"),
    ("a\\b", "a_b"),
    ("  spaced   out ", "spaced out"),
    ("\x00nul", "nul"),
    ("", None),
    ("   ", None),
    ("..", None),
    ("///", None),
    ("-_-", None),
])
def test_safe_name(raw, expected):
    assert safe_name(raw) == expected


def test_safe_name_is_cut_to_the_limit():
    assert safe_name("x" * 500) == "x" * 64
    assert safe_name("ab" * 10, UploadLimits(max_name_chars=5)) == "ababa"


def test_check_limits_names_every_refused_file_and_keeps_the_rest():
    limits = UploadLimits(max_files=3, max_upload_bytes=60, max_file_bytes=40)
    entries = [("a.png", 10), ("huge.png", 41), ("b.png", 30), ("c.png", 70), ("d.png", 35), ("e.png", 10),
               ("f.png", 1)]
    kept, problems = check_limits(entries, limits)
    assert kept == [0, 2, 5]  # d would pass 60 bytes in all (e still fits); f is one file too many
    assert problems == [
        "huge.png: 41 bytes is over the 40 bytes limit per image, left out",
        "c.png: 70 bytes is over the 40 bytes limit per image, left out",
        "d.png: would take the upload past 60 bytes in all, left out",
        "f.png: over the 3-image limit per upload, left out",
    ]


def test_limits_are_stated_for_people():
    assert uploads.LIMITS.describe() == ("at most 2,000 images and 100 MiB per upload (500 MiB unpacked), 20 MiB per "
                                         "image, images at most 4,096×4,096 px and 40 Mpx")


def test_check_dimensions():
    assert check_dimensions(4096, 4096) is None
    assert "4,096 px limit per side" in check_dimensions(4097, 10)
    assert "over the 10 Mpx limit per image" in check_dimensions(4000, 3000, UploadLimits(max_pixels=10_000_000))
    assert check_dimensions(6000, 5000) == "6000×5000 px is over the 4,096 px limit per side"


# ---------------------------------------------------------------------------------------- zips


def test_valid_zip_is_saved_as_sent_inside_the_uploads_root(root):
    data = zip_bytes(classes_zip())
    path, problems = save_zip("my set.zip", data)
    assert problems == []
    assert path.parent.resolve() == root.resolve()
    assert path.name.endswith("-my_set.zip") and path.read_bytes() == data
    assert spec_kind(str(path)) == "zip"
    assert load_imageset(str(path)).class_names == ["a", "b", "c"]


def test_zip_over_the_limits_keeps_the_rest_and_names_each_refused_member(root):
    files = classes_zip("ab", per_class=3)
    files["set/a/wide.png"] = png(99, (120, 8))  # over max_side
    files["set/b/many.png"] = png(98, (60, 60))  # over max_pixels
    files["set/b/notes.txt"] = b"hello"
    files["../evil.png"] = png(97)
    files["set/c/0.png"] = png(96)
    files["set/c/1.png"] = png(95)  # the 8th image: over max_files
    limits = UploadLimits(max_files=7, max_side=100, max_pixels=3000)
    path, problems = save_zip("set.zip", zip_bytes(files), limits)
    text = "\n".join(problems)
    for name, reason in [("set/a/wide.png", "100 px limit per side"), ("set/b/many.png", "0.003 Mpx"),
                         ("set/b/notes.txt", "not an image"), ("../evil.png", "'..'"),
                         ("set/c/1.png", "7-image limit")]:
        assert any(name in line and reason in line for line in problems), (name, text)
    with zipfile.ZipFile(path) as zf:
        kept = sorted(zf.namelist())
    assert kept == sorted([f"set/{c}/{i}.png" for c in "ab" for i in range(3)] + ["set/c/0.png"])
    data = load_imageset(str(path))
    assert data.class_names == ["a", "b", "c"] and data.counts().tolist() == [3, 3, 1]


def test_zip_too_large_is_refused_whole_and_nothing_is_written(root):
    data = zip_bytes(classes_zip())
    with pytest.raises(UserError, match=r"big\.zip is .*; the limit is .* per upload"):
        save_zip("big.zip", data, UploadLimits(max_upload_bytes=len(data) - 1))
    assert files_under(root) == set()


def test_unpacked_total_is_limited(root):
    files = classes_zip("ab", per_class=2)
    total = sum(len(v) for v in files.values())
    path, problems = save_zip("set.zip", zip_bytes(files), UploadLimits(max_unpacked_bytes=total - 1))
    assert problems == [f"set/b/1.png: would take the unpacked images past {total - 1} bytes in all, left out"]
    assert load_imageset(str(path)).counts().tolist() == [2, 1]


def test_symbolic_link_members_are_refused(root):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in classes_zip("ab", per_class=2).items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("set/a/link.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    path, problems = save_zip("set.zip", buf.getvalue())
    assert problems[0] == "set/a/link.png: symbolic link member refused, left out"
    with zipfile.ZipFile(path) as zf:
        assert "set/a/link.png" not in zf.namelist() and len(zf.namelist()) == 4


@pytest.mark.parametrize("data", [b"", b"this is not a zip", zip_bytes(classes_zip())[:200]])
def test_broken_zip_raises_a_clear_user_error(root, data):
    with pytest.raises(UserError, match=r"broken\.zip is not a readable zip archive"):
        save_zip("broken.zip", data)
    assert files_under(root) == set()


def test_zip_without_images_raises(root):
    with pytest.raises(UserError, match="no usable image"):
        save_zip("notes.zip", zip_bytes({"a/readme.txt": b"x", "b/x.png": b"not a png"}))
    assert files_under(root) == set()


def test_zip_with_corrupt_members_loads_the_valid_classes_and_names_the_bad_files(root):
    files = classes_zip("abc", per_class=6)
    good = png(5, (8, 8))
    files["set/a/truncated.png"] = good[: len(good) // 2]  # the header reads, the pixels do not
    files["set/b/garbage.png"] = b"\x89PNG garbage"
    path, problems = save_zip("set.zip", zip_bytes(files))
    assert any("set/b/garbage.png" in p and "not a readable image" in p for p in problems), problems
    pv = preview(str(path), ways=2, shots=1, queries=5)
    assert [n for n, _ in pv["counts"]] == ["a", "b", "c"]
    assert [c for _, c in pv["counts"]] == [6, 6, 6]
    assert any("truncated.png" in p for p in pv["problems"]), pv["problems"]
    assert pv["too_small"] == []


# ------------------------------------------------------------------------------ browser classes


def test_browser_classes_keep_what_decodes_and_name_the_rest(root):
    classes = {
        "cats": [("one.png", png(1)), ("two.jpg", png(2, fmt="JPEG")), ("broken.png", b"\x89PNG nope")],
        "dogs": [("x.gif", png(3, fmt="GIF")), ("empty.png", b""), ("cut.png", png(4, (40, 40))[:-40])],
    }
    folder, problems = save_browser_classes(classes)
    assert folder.parent.resolve() == root.resolve() and folder.name.endswith("-browser")
    assert spec_kind(str(folder)) == "browser"
    assert files_under(folder) == {"cats/01.png", "cats/02.jpg", "dogs/01.gif"}
    assert (folder / "cats" / "02.jpg").read_bytes() == classes["cats"][1][1]  # written as sent
    assert len(problems) == 3
    assert "cats/broken.png" in problems[0] and "not a readable image" in problems[0]
    assert "dogs/empty.png" in problems[1] and "empty file" in problems[1]
    assert "dogs/cut.png: not a readable image" in problems[2]  # its header reads; its pixels do not
    data = load_imageset(str(folder))
    assert data.class_names == ["cats", "dogs"] and data.counts().tolist() == [2, 1]


def test_browser_class_names_are_cleaned_and_never_leave_the_root(root):
    pairs = [("../evil", [("a.png", png(1))]), ("a/b", [("b.png", png(2))]), ("", [("c.png", png(3))]),
             ("a_b", [("d.png", png(4))]), ("Été", [("e.png", png(5))])]
    folder, problems = save_browser_classes(pairs)
    assert files_under(root) == {f"{folder.name}/{p}" for p in ("evil/01.png", "a_b/01.png", "Été/01.png")}
    text = "\n".join(problems)
    assert "'../evil': saved as 'evil'" in text and "'a/b': saved as 'a_b'" in text
    assert "class 3 (no name): a class needs a name" in text
    assert "'a_b': same name as 'a/b'" in text


def test_browser_limits_name_each_refused_file(root):
    limits = UploadLimits(max_files=3, max_side=20)
    classes = {"a": [("1.png", png(1)), ("wide.png", png(2, (30, 8))), ("2.png", png(3))],
               "b": [("1.png", png(4)), ("2.png", png(5))]}
    folder, problems = save_browser_classes(classes, limits)
    assert files_under(folder) == {"a/01.png", "a/02.png", "b/01.png"}
    assert any("b/2.png" in p and "3-image limit" in p for p in problems), problems
    assert any("a/wide.png" in p and "20 px limit per side" in p for p in problems), problems


def test_formats_the_loaders_do_not_read_are_refused(root):
    folder, problems = save_browser_classes({"a": [("1.png", png(1)), ("x.tga", png(2, fmt="TGA"))],
                                             "b": [("1.png", png(3))]})
    assert problems == ["a/x.tga: TGA images are not accepted (use PNG, JPEG, BMP, GIF, WebP or TIFF), left out"]
    assert files_under(folder) == {"a/01.png", "b/01.png"}


def test_a_failed_write_leaves_no_half_saved_class_set(root, monkeypatch):
    real_open, calls = open, []

    def failing_open(path, mode="r", *args, **kw):
        if "x" in mode:
            calls.append(path)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError, match="No space"):
        save_browser_classes({"a": [("1.png", png(1))], "b": [("1.png", png(2))]})
    assert len(calls) == 2 and files_under(root) == set() and list(root.iterdir()) == []


def test_fewer_than_two_usable_classes_raise_and_write_nothing(root):
    with pytest.raises(UserError, match="at least two classes.*bad/bad.png"):
        save_browser_classes({"only": [("1.png", png(1))], "bad": [("bad.png", b"nope")]})
    assert files_under(root) == set()


def test_two_saves_in_the_same_second_get_different_folders(root, monkeypatch):
    monkeypatch.setattr(uploads, "_stamp", lambda: "20250101-000000")
    classes = {"a": [("1.png", png(1))], "b": [("1.png", png(2))]}
    first, _ = save_browser_classes(classes)
    second, _ = save_browser_classes(classes)
    assert first != second and second.name == "20250101-000000-browser-2"
    assert spec_kind(str(second)) == "browser"


# -------------------------------------------------------------------------------------- previews


def test_preview_reports_small_classes_mixed_sizes_and_thumbnails(root):
    files = classes_zip("ab", per_class=6, size=(8, 8))
    files.update({f"set/c/{i}.png": png(50 + i, (12, 10)) for i in range(2)})
    path, _ = save_zip("set.zip", zip_bytes(files))
    pv = preview(str(path), ways=3, shots=1, queries=5, per_class=4)
    assert pv["too_small"] == ["c"] and pv["need"] == 6
    assert any("fewer than 6 images" in p and "'c'" in p for p in pv["problems"])
    assert not any("3-way" in p for p in pv["problems"])  # whether it trains is the plan's to say (test_plan.py)
    assert any("mixed image sizes" in p and "8×8 to 12×10" in p for p in pv["problems"])
    assert [t["name"] for t in pv["tiles"]] == ["a", "b", "c"]
    assert pv["tiles"][0]["image"].shape == (28, 4 * 28 + 3 * 2, 3)  # 4 tiles of 28 px, 2 px gaps
    assert pv["tiles"][2]["count"] == 2


def test_split_preview_places_every_class_once(root):
    sp = split_preview("digits", "auto", {"val_split": 2, "test_split": 2, "external_split": 2}, ways=2)
    rows = {r["split"]: r for r in sp["rows"]}
    assert [rows[s]["classes"] for s in ("meta-train", "meta-val", "meta-test", "external")] == [4, 2, 2, 2]
    placed = [n for names in sp["class_names"].values() for n in names]
    assert sorted(placed) == [str(d) for d in range(10)]
    assert sp["problems"] == [] and sp["report"]["disjoint"]
    crowded = {"val_split": 2, "test_split": 1, "external_split": 2}
    assert "meta-test has 1 class" in split_preview("digits", "auto", crowded, ways=2)["problems"][0]


def test_split_preview_refuses_the_data_as_its_own_external_set(root):
    with pytest.raises(UserError, match="same data"):
        split_preview("digits", "digits")


def test_spec_kind(root):
    assert [spec_kind(s) for s in ("glyphs", "glyphs:classes=9", "digits", None)] == ["glyphs", "glyphs", "digits",
                                                                                         "glyphs"]
    assert spec_kind(str(root / "x.zip")) == "zip"
    assert spec_kind("/elsewhere/x.zip") == "path"
    assert spec_kind(os.path.join("somewhere", "20250101-browser")) == "path"
