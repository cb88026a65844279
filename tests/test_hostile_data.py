"""Hostile data (issue 6, "Uploads and datasets"): fuzzed archives and images, odd image kinds,
dataset edge cases, zip bombs and crafted .npz files.

Cases already covered in test_sources.py / test_uploads.py (the fixed list of evil zip members,
EXIF orientation 6, an 8000x6000 bomb, object arrays in images/labels/class_names...) are not
repeated; these add property-based checks and the kinds those tests do not reach.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import tempfile
import time
import tracemalloc
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.data import Preprocess, images, load_imageset, sources
from engine.data.episodes import EpisodeSampler
from engine.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _fresh_cache():
    sources.clear_cache()
    yield
    sources.clear_cache()


# ------------------------------------------------------------------------------------ helpers


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gray(seed: int, size=(12, 12)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L")


def zip_bytes(members: list[tuple[str, bytes]], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data, compress_type=method)
    return buf.getvalue()


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, with a tiny IDAT: decoding it would fail, so a
    refusal that names the size proves the size was checked before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


GOOD = [(f"{c}/{k}.png", encode(gray(10 * i + k))) for i, c in enumerate("ab") for k in range(2)]
GOOD_ZIP = zip_bytes(GOOD)


def safe_class_paths(names: list[str]) -> set[str]:
    """Reference: every folder path (and its form without the first level) that a member name
    could make a class of, counting only members with no '..', no absolute path, no drive letter."""
    out: set[str] = set()
    for name in names:
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
            continue
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        if ".." in parts or len(parts) < 2:
            continue
        folder = parts[:-1]
        out.add("/".join(folder))
        if len(folder) >= 2:
            out.add("/".join(folder[1:]))
    return out


def check_safe_result(s, allowed: set[str]) -> None:
    assert s.images.dtype == np.uint8 and s.images.ndim == 4
    assert len(s.labels) == len(s.images) and len(s.images) > 0
    assert set(s.class_names) <= allowed, (s.class_names, allowed)
    for cname in s.class_names:
        parts = cname.split("/")
        assert all(p not in ("", ".", "..") for p in parts), cname
        assert "\\" not in cname and not cname.startswith("/")


def load_zip_safely(data: bytes, tmp: Path):
    """Write `data` as a .zip in an otherwise empty folder, load it with the working directory
    there too, and check nothing was written. Returns the ImageSet or the UserError."""
    path = tmp / "fuzz.zip"
    path.write_bytes(data)
    sources.clear_cache()
    before = listing(tmp)
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        try:
            return load_imageset(str(path))
        except UserError as e:
            assert str(e).strip()
            return e
    finally:
        os.chdir(cwd)
        assert listing(tmp) == before, "the loader wrote something"


# -------------------------------------------------------------------------------- 1. archive fuzz


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_as_a_zip_give_a_user_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        result = load_zip_safely(data, Path(tmp))
    assert isinstance(result, UserError)  # random bytes never hold a valid class set


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOOD_ZIP) * 8 - 1)), min_size=1, max_size=8),
       st.integers(1, len(GOOD_ZIP)), st.booleans())
def test_mutated_zip_loads_safely_or_raises_a_user_error(flips, cut, truncate):
    data = bytearray(GOOD_ZIP)
    for (bit,) in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    if truncate:
        data = data[:cut]
    data = bytes(data)
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except Exception:  # noqa: BLE001 - the loader must then refuse it
        names = []
    with tempfile.TemporaryDirectory() as tmp:
        result = load_zip_safely(data, Path(tmp))
    if not isinstance(result, UserError):
        check_safe_result(result, safe_class_paths(names))


_SEGMENT = st.one_of(
    st.sampled_from(["..", ".", "", "a", "b", "C:", "C:\\x", "c:", "x..y", "...", "é 中", "sp ace", "\\", "..\\..",
                     "\u202e", "con", "a\\..\\..", "~"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6),
)
_MEMBER = st.builds(lambda lead, segs, ext: lead + "/".join(segs) + ext,
                    st.sampled_from(["", "", "/", "\\", "C:\\", "c:/", "../", "..\\", "//"]),
                    st.lists(_SEGMENT, min_size=0, max_size=4),
                    st.sampled_from([".png", ".PNG", ".zip", ".txt", "", "/"]))


@FUZZ
@given(st.lists(_MEMBER, min_size=1, max_size=6))
def test_arbitrary_member_names_never_escape(hostile):
    img = encode(gray(99))
    members = list(GOOD) + [(name, img) for name in hostile]
    data = zip_bytes(members)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    with tempfile.TemporaryDirectory() as tmp:
        result = load_zip_safely(data, Path(tmp))
    assert not isinstance(result, UserError), result  # the good classes are always there
    check_safe_result(result, safe_class_paths(names))
    assert {"a", "b"} <= set(result.class_names)
    text = "\n".join(result.problems)
    for name in names:
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":" and name[0].isalpha()) \
                or ".." in name.replace("\\", "/").split("/"):
            if not name.endswith("/"):
                assert f"{name}: refused" in text, (name, text)


def test_member_with_an_empty_name_is_skipped_by_loader_and_upload(tmp_path, monkeypatch):
    from engine.services.datasets import original_sizes
    from engine.services.uploads import save_zip

    monkeypatch.setenv("CONCEPTSCAPE_UPLOADS", str(tmp_path / "uploads"))
    data = zip_bytes(GOOD + [("", encode(gray(4)))])  # zipfile's is_dir() raises IndexError on ''
    path = tmp_path / "noname.zip"
    path.write_bytes(data)
    s = load_imageset(str(path))
    assert s.class_names == ["a", "b"] and s.counts().tolist() == [2, 2]
    saved, _problems = save_zip("noname.zip", data)
    assert load_imageset(str(saved)).class_names == ["a", "b"]
    assert original_sizes(str(path))["checked"] == 4


# --------------------------------------------------------------------------------- 2. image fuzz


def _png_and_jpeg():
    img = Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1)), "L")
    return encode(img), encode(img.convert("RGB"), "JPEG", quality=90)


PNG, JPEG = _png_and_jpeg()


def _check_bad_file_named(root: Path, ext: str):
    s = load_imageset(str(root))
    assert s.class_names == ["a", "b"]
    counts = s.counts().tolist()
    assert counts[1] == 1  # the valid image of the other class still loads
    if counts[0] == 1:  # the damaged one was left out: it must be named, with a reason
        lines = [p for p in s.problems if p.startswith(f"a/bad{ext}: ")]
        assert lines and all(len(p) > len(f"a/bad{ext}: ") + 3 for p in lines), s.problems
    else:
        assert counts[0] == 2


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif", ".webp"]))
def test_random_bytes_as_images_are_skipped_and_named(data, ext):
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tree(Path(tmp), {f"a/bad{ext}": data, "a/ok.png": encode(gray(1)), "b/ok.png": encode(gray(2))})
        _check_bad_file_named(root, ext)


@FUZZ
@given(st.sampled_from(["png", "jpg"]), st.integers(0, 10_000), st.lists(st.integers(0, 10**6), max_size=3))
def test_truncated_or_flipped_png_and_jpeg(kind, cut, flips):
    data = bytearray(PNG if kind == "png" else JPEG)
    for f in flips:
        data[f % len(data)] ^= 1 << (f % 8)
    data = bytes(data[: cut % (len(data) + 1)])
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tree(Path(tmp), {f"a/bad.{kind}": data, "a/ok.png": encode(gray(1)), "b/ok.png": encode(gray(2))})
        _check_bad_file_named(root, f".{kind}")


def test_truncated_png_is_always_named(tmp_path):
    root = write_tree(tmp_path, {"a/bad.png": PNG[: len(PNG) // 2], "a/ok.png": encode(gray(1)), "b/ok.png": encode(gray(2))})
    s = load_imageset(str(root))
    assert s.counts().tolist() == [1, 1]
    assert any(p.startswith("a/bad.png: not a readable image (") for p in s.problems), s.problems


# --------------------------------------------------------------------------------- 3. image kinds


def load_one(tmp_path: Path, name: str, data: bytes, prep=Preprocess(image_size=16, polarity="keep")):
    root = write_tree(tmp_path / "d", {f"a/{name}": data, "b/ok.png": encode(gray(3, (16, 16)))})
    return load_imageset(str(root), prep)


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("L", (16, 16), v) for v in (0, 255, 128)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    s = load_one(tmp_path, "anim.gif", buf.getvalue())
    assert s.counts().tolist() == [1, 1]
    assert s.images[0].max() <= 5  # the black first frame, not the white second
    assert any(p.startswith("a/anim.gif: has several frames; used the first") for p in s.problems)


def test_sixteen_bit_mid_gray_is_scaled_not_white(tmp_path):
    arr = np.full((16, 16), 32768, dtype=np.uint16)
    arr[:8] = 65535
    arr[:, :4] = 0
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    s = load_one(tmp_path, "deep.png", encode(img))
    px = s.images[0, ..., 0].astype(int)
    assert px[12, 10] == 128 and px[2, 10] == 255 and px[12, 1] == 0


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_images_with_and_without_transparency(tmp_path, transparent):
    img = Image.new("P", (16, 16), 0)
    img.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    img.paste(1, (0, 0, 16, 8))  # top half palette entry 1 (blue), bottom entry 0 (red)
    kw = {"transparency": 0} if transparent else {}
    s = load_one(tmp_path, "pal.png", encode(img, **kw), Preprocess(image_size=16, channels=3))
    px = s.images[0].astype(int)
    assert abs(px[3, 8] - [0, 0, 200]).max() <= 3
    bottom = [255, 255, 255] if transparent else [200, 0, 0]  # transparent -> white paper
    assert abs(px[13, 8] - bottom).max() <= 3


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    data = encode(img, "JPEG", quality=100)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    s = load_one(tmp_path, "cmyk.jpg", data, Preprocess(image_size=16, channels=3))
    r, g, b = s.images[0].reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    arr = np.zeros((16, 16, 4), dtype=np.uint8)  # black everywhere
    arr[..., 3] = 255
    arr[8:, :, 3] = 0  # bottom half fully transparent
    img = Image.fromarray(arr, "RGBA").convert(mode)
    s = load_one(tmp_path, "alpha.png", encode(img))
    px = s.images[0, ..., 0].astype(int)
    assert px[:6].max() <= 3 and px[10:].min() >= 252


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientations_come_out_upright(tmp_path, orientation):
    upright = np.zeros((32, 32), dtype=np.uint8)
    upright[:16, :16] = 255  # top-left quadrant white
    upright[16:, 16:] = 128  # bottom-right quadrant gray
    inverse = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}[orientation]
    stored = Image.fromarray(upright, "L").transpose(inverse)  # what a camera would store
    exif = Image.Exif()
    exif[0x0112] = orientation
    s = load_one(tmp_path, "rot.jpg", encode(stored, "JPEG", exif=exif, quality=100),
                 Preprocess(image_size=32, polarity="keep"))
    px = s.images[0, ..., 0].astype(int)
    assert abs(px[2:14, 2:14].mean() - 255) < 8
    assert abs(px[18:30, 18:30].mean() - 128) < 8
    assert px[2:14, 18:30].mean() < 8 and px[18:30, 2:14].mean() < 8


@pytest.mark.parametrize("w, h, words", [
    (7000, 7000, "7000×7000 px is over the 40 Mpx limit per image"),  # engine's own limit
    (100_000, 100_000, "not a readable image (Image size (10000000000 pixels) exceeds limit"),  # Pillow's
])
def test_decompression_bomb_header_refused_before_decoding(tmp_path, w, h, words):
    tracemalloc.start()
    try:
        s = load_one(tmp_path, "bomb.png", png_header_only(w, h))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert s.counts().tolist() == [1] and s.class_names == ["b"]
    assert any(p.startswith(f"a/bomb.png: {words}") for p in s.problems), s.problems
    assert peak < 30 * 2**20


def test_zero_byte_file(tmp_path):
    s = load_one(tmp_path, "empty.png", b"")
    assert s.class_names == ["b"]
    assert "a/empty.png: not a readable image (empty file)" in s.problems
    assert "class 'a': no readable images, left out" in s.problems


# ----------------------------------------------------------------------------- 4. dataset shapes


def test_empty_class_folders_are_left_out(tmp_path):
    root = write_tree(tmp_path / "d", {"a/0.png": encode(gray(1)), "b/0.png": encode(gray(2))})
    (root / "empty").mkdir()
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "only_junk").mkdir()
    (root / "only_junk" / "x.png").write_bytes(b"junk")
    s = load_imageset(str(root))
    assert s.class_names == ["a", "b"]
    assert "class 'only_junk': no readable images, left out" in s.problems


def test_a_single_class_loads_but_no_task_can_be_drawn(tmp_path, capsys):
    from engine.cli import main

    root = write_tree(tmp_path / "d", {f"only/{k}.png": encode(gray(k)) for k in range(6)})
    s = load_imageset(str(root))
    assert s.class_names == ["only"] and s.counts().tolist() == [6]
    with pytest.raises(UserError, match=r"1 classes have at least 2 images .*a 2-way task needs 2"):
        EpisodeSampler(s, ways=2, shots=1, queries=1)
    assert main(["inspect", str(root)]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "only 1 classes have 2 or more images" in err and "Traceback" not in err


def test_classes_smaller_than_k_plus_q_are_left_out_and_named(tmp_path):
    files = {f"{c}/{k}.png": encode(gray(10 * i + k)) for i, c in enumerate("abc") for k in range(4)}
    files.update({f"tiny é/{k}.png": encode(gray(90 + k)) for k in range(2)})
    s = load_imageset(str(write_tree(tmp_path / "d", files)))
    sampler = EpisodeSampler(s, ways=3, shots=2, queries=2)
    assert sampler.skipped == ["tiny é"]
    assert sampler.warnings() and "'tiny é'" in sampler.warnings()[0] and "fewer than 4 images" in sampler.warnings()[0]
    idx = sampler.draw(20, np.random.default_rng(0))
    tiny = s.class_names.index("tiny é")
    assert tiny not in idx.classes


def test_duplicate_images_and_duplicate_members(tmp_path):
    img = encode(gray(5))
    files = {"a/1.png": img, "a/2.png": img, "b/1.png": img}  # the same picture thrice
    s = load_imageset(str(write_tree(tmp_path / "d", files)))
    assert s.counts().tolist() == [2, 1]
    assert np.array_equal(s.images[0], s.images[2])
    path = tmp_path / "dup.zip"
    path.write_bytes(zip_bytes([("a/1.png", img), ("a/1.png", encode(gray(6))), ("b/1.png", img)]))
    z = load_imageset(str(path))
    assert z.counts().tolist() == [1, 1] and np.array_equal(z.images[0], s.images[0])  # the first kept
    assert "a/1.png: appears twice in the archive; kept the first" in z.problems


def test_unicode_and_space_class_names_in_folder_and_zip(tmp_path):
    names = ["chat noir", "中文 字", "Ünïcödé", "emoji 🐱", "a b  c"]
    files = {f"{n}/{k}.png": encode(gray(k + 7 * i)) for i, n in enumerate(names) for k in range(2)}
    f = load_imageset(str(write_tree(tmp_path / "d", files)))
    assert sorted(f.class_names) == sorted(names)
    path = tmp_path / "u.zip"
    path.write_bytes(zip_bytes(list(files.items())))
    z = load_imageset(str(path))
    assert z.class_names == f.class_names and np.array_equal(z.images, f.images)


def test_thousands_of_tiny_classes_stay_fast_and_bounded(tmp_path):
    tiny = encode(Image.new("L", (4, 4), 200))
    path = tmp_path / "many.zip"
    path.write_bytes(zip_bytes([(f"set/c{i:04d}/0.png", tiny) for i in range(2000)], zipfile.ZIP_STORED))
    t0 = time.perf_counter()
    s = load_imageset(str(path))
    elapsed = time.perf_counter() - t0
    assert s.num_classes == 2000 and s.counts().tolist() == [1] * 2000
    assert s.images.nbytes <= 2000 * 28 * 28
    assert elapsed < 15, elapsed
    with pytest.raises(UserError, match="0 classes have at least 2 images"):
        EpisodeSampler(s, ways=5, shots=1, queries=1)


def _patch_sizes(data: bytes, member: str, declared: int) -> bytes:
    """Rewrite the uncompressed size a zip declares for `member` (local header and central directory)."""
    out = bytearray(data)
    raw = member.encode()
    for sig, size_off, name_off in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = out.find(sig)
        while at >= 0:
            if out[at + name_off: at + name_off + len(raw)] == raw:
                out[at + size_off: at + size_off + 4] = struct.pack("<I", declared)
            at = out.find(sig, at + 1)
    return bytes(out)


def test_zip_member_declaring_a_huge_size_is_skipped_unread(tmp_path, monkeypatch):
    data = zip_bytes(GOOD + [("a/huge.png", encode(gray(7)))])
    data = _patch_sizes(data, "a/huge.png", 0xFFFF_FFF0)  # declares ~4 GiB
    path = tmp_path / "declared.zip"
    path.write_bytes(data)
    read = []
    real = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, m, *a: read.append(getattr(m, "filename", m)) or real(self, m, *a))
    monkeypatch.setattr(images, "READ", replace(images.READ, max_zip_bytes=2**40))  # past the whole-archive check: the per-member one
    s = load_imageset(str(path))
    assert s.counts().tolist() == [2, 2]
    assert any(p.startswith("a/huge.png: 4096 MiB uncompressed is over the 64 MiB limit per image") for p in s.problems)
    assert "a/huge.png" not in read
    monkeypatch.setattr(images, "READ", replace(images.READ, max_zip_bytes=2 * 2**30))
    sources.clear_cache()
    with pytest.raises(UserError, match=r"declares 4\.0 GiB uncompressed; the limit is 2 GiB"):
        load_imageset(str(path))


def _peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_extreme_compression_ratio_is_refused_with_bounded_memory(tmp_path):
    zeros = b"\0" * (70 * 2**20)  # 70 MiB of zeros -> about 70 kB deflated
    data = zip_bytes(GOOD + [("a/zeros.png", zeros)])
    assert len(data) < 200_000
    path = tmp_path / "ratio.zip"
    path.write_bytes(data)
    del zeros
    s, peak = _peak(lambda: load_imageset(str(path)))
    assert s.counts().tolist() == [2, 2]
    assert any(p.startswith("a/zeros.png: 70 MiB uncompressed is over the 64 MiB limit") for p in s.problems)
    assert peak < 16 * 2**20, peak  # never inflated


def test_member_lying_about_its_size_is_cut_off_while_reading(tmp_path):
    zeros = b"\0" * (30 * 2**20)  # really 30 MiB, but the archive says 1000 bytes
    data = _patch_sizes(zip_bytes(GOOD + [("a/liar.png", zeros)]), "a/liar.png", 1000)
    del zeros
    path = tmp_path / "liar.zip"
    path.write_bytes(data)
    s, peak = _peak(lambda: load_imageset(str(path)))
    assert s.counts().tolist() == [2, 2]
    assert any(p.startswith("a/liar.png: ") for p in s.problems), s.problems
    assert peak < 16 * 2**20, peak  # reading stopped at the declared size


def test_lying_member_in_an_upload_is_cut_off_while_reading(tmp_path, monkeypatch):
    from engine.services.uploads import save_zip

    monkeypatch.setenv("CONCEPTSCAPE_UPLOADS", str(tmp_path / "uploads"))
    zeros = encode(gray(8)) + b"\0" * (30 * 2**20)  # a readable header, so the member is kept for repacking
    member = "a/liar.png"
    data = _patch_sizes(zip_bytes(GOOD + [(member, zeros), ("x/notes.txt", b"x")]), member, len(zeros) - 29 * 2**20)
    del zeros
    (saved, problems), peak = _peak(lambda: save_zip("liar.zip", data))
    assert any(p.startswith(f"{member}: damaged in the archive (Bad CRC-32") for p in problems), problems
    with zipfile.ZipFile(saved) as zf:
        assert member not in zf.namelist() and len(zf.namelist()) == 4
    assert peak < 16 * 2**20, peak


def test_zip_bomb_in_uploads_is_refused_before_saving(tmp_path, monkeypatch):
    from engine.services.uploads import save_zip

    monkeypatch.setenv("CONCEPTSCAPE_UPLOADS", str(tmp_path / "uploads"))
    data = zip_bytes(GOOD + [("a/zeros.png", b"\0" * (30 * 2**20))])
    saved, problems = save_zip("bomb.zip", data)
    assert any(p.startswith("a/zeros.png: 30 MiB is over the 20 MiB limit per image") for p in problems), problems
    with zipfile.ZipFile(saved) as zf:
        assert "a/zeros.png" not in zf.namelist() and len(zf.namelist()) == 4


# ------------------------------------------------------------------------------------------ 5. npz


class _Marker:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_bomb(marker: Path) -> bytes:
    m = _Marker()
    m.path = str(marker)
    return pickle.dumps(m)


def _npz_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_npz_groups_object_array_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    obj = np.empty(2, dtype=object)
    obj[0] = _Marker()
    obj[0].path = str(marker)
    path = tmp_path / "g.npz"
    np.savez(path, images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, 1]), groups=obj)
    with pytest.raises(UserError, match="'groups' holds Python objects"):
        load_imageset(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("member", ["images.npy", "images", "labels.npy"])
def test_npz_member_that_is_a_raw_pickle_is_refused_unread(tmp_path, member):
    marker = tmp_path / "unpickled"
    members = {"images.npy": _npy(np.zeros((2, 8, 8), np.uint8)), "labels.npy": _npy(np.array([0, 1]))}
    if member == "images":
        del members["images.npy"]
    members[member] = _pickle_bomb(marker)
    path = _npz_with(tmp_path / "raw.npz", members)
    with pytest.raises(UserError) as e:
        load_imageset(str(path))
    assert member.split(".")[0] in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("arrays, words", [
    ({"images": np.array(5, np.uint8), "labels": np.array([0])}, ["accepted"]),
    ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array(0)}, ["accepted"]),
    ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([True, False])}, ["labels must be integers"]),
    ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array(["a", "b"])}, ["labels must be integers"]),
    ({"images": np.zeros((2, 8, 8), "U1"), "labels": np.array([0, 1])}, ["bool, integer or float"]),
    ({"images": np.zeros((2, 8, 8), "M8[s]"), "labels": np.array([0, 1])}, ["bool, integer or float"]),
    ({"images": np.zeros((2, 8, 8), [("x", "u1")]), "labels": np.array([0, 1])}, ["bool, integer or float"]),
    ({"images": np.zeros((0, 8, 8), np.uint8), "labels": np.zeros(0, int)}, ["no images"]),
    ({"images": np.zeros((2, 0, 8), np.uint8), "labels": np.array([0, 1])}, ["no images"]),
    ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([[0, 1]])}, ["accepted"]),
    ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([0, 1]), "groups": np.array([[b"a"]])}, ["'groups'", "1-D"]),
    ({"Images": np.zeros((2, 8, 8), np.uint8), "Labels": np.array([0, 1])}, ["'images'", "'Images'"]),
])
def test_npz_wrong_shapes_dtypes_and_keys(tmp_path, arrays, words):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError) as e:
        load_imageset(str(path))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


_DTYPES = st.sampled_from(["u1", "i2", "i8", "f4", "f8", "?", "c8", "U2", "S2", "M8[s]", "u8", "f2"])


@FUZZ
@given(st.lists(st.integers(0, 5), min_size=0, max_size=5), _DTYPES,
       st.lists(st.integers(0, 5), min_size=0, max_size=3), _DTYPES, st.integers(0, 255))
def test_npz_random_shapes_and_dtypes_load_or_raise_user_error(ishape, idtype, lshape, ldtype, fill):
    images = np.full(ishape, fill).astype(idtype) if np.prod(ishape, dtype=int) < 5000 else np.zeros(0)
    labels = np.zeros(lshape).astype(ldtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.npz"
        np.savez(path, images=images, labels=labels)
        sources.clear_cache()
        try:
            s = load_imageset(str(path))
        except UserError as e:
            assert str(e).strip()
            return
    assert s.images.dtype == np.uint8 and s.images.ndim == 4 and len(s.images) == len(s.labels) > 0
