"""Uploaded image sets: limits, safe saving under uploads_root(), and the previews the Data page shows.

UI-free (no streamlit): the Data page passes bytes in and renders the dicts that come back.

- ``save_zip(name, data)``: an uploaded zip of class folders is checked member by member and saved
  as a zip (never extracted) at ``uploads_root()/<timestamp>-<safe name>.zip``; refused members
  are named with their reason and left out of the saved copy, the rest is kept.
- ``save_browser_classes(classes)``: classes built in the browser (name -> files) are decoded with
  Pillow first; only images that decode are written, as ``uploads_root()/<timestamp>-browser/
  <class>/<nn>.<ext>``. The spec of the set is that folder.
- ``preview(spec, ...)``: what a dataset holds (counts, sizes, a few thumbnails per class) and every
  problem found, including classes too small for K shots + Q queries.
- ``split_preview(spec, external, fields, ...)``: which classes go to meta-train / meta-val /
  meta-test / external, exactly as a training run would divide them.

Every function raises UserError (message meant for people) when nothing usable is left.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import unicodedata
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from engine.viz.charts.thumbnails import tile
from engine.config import TrainConfig, uploads_root
from engine.data.imageset import Preprocess
from engine.data.sources import EXPECTED_LAYOUT, IMAGE_EXTENSIONS, load_imageset, parse_spec, read_member
from engine.errors import UserError

MB = 1_000_000


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may hold. Checked here, before anything is written."""

    max_files: int = 2_000  # images per upload (a zip's image members, or all classes built in the browser)
    max_upload_bytes: int = 100 * MB  # the zip file itself, or all browser images together
    max_unpacked_bytes: int = 500 * MB  # a zip's image members together, uncompressed (zip bombs)
    max_file_bytes: int = 20 * MB  # one image
    max_side: int = 4_096  # px, width or height of one image
    max_pixels: int = 40_000_000  # width x height of one image (the loaders' limit too)
    max_classes: int = 200  # classes built in the browser
    max_name_chars: int = 64  # class names and upload names are cut to this length
    max_members: int = 20_000  # entries of any kind in a zip; beyond this the zip is refused whole

    def describe(self) -> str:
        return (f"at most {self.max_files:,} images and {_size(self.max_upload_bytes)} per upload "
                f"({_size(self.max_unpacked_bytes)} unpacked), {_size(self.max_file_bytes)} per image, "
                f"images at most {self.max_side:,}×{self.max_side:,} px and {self.max_pixels / 1e6:g} Mpx")


LIMITS = UploadLimits()
MAX_PROBLEM_LINES = 500  # beyond this, problems are counted, not listed
# Pillow format -> the extension the loaders read; other formats are refused
FORMAT_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "GIF": "gif", "WEBP": "webp", "TIFF": "tif",
                     "PPM": "ppm"}
IMAGE_TYPES = sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)  # for file pickers
SHOWN_CLASSES = 12  # classes with thumbnails in a preview
SIZE_SCAN_FILES = 500  # image headers read to report the original sizes of a folder or zip


class _Problems(list):
    def add(self, line: str) -> None:
        self.append(line)

    def lines(self) -> list[str]:
        if len(self) <= MAX_PROBLEM_LINES:
            return list(self)
        return self[:MAX_PROBLEM_LINES] + [f"... and {len(self) - MAX_PROBLEM_LINES} more problems like these"]


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
                 screen: Callable[[int], str | None] | None = None,
                 what: str = "the upload") -> tuple[list[int], list[str]]:
    """Files (name, size in bytes) in upload order -> (indices kept, one problem line per file refused).

    In order, a file is refused when it alone is over the per-image size, when `screen(index)`
    gives a reason (e.g. unreadable, too many pixels), or when keeping it would pass the image count
    or the total size (`budget`, default: the upload limit); later files that still fit are kept.
    """
    budget = limits.max_upload_bytes if budget is None else budget
    kept: list[int] = []
    problems: list[str] = []
    total = 0
    for i, (name, size) in enumerate(entries):
        reason = None
        if size > limits.max_file_bytes:
            reason = f"{_size(size)} is over the {_size(limits.max_file_bytes)} limit per image"
        elif screen is not None and (reason := screen(i)):
            pass
        elif len(kept) >= limits.max_files:
            reason = f"over the {limits.max_files:,}-image limit per upload"
        elif total + size > budget:
            reason = f"would take {what} past {_size(budget)} in all"
        if reason:
            problems.append(f"{name}: {reason}, left out")
        else:
            kept.append(i)
            total += size
    return kept, problems


