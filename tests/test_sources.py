"""Dataset sources: SPEC parsing, folders, zips (safely), npz, digits, glyphs and the shared Omniglot."""
from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tree
from PIL import Image

from engine.data import (
    ImageSet,
    Preprocess,
    images,
    load_imageset,
    omniglot,
    parse_spec,
    sources,
)
from engine.errors import UserError


@pytest.fixture(autouse=True)
def _fresh_cache():
    sources.clear_cache()
    yield
    sources.clear_cache()


# ------------------------------------------------------------------------------------ helpers


def glyph(seed: int, size=(24, 20), paper=255, ink=0, mode="L") -> Image.Image:
    """A small random drawing: ink strokes on paper, away from the border."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.full((h, w), paper, dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(4, h - 8), rng.integers(4, w - 8)
        arr[y : y + 4, x : x + rng.integers(2, 5)] = ink
    img = Image.fromarray(arr, "L")
    return img.convert(mode) if mode != "L" else img


def colour(seed: int, size=(30, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def make_zip(path: Path, files: dict[str, bytes], extra: list[tuple[zipfile.ZipInfo, bytes]] = ()) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for info, data in extra:
            zf.writestr(info, data)
    path.write_bytes(buf.getvalue())
    return path


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def nested_files() -> dict[str, bytes]:
    """Omniglot-like: one top folder, then Alphabet/character/, gray PNGs and an RGB JPEG of gray."""
    files = {}
    for a, alphabet in enumerate(["Alpha", "Beta"]):
        for c in range(1, 4):
            for k in range(3):
                files[f"set/{alphabet}/character{c:02d}/{a}{c}{k}.png"] = encode(glyph(100 * a + 10 * c + k))
    # RGB mode with R == G == B still counts as gray
    files["set/Beta/character03/rgb_gray.png"] = encode(glyph(7).convert("RGB"))
    return files


def flat_files() -> dict[str, bytes]:
    files = {f"cat/{k}.png": encode(glyph(k)) for k in range(4)}
    files.update({f"dog/{k}.jpg": encode(glyph(50 + k), "JPEG", quality=95) for k in range(3)})
    files["dog/corrupt.png"] = encode(glyph(9))[:60]  # truncated
    files["dog/empty.png"] = b""
    files["dog/notes.txt"] = b"not an image"
    files["dog/.DS_Store"] = b"\0\0junk"
    files["cat/Thumbs.db"] = b"junk"
    files["__MACOSX/cat/._0.png"] = b"apple double"
    files[".hidden/x.png"] = encode(glyph(1))
    return files


# ----------------------------------------------------------------------------------- parse_spec


def test_parse_spec_keywords():
    assert parse_spec("glyphs") == ("glyphs", "glyphs", {})
    assert parse_spec("glyphs:") == ("glyphs", "glyphs", {})
    kind, _, opts = parse_spec("glyphs:classes=400, seed=3,drawings=20,alphabets=20")
    assert kind == "glyphs" and opts == {"classes": 400, "seed": 3, "drawings": 20, "alphabets": 20}
    assert parse_spec("  digits ") == ("digits", "digits", {})


@pytest.mark.parametrize(
    "spec, words",
    [
        ("glyphs:colour=3", ["colour", "classes", "drawings", "alphabets", "seed"]),
        ("glyphs:classes=many", ["classes", "whole number"]),
        ("glyphs:classes", ["key=value"]),
        ("glyphs:classes=0", ["at least 1"]),
        ("glyphs:seed=1,seed=2", ["twice"]),
        ("glyphs:drawings=-1", ["at least 1"]),
        ("digits:size=8", ["no options"]),
        ("", ["glyphs", "digits", ".zip", ".npz"]),
    ],
)
def test_parse_spec_errors(spec, words):
    with pytest.raises(UserError) as e:
        parse_spec(spec)
    for w in words:
        assert w in str(e.value)


def test_parse_spec_paths(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "a.ZIP").write_bytes(b"")
    (tmp_path / "b.npz").write_bytes(b"")
    (tmp_path / "c.txt").write_bytes(b"")
    assert parse_spec(str(tmp_path / "d"))[:2] == ("folder", str(tmp_path / "d"))
    assert parse_spec(str(tmp_path / "a.ZIP"))[0] == "zip"
    assert parse_spec(str(tmp_path / "b.npz"))[0] == "npz"
    missing = str(tmp_path / "nope")
    with pytest.raises(UserError, match="does not exist; pass a folder of class folders, a .zip or a .npz, or 'glyphs'/'digits'"):
        parse_spec(missing)
    with pytest.raises(UserError) as e:
        parse_spec(str(tmp_path / "c.txt"))
    assert "c.txt" in str(e.value) and "folder" in str(e.value) and ".npz" in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        load_imageset(missing)


# -------------------------------------------------------------------------------------- folders


def test_flat_folder(tmp_path):
    root = write_tree(tmp_path / "flat", flat_files())
    s = load_imageset(str(root))
    assert isinstance(s, ImageSet)
    assert s.class_names == ["cat", "dog"] and s.groups is None
    assert s.counts().tolist() == [4, 3]
    assert s.source == str(root)
    assert (s.channels, s.image_size) == (1, 28)
    text = "\n".join(s.problems)
    assert "dog/corrupt.png: not a readable image" in text
    assert "dog/empty.png: not a readable image (empty file)" in text
    assert "dog/notes.txt" in text
    for quiet in (".DS_Store", "Thumbs.db", "__MACOSX", ".hidden", "._0"):
        assert quiet not in text


def test_nested_folder_strips_top_and_groups(tmp_path):
    root = write_tree(tmp_path / "nested", nested_files())
    s = load_imageset(str(root))
    assert s.class_names == [f"{a}/character{c:02d}" for a in ("Alpha", "Beta") for c in (1, 2, 3)]
    assert s.groups == ["Alpha"] * 3 + ["Beta"] * 3
    assert s.counts().tolist() == [3, 3, 3, 3, 3, 4]
    assert s.channels == 1 and s.problems == []
    # files are taken in name order within a class
    first = Image.open(root / "set/Alpha/character01/010.png")
    assert np.array_equal(s.images[0], 255 - np.asarray(first.resize((28, 28), Image.Resampling.LANCZOS))[..., None])


def test_folder_with_one_class_level_under_a_top_folder(tmp_path):
    root = write_tree(tmp_path / "r", {f"top/{c}/{k}.png": encode(glyph(k)) for c in "ab" for k in range(2)})
    s = load_imageset(str(root))
    assert s.class_names == ["a", "b"] and s.groups is None


def test_rgb_folder_and_preprocess(tmp_path):
    root = write_tree(tmp_path / "rgb", {f"{c}/{k}.jpg": encode(colour(10 * i + k), "JPEG") for i, c in enumerate("xyz") for k in range(2)})
    s = load_imageset(str(root))
    assert (s.channels, s.image_size, s.inverted) == (3, 64, False)
    g = load_imageset(str(root), Preprocess(image_size=16, channels=1))
    assert g.images.shape == (6, 16, 16, 1)


def test_polarity(tmp_path):
    white = write_tree(tmp_path / "white", {f"{c}/{k}.png": encode(glyph(k, paper=255, ink=0)) for c in "ab" for k in range(2)})
    dark = write_tree(tmp_path / "dark", {f"{c}/{k}.png": encode(glyph(k, paper=0, ink=255)) for c in "ab" for k in range(2)})
    w, d = load_imageset(str(white)), load_imageset(str(dark))
    assert w.inverted and not d.inverted
    for s in (w, d):  # bright ink on dark paper either way
        assert s.images[:, 0].mean() < 30
    assert not load_imageset(str(white), Preprocess(polarity="keep")).inverted


def test_loose_images_only_is_an_error(tmp_path):
    root = write_tree(tmp_path / "loose", {f"{k}.png": encode(glyph(k)) for k in range(3)})
    with pytest.raises(UserError, match="one sub-folder of images per class"):
        load_imageset(str(root))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no usable class"):
        load_imageset(str(tmp_path / "empty"))


def test_nothing_readable_is_an_error(tmp_path):
    root = write_tree(tmp_path / "bad", {"a/1.png": b"nope", "b/2.png": b""})
    with pytest.raises(UserError, match="none of the images could be read"):
        load_imageset(str(root))


def test_folder_symlinks_not_followed(tmp_path):
    outside = write_tree(tmp_path / "outside", {"secret/1.png": encode(glyph(1)), "lone.png": encode(glyph(2))})
    root = write_tree(tmp_path / "data", {f"{c}/{k}.png": encode(glyph(k)) for c in "ab" for k in range(2)})
    try:
        os.symlink(outside / "secret", root / "linked_dir")
        os.symlink(outside / "lone.png", root / "a" / "link.png")
    except (OSError, NotImplementedError):
        pytest.skip("symlinks not available here")
    s = load_imageset(str(root))
    assert s.class_names == ["a", "b"] and s.counts().tolist() == [2, 2]
    text = "\n".join(s.problems)
    assert "linked_dir: symbolic link" in text and "a/link.png: symbolic link" in text


def test_exif_orientation_and_frames(tmp_path):
    arr = np.zeros((40, 40), dtype=np.uint8)
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewer turns it 90 deg clockwise -> top half white
    rotated = Image.fromarray(arr, "L")
    frames = [glyph(1), glyph(2), glyph(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    root = write_tree(
        tmp_path / "d",
        {"a/rot.jpg": encode(rotated, "JPEG", exif=exif, quality=100), "b/anim.gif": gif.getvalue(), "b/x.png": encode(glyph(4))},
    )
    s = load_imageset(str(root), Preprocess(image_size=40, polarity="keep"))
    img = s.images[0, ..., 0].astype(int)
    assert img[:15].mean() > 200 and img[25:].mean() < 50  # upright: top white, bottom black
    assert any("b/anim.gif: has several frames; used the first" in p for p in s.problems)


def test_decompression_bomb_refused(tmp_path):
    bomb = encode(Image.new("1", (8000, 6000)), "PNG", optimize=True)  # 48 Mpx in a few kB
    root = write_tree(tmp_path / "d", {"a/bomb.png": bomb, "a/ok.png": encode(glyph(1)), "b/ok.png": encode(glyph(2))})
    s = load_imageset(str(root))
    assert s.counts().tolist() == [1, 1]
    assert any(p.startswith("a/bomb.png: 8000×6000 px is over the 40 Mpx limit") for p in s.problems)


def test_sixteen_bit_png_scaled_not_clipped(tmp_path):
    arr = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    files = {"a/0.png": encode(Image.fromarray(arr)), "b/0.png": encode(Image.fromarray(arr))}
    s = load_imageset(str(write_tree(tmp_path / "d", files)), Preprocess(image_size=32, polarity="keep"))
    assert np.array_equal(s.images[0, ..., 0], (arr >> 8).astype(np.uint8))


def test_large_images_are_reduced_first(tmp_path):
    y, x = np.mgrid[0:600, 0:1000]
    smooth = np.stack([x * 255 // 999, y * 255 // 599, (x + y) * 255 // 1598], axis=-1).astype(np.uint8)
    big = Image.fromarray(smooth, "RGB")
    files = {"a/big.png": encode(big), "a/big.jpg": encode(big, "JPEG", quality=95), "b/small.png": encode(colour(2))}
    s = load_imageset(str(write_tree(tmp_path / "d", files)))
    direct = np.asarray(big.resize((64, 64), Image.Resampling.LANCZOS)).astype(int)
    for i in (0, 1):  # big.jpg (JPEG draft decoding), big.png (box reduce): both close to a direct resize
        assert np.abs(s.images[i].astype(int) - direct).mean() < 3


# ----------------------------------------------------------------------------------------- zips


def test_zip_matches_folder(tmp_path):
    files = nested_files()
    folder = load_imageset(str(write_tree(tmp_path / "f", files)))
    z = load_imageset(str(make_zip(tmp_path / "n.zip", files)))
    assert z.class_names == folder.class_names and z.groups == folder.groups
    assert np.array_equal(z.images, folder.images) and np.array_equal(z.labels, folder.labels)
    flat = flat_files()
    zf = load_imageset(str(make_zip(tmp_path / "flat.zip", flat)))
    ff = load_imageset(str(write_tree(tmp_path / "flat", flat)))
    assert zf.class_names == ff.class_names == ["cat", "dog"]
    assert np.array_equal(zf.images, ff.images)


def test_zip_evil_members_refused_and_nothing_written(tmp_path, monkeypatch):
    good = {f"set/{c}/{k}.png": encode(glyph(k)) for c in "ab" for k in range(2)}
    link = zipfile.ZipInfo("set/a/link.png")
    link.external_attr = (0o120777 << 16)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as izf:
        izf.writestr("c/1.png", encode(glyph(3)))
    evil = {
        "../evil.png": encode(glyph(5)),
        "/abs.png": encode(glyph(6)),
        "set/../../evil2.png": encode(glyph(7)),
        "..\\evil3.png": encode(glyph(8)),
        "C:/drive.png": encode(glyph(9)),
        "set/a/inner.zip": inner.getvalue(),
        "set/b/readme.md": b"hello",
    }
    path = make_zip(tmp_path / "evil.zip", {**good, **evil}, extra=[(link, b"/etc/passwd")])
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = listing(tmp_path)
    s = load_imageset(str(path))
    assert listing(tmp_path) == before
    assert s.class_names == ["a", "b"] and s.counts().tolist() == [2, 2]
    text = "\n".join(s.problems)
    for name in evil:
        assert name in text, name
    assert "set/a/link.png: refused (symbolic link member)" in text
    assert "set/a/inner.zip: nested archive" in text


def test_zip_not_a_zip(tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"PK\x03\x04 but not really")
    with pytest.raises(UserError, match=r"x\.zip is not a readable zip archive \("):
        load_imageset(str(path))


def test_zip_limits(tmp_path, monkeypatch):
    files = {f"{c}/{k}.png": encode(glyph(k)) for c in "abc" for k in range(3)}
    path = make_zip(tmp_path / "z.zip", files)
    monkeypatch.setattr(images, "READ", images.ReadLimits(max_zip_members=5))
    with pytest.raises(UserError, match="declares 9 members"):
        load_imageset(str(path))
    monkeypatch.setattr(images, "READ", images.ReadLimits(max_zip_bytes=100))
    with pytest.raises(UserError, match="uncompressed"):
        load_imageset(str(path))
    sizes = sorted(len(v) for v in files.values())
    monkeypatch.setattr(images, "READ", images.ReadLimits(max_file_bytes=sizes[-1] - 1))
    s = load_imageset(str(path))
    assert any("limit per image, skipped" in p for p in s.problems)
    assert s.counts().sum() < 9


def test_zip_with_nothing_usable(tmp_path):
    path = make_zip(tmp_path / "z.zip", {"../a/1.png": encode(glyph(1)), "notes.txt": b"x"})
    with pytest.raises(UserError, match="no usable class found"):
        load_imageset(str(path))


# ------------------------------------------------------------------------------------------ npz


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_layout_a_bool_and_uint8(tmp_path):
    rng = np.random.default_rng(0)
    ink = rng.random((4, 3, 20, 20)) < 0.1
    ink[:, :, [0, -1], :] = False
    ink[:, :, :, [0, -1]] = False
    paper = ~ink  # True is white paper, as in Omniglot
    labels = np.repeat(np.arange(4)[:, None], 3, axis=1)
    b = load_imageset(str(save_npz(tmp_path / "b.npz", images=paper, labels=labels)))
    u = load_imageset(str(save_npz(tmp_path / "u.npz", images=paper.astype(np.uint8) * 255, labels=labels)))
    for s in (b, u):
        assert s.class_names == ["0", "1", "2", "3"] and s.counts().tolist() == [3, 3, 3, 3]
        assert s.inverted and s.images[:, 0].mean() < 10
    assert np.array_equal(b.images, u.images)


def test_npz_layout_b_relabels_and_names(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 10, 12), dtype=np.uint8)
    labels = np.array([9, 2, 5, 2, 9, 5])
    s = load_imageset(str(save_npz(tmp_path / "b.npz", images=images, labels=labels)), Preprocess(polarity="keep"))
    assert s.class_names == ["2", "5", "9"] and s.labels.tolist() == [2, 0, 1, 0, 2, 1]
    names = np.array([f"n{i}" for i in range(10)])
    groups = np.array(["even" if i % 2 == 0 else "odd" for i in range(10)])
    s = load_imageset(str(save_npz(tmp_path / "n.npz", images=images, labels=labels, class_names=names, groups=groups)))
    assert s.class_names == ["n2", "n5", "n9"] and s.groups == ["even", "odd", "odd"]
    rgb = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    s = load_imageset(str(save_npz(tmp_path / "rgb.npz", images=rgb, labels=np.array([0, 1, 0, 1]))))
    assert (s.channels, s.image_size) == (3, 64)


def test_npz_floats(tmp_path):
    base = np.random.default_rng(2).integers(0, 256, (4, 8, 8)).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    keep = Preprocess(image_size=8, polarity="keep")
    a = load_imageset(str(save_npz(tmp_path / "a.npz", images=base, labels=labels)), keep)
    b = load_imageset(str(save_npz(tmp_path / "b.npz", images=base / 255.0, labels=labels)), keep)
    assert np.array_equal(a.images[..., 0], base.astype(np.uint8))
    assert np.array_equal(a.images, b.images)
    with pytest.raises(UserError, match="expected 0..1 or 0..255"):
        load_imageset(str(save_npz(tmp_path / "c.npz", images=base * 2, labels=labels)))
    with pytest.raises(UserError, match="NaN"):
        load_imageset(str(save_npz(tmp_path / "d.npz", images=base * np.nan, labels=labels)))
    with pytest.raises(UserError, match="expected 0..255"):
        load_imageset(str(save_npz(tmp_path / "e.npz", images=base.astype(np.int32) * 300, labels=labels)))


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"x": np.zeros((2, 8, 8)), "y": np.zeros(2)}, ["'images'", "'labels'", "'x'", "'y'"]),
        ({"images": np.zeros((2, 8, 8), np.uint8)}, ["'labels'", "'images'"]),
        ({"images": np.zeros((2, 8), np.uint8), "labels": np.zeros(2, int)}, ["(2, 8)", "accepted"]),
        ({"images": np.zeros((3, 8, 8), np.uint8), "labels": np.zeros(2, int)}, ["(3, 8, 8)", "(2,)", "accepted"]),
        ({"images": np.zeros((2, 8, 8, 5), np.uint8), "labels": np.zeros(2, int)}, ["(2, 8, 8, 5)", "accepted"]),
        ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.zeros(2)}, ["labels must be integers"]),
        ({"images": np.zeros((2, 8, 8), complex), "labels": np.zeros(2, int)}, ["bool, integer or float"]),
        ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([0, 3]), "class_names": np.array(["a", "b"])}, ["class_names", "label"]),
        ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([0, 1]), "class_names": np.array([1, 2])}, ["strings"]),
    ],
)
def test_npz_errors(tmp_path, arrays, words):
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError) as e:
        load_imageset(str(path))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


class _Boom:
    """Unpickling this would create a marker file."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_npz_object_array_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    boom = _Boom()
    boom.marker = str(marker)
    obj = np.empty(1, dtype=object)
    obj[0] = boom
    for key in ("images", "labels", "class_names"):
        arrays = {"images": np.zeros((1, 8, 8), np.uint8), "labels": np.zeros(1, int), key: obj}
        path = tmp_path / f"{key}.npz"
        np.savez(path, **arrays)
        with pytest.raises(UserError, match="Python objects"):
            load_imageset(str(path))
    assert not marker.exists()


