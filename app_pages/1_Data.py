"""Data: choose the images to learn from, see what they hold and how their classes are split."""
from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from engine.data.images import MiB, size_text
from engine.data.imageset import Preprocess
from engine.errors import UserError
from engine.services.datasets import (
    SHOWN_CLASSES,
    SPLITS,
    preview,
    spec_kind,
    split_preview,
)
from engine.services.uploads import LIMITS, save_zip
from ui.class_builder import class_builder
from ui.common import current_run, data_overrides, set_data_overrides

SOURCES = {"glyphs": "Built-in glyphs", "digits": "Built-in digits", "zip": "Upload a zip",
           "browser": "Build classes in the browser", "path": "Folder on the server"}
EXTERNALS = {"auto": "Auto: a class-disjoint part of this data", "digits": "Built-in digits",
             "glyphs": "Built-in glyphs", "zip": "Another zip upload", "path": "A path on the server"}
SIZES = ["auto", 28, 32, 48, 64, 84]
RECORDS = {"zip": "data_zip_saved", "browser": "data_browser_saved", "external": "data_external_saved"}


def md(text: str) -> str:
    """Plain text (file and class names) safe to show as markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", str(text))


def stored_choice() -> dict:
    """Widget defaults from the choice stored for training (so coming back to this page shows what
    the Train page will use). Passed as value=/index=: presetting widget keys in session_state
    shows stale values in the browser once a widget has been hidden and shown again."""
    saved = data_overrides()
    ds, ext = saved.get("dataset", "glyphs"), saved.get("external", "auto")
    kind = spec_kind(ds)
    ext_kind = "auto" if ext == "auto" else {"browser": "path"}.get(spec_kind(ext), spec_kind(ext))
    for slot, spec in ((kind, ds), ("external" if ext_kind == "zip" else None, ext)):
        if slot in RECORDS:  # a saved upload: show it again even though the uploader is empty
            st.session_state.setdefault(RECORDS[slot], {"file_id": None, "name": Path(spec).name, "spec": spec,
                                                        "problems": [], "error": None})
    size = saved.get("image_size") or "auto"
    return {"source": list(SOURCES).index(kind), "folder": ds if kind == "path" else "",
            "external": list(EXTERNALS).index(ext_kind), "external_path": ext if ext_kind == "path" else "",
            "image_size": SIZES.index(size) if size in SIZES else 0,
            "val_split": float(saved.get("val_split", 0.1)), "test_split": float(saved.get("test_split", 0.2)),
            "external_split": float(saved.get("external_split", 0.2)), "train_limit": int(saved.get("train_limit", 0)),
            "rotations": bool(saved.get("rotations", False))}


def handle_zip(uploaded, slot: str) -> dict | None:
    """Save a newly uploaded zip once (keyed by its file id); the record outlives reruns and page changes."""
    record = st.session_state.get(slot)
    if uploaded is not None and (record is None or record["file_id"] != uploaded.file_id):
        record = {"file_id": uploaded.file_id, "name": uploaded.name, "spec": None, "problems": [], "error": None}
        try:
            if uploaded.size > LIMITS.max_upload_bytes:  # before its bytes are copied
                raise UserError(f"{uploaded.name} is {size_text(uploaded.size)}, over the "
                                f"{size_text(LIMITS.max_upload_bytes)} limit per upload")
            path, record["problems"] = save_zip(uploaded.name, uploaded.getvalue())
            record["spec"] = str(path)
        except (UserError, OSError) as e:
            record["error"] = str(e)
        st.session_state[slot] = record
    return record


def show_problems(lines: list[str], title: str) -> None:
    if not lines:
        return
    shown = "\n".join(f"- {md(line)}" for line in lines[:10])
    st.warning(f"**{title}** ({len(lines)})\n\n{shown}")
    if len(lines) > 10:
        with st.expander(f"All {len(lines)} {title.lower()}"):
            st.markdown("\n".join(f"- {md(line)}" for line in lines))


def show_record(record: dict | None, what: str) -> str | None:
    """Render a saved upload (or its error); its spec, or None."""
    if record is None:
        return None
    if record["error"]:
        st.error(record["error"])
        return None
    st.success(f"{what} saved as `{record['spec']}`")
    show_problems(record["problems"], "Files left out")
    return record["spec"]


st.title("Data")
current_run()  # checks the link's ?run= first: one outside the runs folder is dropped, with a notice at the top
stored = stored_choice()
current = data_overrides()
st.caption(f"The Train page uses: `{current['dataset']}`, external set `{current['external']}`" if current
           else "The Train page uses its preset's data (built-in glyphs) until you press **Use this data** below.")

# ------------------------------------------------------------------------------------------- source
choice = st.radio("Images to learn from", list(SOURCES.values()), stored["source"], key="data_source",
                  horizontal=True)
kind = next(k for k, v in SOURCES.items() if v == choice)
st.caption(f"Uploads: {LIMITS.describe()}. Zips hold one folder of images per class (cats/1.png, dogs/1.jpg). "
           "Every file left out is named below with the reason; the rest is kept.")
if kind in ("glyphs", "digits"):
    spec = kind
elif kind == "zip":
    uploaded = st.file_uploader("Zip of class folders", type="zip", key="data_zip",
                                max_upload_size=LIMITS.max_upload_bytes // MiB)
    spec = show_record(handle_zip(uploaded, RECORDS["zip"]), "The zip was")
elif kind == "browser":
    spec = class_builder()
else:
    spec = st.text_input("Folder path on the server", stored["folder"], key="data_folder",
                         help="a folder of class folders, or a .zip / .npz file on the machine running the app").strip()
if not spec:
    st.info("Choose the images above to see what they hold.")
    st.stop()

# ------------------------------------------------------------------------------------- what it holds
st.subheader("What it holds")
cols = st.columns(4)
size = cols[0].selectbox("Image size (px)", SIZES, stored["image_size"], key="data_image_size",
                         help="auto: 28 px for grayscale images, 64 px for colour; every image is resized to it")
ways = cols[1].number_input("Ways (N)", 2, 50, 5, key="data_ways")
shots = cols[2].number_input("Shots (K)", 1, 50, 1, key="data_shots")
queries = cols[3].number_input("Queries (Q)", 1, 100, 5, key="data_queries")
st.caption("N, K and Q here only check the data; the Train page chooses them for training.")
image_size = None if size == "auto" else int(size)
try:
    page_key = f"data_first_class:{spec}"  # one pager per dataset: its range depends on the data
    pv = preview(spec, Preprocess(image_size), ways, shots, queries, first_class=st.session_state.get(page_key, 1) - 1)
except (UserError, OSError) as e:
    st.error(str(e))
    st.stop()
s = pv["summary"]
cols = st.columns(4)
cols[0].metric("Classes", s["classes"])
cols[1].metric("Images", s["images"])
cols[2].metric("Image size", f"{pv['image_size']}×{pv['image_size']} px {'gray' if pv['channels'] == 1 else 'RGB'}")
cols[3].metric("Images per class", f"{s['images_per_class']['min']}–{s['images_per_class']['max']}")
show_problems(pv["problems"], "Problems found")
if s["classes"] > SHOWN_CLASSES:
    st.number_input(f"Show {SHOWN_CLASSES} classes from class number", 1, s["classes"], step=SHOWN_CLASSES,
                    key=page_key)
grid = st.columns(3)
for n, t in enumerate(pv["tiles"]):
    grid[n % 3].image(t["image"], caption=f"{t['name']}: {t['count']} images", width="stretch",
                        output_format="PNG")
with st.expander("Images per class"):
    st.dataframe([{"class": c, "images": n} for c, n in pv["counts"]], hide_index=True)

# ---------------------------------------------------------------------------------------------- split
st.subheader("Class split")
ext_choice = st.radio("External (discriminator) set", list(EXTERNALS.values()), stored["external"], key="data_external",
                      horizontal=True,
                      help="labelled classes the concept discriminator learns; never the classes of the few-shot tasks")
ext_kind = next(k for k, v in EXTERNALS.items() if v == ext_choice)
external = ext_kind if ext_kind in ("auto", "digits", "glyphs") else None
if ext_kind == "zip":
    ext_upload = st.file_uploader("Zip of class folders for the external set", type="zip", key="external_zip",
                                  max_upload_size=LIMITS.max_upload_bytes // MiB)
    external = show_record(handle_zip(ext_upload, RECORDS["external"]), "The external zip was")
elif ext_kind == "path":
    external = st.text_input("External set path on the server", stored["external_path"],
                             key="data_external_path").strip() or None
cols = st.columns(5)
split_help = "below 1: a fraction of the classes (or alphabets); 1 or more: a count"
val = cols[0].number_input("Validation", 0.0, 10_000.0, stored["val_split"], 0.05, key="data_val_split",
                           help=split_help)
test = cols[1].number_input("Test", 0.0, 10_000.0, stored["test_split"], 0.05, key="data_test_split", help=split_help)
ext_split = cols[2].number_input("External (auto)", 0.0, 10_000.0, stored["external_split"], 0.05,
                                 key="data_external_split", help=split_help, disabled=ext_kind != "auto")
train_limit = cols[3].number_input("Train limit (0 = all)", 0, 100_000, stored["train_limit"], 1,
                                   key="data_train_limit", help="at most this many meta-train classes (or alphabets): a scarce-data study")
rotations = cols[4].checkbox("Rotations", stored["rotations"], key="data_rotations",
                             help="each 90° turn of a meta-train class becomes a new class (as done for Omniglot)")
fields = {"val_split": float(val), "test_split": float(test), "external_split": float(ext_split),
          "train_limit": int(train_limit), "rotations": bool(rotations)}
sp = None
if external is None:
    st.info("Choose the external set above.")
else:
    try:
        sp = split_preview(spec, external, fields, image_size, ways, shots, queries)
    except (UserError, OSError) as e:
        st.error(str(e))
if sp is not None:
    unit = "alphabets (groups of classes) are kept whole" if sp["report"]["unit"] == "group" else "classes"
    st.caption(f"Split by {unit}; meta-train, meta-val and meta-test never share a class.")
    st.dataframe(sp["rows"], hide_index=True)
    show_problems(sp["problems"], "Split problems")
    units = sp["report"]["units"] or {}
    for split in SPLITS:
        names = sp["class_names"][split]
        with st.expander(f"{split}: {len(names)} classes"):
            if units.get(split):
                st.markdown("**Groups:** " + md(", ".join(units[split])))
            st.markdown(md(", ".join(names[:500])) + (f" ... and {len(names) - 500} more" if len(names) > 500 else ""))

# -------------------------------------------------------------------------------------------- use it
def use_data(overrides: dict) -> None:
    try:
        set_data_overrides(overrides)
        message = f"The Train page will use `{overrides['dataset']}` (external set: `{overrides['external']}`)."
        st.session_state["data_use_result"] = ("success", message)
    except UserError as e:
        st.session_state["data_use_result"] = ("error", str(e))


overrides = {"dataset": spec, "external": external, **fields}
if image_size is not None:
    overrides["image_size"] = image_size
st.button("Use this data", type="primary", key="data_use", disabled=sp is None, on_click=use_data, args=(overrides,))
if result := st.session_state.pop("data_use_result", None):
    getattr(st, result[0])(result[1])
