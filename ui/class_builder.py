"""The Data page's classes built in the browser (Teachable-Machine style): name a class, drop its
images or take photos; thumbnails, counts, problems; remove an image or a class, rename a class;
save them as a dataset, or use them as an Adapt task. The work is engine.services.class_builder's."""
from __future__ import annotations

import re
import time

import streamlit as st

from engine.data.images import MiB, size_text
from engine.errors import UserError
from engine.services.class_builder import THUMB_PX, BuiltClass, ClassBuilder, new_session
from engine.services.datasets import spec_kind
from engine.services.uploads import IMAGE_TYPES, LIMITS

SESSION_KEY = "bc_session"  # this browser session's draft (engine.services.class_builder)
SAVED_KEY = "data_browser_saved"  # the Data page's record of the saved set (its RECORDS["browser"])
ADAPT_PAGE = "app_pages/3_Adapt.py"
SHOWN_THUMBS = 40  # thumbnails per class shown unless "Show all" is on


def _md(text: str) -> str:
    """File and class names shown as markdown, literally."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", str(text))


def _builder() -> ClassBuilder:
    if SESSION_KEY not in st.session_state:
        st.session_state[SESSION_KEY] = new_session()
    return ClassBuilder(st.session_state[SESSION_KEY])


def _note(key: str, kind: str, text: str) -> None:
    """A message shown under a class (key) or under the buttons ('all') on the next run."""
    st.session_state[f"bc_note_{key}"] = (kind, text)


def _act(key: str, action: str, *args) -> None:
    """Run a ClassBuilder method from a widget callback (on the draft as it is now); a refusal is shown
    where it happened."""
    try:
        if (text := getattr(_builder(), action)(*args)) and isinstance(text, str):
            _note(key, "info", text)
    except UserError as e:
        _note(key, "error", str(e))


def _renamed(key: str, old: str) -> None:
    field = f"bc_name_{key}"
    try:
        b = _builder()
        if note := b.rename_class(key, st.session_state[field]):
            _note(key, "info", note)
        st.session_state[field] = next(c.name for c in b.classes() if c.key == key)
    except UserError as e:
        st.session_state[field] = old
        _note(key, "error", str(e))


def _renew(key: str) -> None:
    """A new, empty uploader and camera for this class (its files are kept in the draft now). Only this
    class's: a drop into another class while this one's rerun runs still lands."""
    st.session_state[f"bc_gen_{key}"] = st.session_state.get(f"bc_gen_{key}", 0) + 1


def _dropped(key: str, field: str) -> None:
    files = st.session_state.get(field) or []
    _act(key, "add_files", key, files)
    _renew(key)


def _photo(key: str, field: str) -> None:
    shot = st.session_state.get(field)
    if shot is not None:
        _act(key, "add_images", key, [(f"camera photo {time.strftime('%H:%M:%S')}.jpg", shot.getvalue())])
        _renew(key)


def _removed(key: str, field: str) -> None:
    for file in st.session_state.get(field) or []:
        _act(key, "remove_image", key, file)
    st.session_state[field] = []


def _show_note(key: str) -> None:
    if note := st.session_state.pop(f"bc_note_{key}", None):
        getattr(st, note[0])(note[1])


def _problems(lines: list[str], title: str) -> None:
    if lines:
        shown = "\n".join(f"- {_md(line)}" for line in lines[:10])
        more = f"\n\n... and {len(lines) - 10} more" if len(lines) > 10 else ""
        st.warning(f"**{title}** ({len(lines)})\n\n{shown}{more}")


def _draw_class(c: BuiltClass, n: int, can_remove: bool) -> None:
    gen = st.session_state.get(f"bc_gen_{c.key}", 0)
    st.session_state.setdefault(f"bc_name_{c.key}", c.name)  # not value=: the callbacks set it too
    st.text_input(f"Name of class {n}", key=f"bc_name_{c.key}", on_change=_renamed,
                  args=(c.key, c.name), max_chars=LIMITS.max_name_chars)
    _show_note(c.key)
    field = f"bc_files_{c.key}_{gen}"
    st.file_uploader(f"Images of class {n}", type=IMAGE_TYPES, accept_multiple_files=True, key=field,
                     max_upload_size=LIMITS.max_file_bytes // MiB, on_change=_dropped, args=(c.key, field),
                     help="each image is checked by decoding it; files that are not images are listed, not kept")
    if st.toggle("Use the camera", key=f"bc_camera_on_{c.key}"):
        shot = f"bc_camera_{c.key}_{gen}"
        st.camera_input(f"Photo for class {n}", key=shot, on_change=_photo, args=(c.key, shot))
    _problems(c.problems, "Files left out")
    st.markdown(f"**{c.count} image{'' if c.count == 1 else 's'}**")
    if c.images:
        shown = c.images
        if len(shown) > SHOWN_THUMBS and not st.toggle(f"Show all {c.count} images", key=f"bc_all_{c.key}"):
            shown = shown[-SHOWN_THUMBS:]  # the latest: what was just dropped
        st.container(key=f"bc_thumbs_{c.key}").image(
            [str(i.thumb) for i in shown], caption=[i.source for i in shown], width=THUMB_PX, output_format="PNG")
        names = {i.file: i.source for i in c.images}
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        pick = f"bc_pick_{c.key}"
        left.multiselect(f"Images of class {n} to remove", list(names), key=pick,
                         format_func=lambda f: f"{names.get(f, f)} ({f})", placeholder="choose images")
        right.button("Remove", key=f"bc_remove_images_{c.key}", on_click=_removed, args=(c.key, pick),
                     disabled=not st.session_state.get(pick))
    st.button("Remove this class", key=f"bc_remove_{c.key}", disabled=not can_remove,
              on_click=_act, args=(c.key, "remove_class", c.key),
              help=None if can_remove else f"a task needs at least {LIMITS.min_classes} classes")


def _restore_saved(b: ClassBuilder) -> None:
    """Coming back with a saved set chosen (a new session, or after a refresh): its classes fill the draft."""
    record = st.session_state.get(SAVED_KEY)
    if st.session_state.get("bc_restored") or not record or not record.get("spec"):
        return
    st.session_state["bc_restored"] = True
    if spec_kind(record["spec"]) == "browser" and not any(c.count for c in b.classes()):
        try:
            b.load(record["spec"])
        except (UserError, OSError) as e:
            st.warning(f"The saved classes could not be shown again: {e}")


def class_builder() -> str | None:
    """Draw the builder; the spec of the saved set when it is what the classes hold now, else None."""
    b = _builder()
    _restore_saved(b)
    classes = b.classes()
    count, used = b.totals()
    st.caption(f"{count:,} of {LIMITS.max_files:,} images, {size_text(used)} of {size_text(LIMITS.max_upload_bytes)}, "
               f"{len(classes)} of {LIMITS.max_classes} classes. Each image is decoded when dropped; "
               "the counts are of images that decoded.")
    cols = st.columns(2)
    for n, c in enumerate(classes):
        with cols[n % 2].container(border=True):
            _draw_class(c, n + 1, len(classes) > LIMITS.min_classes)
    left, mid, right = st.columns(3)
    left.button("Add a class", key="bc_add", on_click=_act, args=("all", "add_class"),
                disabled=len(classes) >= LIMITS.max_classes)
    save = mid.button("Save these classes", type="primary", key="bc_save",
                      help="save them as a dataset: what they hold, the split and Use this data appear below")
    adapt = right.button("Use as an Adapt task", key="bc_adapt",
                         help="open the Adapt page with these classes as the task: a trained run adapts to "
                              "a few images of each class and answers the rest")
    _show_note("all")
    if save or adapt:
        try:
            spec, problems = b.save()
            st.session_state[SAVED_KEY] = {"file_id": None, "name": "browser classes", "spec": spec,
                                           "problems": problems, "error": None}
        except (UserError, OSError) as e:
            st.session_state[SAVED_KEY] = {"file_id": None, "name": "browser classes", "spec": None,
                                           "problems": [], "error": str(e)}
        if adapt and st.session_state[SAVED_KEY]["spec"]:
            st.switch_page(ADAPT_PAGE, query_params={"task": st.session_state[SAVED_KEY]["spec"]})
    record = st.session_state.get(SAVED_KEY)
    if record and record.get("error") and (save or adapt):
        st.error(record["error"])
        return None
    spec = b.saved_spec()
    if spec is None:
        if record and record.get("spec"):
            st.info("The classes changed since they were saved: press **Save these classes** again.")
        else:
            st.caption("**Save these classes** to see what they hold and train on them (**Use this data**, below); "
                       "**Use as an Adapt task** opens the Adapt page with them as a task.")
        return None
    st.success(f"The classes were saved as `{spec}`")
    if record and record.get("spec") == spec:
        _problems(record["problems"], "Files left out")
    return spec