def test_npz_not_an_npz(tmp_path):
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_imageset(str(tmp_path / "t.npz"))
    np.save(tmp_path / "single.npy", np.zeros(3))
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    with pytest.raises(UserError, match="single array"):
        load_imageset(str(tmp_path / "single.npz"))


# -------------------------------------------------------------------------------- cache, digits


def test_cache_is_read_only_and_follows_changes(tmp_path):
    path = tmp_path / "c.npz"
    images = np.random.default_rng(3).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    save_npz(path, images=images, labels=np.array([0, 0, 1, 1]))
    a = load_imageset(str(path))
    b = load_imageset(str(tmp_path / "." / "c.npz"))
    assert a.images is b.images and b.source == str(tmp_path / "." / "c.npz") and a.source == str(path)
    assert not a.images.flags.writeable and not a.labels.flags.writeable
    with pytest.raises(ValueError):
        a.images[0] = 0
    a.class_names.append("x")
    a.problems.append("x")
    assert load_imageset(str(path)).class_names == ["0", "1"] and load_imageset(str(path)).problems == []
    assert a.subset([1]).images.flags.writeable
    save_npz(path, images=images[:3], labels=np.array([0, 1, 2]))
    os.utime(path, ns=(1, 1))
    assert load_imageset(str(path)).num_classes == 3
    assert load_imageset(str(path), Preprocess(image_size=12)).image_size == 12


