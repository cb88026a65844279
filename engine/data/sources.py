"""Turn a dataset SPEC string (what the command line and the app pass) into an ImageSet.

SPEC forms:
- ``glyphs`` or ``glyphs:classes=400,seed=3,drawings=20,alphabets=20``: synthetic glyphs.
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).
- a path to a folder of class folders, a ``.zip`` with the same layout, or a ``.npz``.
The words ``glyphs`` and ``digits`` win over a file or folder of that name; write ``./digits``
to mean the folder.

Loads are cached in-process (the app and the trainer ask for the same data again and again).
The ImageSet you get back shares its arrays with the cache: ``images`` and ``labels`` are set
read-only, so treat the set as read-only (``subset`` and fancy indexing give fresh arrays; call
``.copy()`` before changing pixels in place). Its lists are your own copies.

Zips are read in memory, member by member, and never extracted. Files that cannot be used are
skipped and named in ``ImageSet.problems``; a source with nothing usable raises UserError.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import stat
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from engine.data.imageset import DEFAULT_GRAY_SIZE, DEFAULT_RGB_SIZE, ImageSet, Preprocess, build_imageset, from_arrays
from engine.errors import UserError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm"}
)
ARCHIVE_EXTENSIONS = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".npz")
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})  # compared lower-case

MAX_PIXELS = 40_000_000  # per image, checked before decoding (decompression bombs)
MAX_FILE_BYTES = 64 * 2**20  # per image file or zip member (uncompressed)
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_BYTES = 2 * 2**30  # declared uncompressed total of a zip
MAX_NPZ_BYTES = 4 * 2**30  # declared uncompressed total of an npz
MAX_FOLDER_FILES = 200_000  # files looked at under a folder (guards against pointing at /)
MAX_PROBLEM_LINES = 200  # beyond this, problems are counted, not listed
CACHE_SIZE = 8

GLYPH_OPTIONS = ("classes", "drawings", "alphabets", "seed")

ACCEPTED_FORMS = (
    "'glyphs' (or 'glyphs:classes=400,seed=3,drawings=20,alphabets=20'), 'digits', "
    "a folder with one sub-folder of images per class, a .zip with the same layout, "
    "or a .npz with 'images' and 'labels' arrays"
)
EXPECTED_LAYOUT = (
    "expected a folder (or zip) with one sub-folder of images per class, "
    "e.g. cats/001.png, cats/002.png, dogs/001.jpg (deeper paths such as Alphabet/character01/ are fine)"
)


# ----------------------------------------------------------------------------------------- specs


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """SPEC -> (kind, target, options).

    kind is "glyphs", "digits", "folder", "zip" or "npz"; target is the keyword or the path as
    given (``~`` expanded); options holds glyph settings as ints (empty for the other kinds).
    Raises UserError for a malformed spec, a missing path or an unknown kind of file.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"no dataset given; pass {ACCEPTED_FORMS}")
    spec = spec.strip()
    word, sep, rest = spec.partition(":")
    if word == "glyphs":
        return "glyphs", "glyphs", _parse_glyph_options(rest) if sep else {}
    if word == "digits":
        if rest.strip():
            raise UserError(f"'digits' takes no options (got {rest.strip()!r}); pass just 'digits'")
        return "digits", "digits", {}
    path = os.path.expanduser(spec)
    if not os.path.exists(path):
        raise UserError(
            f"{spec} does not exist; pass a folder of class folders, a .zip or a .npz, or 'glyphs'/'digits'"
        )
    if os.path.isdir(path):
        return "folder", path, {}
    lower = path.lower()
    if os.path.isfile(path):
        if lower.endswith(".zip"):
            return "zip", path, {}
        if lower.endswith(".npz"):
            return "npz", path, {}
    raise UserError(f"{spec} is not a kind of dataset this program reads; pass {ACCEPTED_FORMS}")


def _parse_glyph_options(text: str) -> dict:
    allowed = ", ".join(GLYPH_OPTIONS)
    options: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise UserError(f"glyphs option {item!r} is not key=value; use e.g. 'glyphs:classes=400,seed=3' ({allowed})")
        if key not in GLYPH_OPTIONS:
            raise UserError(f"unknown glyphs option {key!r}; the options are {allowed}")
        if key in options:
            raise UserError(f"glyphs option {key!r} is given twice")
        try:
            number = int(value)
        except ValueError:
            raise UserError(f"glyphs option {key}={value!r} is not a whole number") from None
        if key != "seed" and number < 1:
            raise UserError(f"glyphs {key} must be at least 1, not {number}")
        options[key] = number
    return options


