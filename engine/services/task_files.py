"""A few-shot task from a folder or zip of class folders (the export's --support, the Adapt page's
?task=<spec>): each folder holding images is a class, named by its folder path ("Greek/character01");
its first `max_support` images (sorted by name) are the support set, the rest labelled queries.

Files are read as bytes and handed to engine.services.adapt.prepare_upload, so they are decoded,
checked and prepared exactly as images uploaded on the Adapt page are.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.config import uploads_root
from engine.data import images
from engine.data.images import TASK_UPLOAD, UploadLimits
from engine.data.sources.folders import read_regular_file, scan_folder
from engine.data.sources.zips import file_members, open_zip, read_member
from engine.errors import UserError
from engine.services.adapt import NewClass, Upload


def _zip_files(path: str, limits: UploadLimits) -> list[tuple[tuple[str, ...], bytes]]:
    zf, infos = open_zip(path, path, limits.max_members)
    with zf:
        return [(parts, read_member(zf, info, limits.max_file_bytes)) for info, parts in file_members(infos)
                if not isinstance(parts, str) and images.is_image_name(parts[-1]) and len(parts) >= 2]


def _folder_files(path: str, limits: UploadLimits) -> list[tuple[tuple[str, ...], bytes]]:
    out = []
    for rel, size, _ in scan_folder(path).files:
        parts = tuple(rel.split("/"))
        if len(parts) >= 2 and images.is_image_name(parts[-1]) and size <= limits.max_file_bytes:
            out.append((parts, read_regular_file(os.path.join(path, rel), limits.max_file_bytes)))
    return out


def read_task_classes(path: str, limits: UploadLimits = TASK_UPLOAD, split: bool = False) -> list[NewClass]:
    """Classes (folder path -> support and labelled query files) of a folder or .zip of class folders.
    A zip's single top folder (the zip of one folder) is not a class level. The support set is each
    class's first `max_support` images, or with `split` its first half (at least 1, at most
    max_support), so the rest can be asked as queries. UserError when it holds fewer than 2 classes
    or more than the task limit."""
    p = Path(path)
    if p.is_dir():
        files = _folder_files(str(p), limits)
    elif p.is_file() and p.suffix.lower() == ".zip":
        files = _zip_files(str(p), limits)
    else:
        raise UserError(f"{path} is neither a folder nor a .zip of class folders")
    if files and len({f[0][0] for f in files}) == 1 and all(len(f[0]) >= 3 for f in files):
        files = [(parts[1:], data) for parts, data in files]  # zip of one folder: its top is not a class
    by_class: dict[str, list[Upload]] = {}
    for parts, data in sorted(files, key=lambda f: f[0]):
        by_class.setdefault("/".join(parts[:-1]), []).append(Upload(parts[-1], data))
    if not limits.min_classes <= len(by_class) <= limits.max_classes:
        raise UserError(f"{path} holds {len(by_class)} class folder(s) with images; a task needs "
                        f"{limits.min_classes} to {limits.max_classes} (one folder of images per class)")
    def cut(n: int) -> int:
        return min(limits.max_support, max(1, n // 2) if split else n)
    return [NewClass(name, files[: cut(len(files))], files[cut(len(files)):]) for name, files in by_class.items()]


def confined_task_spec(spec: str) -> str:
    """A task spec a visitor sent (the Adapt page's ?task=): the real path if it lies strictly inside
    the uploads folder, else UserError."""
    root = os.path.realpath(uploads_root())
    if not isinstance(spec, str) or not spec or "\0" in spec or len(spec) > 1000:
        raise UserError(f"this task is not a set under the uploads folder {root}")
    inside = lambda r: r != root and r.startswith(root + os.sep)  # noqa: E731
    real = os.path.realpath(spec)  # as the Data page names it ("uploads/..."), or absolute
    if not inside(real) and not os.path.isabs(spec):
        real = os.path.realpath(os.path.join(root, spec))  # relative to the uploads folder
    if not inside(real):
        raise UserError(f"{spec[:80]} is not a set under the uploads folder {root}; only uploaded sets are used here")
    if not os.path.exists(real):
        raise UserError(f"{spec[:80]} is no longer in the uploads folder; upload it again on the Data page")
    return real
