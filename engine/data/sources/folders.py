"""A folder of class folders on the server: scanned (symlinks not followed), then read file by file."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path

from engine.data import images
from engine.data.imageset import ImageSet, Preprocess
from engine.data.sources.classes import EXPECTED_LAYOUT, assemble, is_archive
from engine.errors import UserError


@dataclasses.dataclass
class FolderScan:
    files: list[tuple[str, int, int]]  # (posix path relative to the root, size, mtime_ns)
    problems: list[str]
    other_files: int  # files that are not images

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        h.update(repr((self.files, self.problems, self.other_files)).encode("utf-8", "surrogatepass"))
        return h.hexdigest()


def scan_folder(root: str) -> FolderScan:
    """Every candidate image file under `root` (os.walk, symlinks not followed), sorted."""
    limits = images.READ
    files: list[tuple[str, int, int]] = []
    problems = images.Problems()
    other = 0
    seen = 0

    def rel(path: str) -> str:
        return Path(os.path.relpath(path, root)).as_posix()

    def on_error(e: OSError) -> None:
        problems.add(f"{rel(e.filename) if e.filename else root}: cannot be read ({e.strerror}), skipped")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=False):
        kept = []
        for d in sorted(dirnames):
            if images.is_ignored(d):
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                problems.add(f"{rel(os.path.join(dirpath, d))}: symbolic link to a folder, not followed")
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if images.is_ignored(name):
                continue
            seen += 1
            if seen > limits.max_folder_files:
                raise UserError(f"{root} holds more than {limits.max_folder_files:,} files; is this the right "
                                f"folder? {EXPECTED_LAYOUT}")
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
            if not images.is_image_name(name):
                other += 1
                if is_archive(name):
                    problems.add(f"{where}: an archive inside the dataset, not opened")
                else:
                    problems.add(f"{where}: not an image file, skipped")
                continue
            if st.st_size > limits.max_file_bytes:
                problems.add(f"{where}: {images.size_text(st.st_size)} is over the "
                             f"{images.size_text(limits.max_file_bytes)} limit per image, skipped")
                continue
            files.append((where, st.st_size, st.st_mtime_ns))
    files.sort()
    return FolderScan(files=files, problems=problems.lines(), other_files=other)


def read_regular_file(path: str, limit: int) -> bytes:
    """Read a file (at most `limit` + 1 bytes) without following a symlink or blocking on a FIFO
    swapped in since the scan."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        size = os.fstat(fd).st_size
        with os.fdopen(fd, "rb", closefd=False) as f:
            # read(limit + 1) would allocate the whole limit for every small image
            data = f.read(min(size, limit) + 1)
            if size < len(data) <= limit:  # grew since fstat
                data += f.read(limit + 1 - len(data))
            return data
    finally:
        os.close(fd)


def load_folder(root: str, scan: FolderScan, prep: Preprocess, spec: str) -> ImageSet:
    problems = images.Problems()
    for line in scan.problems:
        problems.add(line)
    items = []
    for where, _size, _mtime in scan.files:
        parts = tuple(where.split("/"))
        items.append((parts[:-1], parts[-1], os.path.join(root, *parts)))
    limit = images.READ.max_file_bytes

    def read(path: str) -> bytes:
        return read_regular_file(path, limit)

    found = f"{len(scan.files)} image files and {scan.other_files} other files"
    return assemble(items, read, prep, spec, problems, found, "top folder")