def _screen_header(open_stream: Callable[[], object], limits: UploadLimits) -> str | None:
    """None if the image's header reads and its size is within the limits, else the reason."""
    try:
        with open_stream() as stream:
            _fmt, w, h = _header(stream)
    except Exception as e:  # noqa: BLE001 - encrypted, damaged, unknown format, bomb...
        return f"not a readable image ({_reason(e)})"
    return check_dimensions(w, h, limits)


def check_dimensions(width: int, height: int, limits: UploadLimits = LIMITS) -> str | None:
    """None if an image of this size is accepted, else the reason it is not."""
    if width > limits.max_side or height > limits.max_side:
        return f"{width}×{height} px is over the {limits.max_side:,} px limit per side"
    if width * height > limits.max_pixels:
        return f"{width}×{height} px is over the {limits.max_pixels / 1e6:g} Mpx limit per image"
    if width < 1 or height < 1:
        return f"{width}×{height} px has no pixels"
    return None


def _header(stream) -> tuple[str, int, int]:
    """(Pillow format, width, height) from an image's header, without decoding its pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(stream) as img:
            return img.format or "", img.width, img.height


def _size(n: int) -> str:
    """Bytes for people: '100 MB', '1.5 MB', '12 kB', '35 bytes'."""
    for unit, scale in (("MB", MB), ("kB", 1000)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _reason(e: BaseException) -> str:
    if isinstance(e, Image.UnidentifiedImageError):
        return "unknown or damaged image format"
    text = str(e).strip()
    return text if text else type(e).__name__


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
        raise UserError(f"{label} is {_size(len(data))}; the limit is {_size(limits.max_upload_bytes)} per upload")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise UserError(f"{label} is not a readable zip archive ({_reason(e)}); {EXPECTED_LAYOUT}") from None
    with zf:
        if len(infos) > limits.max_members:
            raise UserError(f"{label} holds {len(infos):,} entries; the limit is {limits.max_members:,} "
                            f"(and {limits.max_files:,} images)")
        problems = _Problems()
        candidates: list[zipfile.ZipInfo] = []
        for info in infos:
            if info.filename.endswith("/"):  # a folder; not info.is_dir(), which fails on an empty name
                continue
            refused = _member_refusal(info)
            if refused is None:
                continue  # hidden files and OS clutter: skipped without a word
            if refused:
                problems.add(f"{info.filename}: {refused}, left out")
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


_DRIVE = re.compile(r"^[A-Za-z]:")


def _member_refusal(info: zipfile.ZipInfo) -> str | None:
    """'' if a zip member may be kept, None if it is clutter to skip silently, else the reason."""
    name = info.filename
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        return "symbolic link member refused"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "absolute path refused"
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        return "'..' in the path refused"
    if not parts or any(p.startswith(".") or p.lower() in ("thumbs.db", "desktop.ini", "__macosx") for p in parts):
        return None
    if Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image file"
    if info.flag_bits & 0x1:
        return "encrypted member refused"
    return ""


def _repack(zf: zipfile.ZipFile, kept: list[zipfile.ZipInfo], problems: _Problems) -> bytes:
    """A new zip holding only the kept members (each read whole, so damaged ones are caught here)."""
    buf = io.BytesIO()
    written = 0
    with zipfile.ZipFile(buf, "w") as out:
        for info in kept:
            try:
                content = read_member(zf, info, info.file_size)  # kept: within the limits
            except Exception as e:  # noqa: BLE001 - CRC errors, truncated data
                problems.add(f"{info.filename}: damaged in the archive ({_reason(e)}), left out")
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
    problems = _Problems()
    accepted: list[tuple[str, list[tuple[str, bytes]]]] = []
    taken: dict[str, str] = {}  # case-folded safe name -> the name given
    for n, (raw, files) in enumerate(pairs, 1):
        shown = repr(raw) if isinstance(raw, str) and raw.strip() else f"class {n} (no name)"
        name = safe_name(raw, limits)
        lost = f"its {_plural(len(files), 'image was', 'images were')} left out"
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
                ext, reason = _validate_image(data)
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


def _validate_image(data: bytes) -> tuple[str, str | None]:
    """(extension, None) for an image that decodes whole, else ('', reason). Run after the size
    screen in check_limits, so the pixels decoded here are within the limits."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                img.load()
    except Exception as e:  # noqa: BLE001 - whatever Pillow cannot decode is the user's file
        return "", f"not a readable image ({_reason(e)})"
    if fmt not in FORMAT_EXTENSIONS:
        return "", f"{fmt or 'this'} images are not accepted (use PNG, JPEG, BMP, GIF, WebP or TIFF)"
    return FORMAT_EXTENSIONS[fmt], None


