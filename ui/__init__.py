"""Streamlit pieces shared by the pages (the engine never imports streamlit; this package does).

Session contract between pages:
  st.session_state["data_overrides"]: dict of TrainConfig fields chosen on the Data page
      (dataset, external, image_size, val_split, test_split, external_split, train_limit,
      rotations...). The Train page starts runs from preset + these overrides; absent = built-in glyphs.
  st.query_params["run"]: the run directory being viewed, so a refresh comes back to it. Read only through
      ui.common.current_run(), which drops (with a notice) anything not strictly inside the runs root.
  st.session_state["presenter"]: presenter view on/off (also st.query_params["presenter"] == "1").
      The router (app.py) draws its toggle for every page and sets st.session_state["_presenter_routed"].
"""
