"""Images from untrusted bytes: the one decoder, the one set of limits, the one way to word problems.

Used by the dataset readers (engine.data.sources), the Data page's uploads (engine.services.uploads)
and the Adapt page's uploaded tasks (engine.services.adapt).

- Limits: ``ReadLimits`` (``READ``) for reading a dataset already on the server (folder, zip, npz);
  ``UploadLimits`` for images accepted from a browser: ``UPLOAD`` (a dataset built or zipped on the
  Data page) and ``TASK_UPLOAD`` (a few-shot task on the Adapt page). Sizes are binary: 1 MiB is
  2**20 bytes, and every message says "MiB".
- ``decode(data, limits, reduce_to)``: bytes -> a loaded, upright, 8-bit PIL image, or ``Refused``
  with the reason. The header's size is checked against the limits before any pixel is decoded
  (decompression bombs), and Pillow's own bomb warning is an error.
- ``Problems``: problem lines, listed up to MAX_PROBLEM_LINES and counted beyond.
- ``member_parts(info)``: the one rule for zip member names (absolute paths, drive letters, '..',
  symbolic links, encryption).
"""
from __future__ import annotations

import io
import os
import re
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

MiB = 2**20
GiB = 2**30

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm"}
)
IMAGE_TYPES = tuple(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))  # for file pickers
# Pillow format -> the extension the loaders read (what an upload is saved as); other formats are refused
FORMAT_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "GIF": "gif", "WEBP": "webp", "TIFF": "tif",
                     "PPM": "ppm"}
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})  # compared lower-case
MAX_PROBLEM_LINES = 200  # beyond this, problems are counted, not listed


@dataclass(frozen=True)
class ReadLimits:
    """Reading a dataset that is already on the server (a folder, a zip or an npz)."""

    max_file_bytes: int = 64 * MiB  # one image file or zip member (uncompressed)
    max_pixels: int = 40_000_000  # width x height of one image, checked before decoding
    max_side: int | None = None  # px per side; None: only the pixel count is limited
    min_side: int = 1  # px per side
    max_zip_members: int = 100_000
    max_zip_bytes: int = 2 * GiB  # declared uncompressed total of a zip
    max_npz_bytes: int = 4 * GiB  # declared uncompressed total of an npz
    max_folder_files: int = 200_000  # files looked at under a folder (guards against pointing at /)


READ = ReadLimits()


@dataclass(frozen=True)
class UploadLimits:
    """What one upload from a browser may hold. Checked before anything is written or used.

    The defaults are the Data page's (UPLOAD); TASK_UPLOAD changes those that differ for a
    few-shot task on the Adapt page."""

    max_files: int = 2_000  # images per upload (a zip's image members, or all classes built in the browser)
    max_upload_bytes: int = 100 * MiB  # the zip file itself, or all browser images together
    max_unpacked_bytes: int = 500 * MiB  # a zip's image members together, uncompressed (zip bombs)
    max_file_bytes: int = 20 * MiB  # one image
    max_side: int = 4_096  # px, width or height of one image
    min_side: int = 1  # px, width or height of one image
    max_pixels: int = READ.max_pixels  # width x height of one image (the loaders' limit too)
    min_classes: int = 2  # a few-shot task tells at least two classes apart
    max_classes: int = 200  # classes built in the browser
    max_support: int = 5  # support images per class of an uploaded task
    max_queries: int = 40  # query images of an uploaded task (labelled and unlabelled together)
    max_name_chars: int = 64  # class names and upload names are cut to this length
    max_members: int = 20_000  # entries of any kind in a zip; beyond this the zip is refused whole

    def describe(self) -> str:
        """The Data page's limits, as the page states them."""
        return (f"at most {self.max_files:,} images and {size_text(self.max_upload_bytes)} per upload "
                f"({size_text(self.max_unpacked_bytes)} unpacked), {size_text(self.max_file_bytes)} per image, "
                f"images at most {self.max_side:,}×{self.max_side:,} px and {self.max_pixels / 1e6:g} Mpx")


UPLOAD = UploadLimits()
TASK_UPLOAD = UploadLimits(max_upload_bytes=40 * MiB, max_file_bytes=8 * MiB, min_side=8, max_classes=10,
                           max_name_chars=40)


def limits_text(limits: UploadLimits = TASK_UPLOAD) -> str:
    """An uploaded task's limits, as the Adapt page states them."""
    types = ", ".join(t.upper() for t in IMAGE_TYPES if t not in ("jpeg", "tiff"))
    return (f"{limits.min_classes}-{limits.max_classes} classes, 1-{limits.max_support} support images per class, "
            f"up to {limits.max_queries} query images; {types}; "
            f"at most {size_text(limits.max_file_bytes)} per image and {size_text(limits.max_upload_bytes)} in all; "
            f"{limits.min_side}-{limits.max_side} px per side")