def test_folder_cache_notices_new_files(tmp_path):
    root = write_tree(tmp_path / "d", {f"{c}/{k}.png": encode(glyph(k)) for c in "ab" for k in range(2)})
    assert load_imageset(str(root)).num_classes == 2
    write_tree(root, {"c/0.png": encode(glyph(9))})
    assert load_imageset(str(root)).num_classes == 3


def test_digits():
    s = load_imageset("digits")
    assert s.num_classes == 10 and len(s.images) == 1797
    assert s.class_names == [str(d) for d in range(10)] and s.groups is None
    assert s.source == "digits" and not s.inverted and s.images.max() == 255
    small = load_imageset("digits", Preprocess(image_size=8))
    from sklearn.datasets import load_digits

    expected = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    assert np.array_equal(small.images[..., 0], expected)


def test_glyphs_spec_reaches_generator():
    pytest.importorskip("engine.data.glyphs")
    s = load_imageset("glyphs:classes=6,drawings=2,seed=1")
    assert s.num_classes == 6 and len(s.images) == 12 and s.source == "glyphs:classes=6,drawings=2,seed=1"


# ------------------------------------------------------------------------------------ omniglot


def test_alphabet_table_covers_background_exactly():
    table = omniglot.BACKGROUND_ALPHABETS
    assert table[0][0] == 1 and table[-1][1] == 964 and len(table) == 30
    for (_, last, _), (first, _, _) in zip(table, table[1:]):
        assert first == last + 1
    assert all(first <= last for first, last, _ in table)
    assert len({name for _, _, name in table}) == 30
    names = omniglot.background_alphabets()
    assert len(names) == 964 and names[0] == "Arcadian" and names[963] == "Tifinagh"
    assert omniglot.background_class_names()[107] == "Balinese/character01"


