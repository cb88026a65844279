"""A plotly chart whose points glide from one layout to the next: the live concept maps' element,
and (kept_chart, no glide) the live curves' too.

st.plotly_chart cannot glide (ui/live_maps.py says why: every changed figure is a new element and a
new plot). This custom component keeps one plot for the life of its key and is handed each new figure
as JSON; when the new figure has the same probe points in the same traces, its page
(glide_map_frontend/index.html) moves them there in a few interpolated frames, axis ranges too
unless the viewer zoomed, then draws the new figure in full. Box, lasso and click selections come
back as {"points": [{"customdata": [...]}, ...]}, what engine.viz.live.selected_rows reads.

Streamlit serves a component's files from one folder, and plotly.js ships inside the plotly package:
so the page and a copy of plotly.min.js are put together in a folder under the cache
(engine.data.sources.diskcache.cache_dir, else the system's temporary folder), named by a hash of
both, once per version.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import plotly
import streamlit.components.v1 as components

from engine.data.sources.diskcache import cache_dir

PAGE = Path(__file__).with_name("glide_map_frontend") / "index.html"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
_component = None


def component_folder() -> Path:
    """The folder Streamlit serves the component from: index.html and plotly.min.js side by side."""
    page = PAGE.read_bytes()
    tag = hashlib.sha256(page + plotly.__version__.encode()).hexdigest()[:12]
    root = (cache_dir() or Path(tempfile.gettempdir()) / "conceptscape") / "components"
    folder = root / f"glide-map-{tag}"
    if not (folder / "index.html").exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".glide-map-", dir=root))
        shutil.copyfile(PLOTLY_JS, staging / "plotly.min.js")
        (staging / "index.html").write_bytes(page)  # last: a folder with index.html is complete
        try:
            os.replace(staging, folder)
        except OSError:  # another server made it first
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def glide_chart(fig, *, key: str, height: int, config: dict | None = None, glide: bool = True,
                selectable: bool = True) -> dict | None:
    """Draw `fig` in the keyed component, as tall as the figure (its layout.height, else `height` px: a
    map with a region key is taller than asked); with `glide`, points it shares with the figure drawn
    before glide there. Returns the latest selection or click ({"points": [...]}) or None; always
    None unless `selectable` (a plot whose clicks mean nothing: clicking it reruns nothing)."""
    global _component
    if _component is None:
        _component = components.declare_component("glide_map", path=str(component_folder()))
    tall = int(fig.layout.height or height)
    return _component(spec=fig.to_json(), height=tall, config=config or {}, glide=glide, selectable=selectable,
                      key=key, default=None)


def kept_chart(fig, *, key: str, config: dict | None = None) -> None:
    """Draw `fig` (with a layout.height) in a plot kept for the life of `key` and redrawn in place
    (Plotly.react) when the figure changes: the live training and adaptation curves. st.plotly_chart
    makes a new element, and a new plot, for each changed figure (ui/live_maps.py): while a demo
    trains, the curves cost the browser about 0.1 of a core (bench live --browser, BENCHMARKS.md)."""
    glide_chart(fig, key=key, height=int(fig.layout.height), config=config, glide=False, selectable=False)
