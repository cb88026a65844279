"""Classes built in the browser, kept as a draft on disk per session until saved.

UI-free (no streamlit): the Data page's class builder (ui/class_builder.py) calls a ``ClassBuilder``
and shows what it returns. A draft lives at ``uploads_root()/drafts/<session>/``:

- ``draft.json``: the classes in the order they were made, each with its name, the folder that
  holds its images (``c1``, ``c2``...: never a name the person typed) and the images kept;
- ``c<n>/<nn>.<ext>``: each kept image as sent, its extension from its decoded format (never from
  the file name), beside ``<nn>.thumb.png``, a small thumbnail for the page.

Every file is decoded with engine.data.images.decode before it is kept; one that fails is named
with the reason and not counted. The limits are LIMITS (engine.data.images.UPLOAD): the image count
and bytes of all classes together, per image, per side, the number of classes. ``save()`` writes
the draft as a dataset with uploads.save_browser_classes (``<timestamp>-browser``, the spec the
Train and Adapt pages read) once per version of the draft.
"""
from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from engine.config import uploads_root
from engine.data import images
from engine.data.images import size_text
from engine.errors import UserError
from engine.services.uploads import LIMITS, UploadLimits, read_uploaded, safe_name, save_browser_classes

THUMB_PX = 96  # the longest side of a thumbnail
DRAFT_DAYS = 7  # drafts untouched this long are removed when a new one is made
_SESSION = re.compile(r"[0-9a-f]{16}")
_CLASS_DIR = re.compile(r"c[0-9]{1,6}")
_IMAGE_FILE = re.compile(r"[0-9]{2,6}\.[a-z]{3,4}")


@dataclass(frozen=True)
class BuiltImage:
    file: str  # its name in the class folder ("03.png")
    source: str  # the name it was sent with (shown, never used as a path)
    path: Path  # the kept image
    thumb: Path  # its thumbnail (PNG)


@dataclass(frozen=True)
class BuiltClass:
    key: str  # the folder holding its images ("c1"): stable across renames
    name: str  # the name shown and saved
    images: list[BuiltImage]
    problems: list[str]  # files of its last drop that were left out, with the reason

    @property
    def count(self) -> int:
        return len(self.images)


def new_session() -> str:
    """A fresh draft name for one browser session."""
    return secrets.token_hex(8)


def drafts_root() -> Path:
    return uploads_root() / "drafts"


def prune_drafts(days: float = DRAFT_DAYS) -> None:
    """Remove drafts untouched for `days` (a closed browser tab leaves its draft behind)."""
    root = drafts_root()
    if not root.is_dir():
        return
    cutoff = time.time() - days * 86400
    for d in root.iterdir():
        if _SESSION.fullmatch(d.name) and d.is_dir() and not d.is_symlink() and d.stat().st_mtime < cutoff:
            shutil.rmtree(d, ignore_errors=True)