@pytest.mark.parametrize("zip_name", ["images_background_small1.zip", "images_background_small2.zip"])
def test_alphabet_table_matches_upstream_zips(omniglot_dir, zip_name):
    class_names = omniglot.background_class_names()
    with zipfile.ZipFile(omniglot_dir / zip_name) as zf:
        pngs = [n for n in zf.namelist() if n.endswith(".png")]
    assert pngs
    for name in pngs:
        m = re.search(r"/([^/]+/character\d\d)/(\d{4})_(\d\d)\.png$", name)
        assert m, name
        assert class_names[int(m.group(2)) - 1] == m.group(1), name


def test_omniglot_small_zip(omniglot_dir):
    s = load_imageset(str(omniglot_dir / "images_background_small1.zip"))
    assert s.num_classes == 136 and len(s.images) == 2720
    assert sorted(set(s.groups)) == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert s.class_names[0] == "Balinese/character01" and s.groups[0] == "Balinese"
    assert s.inverted and s.problems == []


def test_omniglot_npz_and_zip_agree(omniglot_dir):
    full = load_imageset(str(omniglot_dir / "images_background.npz"))
    assert full.num_classes == 964 and len(full.images) == 19280
    assert len(set(full.groups)) == 30 and full.groups[0] == "Arcadian"
    assert full.class_names[0] == "Arcadian/character01" and full.class_names[-1] == "Tifinagh/character55"
    assert full.inverted and full.image_size == 28 and full.channels == 1
    border = np.concatenate([full.images[:, 0].ravel(), full.images[:, -1].ravel(), full.images[:, :, 0].ravel()])
    assert border.mean() < 5
    small = load_imageset(str(omniglot_dir / "images_background_small1.zip"))
    full_index = {n: i for i, n in enumerate(full.class_names)}
    full_members, small_members = full.class_indices(), small.class_indices()
    for c in (0, 60, 135):  # zip IIII_KK.png == npz images[IIII-1, KK-1], files in KK order
        name = small.class_names[c]
        f = full_index[name]
        assert full.groups[f] == small.groups[c]
        assert np.array_equal(small.images[small_members[c]], full.images[full_members[f]]), name


def test_npz_size_limit(tmp_path, monkeypatch):
    path = save_npz(tmp_path / "big.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4))
    monkeypatch.setattr(images, "READ", replace(images.READ, max_npz_bytes=100))
    with pytest.raises(UserError, match="uncompressed; the limit is"):
        load_imageset(str(path))