# ----------------------------------------------------------------------------------------- cache

_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every cached load (tests; or to free memory)."""
    with _cache_lock:
        _cache.clear()


def _cached(key, load: Callable[[], ImageSet]) -> ImageSet:
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
    if hit is None:
        hit = load()  # outside the lock: a slow load must not block other sources
        hit.images.flags.writeable = False
        hit.labels.flags.writeable = False
        with _cache_lock:
            _cache[key] = hit
            _cache.move_to_end(key)
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return hit


def _handout(cached: ImageSet, spec: str) -> ImageSet:
    """A shallow copy for the caller: shared read-only arrays, own lists, source = spec."""
    return dataclasses.replace(
        cached,
        class_names=list(cached.class_names),
        groups=None if cached.groups is None else list(cached.groups),
        problems=list(cached.problems),
        source=spec,
    )


# ------------------------------------------------------------------------------------------ load


def load_imageset(spec: str, prep: Preprocess = Preprocess()) -> ImageSet:
    """Load SPEC (see the module doc) prepared by `prep`. Cached; treat the result as read-only."""
    kind, target, options = parse_spec(spec)
    spec = spec.strip()
    if kind == "glyphs":
        key = ("glyphs", tuple(sorted(options.items())), prep)
        result = _cached(key, lambda: _load_glyphs(options, prep))
    elif kind == "digits":
        result = _cached(("digits", prep), lambda: _load_digits(prep, spec))
    elif kind == "folder":
        root = os.path.realpath(target)
        scan = _scan_folder(root)
        key = ("folder", root, scan.fingerprint(), prep)
        result = _cached(key, lambda: _load_folder(root, scan, prep, spec))
    else:
        path = os.path.realpath(target)
        try:
            st = os.stat(path)
        except OSError as e:
            raise UserError(f"{spec} cannot be read ({e.strerror})") from None
        key = (kind, path, st.st_mtime_ns, st.st_size, prep)
        loader = _load_zip if kind == "zip" else _load_npz
        result = _cached(key, lambda: loader(path, prep, spec))
    return _handout(result, spec)


def _load_glyphs(options: dict, prep: Preprocess) -> ImageSet:
    from engine.data.glyphs import generate_glyphs  # lazy: written separately, and not always needed

    return generate_glyphs(**options, prep=prep)


def _load_digits(prep: Preprocess, spec: str) -> ImageSet:
    from sklearn.datasets import load_digits  # lazy: importing scikit-learn takes a while

    digits = load_digits()
    images = np.round(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(digits.target, dtype=np.int64)
    return from_arrays(images, labels, [str(d) for d in range(10)], prep, spec)


# ------------------------------------------------------------------------------- folders and zips


class _Problems(list):
    """Problem lines, listed up to MAX_PROBLEM_LINES and counted beyond."""

    def __init__(self):
        super().__init__()
        self.extra = 0

    def add(self, line: str) -> None:
        if len(self) < MAX_PROBLEM_LINES:
            self.append(line)
        else:
            self.extra += 1

    def lines(self) -> list[str]:
        return list(self) + ([f"... and {self.extra} more problems like these"] if self.extra else [])


def _is_ignored(name: str) -> bool:
    """Files and folders skipped without a word: hidden ones and OS clutter."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _extension(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_EXTENSIONS)


@dataclasses.dataclass
class _FolderScan:
    files: list[tuple[str, int, int]]  # (posix path relative to the root, size, mtime_ns)
    problems: list[str]
    other_files: int  # files that are not images

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        h.update(repr((self.files, self.problems, self.other_files)).encode("utf-8", "surrogatepass"))
        return h.hexdigest()


