"""A zip of class folders on the server, read in memory member by member and never extracted."""
from __future__ import annotations

import zipfile
from collections.abc import Iterator

from engine.data import images
from engine.data.imageset import ImageSet, Preprocess
from engine.data.sources.classes import assemble, is_archive
from engine.errors import UserError


def open_zip(path: str, spec: str, max_members: int) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The open archive (the caller closes it) and its members, or a UserError naming `spec`: not a
    readable zip, or more members declared than `max_members` (checked before anything is read)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise UserError(f"{spec} is not a readable zip archive ({e})") from None
    infos = zf.infolist()
    if len(infos) > max_members:
        zf.close()
        raise UserError(f"{spec} declares {len(infos):,} members; the limit is {max_members:,}")
    return zf, infos


def load_zip(path: str, prep: Preprocess, spec: str) -> ImageSet:
    limits = images.READ
    zf, infos = open_zip(path, spec, limits.max_zip_members)
    with zf:
        total = sum(i.file_size for i in infos)
        if total > limits.max_zip_bytes:
            raise UserError(f"{spec} declares {total / images.GiB:.1f} GiB uncompressed; the limit is "
                            f"{limits.max_zip_bytes // images.GiB} GiB")
        problems = images.Problems()
        items = []
        other = 0
        seen: set[tuple[str, ...]] = set()
        for info, parts in file_members(infos):
            name = info.filename
            if isinstance(parts, str):
                problems.add(f"{name}: refused ({parts}), skipped")
                continue
            if not images.is_image_name(parts[-1]):
                other += 1
                if is_archive(parts[-1]):
                    problems.add(f"{name}: nested archive, not opened")
                else:
                    problems.add(f"{name}: not an image file, skipped")
                continue
            if info.file_size > limits.max_file_bytes:
                problems.add(f"{name}: {images.size_text(info.file_size)} uncompressed is over the "
                             f"{images.size_text(limits.max_file_bytes)} limit per image, skipped")
                continue
            if parts in seen:
                problems.add(f"{name}: appears twice in the archive; kept the first")
                continue
            seen.add(parts)
            items.append((parts[:-1], parts[-1], info))

        def read(info: zipfile.ZipInfo) -> bytes:
            return read_member(zf, info, limits.max_file_bytes)

        found = f"{len(items)} image members and {other} other files"
        return assemble(items, read, prep, spec, problems, found, "top of the archive")


def file_members(infos: list[zipfile.ZipInfo]) -> Iterator[tuple[zipfile.ZipInfo, tuple[str, ...] | str]]:
    """The archive's files with their path parts, or for an unsafe name why it is refused (the one
    member-name rule: images.member_parts). Folder entries, hidden files and OS clutter are left out
    without a word, as every reader of class-folder zips does."""
    for info in infos:
        if info.filename.endswith("/"):  # a folder; not info.is_dir(), which fails on an empty name
            continue
        parts = images.member_parts(info)
        if isinstance(parts, str) or (parts and not any(images.is_ignored(p) for p in parts)):
            yield info, parts


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
