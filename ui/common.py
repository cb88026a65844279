"""Small helpers every page uses."""
from __future__ import annotations

import streamlit as st

from engine.config import TrainConfig
from engine.errors import UserError
from engine.runs import inside_runs_root

DATA_KEY = "data_overrides"


def data_overrides() -> dict:
    """The dataset choice made on the Data page (TrainConfig fields), or {} for the built-in glyphs."""
    return dict(st.session_state.get(DATA_KEY, {}))


def set_data_overrides(overrides: dict) -> None:
    TrainConfig().with_overrides(**overrides)  # refuse fields or values a run could not start with
    st.session_state[DATA_KEY] = dict(overrides)


RUN_REFUSED = "The link named a run outside this app's runs folder; it was ignored."


def current_run() -> str | None:
    """The run the URL names (?run=), if it lies strictly inside the runs root (engine.runs.
    inside_runs_root: symbolic links resolved; NUL bytes, absurd lengths and the root itself refused).
    Anything else is dropped from the URL with a notice, so it never reaches the engine. Each page
    calls this first, near its title, so the notice is drawn at the top."""
    run = st.query_params.get("run")
    if run is None:
        return None
    try:
        inside_runs_root(run)
    except UserError:
        del st.query_params["run"]
        st.warning(RUN_REFUSED)
        return None
    return run


def set_current_run(run_dir: str) -> None:
    inside_runs_root(run_dir)  # the pages pass runs of the catalog or new ones under the runs root
    st.query_params["run"] = run_dir


ROUTED = "_presenter_routed"  # set by presenter_toggle(): the router draws the toggle for every page


def presenter_toggle() -> bool:
    """The router (app.py) draws the Presenter view toggle before it runs the page: a widget drawn there
    is one widget on every page, so the choice carries from page to page (a page's own widgets do not)."""
    st.session_state[ROUTED] = True
    return _toggle()


def presenter() -> bool:
    """Presenter view: controls hidden, live map and curves enlarged (a toggle in the sidebar). The
    router draws the toggle; a page run on its own (AppTest.from_file in the tests) draws it here."""
    if st.session_state.get(ROUTED):
        return bool(st.session_state["presenter"])
    return _toggle()


def _toggle() -> bool:
    if "presenter" not in st.session_state:
        st.session_state["presenter"] = st.query_params.get("presenter") == "1"
    on = st.sidebar.toggle("Presenter view", key="presenter",
                           help="hide the controls and enlarge the live map and curves, for demos")
    if on:
        st.query_params["presenter"] = "1"
    elif "presenter" in st.query_params:
        del st.query_params["presenter"]
    return on