def _scan_folder(root: str) -> _FolderScan:
    """Every candidate image file under `root` (os.walk, symlinks not followed), sorted."""
    files: list[tuple[str, int, int]] = []
    problems = _Problems()
    other = 0
    seen = 0

    def rel(path: str) -> str:
        return Path(os.path.relpath(path, root)).as_posix()

    def on_error(e: OSError) -> None:
        problems.add(f"{rel(e.filename) if e.filename else root}: cannot be read ({e.strerror}), skipped")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=False):
        kept = []
        for d in sorted(dirnames):
            if _is_ignored(d):
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                problems.add(f"{rel(os.path.join(dirpath, d))}: symbolic link to a folder, not followed")
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if _is_ignored(name):
                continue
            seen += 1
            if seen > MAX_FOLDER_FILES:
                raise UserError(
                    f"{root} holds more than {MAX_FOLDER_FILES:,} files; is this the right folder? {EXPECTED_LAYOUT}"
                )
            full = os.path.join(dirpath, name)
            where = rel(full)
            try:
                st = os.lstat(full)
            except OSError as e:
                problems.add(f"{where}: cannot be read ({e.strerror}), skipped")
                continue
            if stat.S_ISLNK(st.st_mode):
                problems.add(f"{where}: symbolic link, not followed")
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.add(f"{where}: not a regular file, skipped")
                continue
            if _extension(name) not in IMAGE_EXTENSIONS:
                other += 1
                if _is_archive(name):
                    problems.add(f"{where}: an archive inside the dataset, not opened")
                else:
                    problems.add(f"{where}: not an image file, skipped")
                continue
            if st.st_size > MAX_FILE_BYTES:
                problems.add(f"{where}: {st.st_size / 2**20:.0f} MiB is over the {MAX_FILE_BYTES // 2**20} MiB limit per image, skipped")
                continue
            files.append((where, st.st_size, st.st_mtime_ns))
    files.sort()
    return _FolderScan(files=files, problems=problems.lines(), other_files=other)