# ----------------------------------------------------------------------------------------- previews


def original_sizes(spec: str, limit: int = SIZE_SCAN_FILES) -> dict | None:
    """Sizes of the images as stored (before resizing), from the headers of up to `limit` images
    of a folder or zip; None for built-in and array data."""
    kind, target, _ = parse_spec(spec)
    sizes: list[tuple[int, int]] = []
    if kind == "zip":
        try:
            with zipfile.ZipFile(target) as zf:
                for info in zf.infolist():
                    if len(sizes) >= limit:
                        break
                    if info.filename.endswith("/") or _member_refusal(info) != "" or info.file_size > LIMITS.max_file_bytes:
                        continue
                    try:
                        with zf.open(info) as member:
                            sizes.append(_header(member)[1:])
                    except Exception:  # noqa: BLE001 - the loader names unreadable members
                        continue
        except (zipfile.BadZipFile, OSError):
            return None
    elif kind == "folder":
        for dirpath, dirnames, filenames in os.walk(target):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if len(sizes) >= limit:
                    break
                if fname.startswith(".") or Path(fname).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                try:
                    sizes.append(_header(os.path.join(dirpath, fname))[1:])
                except Exception:  # noqa: BLE001
                    continue
            if len(sizes) >= limit:
                break
    else:
        return None
    if not sizes:
        return None
    distinct = sorted(set(sizes), key=lambda s: (s[0] * s[1], s))
    return {"checked": len(sizes), "distinct": len(distinct), "smallest": distinct[0], "largest": distinct[-1],
            "square": all(w == h for w, h in distinct)}


def preview(spec: str, prep: Preprocess = Preprocess(), ways: int = 5, shots: int = 1, queries: int = 5,
            per_class: int = 8, first_class: int = 0, show_classes: int = SHOWN_CLASSES) -> dict:
    """What SPEC holds, for people: summary, per-class counts, thumbnails of `show_classes`
    classes from `first_class` (each a tile of up to `per_class` images), and every problem found.

    Keys: spec, summary, counts [(class, images)], image_size, channels, tiles [{name, count,
    image (H, W, 3) uint8}], original_sizes, need (K+Q), too_small [class names], problems [lines].
    Raises UserError when SPEC cannot be read at all.
    """
    data = load_imageset(spec, prep)
    counts = data.counts()
    need = shots + queries
    problems = list(data.problems)
    sizes = original_sizes(spec)
    shape = f"{data.image_size}×{data.image_size} px"
    if sizes and (sizes["distinct"] > 1 or not sizes["square"]):
        (w0, h0), (w1, h1) = sizes["smallest"], sizes["largest"]
        what = f"{sizes['distinct']} different sizes, from {w0}×{h0} to {w1}×{h1} px" if sizes["distinct"] > 1 \
            else f"{w0}×{h0} px, not square"
        problems.append(f"mixed image sizes ({what}): every image is resized to {shape}"
                        + ("" if sizes["square"] else ", squashed to a square"))
    too_small = [name for name, c in zip(data.class_names, counts) if c < need]
    if too_small:
        names = ", ".join(repr(n) for n in too_small[:10]) + (" ..." if len(too_small) > 10 else "")
        problems.append(f"{len(too_small)} of {data.num_classes} classes have fewer than {need} images "
                        f"({shots} shots + {queries} queries) and will be left out of tasks: {names}")
    usable = data.num_classes - len(too_small)
    if usable < ways:
        problems.append(f"only {usable} classes have at least {need} images, but a {ways}-way task needs {ways} "
                        "(and the split needs more for validation, test and the external set): add classes "
                        "or images, or choose fewer ways, shots or queries")
    first_class = max(0, min(int(first_class), max(0, data.num_classes - 1)))
    tiles = []
    for c, idx in enumerate(data.class_indices()[first_class:first_class + show_classes], first_class):
        picked = np.asarray(data.images[idx[:per_class]])
        tiles.append({"name": data.class_names[c], "count": int(counts[c]), "image": tile(picked, columns=per_class)})
    summary = data.summary()
    summary.pop("problems")
    return {"spec": spec, "summary": summary, "counts": [(n, int(c)) for n, c in zip(data.class_names, counts)],
            "image_size": data.image_size, "channels": data.channels, "tiles": tiles, "first_class": first_class,
            "original_sizes": sizes, "need": need, "too_small": too_small, "problems": problems}