# ------------------------------------------------------------------------------------- words


def plural(n: int, one: str, many: str) -> str:
    """'1 class', '3 classes'."""
    return f"{n} {one if n == 1 else many}"


def size_text(n: int) -> str:
    """Bytes for people, binary units: '100 MiB', '1.5 MiB', '12 KiB', '35 bytes'."""
    for unit, scale in (("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def reason(e: BaseException) -> str:
    """An exception as the words in brackets after 'not a readable image' and the like."""
    if isinstance(e, Image.UnidentifiedImageError):
        return "unknown or damaged image format"
    text = str(e).strip()
    return text if text else type(e).__name__


class Problems(list):
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


# ------------------------------------------------------------------------------------ names


_DRIVE = re.compile(r"^[A-Za-z]:")


def is_ignored(name: str) -> bool:
    """Files and folders skipped without a word: hidden ones and OS clutter."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def is_image_name(name: str) -> bool:
    """Does the file name end with an extension the loaders read?"""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def member_parts(info: zipfile.ZipInfo) -> tuple[str, ...] | str:
    """A zip member -> its path parts (empty, or holding an ignored part: clutter to skip), or the
    reason it is refused: a symbolic link, an absolute path, a drive letter, '..', encryption."""
    name = info.filename
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        return "symbolic link member"
    if name.startswith(("/", "\\")):
        return "absolute path"
    if _DRIVE.match(name):
        return "drive letter in path"
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        return "'..' in path"
    parts = tuple(p for p in parts if p not in ("", "."))
    if parts and not any(is_ignored(p) for p in parts) and info.flag_bits & 0x1:
        return "encrypted member"
    return parts


# ------------------------------------------------------------------------------------ decoding


class Refused(ValueError):
    """An image that is not used; str() is the reason. over_limit: refused by a limit (the file may
    be a fine image), not because it cannot be read."""

    def __init__(self, text: str, over_limit: bool = False):
        super().__init__(text)
        self.over_limit = over_limit


def check_dimensions(width: int, height: int, limits: ReadLimits | UploadLimits = UPLOAD) -> str | None:
    """None if an image of this size is accepted, else the reason it is not."""
    if limits.max_side is not None and (width > limits.max_side or height > limits.max_side):
        return f"{width}×{height} px is over the {limits.max_side:,} px limit per side"
    if width * height > limits.max_pixels:
        return f"{width}×{height} px is over the {limits.max_pixels / 1e6:g} Mpx limit per image"
    if width < 1 or height < 1:
        return f"{width}×{height} px has no pixels"
    if min(width, height) < limits.min_side:
        return f"{width}×{height} px is under the {limits.min_side} px minimum per side"
    return None


def header(stream) -> tuple[str, int, int]:
    """(Pillow format, width, height) from an image's header, without decoding its pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(stream) as img:
            return img.format or "", img.width, img.height


def decode(data: bytes, limits: ReadLimits | UploadLimits = READ, reduce_to: int | None = None,
           notes: list[str] | None = None) -> Image.Image:
    """Bytes -> a loaded, upright PIL image held in memory (16- and 32-bit gray scaled to 8 bits).

    Raises Refused with the reason when the file is empty, over the limits (its size, or the size
    its header declares: checked before decoding) or not a readable image. Lines about what was
    fixed (several frames, unreadable EXIF) are appended to `notes`.

    With `reduce_to`, images much larger than needed are shrunk by an integer box filter
    (`Image.reduce`, and JPEG draft decoding) to at least `reduce_to` px per side, so a folder of
    photos does not hold every full-size picture in memory; the final resize happens later.
    """
    notes = [] if notes is None else notes
    if not data:
        raise Refused("not a readable image (empty file)")
    if len(data) > limits.max_file_bytes:
        raise Refused(f"{size_text(len(data))} is over the {size_text(limits.max_file_bytes)} limit per image",
                      over_limit=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if (why := check_dimensions(w, h, limits)) is not None:
                raise Refused(why, over_limit=True)
            if getattr(img, "is_animated", False):
                notes.append("has several frames; used the first")
                img.seek(0)
            if reduce_to and img.format == "JPEG" and min(w, h) >= 2 * reduce_to:
                img.draft(img.mode, (reduce_to, reduce_to))
            img.load()
    except Refused:
        raise
    except Exception as e:  # noqa: BLE001 - truncated files, bombs, codec errors ...
        raise Refused(f"not a readable image ({reason(e)})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - a damaged EXIF block: keep the pixels as stored
        notes.append(f"EXIF orientation unreadable ({reason(e)}); used as stored")
        img = img.copy()
    img = to_8bit(img)
    if reduce_to:
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


def to_8bit(img: Image.Image) -> Image.Image:
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
