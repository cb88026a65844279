"""Conceptscape's entry point (`streamlit run app.py`): the router. It sets what every page shares,
then runs the page the URL names. The pages live in app_pages/, one file each. Not in pages/: with a
folder of that name beside app.py, Streamlit serves in its legacy mode (every file there a page, and
app.py one more, titled "app") until some session runs this file, e.g. when the first visitor after a
restart opens /Train."""
from __future__ import annotations

import streamlit as st

from engine.services.training import prepare_server
from ui.common import keep_run, presenter_chrome, presenter_from_url, presenter_toggle

# url_path is each page's URL (/Data, ...): links, bookmarks and the browser tests use them
PAGES = [
    st.Page("app_pages/0_Home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/1_Data.py", title="Data", icon=":material/dataset:", url_path="Data"),
    st.Page("app_pages/2_Train.py", title="Train", icon=":material/model_training:", url_path="Train"),
    st.Page("app_pages/3_Adapt.py", title="Adapt", icon=":material/tune:", url_path="Adapt"),
    st.Page("app_pages/4_Runs.py", title="Runs", icon=":material/folder_open:", url_path="Runs"),
]

page = st.navigation(PAGES)
keep_run()  # the sidebar's links drop ?run=: the run this session views is put back into the URL
kiosk = presenter_from_url()  # presenter view (?presenter=1 or the toggle): the sidebar starts folded
st.set_page_config(page_title="Conceptscape" if page.url_path == "" else f"{page.title} · Conceptscape",
                   layout="wide", initial_sidebar_state="collapsed" if kiosk else "auto")
prepare_server()  # on a background thread: the training processes' forkserver, the demo's data, then UMAP
presenter_chrome(presenter_toggle())  # the toggle, in the sidebar of every page; pages read ui.common.presenter()
page.run()