def _read_regular_file(path: str) -> bytes:
    """Read a file without following a symlink or blocking on a FIFO swapped in since the scan."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        size = os.fstat(fd).st_size
        with os.fdopen(fd, "rb", closefd=False) as f:
            # read(MAX_FILE_BYTES + 1) would allocate 64 MiB for every small image
            data = f.read(min(size, MAX_FILE_BYTES) + 1)
            if size < len(data) <= MAX_FILE_BYTES:  # grew since fstat
                data += f.read(MAX_FILE_BYTES + 1 - len(data))
            return data
    finally:
        os.close(fd)


def _load_folder(root: str, scan: _FolderScan, prep: Preprocess, spec: str) -> ImageSet:
    problems = _Problems()
    for line in scan.problems:
        problems.add(line)
    items = []
    for where, _size, _mtime in scan.files:
        parts = tuple(where.split("/"))
        items.append((parts[:-1], parts[-1], os.path.join(root, *parts)))

    def read(path: str) -> bytes:
        return _read_regular_file(path)

    found = f"{len(scan.files)} image files and {scan.other_files} other files"
    return _assemble(items, read, prep, spec, problems, found, "top folder")


_DRIVE = re.compile(r"^[A-Za-z]:")


def _member_parts(name: str) -> tuple[str, ...] | str:
    """A zip member name -> its path parts, or the reason it is refused."""
    if name.startswith(("/", "\\")):
        return "absolute path"
    if _DRIVE.match(name):
        return "drive letter in path"
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        return "'..' in path"
    return tuple(p for p in parts if p not in ("", "."))


def _load_zip(path: str, prep: Preprocess, spec: str) -> ImageSet:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise UserError(f"{spec} is not a readable zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise UserError(f"{spec} declares {len(infos):,} members; the limit is {MAX_ZIP_MEMBERS:,}")
        total = sum(i.file_size for i in infos)
        if total > MAX_ZIP_BYTES:
            raise UserError(
                f"{spec} declares {total / 2**30:.1f} GiB uncompressed; the limit is {MAX_ZIP_BYTES // 2**30} GiB"
            )
        problems = _Problems()
        items = []
        other = 0
        seen: set[tuple[str, ...]] = set()
        for info in infos:
            name = info.filename
            if name.endswith("/"):  # a folder; not info.is_dir(), which fails on an empty name
                continue
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                problems.add(f"{name}: refused (symbolic link member), skipped")
                continue
            parts = _member_parts(name)
            if isinstance(parts, str):
                problems.add(f"{name}: refused ({parts}), skipped")
                continue
            if not parts or any(_is_ignored(p) for p in parts):
                continue
            if _extension(parts[-1]) not in IMAGE_EXTENSIONS:
                other += 1
                if _is_archive(parts[-1]):
                    problems.add(f"{name}: nested archive, not opened")
                else:
                    problems.add(f"{name}: not an image file, skipped")
                continue
            if info.file_size > MAX_FILE_BYTES:
                problems.add(
                    f"{name}: {info.file_size / 2**20:.0f} MiB uncompressed is over the "
                    f"{MAX_FILE_BYTES // 2**20} MiB limit per image, skipped"
                )
                continue
            if parts in seen:
                problems.add(f"{name}: appears twice in the archive; kept the first")
                continue
            seen.add(parts)
            items.append((parts[:-1], parts[-1], info))

        def read(info: zipfile.ZipInfo) -> bytes:
            return read_member(zf, info, MAX_FILE_BYTES)

        found = f"{len(items)} image members and {other} other files"
        return _assemble(items, read, prep, spec, problems, found, "top of the archive")


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, chunk: int = 2**20) -> bytes:
    """A zip member's bytes, inflated a chunk at a time. Not ``zf.read``: that inflates the whole
    compressed member in one step, so a member declaring a small size but holding a bomb would use
    memory far past its declared size before zipfile cuts it to that size (and fails its CRC)."""
    limit = min(info.file_size, limit)
    chunks, total = [], 0
    with zf.open(info) as f:
        while True:
            data = f.read(min(chunk, limit + 1 - total))
            if not data:
                return b"".join(chunks)
            total += len(data)
            if total > limit:
                raise ValueError(f"more than the {limit:,} bytes declared")
            chunks.append(data)


def _assemble(items, read, prep: Preprocess, spec: str, problems: _Problems, found: str, top: str) -> ImageSet:
    """(class path parts, file name, handle) items -> decoded classes -> build_imageset."""
    by_class: dict[tuple[str, ...], list[tuple[str, object]]] = {}
    loose = 0
    for parts, name, handle in items:
        if not parts:
            loose += 1
            continue
        by_class.setdefault(parts, []).append((name, handle))
    if loose:
        problems.add(f"{loose} image(s) at the {top} are not in a class folder, skipped")
    if not by_class:
        raise UserError(f"{spec}: no usable class found ({found}); {EXPECTED_LAYOUT}")

    keys = sorted(by_class, key=lambda k: "/".join(k))
    strip = len({k[0] for k in keys}) == 1 and all(len(k) >= 2 for k in keys)
    names = ["/".join(k[1:] if strip else k) for k in keys]
    nested = any(len(k) - strip >= 2 for k in keys)
    groups = None
    if nested:
        groups = [(n.rsplit("/", 1)[0] if "/" in n else n) for n in names]

    reduce_to = 2 * max(prep.image_size or DEFAULT_RGB_SIZE, DEFAULT_GRAY_SIZE)
    per_class = []
    decoded = 0
    for key, cname in zip(keys, names):
        imgs = []
        for fname, handle in sorted(by_class[key], key=lambda x: x[0]):
            where = "/".join(key + (fname,))
            try:
                data = read(handle)
            except Exception as e:  # noqa: BLE001 - one bad member must not stop the rest
                problems.add(f"{where}: cannot be read ({_reason(e)}), skipped")
                continue
            img = _decode(data, where, problems, reduce_to)
            if img is not None:
                imgs.append(img)
        decoded += len(imgs)
        per_class.append((cname, imgs))
    if not decoded:
        shown = "; ".join(problems[:3])
        raise UserError(f"{spec}: none of the images could be read ({found}; e.g. {shown}); {EXPECTED_LAYOUT}")
    return build_imageset(per_class, prep, spec, groups, problems.lines())


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text if text else type(e).__name__


def _decode(data: bytes, where: str, problems: _Problems, reduce_to: int) -> Image.Image | None:
    """Bytes -> a loaded, upright PIL image held in memory, or None with a problem line.

    Images much larger than needed are shrunk by an integer box filter (`Image.reduce`, and
    JPEG draft decoding) to at least `reduce_to` px per side, so a folder of photos does not hold
    every full-size picture in memory; the final resize to the model's size happens later.
    """
    if not data:
        problems.add(f"{where}: not a readable image (empty file)")
        return None
    if len(data) > MAX_FILE_BYTES:
        problems.add(f"{where}: over the {MAX_FILE_BYTES // 2**20} MiB limit per image, skipped")
        return None
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > MAX_PIXELS:
            problems.add(f"{where}: {w}x{h} pixels is over the {MAX_PIXELS // 1_000_000} Mpx limit per image, skipped")
            return None
        if getattr(img, "is_animated", False):
            problems.add(f"{where}: has several frames; used the first")
            img.seek(0)
        if img.format == "JPEG" and min(w, h) >= 2 * reduce_to:
            img.draft(img.mode, (reduce_to, reduce_to))
        img.load()
    except Image.UnidentifiedImageError:
        problems.add(f"{where}: not a readable image (unknown or damaged image format)")
        return None
    except Exception as e:  # noqa: BLE001 - truncated files, bombs, codec errors ...
        problems.add(f"{where}: not a readable image ({_reason(e)})")
        return None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - a damaged EXIF block: keep the pixels as stored
        problems.add(f"{where}: EXIF orientation unreadable ({_reason(e)}); used as stored")
        img = img.copy()
    img = _to_8bit(img)
    kx, ky = max(1, img.width // reduce_to), max(1, img.height // reduce_to)
    if kx > 1 or ky > 1:
        if img.mode == "1":
            img = img.convert("L")
        elif img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        try:
            img = img.reduce((kx, ky))
        except ValueError:
            pass  # a mode reduce() does not handle; the final resize copes
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit integer grayscale -> 8-bit "L" by scaling (Pillow's convert("L") clips)."""
    if img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint32) >> 8
        return Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        top = int(arr.max()) if arr.size else 0
        if top > 255:
            arr = arr * 255 // (65535 if top <= 65535 else top)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    return img