class ClassBuilder:
    """One session's classes. Every method that changes them saves draft.json and counts a new version."""

    def __init__(self, session: str, limits: UploadLimits = LIMITS, first_classes: int = 2):
        if not isinstance(session, str) or not _SESSION.fullmatch(session):
            raise UserError("this browser session's class draft has an invalid name; reload the page")
        self.limits = limits
        self.root = drafts_root() / session
        if not (self.root / "draft.json").is_file():
            prune_drafts()
            self.root.mkdir(parents=True, exist_ok=True)
            self._state = {"classes": [], "next_class": 1, "next_image": 1, "version": 0, "saved": None}
            for _ in range(first_classes):
                self.add_class()
        self._state = json.loads((self.root / "draft.json").read_text())

    # ------------------------------------------------------------------------------------ reading

    def classes(self) -> list[BuiltClass]:
        out = []
        for c in self._state["classes"]:
            folder = self._folder(c["key"])
            shown = [BuiltImage(i["file"], i["source"], folder / i["file"], folder / _thumb_name(i["file"]))
                     for i in c["images"]]
            out.append(BuiltClass(c["key"], c["name"], shown, list(c["problems"])))
        return out

    def totals(self) -> tuple[int, int]:
        """(images kept, their bytes) over all classes: what the upload limits count."""
        kept = [i for c in self._state["classes"] for i in c["images"]]
        return len(kept), sum(int(i["bytes"]) for i in kept)

    def saved_spec(self) -> str | None:
        """The dataset saved from this very version of the draft, if any (and still on disk)."""
        saved = self._state["saved"]
        if saved and saved["version"] == self._state["version"] and Path(saved["spec"]).is_dir():
            return saved["spec"]
        return None

    # ------------------------------------------------------------------------------------ classes

    def add_class(self, name: str | None = None) -> str:
        if len(self._state["classes"]) >= self.limits.max_classes:
            raise UserError(f"at most {self.limits.max_classes} classes can be built here; remove one first")
        n = self._state["next_class"]
        wanted = name if name is not None else f"class {n}"
        while name is None and self._taken(wanted):
            n += 1
            wanted = f"class {n}"
        clean, _note = self._clean(wanted, None)
        key = f"c{self._state['next_class']}"
        self._state["next_class"] += 1
        self._folder(key).mkdir(exist_ok=True)
        self._state["classes"].append({"key": key, "name": clean, "images": [], "problems": []})
        self._commit()
        return key

    def rename_class(self, key: str, new: str) -> str | None:
        """Rename a class. Returns a note when the name was cleaned (what was kept), else None.
        Raises UserError (in the words of the class's name field) for an empty or taken name."""
        c = self._class(key)
        clean, note = self._clean(new, key)
        c["name"] = clean
        self._commit()
        return note

    def remove_class(self, key: str) -> None:
        c = self._class(key)
        self._state["classes"].remove(c)
        shutil.rmtree(self._folder(key), ignore_errors=True)
        self._commit()

    # ------------------------------------------------------------------------------------- images

    def add_files(self, key: str, files) -> list[str]:
        """Files a browser sent (objects with .name, .size, .getvalue()) into a class. Sizes and
        counts are checked before a file's bytes are read (uploads.read_uploaded), against what all
        classes together may still take; each file kept is decoded first. Returns the problem lines
        (also kept as the class's problems until its next drop)."""
        count, used = self.totals()
        lim = self.limits
        items, problems = read_uploaded(
            files, lim, budget=lim.max_upload_bytes - used, max_files=lim.max_files - count,
            count_words=f"over the {lim.max_files:,}-image limit of classes built in the browser",
            budget_words=f"would take these classes past their {size_text(lim.max_upload_bytes)} limit")
        return self.add_images(key, items, problems)

    def add_images(self, key: str, items: list[tuple[str, bytes]], problems: list[str] | None = None) -> list[str]:
        """(name, bytes) pairs into a class; see add_files (which checks the totals first)."""
        c = self._class(key)
        problems = list(problems or [])
        count, used = self.totals()
        for source, data in items:
            source = str(source)[:200]
            if count >= self.limits.max_files:
                problems.append(f"{source}: over the {self.limits.max_files:,}-image limit of classes built "
                                f"in the browser, left out")
                continue
            if used + len(data) > self.limits.max_upload_bytes:
                problems.append(f"{source}: would take these classes past their "
                                f"{size_text(self.limits.max_upload_bytes)} limit, left out")
                continue
            kept = self._keep(c, source, data)
            if isinstance(kept, str):
                problems.append(f"{source}: {kept}, left out")
                continue
            count, used = count + 1, used + len(data)
        c["problems"] = problems[: images.MAX_PROBLEM_LINES]
        self._commit()
        return problems

    def remove_image(self, key: str, file: str) -> None:
        c = self._class(key)
        entry = next((i for i in c["images"] if i["file"] == file), None)
        if entry is None or not _IMAGE_FILE.fullmatch(file):
            raise UserError(f"class {c['name']!r} has no image {file!r} (already removed?)")
        c["images"].remove(entry)
        for name in (file, _thumb_name(file)):
            (self._folder(key) / name).unlink(missing_ok=True)
        self._commit()

    def load(self, folder: str | Path) -> None:
        """Replace the draft by a set saved from the browser before (a `-browser` folder in the uploads
        folder), so it can be changed; the draft counts as saved to it until changed."""
        folder = Path(folder)
        root = uploads_root().resolve()
        if folder.resolve().parent != root or not re.search(r"-browser(-\d+)?$", folder.name):
            raise UserError(f"{folder} is not a set of classes built in this app's uploads folder")
        for c in list(self._state["classes"]):
            shutil.rmtree(self._folder(c["key"]), ignore_errors=True)
        self._state["classes"] = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
            key = self.add_class(sub.name)
            files = sorted(p for p in sub.iterdir() if p.is_file() and not p.is_symlink())
            self.add_images(key, [(p.name, p.read_bytes()) for p in files])
        self._state["saved"] = {"version": self._state["version"], "spec": str(folder)}
        self._commit(change=False)

    def save(self) -> tuple[str, list[str]]:
        """The draft as a dataset (uploads.save_browser_classes) -> (spec, problem lines); the same
        spec again while the draft is unchanged. Raises UserError when fewer than two classes have images."""
        if (spec := self.saved_spec()) is not None:
            return spec, []
        classes = self.classes()
        if sum(1 for c in classes if c.count) < self.limits.min_classes:
            empty = [repr(c.name) for c in classes if not c.count]
            raise UserError(f"Add images to at least {self.limits.min_classes} classes (a few-shot task tells classes "
                            f"apart)" + (f"; {', '.join(empty)} {'has' if len(empty) == 1 else 'have'} none yet"
                                         if empty else "; add a class and drop its images"))
        pairs = [(c.name, [(i.file, i.path.read_bytes()) for i in c.images]) for c in classes if c.count]
        folder, problems = save_browser_classes(pairs, self.limits)
        self._state["saved"] = {"version": self._state["version"], "spec": str(folder)}
        self._commit(change=False)
        return str(folder), problems

    # ---------------------------------------------------------------------------------- internals

    def _keep(self, c: dict, source: str, data: bytes) -> str | None:
        """Decode and keep one image; the reason it is refused, or None."""
        try:
            fmt = images.header(io.BytesIO(data))[0]
            img = images.decode(data, self.limits)
        except images.Refused as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - whatever Pillow cannot read is the person's file
            return f"not a readable image ({images.reason(e)})"
        ext = images.FORMAT_EXTENSIONS.get(fmt)
        if ext is None:
            return f"{fmt or 'this'} images are not accepted (use PNG, JPEG, BMP, GIF, WebP or TIFF)"
        file = f"{self._state['next_image']:02d}.{ext}"
        self._state["next_image"] += 1
        folder = self._folder(c["key"])
        thumb = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
        thumb.thumbnail((THUMB_PX, THUMB_PX))
        thumb.save(folder / _thumb_name(file), "PNG")
        with open(folder / file, "xb") as f:
            f.write(data)
        c["images"].append({"file": file, "source": source, "bytes": len(data)})
        return None

    def _clean(self, name: str, key: str | None) -> tuple[str, str | None]:
        clean = safe_name(name, self.limits)
        if clean is None:
            raise UserError(f"Class name {name.strip()!r} has no letters or digits: give the class a name "
                            "such as 'cats'" if isinstance(name, str) and name.strip()
                            else "Class name is empty: give the class a name such as 'cats'")
        if self._taken(clean, key):
            raise UserError(f"Class name {clean!r} is already taken by another class: choose another name")
        note = None if clean == name.strip() else (f"Class name {name.strip()!r} saved as {clean!r} (only letters, "
                                                   "digits, spaces, '-' and '_' are kept in names)")
        return clean, note

    def _taken(self, name: str, key: str | None = None) -> bool:
        return any(c["name"].casefold() == name.casefold() and c["key"] != key for c in self._state["classes"])

    def _class(self, key: str) -> dict:
        c = next((c for c in self._state["classes"] if c["key"] == key), None)
        if c is None:
            raise UserError("that class was already removed; the page shows the classes as they are now")
        return c

    def _folder(self, key: str) -> Path:
        if not _CLASS_DIR.fullmatch(key):
            raise UserError(f"{key!r} is not a class of this draft")
        return self.root / key

    def _commit(self, change: bool = True) -> None:
        if change:
            self._state["version"] += 1
        tmp = self.root / "draft.json.tmp"
        tmp.write_text(json.dumps(self._state))
        os.replace(tmp, self.root / "draft.json")


def _thumb_name(file: str) -> str:
    return file.rsplit(".", 1)[0] + ".thumb.png"
