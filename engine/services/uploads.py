"""Uploaded image sets: limits, names, and safe saving under uploads_root().

UI-free (no streamlit): the Data page passes bytes in and shows the lines that come back. What
a saved set holds is shown by engine.services.datasets.

- ``save_zip(name, data)``: an uploaded zip of class folders is checked member by member and saved
  as a zip (never extracted) at ``uploads_root()/<timestamp>-<safe name>.zip``; refused members
  are named with their reason and left out of the saved copy, the rest is kept.
- ``save_browser_classes(classes)``: classes built in the browser (name -> files) are decoded with
  Pillow first; only images that decode are written, as ``uploads_root()/<timestamp>-browser/
  <class>/<nn>.<ext>``. The spec of the set is that folder.

The limits (LIMITS, engine.data.images.UPLOAD), the decoder and the zip member rule are
engine.data.images'. Every function raises UserError (message meant for people) when nothing
usable is left.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import unicodedata
import zipfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from engine.config import uploads_root
from engine.data import images
from engine.data.images import (
    IMAGE_TYPES,
    MiB,
    UploadLimits,
    check_dimensions,
    size_text,
)
from engine.data.images import UPLOAD as LIMITS
from engine.data.sources import EXPECTED_LAYOUT, read_member
from engine.data.sources.zips import file_members
from engine.errors import UserError

__all__ = ["IMAGE_TYPES", "LIMITS", "MiB", "UploadLimits", "check_dimensions", "check_limits", "safe_name",
           "save_browser_classes", "save_zip"]


# ------------------------------------------------------------------------------------ names and limits


def safe_name(name: str, limits: UploadLimits = LIMITS) -> str | None:
    """A class or upload name fit to be one folder/file name: unicode letters, digits (and their
    combining marks), spaces, '-' and '_' are kept; anything else (path separators, dots, control
    characters...) becomes '_'. None when nothing meaningful is left (empty, '..', '///')."""
    if not isinstance(name, str):
        return None
    name = unicodedata.normalize("NFC", name)
    out = []
    for ch in name:
        keep = ch in " -_" or unicodedata.category(ch)[0] in "LNM"
        out.append(ch if keep else "_")
    text = re.sub(r"_+", "_", " ".join("".join(out).split()))  # collapse runs of spaces and of '_'
    text = text.strip(" _-")[: limits.max_name_chars].strip(" _-")
    if not text or not any(unicodedata.category(c)[0] in "LN" for c in text):
        return None
    return text


def check_limits(entries: Sequence[tuple[str, int]], limits: UploadLimits = LIMITS, budget: int | None = None,
                 screen: Callable[[int], str | None] | None = None, what: str = "the upload",
                 count_words: str | None = None, budget_words: str | None = None) -> tuple[list[int], list[str]]:
    """Files (name, size in bytes) in upload order -> (indices kept, one problem line per file refused).

    In order, a file is refused when it alone is over the per-image size, when `screen(index)`
    gives a reason (e.g. unreadable, too many pixels), or when keeping it would pass the image count
    or the total size (`budget`, default: the upload limit); later files that still fit are kept.
    `count_words` / `budget_words` say those two refusals in the words of the caller's limit (a
    caller passing what is LEFT of a limit as the limit would otherwise print a limit nobody set).
    """
    budget = limits.max_upload_bytes if budget is None else budget
    kept: list[int] = []
    problems: list[str] = []
    total = 0
    for i, (name, size) in enumerate(entries):
        reason = None
        if size > limits.max_file_bytes:
            reason = f"{size_text(size)} is over the {size_text(limits.max_file_bytes)} limit per image"
        elif screen is not None and (reason := screen(i)):
            pass
        elif len(kept) >= limits.max_files:
            reason = count_words or f"over the {limits.max_files:,}-image limit per upload"
        elif total + size > budget:
            reason = budget_words or f"would take {what} past {size_text(budget)} in all"
        if reason:
            problems.append(f"{name}: {reason}, left out")
        else:
            kept.append(i)
            total += size
    return kept, problems


def read_uploaded(files: Sequence, limits: UploadLimits = LIMITS, budget: int | None = None,
                  max_files: int | None = None, what: str = "the upload", count_words: str | None = None,
                  budget_words: str | None = None) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Files a browser sent (objects with .name, .size and .getvalue(), e.g. Streamlit's
    UploadedFile) -> ((name, bytes) of those kept, one problem line per file left out).

    Each file's size, and the count, are checked (check_limits: per image, at most `max_files`,
    default limits.max_files, and `budget` bytes together, default the upload limit) before its
    bytes are read: a file left out is never copied into memory. With `max_files` or `budget` set to
    what is left of a limit, pass `count_words` / `budget_words` naming the limit itself."""
    files = list(files or [])
    if max_files is not None:
        limits = dataclasses.replace(limits, max_files=max(0, max_files))
    kept, problems = check_limits([(str(f.name), int(f.size)) for f in files], limits, budget, what=what,
                                  count_words=count_words, budget_words=budget_words)
    return [(str(files[i].name), files[i].getvalue()) for i in kept], problems


