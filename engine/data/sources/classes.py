"""Image files found in a folder or zip -> decoded classes -> an ImageSet (shared by both readers)."""
from __future__ import annotations

from engine.data import images
from engine.data.imageset import (
    DEFAULT_GRAY_SIZE,
    DEFAULT_RGB_SIZE,
    ImageSet,
    Preprocess,
    build_imageset,
)
from engine.errors import UserError

EXPECTED_LAYOUT = (
    "expected a folder (or zip) with one sub-folder of images per class, "
    "e.g. cats/001.png, cats/002.png, dogs/001.jpg (deeper paths such as Alphabet/character01/ are fine)"
)
ARCHIVE_EXTENSIONS = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".npz")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_EXTENSIONS)


def decode_into(data: bytes, where: str, problems: images.Problems, reduce_to: int):
    """images.decode under the read limits, or None; what was refused or fixed is named in `problems`."""
    notes: list[str] = []
    try:
        img = images.decode(data, images.READ, reduce_to, notes)
    except images.Refused as e:
        problems.add(f"{where}: {e}" + (", skipped" if e.over_limit else ""))
        img = None
    for note in notes:
        problems.add(f"{where}: {note}")
    return img


def assemble(items, read, prep: Preprocess, spec: str, problems: images.Problems, found: str,
             top: str) -> ImageSet:
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
                problems.add(f"{where}: cannot be read ({images.reason(e)}), skipped")
                continue
            img = decode_into(data, where, problems, reduce_to)
            if img is not None:
                imgs.append(img)
        decoded += len(imgs)
        per_class.append((cname, imgs))
    if not decoded:
        shown = "; ".join(problems[:3])
        raise UserError(f"{spec}: none of the images could be read ({found}; e.g. {shown}); {EXPECTED_LAYOUT}")
    return build_imageset(per_class, prep, spec, groups, problems.lines())
