"""Figures: pure functions from run data to plotly figures (no UI calls).

One module per chart family, one shared look (style.py):

  concept_map(xy, probe, snapshot=None, color_by="class", regions=None, title=None,
              uirevision="concept-map", method_note=None)           concept_map.py
  concept_map_pca(probe, snapshot, title=None, **concept_map_kw)     concept_map.py
  waiting_map(message, title="Concept space", height=560)            concept_map.py
  replay(frames, probe, snapshots=None, color_by="class", regions=None, title=None,
         uirevision="replay")                                        replay.py
  training_curves(metrics, twin_metrics=None, title="Training")     curves.py
  adaptation_curves(curves, metric="accuracy", title=None)           curves.py
  live_adaptation_curves(records, twin_records=None, title=...)      adaptation_live.py
  episode_view(detail, title=None)                                   episode.py
  confusion_matrix(matrix, class_names, title=None)                  confusion.py
  thumbnail_grid(images, captions=None, columns=8, title=None)       thumbnails.py
  nearest_neighbours(concepts, index, k=8) -> rows (a data helper)   thumbnails.py

Every figure has a stable layout.uirevision (zoom and selections survive live refreshes), and
bad input raises ValueError saying what is wrong. Concept-map points are SVG
(go.Scatter) up to concept_map.WEBGL_FROM points, WebGL (go.Scattergl) above.
"""
from engine.viz.charts.adaptation_live import live_adaptation_curves
from engine.viz.charts.concept_map import COLOR_BY, concept_map, concept_map_pca, pca_2d, waiting_map
from engine.viz.charts.confusion import confusion_matrix
from engine.viz.charts.curves import adaptation_curves, smooth, training_curves
from engine.viz.charts.episode import episode_view
from engine.viz.charts.replay import replay
from engine.viz.charts.thumbnails import nearest_neighbours, thumbnail_grid, tile

__all__ = ["COLOR_BY", "adaptation_curves", "concept_map", "concept_map_pca", "confusion_matrix", "episode_view",
           "live_adaptation_curves", "nearest_neighbours", "pca_2d", "replay", "smooth", "thumbnail_grid", "tile", "training_curves", "waiting_map"]
