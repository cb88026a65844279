"""Small helpers every page uses."""
from __future__ import annotations

import streamlit as st

from engine.config import TrainConfig
from engine.errors import UserError
from engine.runs import inside_runs_root
from engine.services.datasets import load_choice, save_choice

DATA_KEY = "data_overrides"


DATA_ID_KEY = "_data_choice"  # the id of the choice in the link (?data=ID), kept like the run (keep_run)


def data_overrides() -> dict:
    """The dataset choice made on the Data page (TrainConfig fields), or {} for the built-in glyphs.
    A new session (a refresh) finds it again through the link's ?data=ID (services.datasets.save_choice);
    an id that names no readable, valid choice is dropped from the link."""
    if DATA_KEY not in st.session_state and (choice_id := st.query_params.get("data")):
        choice = load_choice(choice_id)
        try:
            if choice is None:
                raise UserError("no such choice")
            TrainConfig().with_overrides(**choice)
        except (UserError, TypeError):
            del st.query_params["data"]
            return {}
        st.session_state[DATA_KEY], st.session_state[DATA_ID_KEY] = choice, choice_id
    return dict(st.session_state.get(DATA_KEY, {}))


def set_data_overrides(overrides: dict) -> None:
    TrainConfig().with_overrides(**overrides)  # refuse fields or values a run could not start with
    st.session_state[DATA_KEY] = dict(overrides)
    try:
        st.session_state[DATA_ID_KEY] = st.query_params["data"] = save_choice(overrides)
    except OSError:  # not kept for a refresh; this session still has it
        st.session_state.pop(DATA_ID_KEY, None)


RUN_REFUSED = "The link named a run outside this app's runs folder; it was ignored."
RUN_KEY = "_current_run"  # the run this session views, so it survives links that drop ?run= (keep_run)


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
        st.session_state.pop(RUN_KEY, None)
        st.warning(RUN_REFUSED)
        return None
    st.session_state[RUN_KEY] = run
    return run


def set_current_run(run_dir: str) -> None:
    inside_runs_root(run_dir)  # the pages pass runs of the catalog or new ones under the runs root
    st.query_params["run"] = run_dir
    st.session_state[RUN_KEY] = run_dir


def clear_current_run() -> None:
    """View no run (e.g. the one viewed was deleted): from the URL and from this session."""
    st.query_params.pop("run", None)
    st.session_state.pop(RUN_KEY, None)


def keep_run() -> None:
    """The router (app.py) calls this before each page: the sidebar's page links carry no ?run=, so
    the run this session last viewed is written back into the URL, and the page (and a refresh, and a
    copied link) shows it again. The page still reads it through current_run(), which checks it."""
    if "run" not in st.query_params and st.session_state.get(RUN_KEY):
        st.query_params["run"] = st.session_state[RUN_KEY]
    if "data" not in st.query_params and st.session_state.get(DATA_ID_KEY):  # the data chosen, likewise
        st.query_params["data"] = st.session_state[DATA_ID_KEY]


# Presenter (kiosk) view: no Streamlit chrome (toolbar, Deploy, menu, the running-man status, the
# coloured decoration line) and little padding, so the live view fills a projector's screen. The sidebar
# starts folded (app.py); its small ">" stays at the top left, to fold it out and turn the view off.
KIOSK_CSS = """<style>
[data-testid="stToolbar"], [data-testid="stDecoration"], [data-testid="stStatusWidget"],
[data-testid="stAppDeployButton"], [data-testid="stMainMenu"] {display: none !important;}
[data-testid="stHeader"] {background: transparent; height: 2.25rem;}
[data-testid="stMainBlockContainer"] {padding-top: 0.75rem; padding-bottom: 0.5rem;}
</style>"""


def presenter_from_url() -> bool:
    """Presenter view as the session or the link (?presenter=1) has it, before the toggle is drawn."""
    if "presenter" in st.session_state:
        return bool(st.session_state["presenter"])
    return st.query_params.get("presenter") == "1"


# every page: less blank space above the title (Streamlit leaves 6rem), so a run's live view starts higher;
# no Streamlit "Running… Stop" status at the top right: the live view reruns itself every 2 s, and a
# newcomer took that Stop for the training's (it stops only the page's script, not the run)
PAGE_CSS = """<style>[data-testid="stMainBlockContainer"] {padding-top: 3.5rem;}
[data-testid="stStatusWidget"] {display: none !important;}</style>"""


def presenter_chrome(on: bool) -> None:
    """In presenter view, hide Streamlit's own chrome (the router calls this on every page)."""
    st.html(KIOSK_CSS if on else PAGE_CSS)


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
