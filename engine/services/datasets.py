"""What a dataset holds, for the Data page: previews, the split a training run would make, the
sizes of the images as stored, and how the page offers a spec.

UI-free (no streamlit): the page renders the dicts that come back.

- ``preview(spec, ...)``: what a dataset holds (counts, sizes, a few thumbnails per class) and every
  problem found, including classes too small for K shots + Q queries.
- ``split_preview(spec, external, fields, ...)``: which classes go to meta-train / meta-val /
  meta-test / external, exactly as a training run would divide them.
"""
from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from engine.config import TrainConfig, uploads_root
from engine.data import images
from engine.data.imageset import Preprocess
from engine.data.sources import load_imageset, parse_spec
from engine.data.sources.zips import file_members
from engine.viz.charts.thumbnails import tile

SHOWN_CLASSES = 12  # classes with thumbnails in a preview
SIZE_SCAN_FILES = 500  # image headers read to report the original sizes of a folder or zip


def original_sizes(spec: str, limit: int = SIZE_SCAN_FILES) -> dict | None:
    """Sizes of the images as stored (before resizing), from the headers of up to `limit` images
    of a folder or zip; None for built-in and array data."""
    kind, target, _ = parse_spec(spec)
    sizes: list[tuple[int, int]] = []
    if kind == "zip":
        try:
            with zipfile.ZipFile(target) as zf:
                for info, parts in file_members(zf.infolist()):
                    if len(sizes) >= limit:
                        break
                    if isinstance(parts, str) or info.file_size > images.READ.max_file_bytes \
                            or not images.is_image_name(parts[-1]):
                        continue
                    try:
                        with zf.open(info) as member:
                            sizes.append(images.header(member)[1:])
                    except Exception:  # noqa: BLE001 - the loader names unreadable members
                        continue
        except (zipfile.BadZipFile, OSError):
            return None
    elif kind == "folder":
        for dirpath, dirnames, filenames in os.walk(target):
            dirnames[:] = sorted(d for d in dirnames if not images.is_ignored(d))
            for fname in sorted(filenames):
                if len(sizes) >= limit:
                    break
                if images.is_ignored(fname) or not images.is_image_name(fname):
                    continue
                try:
                    sizes.append(images.header(os.path.join(dirpath, fname))[1:])
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
            problems.append(f"{what}: {split} has {images.plural(usable, 'class', 'classes')} with at least {need} images "
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
