"""Images as a tiled grid (one go.Image), and the nearest neighbours of a probe image in concept
space (the data behind "show me images like this one")."""
from __future__ import annotations

import base64
import io
import math

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from engine.viz.charts.style import MUTED, finish

GAP = 2  # px between tiles
GAP_VALUE = 236  # light grey: visible between dark (bright-ink-on-dark) and light images alike
TILE_PX = 84  # on-screen size of one tile, used for the default height


def grid_shape(m: int, columns: int) -> tuple[int, int]:
    """(rows, cols) of the grid for m images."""
    cols = max(1, min(columns, m))
    return math.ceil(m / cols) if m else 0, cols


def tile(images, columns: int = 8, gap: int = GAP, gap_value: int = GAP_VALUE) -> np.ndarray:
    """(M, H, W, C) uint8, C 1 or 3 (or (M, H, W) gray) -> one RGB image (rows*H + (rows-1)*gap,
    cols*W + (cols-1)*gap, 3); cells past the last image stay gap-coloured."""
    arr = _check_images(images)
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    m, h, w, _ = arr.shape
    if m == 0:
        return np.zeros((0, 0, 3), np.uint8)
    if arr.shape[3] == 1:
        arr = np.repeat(arr, 3, axis=3)
    rows, cols = grid_shape(m, int(columns))
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), gap_value, np.uint8)
    for i in range(m):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = arr[i]
    return out


def _check_images(images) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 3:  # (M, H, W) gray
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[3] not in (1, 3):
        raise ValueError(f"images must have shape (M, H, W, C) with C 1 or 3, got {np.shape(images)}")
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (as in probe.npz), got dtype {arr.dtype}")
    if arr.shape[0] and (arr.shape[1] == 0 or arr.shape[2] == 0):
        raise ValueError(f"images have an empty side: shape {arr.shape}")
    return arr


def thumbnail_grid(images, captions=None, columns: int = 8, title: str | None = None,
                   uirevision: str = "thumbnails", tile_px: int = TILE_PX) -> go.Figure:
    """The images tiled in a grid with `columns` columns; hovering a tile shows its caption (and
    its position in `images`, in customdata, for clicks). No images: an empty figure that says so."""
    arr = _check_images(images)
    m = arr.shape[0]
    if captions is not None:
        captions = [str(c) for c in captions]
        if len(captions) != m:
            raise ValueError(f"captions has {len(captions)} entries for {m} images")
    fig = go.Figure()
    if m == 0:
        finish(fig, title=title, uirevision=uirevision, height=160, margin=dict(l=8, r=8, t=48 if title else 8, b=8))
        fig.add_annotation(text="no images selected", x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                           font=dict(size=14, color=MUTED), name="empty")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return fig
    grid = tile(arr, columns)
    rows, cols = grid_shape(m, int(columns))
    h, w = arr.shape[1:3]
    # a PNG data URI: a fraction of the size of a raw pixel array, and sent once per refresh
    fig.add_trace(go.Image(source=png_data_uri(grid), x0=0, y0=0, dx=1, dy=1, hoverinfo="skip", name="images"))
    # hover and click targets: one invisible marker per tile centre (the image itself has one hover per pixel)
    idx = np.arange(m)
    r, c = np.divmod(idx, cols)
    fig.add_trace(go.Scatter(
        x=c * (w + GAP) + (w - 1) / 2, y=r * (h + GAP) + (h - 1) / 2, mode="markers", name="tiles",
        marker=dict(size=max(8, tile_px * 0.9), symbol="square", opacity=0), showlegend=False,
        customdata=idx, text=captions if captions is not None else [f"image {i + 1}" for i in idx],
        hovertemplate="%{text}<extra></extra>"))
    finish(fig, title=title, uirevision=uirevision, height=rows * tile_px * h // max(h, w) + (56 if title else 12),
           margin=dict(l=4, r=4, t=48 if title else 4, b=4))
    fig.update_xaxes(visible=False, range=[-0.5, grid.shape[1] - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[grid.shape[0] - 0.5, -0.5], scaleanchor="x", scaleratio=1,
                     constrain="domain")
    fig.update_layout(hovermode="closest", dragmode=False,
                      meta=dict(rows=rows, columns=cols, height=grid.shape[0], width=grid.shape[1]))
    return fig


def png_data_uri(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 -> 'data:image/png;base64,...' (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def nearest_neighbours(concepts, index: int, k: int = 8) -> np.ndarray:
    """Rows of the k probe images nearest to row `index` in concept space (Euclidean), nearest
    first, itself excluded; ties go to the lower row. Fewer than k when there are fewer rows."""
    z = np.asarray(concepts)
    if z.ndim != 2 or not np.issubdtype(z.dtype, np.number):
        raise ValueError(f"concepts must be a numeric (points, dims) array, got shape {z.shape} dtype {z.dtype}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise ValueError(f"index must be an integer row, got {index!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    n = len(z)
    if not -n <= index < n:
        raise ValueError(f"index {index} is out of range for {n} rows")
    index = int(index) % n
    z = z.astype(np.float64)
    d = ((z - z[index]) ** 2).sum(1)
    d[index] = np.inf
    order = np.argsort(d, kind="stable")
    return order[: min(int(k), n - 1)].astype(np.int64)