# ------------------------------------------------------------------------------------------- npz

NPZ_LAYOUTS = (
    "images (N, H, W) or (N, H, W, C) with labels (N,), "
    "or images (classes, drawings, H, W[, C]) with labels (classes, drawings); C is 1, 3 or 4"
)


def _load_npz(path: str, prep: Preprocess, spec: str) -> ImageSet:
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - anything np.load cannot read is the user's file
        raise UserError(f"{spec} is not a readable .npz archive ({_reason(e)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise UserError(f"{spec} holds a single array, not an .npz with 'images' and 'labels' arrays")
    with npz:
        keys = list(npz.files)
        missing = [k for k in ("images", "labels") if k not in keys]
        if missing:
            found = ", ".join(repr(k) for k in keys) or "no arrays"
            raise UserError(
                f"{spec} needs arrays 'images' and 'labels' (optional: 'class_names', 'groups'); found {found}"
            )
        archive = getattr(npz, "zip", None)
        total = sum(i.file_size for i in archive.infolist()) if archive is not None else 0
        if total > MAX_NPZ_BYTES:
            raise UserError(f"{spec} declares {total / 2**30:.1f} GiB uncompressed; the limit is {MAX_NPZ_BYTES // 2**30} GiB")
        images = _npz_array(npz, "images", spec)
        labels = _npz_array(npz, "labels", spec)
        class_names = _npz_strings(npz, "class_names", spec) if "class_names" in keys else None
        groups = _npz_strings(npz, "groups", spec) if "groups" in keys else None
    return _from_npz_arrays(images, labels, class_names, groups, prep, spec)


def _npz_array(npz, key: str, spec: str) -> np.ndarray:
    try:
        arr = npz[key]
        if not isinstance(arr, np.ndarray):  # NpzFile hands back the raw bytes of a non-.npy member
            raise UserError(f"{spec}: {key!r} is not a NumPy array (.npy) member, so it is not read; "
                            "save the arrays with numpy.savez")
        return arr
    except UserError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise UserError(
                f"{spec}: array {key!r} holds Python objects, which are not loaded (they could run code); "
                "save plain numeric or string arrays"
            ) from None
        raise UserError(f"{spec}: array {key!r} cannot be read ({_reason(e)})") from None
    except Exception as e:  # noqa: BLE001 - a damaged member
        raise UserError(f"{spec}: array {key!r} cannot be read ({_reason(e)})") from None


def _npz_strings(npz, key: str, spec: str) -> list[str]:
    arr = _npz_array(npz, key, spec)
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise UserError(f"{spec}: {key!r} must be a 1-D array of strings, found {arr.dtype} {arr.shape}")
    if arr.dtype.kind == "S":
        return [s.decode("utf-8", "replace") for s in arr.tolist()]
    return [str(s) for s in arr.tolist()]


def _from_npz_arrays(images, labels, class_names, groups, prep: Preprocess, spec: str) -> ImageSet:
    shapes = f"found images {images.dtype} {images.shape} and labels {labels.dtype} {labels.shape}"
    layout_a = labels.ndim == 2 and images.ndim in (4, 5) and images.shape[:2] == labels.shape
    layout_b = labels.ndim == 1 and images.ndim in (3, 4) and images.shape[0] == labels.shape[0]
    channels_ok = (images.ndim - labels.ndim == 2) or (images.ndim > 0 and images.shape[-1] in (1, 3, 4))
    if not (layout_a or layout_b) or not channels_ok:
        raise UserError(f"{spec}: {shapes}; accepted: {NPZ_LAYOUTS}")
    if images.dtype.kind not in "buif":
        raise UserError(f"{spec}: {shapes}; images must be bool, integer or float")
    if labels.dtype.kind not in "iu":
        raise UserError(f"{spec}: {shapes}; labels must be integers (e.g. labels.astype(int))")
    if images.size == 0:
        raise UserError(f"{spec}: {shapes}; there are no images")

    omniglot = (
        layout_a
        and images.shape == (964, 20, 105, 105)
        and bool((labels == np.arange(964)[:, None]).all())
    )
    flat_images = images.reshape((-1,) + images.shape[labels.ndim:])
    flat_labels = labels.reshape(-1)
    problems: list[str] = []
    pixels = _npz_pixels(flat_images, spec, shapes, problems)

    present, new_labels = np.unique(flat_labels, return_inverse=True)
    new_labels = new_labels.reshape(-1).astype(np.int64)
    names = [str(v) for v in present.tolist()]
    class_groups = None
    if omniglot and class_names is None and groups is None:
        from engine.data.omniglot import background_alphabets, background_class_names

        names, class_groups = background_class_names(), background_alphabets()
    if class_names is not None:
        names = _by_label(class_names, present, "class_names", spec)
    if groups is not None:
        class_groups = _by_label(groups, present, "groups", spec)

    result = from_arrays(pixels, new_labels, names, prep, spec, groups=class_groups)
    result.problems = problems
    return result


def _by_label(values: list[str], present: np.ndarray, key: str, spec: str) -> list[str]:
    """`values[i]` names original label i; pick those of the labels present."""
    lo, hi = int(present.min()), int(present.max())
    if lo < 0 or hi >= len(values):
        raise UserError(
            f"{spec}: {key!r} has {len(values)} entries but labels run from {lo} to {hi}; "
            f"{key}[i] must describe label i"
        )
    return [values[i] for i in present.tolist()]


def _npz_pixels(images: np.ndarray, spec: str, shapes: str, problems: list[str]) -> np.ndarray:
    """Any accepted dtype -> uint8 0..255 (bool: 0/255), checking the value range."""
    kind = images.dtype.kind
    if kind == "b":
        # astype, not view: a stored True need not be the byte 1 (the shared Omniglot file has 0xFF)
        pixels = images.astype(np.uint8)
        pixels *= 255
        return pixels
    if images.dtype == np.uint8:
        return images
    lo, hi = images.min(), images.max()
    if kind == "f":
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise UserError(f"{spec}: {shapes}; images contain NaN or infinite values")
        if lo >= 0 and hi <= 1:
            problems.append("float images in 0..1 scaled to 0..255")
            return np.round(images * 255.0).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return np.round(images).astype(np.uint8)
        raise UserError(f"{spec}: {shapes}; float images run from {lo:g} to {hi:g}, expected 0..1 or 0..255")
    if lo < 0 or hi > 255:
        raise UserError(f"{spec}: {shapes}; integer images run from {lo} to {hi}, expected 0..255")
    return images.astype(np.uint8)