def _screen_header(open_stream: Callable[[], object], limits: UploadLimits) -> str | None:
    """None if the image's header reads and its size is within the limits, else the reason."""
    try:
        with open_stream() as stream:
            _fmt, w, h = images.header(stream)
    except Exception as e:  # noqa: BLE001 - encrypted, damaged, unknown format, bomb...
        return f"not a readable image ({images.reason(e)})"
    return check_dimensions(w, h, limits)


# ------------------------------------------------------------------------------------------ saving


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _inside_root(path: Path) -> Path:
    root = uploads_root().resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise UserError(f"refused to write {path}: it is outside the uploads folder {root}")
    return path


def _new_path(stem: str, suffix: str, make) -> Path:
    """Create `uploads_root()/<stem><suffix>` (or <stem>-2<suffix>, ...) with `make(path)`, which
    must fail with FileExistsError when the path is taken."""
    root = uploads_root()
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = _inside_root(root / f"{stem}{'' if n == 1 else f'-{n}'}{suffix}")
        try:
            make(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f"could not find a free name for {stem}{suffix} in {root}")


def save_zip(name: str, data: bytes, limits: UploadLimits = LIMITS) -> tuple[Path, list[str]]:
    """Check an uploaded zip of class folders and save it under uploads_root().

    Returns (path of the saved zip, problem lines). Members that are refused (not images, unsafe
    paths, over a limit, unreadable image headers) are named with the reason and left out of the
    saved copy; when none is refused the upload is saved byte for byte. Raises UserError when the
    upload is too large, not a zip, or holds no usable image.
    """
    label = name or "upload.zip"
    if len(data) > limits.max_upload_bytes:
        raise UserError(f"{label} is {size_text(len(data))}; the limit is {size_text(limits.max_upload_bytes)} per upload")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise UserError(f"{label} is not a readable zip archive ({images.reason(e)}); {EXPECTED_LAYOUT}") from None
    with zf:
        if len(infos) > limits.max_members:
            raise UserError(f"{label} holds {len(infos):,} entries; the limit is {limits.max_members:,} "
                            f"(and {limits.max_files:,} images)")
        problems = images.Problems()
        candidates: list[zipfile.ZipInfo] = []
        for info, parts in file_members(infos):
            if isinstance(parts, str):
                problems.add(f"{info.filename}: {parts} refused, left out")
                continue
            if not images.is_image_name(parts[-1]):
                problems.add(f"{info.filename}: not an image file, left out")
                continue
            candidates.append(info)
        kept_idx, limit_problems = check_limits(
            [(i.filename, i.file_size) for i in candidates], limits, budget=limits.max_unpacked_bytes,
            screen=lambda k: _screen_header(lambda: zf.open(candidates[k]), limits), what="the unpacked images")
        for line in limit_problems:
            problems.add(line)
        kept = [candidates[i] for i in kept_idx]
        if not kept:
            shown = "; ".join(problems[:3]) or "it holds no image files"
            raise UserError(f"{label}: no usable image in the archive ({shown}); {EXPECTED_LAYOUT}")
        if not problems:
            payload = data  # nothing refused (clutter aside, which the loader skips too): saved as sent
        else:
            payload = _repack(zf, kept, problems)

    stem = f"{_stamp()}-{(safe_name(Path(label).stem, limits) or 'upload').replace(' ', '_')}"

    def make(path: Path) -> None:
        with open(path, "xb") as f:
            f.write(payload)

    return _new_path(stem, ".zip", make), problems.lines()


def _repack(zf: zipfile.ZipFile, kept: list[zipfile.ZipInfo], problems: images.Problems) -> bytes:
    """A new zip holding only the kept members (each read whole, so damaged ones are caught here)."""
    buf = io.BytesIO()
    written = 0
    with zipfile.ZipFile(buf, "w") as out:
        for info in kept:
            try:
                content = read_member(zf, info, info.file_size)  # kept: within the limits
            except Exception as e:  # noqa: BLE001 - CRC errors, truncated data
                problems.add(f"{info.filename}: damaged in the archive ({images.reason(e)}), left out")
                continue
            compress = info.compress_type if info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) \
                else zipfile.ZIP_DEFLATED
            out.writestr(zipfile.ZipInfo(info.filename, info.date_time), content, compress_type=compress)
            written += 1
    if not written:
        raise UserError(f"no usable image in the archive ({'; '.join(problems[:3])}); {EXPECTED_LAYOUT}")
    return buf.getvalue()


