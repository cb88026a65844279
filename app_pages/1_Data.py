"""Data: choose the images to learn from, see what they hold and how their classes are split."""
from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from engine.data.images import MiB, size_text
from engine.data.imageset import Preprocess
from engine.data.plan import GLYPHS_EXTERNAL
from engine.errors import UserError
from engine.services.datasets import (
    SHOWN_CLASSES,
    SPLITS,
    fit_data_plan,
    preview,
    spec_kind,
    split_preview,
)
from engine.services.uploads import LIMITS, save_zip
from ui.class_builder import class_builder
from ui.common import current_run, data_overrides, set_data_overrides

SOURCES = {"glyphs": "Built-in glyphs", "digits": "Built-in digits", "zip": "Upload a zip",
           "browser": "Build classes in the browser", "path": "Folder on the server"}
EXTERNALS = {"plan": "The plan's choice", "auto": "A class-disjoint part of this data", "digits": "Built-in digits",
             "glyphs": "Built-in glyphs", "zip": "Another zip upload", "path": "A path on the server"}
SIZES = ["auto", 28, 32, 48, 64, 84]
VALIDATION = {"classes": "held-out classes", "images": "held-out images", "train": "the training images"}
SPLIT_FIELDS = ("val_split", "test_split", "external_split", "train_limit", "rotations", "validation", "lam")
RECORDS = {"zip": "data_zip_saved", "browser": "data_browser_saved", "external": "data_external_saved"}