SPLITS = ("meta-train", "meta-val", "meta-test", "external")


def split_preview(spec: str, external: str = "auto", fields: Mapping | None = None, image_size: int | None = None,
                  ways: int = 5, shots: int = 1, queries: int = 5) -> dict:
    """Which classes go where, exactly as a training run divides them (engine.train.trainer.load_data).

    fields: split settings (val_split, test_split, external_split, train_limit, rotations,
    split_seed, pool_external). Keys of the result: report (make_splits' report), rows (one per
    split: split, classes, images, groups), class_names {split: [names]}, problems (splits too small
    for a ways-way task with shots + queries images per class). Raises UserError for impossible
    splits or an external set that overlaps the data.
    """
    from engine.train.trainer import load_data  # lazy: imports torch

    cfg = TrainConfig().with_overrides(dataset=spec, external=external, image_size=image_size,
                                       ways=ways, shots=shots, queries=queries, **dict(fields or {}))
    cfg, splits = load_data(cfg)
    report = splits.report
    parts = {"meta-train": splits.train, "meta-val": splits.val, "meta-test": splits.test,
             "external": splits.external}
    rows, names, problems = [], {}, []
    need = shots + queries
    for split in SPLITS:
        s = parts[split]
        if s is None:
            rows.append({"split": split, "classes": 0, "images": 0, "groups": "", "source": "none"})
            names[split] = []
            continue
        groups = "" if s.groups is None else len(set(s.groups))
        rows.append({"split": split, "classes": s.num_classes, "images": len(s.images), "groups": groups,
                     "source": s.source})
        names[split] = list(s.class_names)
        usable = int((s.counts() >= need).sum())
        if split != "external" and usable < ways:
            what = "evaluation on held-out classes cannot run" if split == "meta-test" else "training cannot start"
            problems.append(f"{what}: {split} has {_plural(usable, 'class', 'classes')} with at least {need} images "
                            f"but a {ways}-way task needs {ways}; lower the other splits, add classes, or choose "
                            "fewer ways")
    return {"report": report, "rows": rows, "class_names": names, "problems": problems}


def spec_kind(spec: str | None) -> str:
    """How the Data page offers SPEC: 'glyphs', 'digits', 'zip' (a zip saved by save_zip), 'browser'
    (a folder saved by save_browser_classes) or 'path' (anything else on the server)."""
    spec = (spec or "glyphs").strip()
    word = spec.partition(":")[0]
    if word in ("glyphs", "digits"):
        return word
    path = Path(spec)
    try:
        inside = path.resolve().parent == uploads_root().resolve()
    except OSError:
        inside = False
    if inside and path.suffix.lower() == ".zip":
        return "zip"
    if inside and re.search(r"-browser(-\d+)?$", path.name):
        return "browser"
    return "path"