ClassFiles = Sequence[tuple[str, bytes]]


def save_browser_classes(classes: Mapping[str, ClassFiles] | Sequence[tuple[str, ClassFiles]],
                         limits: UploadLimits = LIMITS) -> tuple[Path, list[str]]:
    """Save classes built in the browser ({class name: [(file name, bytes), ...]}, or the same as a
    list of pairs) as ``uploads_root()/<timestamp>-browser/<class>/<nn>.<ext>``.

    Every image is decoded with Pillow first; only those that decode and pass the limits are
    written. Returns (the folder, which is the dataset spec; problem lines naming every file or
    class left out). Raises UserError when fewer than two classes have usable images.
    """
    pairs = list(classes.items()) if isinstance(classes, Mapping) else list(classes)
    problems = images.Problems()
    accepted: list[tuple[str, list[tuple[str, bytes]]]] = []
    taken: dict[str, str] = {}  # case-folded safe name -> the name given
    for n, (raw, files) in enumerate(pairs, 1):
        shown = repr(raw) if isinstance(raw, str) and raw.strip() else f"class {n} (no name)"
        name = safe_name(raw, limits)
        lost = f"its {images.plural(len(files), 'image was', 'images were')} left out"
        if name is None:
            problems.add(f"{shown}: a class needs a name with letters or digits; {lost}")
            continue
        if name.casefold() in taken:
            problems.add(f"{shown}: same name as {taken[name.casefold()]!r} once cleaned ({name!r}); "
                         f"rename one, {lost}")
            continue
        if len(accepted) >= limits.max_classes:
            problems.add(f"{shown}: over the {limits.max_classes}-class limit, left out")
            continue
        if name != raw.strip():
            problems.add(f"{shown}: saved as {name!r} (only letters, digits, spaces, '-' and '_' are kept in names)")
        taken[name.casefold()] = raw
        accepted.append((name, list(files)))

    flat = [(f"{cname}/{fname}", data) for cname, files in accepted for fname, data in files]
    kept_idx, limit_problems = check_limits(
        [(where, len(data)) for where, data in flat], limits,
        screen=lambda k: "empty file" if not flat[k][1] else _screen_header(lambda: io.BytesIO(flat[k][1]), limits))
    for line in limit_problems:
        problems.add(line)
    kept = set(kept_idx)
    decoded: list[tuple[str, list[tuple[str, bytes]]]] = []
    i = 0
    for cname, files in accepted:
        good = []
        for fname, data in files:
            if i in kept:
                ext, reason = _validate_image(data, limits)
                if reason:
                    problems.add(f"{cname}/{fname}: {reason}, left out")
                else:
                    good.append((ext, data))
            i += 1
        if good:
            decoded.append((cname, good))
        else:
            problems.add(f"class {cname!r}: no usable images, left out")
    if len(decoded) < 2:
        shown = "; ".join(problems[:3])
        raise UserError("build at least two classes with usable images (a few-shot task tells classes apart)"
                        + (f"; {shown}" if shown else ""))

    def make(path: Path) -> None:
        os.mkdir(path)  # FileExistsError when taken

    folder = _new_path(f"{_stamp()}-browser", "", make)
    try:
        for cname, good in decoded:
            cdir = _inside_root(folder / cname)
            cdir.mkdir()
            width = max(2, len(str(len(good))))
            for n, (ext, data) in enumerate(good, 1):
                with open(_inside_root(cdir / f"{n:0{width}d}.{ext}"), "xb") as f:
                    f.write(data)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # no half-written class set is left behind
        raise
    return folder, problems.lines()


def _validate_image(data: bytes, limits: UploadLimits) -> tuple[str, str | None]:
    """(extension, None) for an image that decodes whole, else ('', reason). Run after the size
    screen in check_limits, so the pixels decoded here are within the limits."""
    try:
        fmt = images.header(io.BytesIO(data))[0]
        images.decode(data, limits)
    except images.Refused as e:
        return "", str(e)
    except Exception as e:  # noqa: BLE001 - whatever Pillow cannot decode is the user's file
        return "", f"not a readable image ({images.reason(e)})"
    if fmt not in images.FORMAT_EXTENSIONS:
        return "", f"{fmt or 'this'} images are not accepted (use PNG, JPEG, BMP, GIF, WebP or TIFF)"
    return images.FORMAT_EXTENSIONS[fmt], None
