"""Streamlit pieces shared by the pages (the engine never imports streamlit; this package does).

Session contract between pages:
  st.session_state["data_overrides"]: dict of TrainConfig fields chosen on the Data page
      (dataset, external, image_size, val_split, test_split, external_split, train_limit,
      rotations...). The Train page starts runs from preset + these overrides; absent = built-in glyphs.
  st.query_params["run"]: the run directory being viewed, so a refresh comes back to it. Read only through
      ui.common.current_run(), which drops (with a notice) anything not strictly inside the runs root.
      The session remembers it (st.session_state["_current_run"]) and the router (app.py, keep_run)
      writes it back into the URL before each page, since the sidebar's page links carry no ?run=.
  st.session_state["presenter"]: presenter view on/off (also st.query_params["presenter"] == "1").
      The router (app.py) draws its toggle for every page and sets st.session_state["_presenter_routed"];
      in presenter view it folds the sidebar and hides Streamlit's chrome (ui.common.KIOSK_CSS).
"""