def md(text: str) -> str:
    """Plain text (file and class names) safe to show as markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", str(text))


def stored_choice() -> dict:
    """Widget defaults from the choice stored for training (so coming back to this page shows what
    the Train page will use). Passed as value=/index=: presetting widget keys in session_state
    shows stale values in the browser once a widget has been hidden and shown again."""
    saved = data_overrides()
    ds, ext = saved.get("dataset", "glyphs"), saved.get("external", "plan")
    kind = spec_kind(ds)
    ext_kind = ext if ext in ("auto", "plan") else "plan" if ext == "none" else \
        {"browser": "path"}.get(spec_kind(ext), spec_kind(ext))
    for slot, spec in ((kind, ds), ("external" if ext_kind == "zip" else None, ext)):
        if slot in RECORDS:  # a saved upload: show it again even though the uploader is empty
            st.session_state.setdefault(RECORDS[slot], {"file_id": None, "name": Path(spec).name, "spec": spec,
                                                        "problems": [], "error": None})
    size = saved.get("image_size") or "auto"
    return {"source": list(SOURCES).index(kind), "folder": ds if kind == "path" else "",
            "external": list(EXTERNALS).index(ext_kind), "external_path": ext if ext_kind == "path" else "",
            "image_size": SIZES.index(size) if size in SIZES else 0, "fields": saved}


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
st.subheader("1 · What it holds")
size = st.selectbox("Image size (px)", SIZES, stored["image_size"], key="data_image_size",
                    help="auto: 28 px for grayscale images, 64 px for colour; every image is resized to it")
image_size = None if size == "auto" else int(size)
try:
    page_key = f"data_first_class:{spec}"  # one pager per dataset: its range depends on the data
    # shots 1 + queries 1: classes under 2 images are named; the plan (below) fits K and Q to the rest
    pv = preview(spec, Preprocess(image_size), shots=1, queries=1,
                 first_class=st.session_state.get(page_key, 1) - 1)
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
for row in range(0, len(pv["tiles"]), 3):  # a row of 3 at a time: on a phone they stack in class order
    for col, t in zip(st.columns(3), pv["tiles"][row:row + 3]):
        col.image(t["image"], caption=f"{t['name']}: {t['count']} image{'' if t['count'] == 1 else 's'}", width="stretch", output_format="PNG")
with st.expander("Images per class"):
    st.dataframe([{"class": c, "images": n} for c, n in pv["counts"]], hide_index=True)

# ----------------------------------------------------------------------------------------------- plan
st.subheader("2 · How it trains")
ext_choice = st.radio("External (discriminator) set", list(EXTERNALS.values()), stored["external"],
                      key="data_external", horizontal=True,
                      help="labelled classes the concept discriminator learns; never the classes of the few-shot "
                           "tasks. The plan's choice: other classes of this data when there are enough, else the "
                           "built-in glyphs (grayscale images), else none (λ = 0)")
ext_kind = next(k for k, v in EXTERNALS.items() if v == ext_choice)
external = {"glyphs": GLYPHS_EXTERNAL}.get(ext_kind, ext_kind) if ext_kind in ("auto", "digits", "glyphs") else None
if ext_kind == "zip":
    ext_upload = st.file_uploader("Zip of class folders for the external set", type="zip", key="external_zip",
                                  max_upload_size=LIMITS.max_upload_bytes // MiB)
    external = show_record(handle_zip(ext_upload, RECORDS["external"]), "The external zip was")
elif ext_kind == "path":
    external = st.text_input("External set path on the server", stored["external_path"],
                             key="data_external_path").strip() or None
if ext_kind != "plan" and external is None:
    st.info("Choose the external set above.")
    st.stop()
ext_fields = {} if ext_kind == "plan" else {"external": external}
try:  # the plan fitted to the data: the fields' starting values
    fitted, plan = fit_data_plan(spec, image_size, ext_fields, explicit=set(ext_fields))
except (UserError, OSError) as e:
    fitted, plan = None, None
    st.error(str(e))
start = stored["fields"] if stored["fields"].get("dataset") == spec else (fitted or {})
PLAN_FIELDS = ("data_ways", "data_shots", "data_queries", "data_validation", "data_test_split", "data_val_split",
               "data_external_split", "data_train_limit", "data_rotations")
plan_key = f"{spec}|{image_size}|{ext_kind}|{external}"
if st.session_state.get("data_plan_for", plan_key) != plan_key:  # new data (or external set): fields start again
    for key in PLAN_FIELDS:
        st.session_state.pop(key, None)
st.session_state["data_plan_for"] = plan_key
cols = st.columns(5)
ways = cols[0].number_input("Ways (N)", 2, 50, int(start.get("ways", 5)), key="data_ways",
                            help="classes per task")
shots = cols[1].number_input("Shots (K)", 1, 50, int(start.get("shots", 1)), key="data_shots",
                             help="labelled examples per class in a task")
queries = cols[2].number_input("Queries (Q)", 1, 100, int(start.get("queries", 5)), key="data_queries",
                               help="examples per class scored in a task")
mode = cols[3].selectbox("Validate on", list(VALIDATION), list(VALIDATION).index(start.get("validation", "classes")),
                         format_func=VALIDATION.get, key="data_validation",
                         help="held-out classes; when there are too few, held-out images of the training classes")
split_help = "below 1: a fraction of the classes (or alphabets); 1 or more: a count"
test = cols[4].number_input("Test", 0.0, 10_000.0, float(start.get("test_split", 0.2)), 0.05,
                            key="data_test_split", format="%g", help=split_help)
with st.expander("More split settings"):
    cols = st.columns(4)
    val = cols[0].number_input("Validation", 0.0, 10_000.0, float(start.get("val_split", 0.1)), 0.05,
                               key="data_val_split", format="%g", help=split_help + " (validation on classes only)")
    ext_split = cols[1].number_input("External (auto)", 0.0, 10_000.0, float(start.get("external_split", 0.2)), 0.05,
                                     key="data_external_split", format="%g", help=split_help)
    train_limit = cols[2].number_input("Train limit (0 = all)", 0, 100_000, int(start.get("train_limit", 0)), 1,
                                       key="data_train_limit",
                                       help="at most this many meta-train classes (or alphabets): a scarce-data study")
    rotations = cols[3].checkbox("Rotations", bool(start.get("rotations", False)), key="data_rotations",
                                 help="each 90° turn of a meta-train class becomes a new class (as done for Omniglot)")
chosen = {"ways": int(ways), "shots": int(shots), "queries": int(queries), "validation": mode,
          "val_split": float(val), "test_split": float(test), "external_split": float(ext_split),
          "train_limit": int(train_limit), "rotations": bool(rotations),
          "external": start.get("external", "auto") if ext_kind == "plan" else external,
          "lam": float(start.get("lam", 1.0)) if ext_kind == "plan" else 1.0}
overrides, reason = None, None
if plan is not None:
    try:  # the values in the fields, checked by the same rule, in the fields' words
        overrides, plan = fit_data_plan(spec, image_size, chosen, explicit=set(chosen))
    except (UserError, OSError) as e:
        reason = str(e)
    if overrides is not None:
        st.info(f"**Plan:** {md(plan.describe())}.")

sp = None
if overrides is not None:
    try:
        sp = split_preview(spec, overrides["external"], {k: overrides[k] for k in SPLIT_FIELDS}, image_size,
                           int(ways), int(shots), int(queries))
    except (UserError, OSError) as e:
        st.error(str(e))
if sp is not None:
    unit = "alphabets (groups of classes) are kept whole" if sp["report"]["unit"] == "group" else "classes"
    with st.expander(f"Class split (by {unit}; meta-train, meta-val and meta-test never share a class)"):
        st.dataframe(sp["rows"], hide_index=True)
        units = sp["report"]["units"] or {}
        for split in SPLITS:
            names = sp["class_names"][split]
            if units.get(split):
                st.markdown(f"**{split} groups:** " + md(", ".join(units[split])))
            st.markdown(f"**{split}** ({len(names)}): " + md(", ".join(names[:200]))
                        + (f" ... and {len(names) - 200} more" if len(names) > 200 else ""))
    show_problems(sp["problems"], "Split problems")


# -------------------------------------------------------------------------------------------- use it
def use_data(overrides: dict) -> None:
    try:
        set_data_overrides(overrides)
        message = (f"The Train page will use `{overrides['dataset']}` as {overrides['ways']}-way "
                   f"{overrides['shots']}-shot, as planned above.")
        st.session_state["data_use_result"] = ("success", message)
    except UserError as e:
        st.session_state["data_use_result"] = ("error", str(e))


st.subheader("3 · Use it")
left, right = st.columns([1, 3], vertical_alignment="center")
left.button("Use this data", type="primary", key="data_use", disabled=sp is None, on_click=use_data,
            args=(overrides,))
if sp is None:
    right.error(f"Cannot train yet: {reason}" if reason else "Cannot train yet: see the problem above.")
if result := st.session_state.pop("data_use_result", None):
    getattr(st, result[0])(result[1])
    if result[0] == "success":
        st.page_link("app_pages/2_Train.py", label="Go on to **Train** to start a run on it", icon=":material/arrow_forward:")
