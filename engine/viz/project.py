"""Concept vectors (P, D) -> a 2-D map, stable from one frame of a live run to the next.

    proj = ConceptProjector("umap", seed=0).fit(concepts)   # the first frame
    proj.update(next_concepts)                               # every later frame: glides, never flips
    proj.embedding_                                          # (P, 2) float32, aligned to the last frame
    proj.transform(new_concepts)                             # new points placed on the current map
    proj.inverse_transform(grid_xy)                          # PCA only: the map's plane in concept space

Stability. `update` starts from the previous layout (UMAP `init=` previous embedding with a short
`refine_epochs` optimisation; t-SNE `init=` previous with no early exaggeration; PCA is refit) and
then aligns the result to the previous frame by orthogonal Procrustes: rotation or reflection,
translation and, for UMAP and t-SNE, a uniform scale. The scale is the one that keeps the RMS
radius of the layout (not the least-squares scale, which multiplies every frame by the frames'
correlation and so shrinks a long run towards a point). PCA keeps its scale: its coordinates are
distances in concept space, and the clusters' growth during training is worth seeing.
After alignment PCA's axes are no longer PC1/PC2, but the map is still an isometric picture of
the PCA plane, and `inverse_transform` undoes the alignment exactly.

UMAP warm-up. `import umap` costs 1.5-2 s and the first fit in a process JIT-compiles for about
10 s (1 s once an earlier process has cached the code: engine.viz.umap_import), so UMAP is never imported
at module import: `start_umap_warmup()` imports it and runs a tiny fit and transform on a daemon
thread. Until `umap_status() == "ready"`, a projector asked for UMAP
fits with PCA and says so in `note_` (and starts the warm-up if nobody did); the next
`fit`/`update` after that switches to UMAP, which is a new layout and is said in `note_` (an
`update` starts UMAP from the PCA layout and aligns the result to it, a `fit` of as many points
aligns its fresh layout to it, so points keep their rough place and the picture never flips).

Speed. UMAP is given precomputed distances and neighbours (see `_umap_fit`: umap's own path for
small data is ~10 s per refit of 2,000 points with sklearn 1.9), and a warm-started refit uses a
learning rate of 0.1 instead of 1.0 (REFINE_LEARNING_RATE: half the frame-to-frame movement at the
same trustworthiness). Measured numbers: engine/bench/projection.py.

Projectors are per-view objects and not thread-safe themselves; the warm-up state is
module-global and guarded by a lock.
"""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np
from sklearn.decomposition import PCA

from engine.viz.umap_import import import_umap

METHODS = ("umap", "pca", "tsne")
# UMAP's learning rate for a warm-started refit (umap's default, 1.0, is for a layout from scratch):
# on a real run's snapshots, 0.1 halved the frame-to-frame movement and the jitter of refitting
# unchanged concepts, at the same trustworthiness as independent fits (engine.bench.projection).
REFINE_LEARNING_RATE = 0.1
# UMAP epochs of a warm-started refit: each live map refits at every snapshot, in the server beside the
# training. On 150 drifting points, 50 kept the trustworthiness of 100 (0.897 against 0.896; fresh fits
# 0.891) in 26 ms against 45; 30 lost it (0.868). `python -m engine bench projection --points 150`.
REFINE_EPOCHS = 50

# ----------------------------------------------------------------------------------------------
# UMAP warm-up (module-global, lock-guarded)
# ----------------------------------------------------------------------------------------------
_lock = threading.Lock()
_ready_event = threading.Event()  # set when the warm-up ends, ready or failed
_state = "cold"  # "cold" | "warming" | "ready" | "failed"
_error: str | None = None
_thread: threading.Thread | None = None
_warmup_seconds: float | None = None
UMAP_WARMING = "UMAP is getting ready"  # in a map's note while the warm-up runs (bench live --browser waits it out)


def umap_status() -> str:
    """"cold" (nothing started), "warming" (importing/compiling on a background thread), "ready",
    or "failed" (umap could not be imported or run: see `umap_error()`; projectors stay on PCA)."""
    with _lock:
        return _state


def umap_error() -> str | None:
    with _lock:
        return _error


def umap_warmup_seconds() -> float | None:
    """How long the warm-up took (None until it ended)."""
    with _lock:
        return _warmup_seconds


def _warmup() -> None:
    global _state, _error, _warmup_seconds
    t0 = time.perf_counter()
    try:
        import_umap()  # seconds: numba, pynndescent, sklearn
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 8)).astype(np.float32)
        model = _umap_fit(x, n_neighbors=8, min_dist=0.1, seed=0, init=None, n_epochs=20)  # compiles fit
        _umap_transform(model, x, x[:4] + 0.01)  # and transform
        _umap_fit(x, n_neighbors=8, min_dist=0.1, seed=0, init=model.embedding_, n_epochs=5)  # and init=
        with _lock:
            _state, _warmup_seconds = "ready", time.perf_counter() - t0
    except BaseException as e:  # noqa: BLE001 - reported through umap_status()/umap_error()
        with _lock:
            _state, _error, _warmup_seconds = "failed", f"{type(e).__name__}: {e}", time.perf_counter() - t0
    finally:
        _ready_event.set()


def start_umap_warmup() -> None:
    """Import umap and compile its fit on a daemon thread; returns at once. Idempotent."""
    global _state, _thread
    with _lock:
        if _state != "cold":
            return
        _state = "warming"
        _thread = threading.Thread(target=_warmup, name="umap-warmup", daemon=True)
        _thread.start()


def wait_for_umap(timeout: float | None = None) -> bool:
    """Start the warm-up if needed and wait for it (up to `timeout` s). True when UMAP is ready."""
    start_umap_warmup()
    _ready_event.wait(timeout)
    return umap_status() == "ready"


# ----------------------------------------------------------------------------------------------
# Alignment and displacement
# ----------------------------------------------------------------------------------------------
def rms_radius(y: np.ndarray) -> float:
    c = y - y.mean(0)
    return float(np.sqrt((c * c).sum(1).mean()))


def procrustes_transform(Y: np.ndarray, ref: np.ndarray, scale: bool = True) -> tuple[np.ndarray, float, np.ndarray]:
    """(R, s, t) such that s * Y @ R + t best matches ref: R orthogonal (rotation or reflection),
    t a translation, s uniform and chosen to give the result ref's RMS radius (1.0 if not `scale`).
    An exactly similar Y is mapped onto ref exactly."""
    Y = np.asarray(Y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if Y.shape != ref.shape:
        raise ValueError(f"procrustes: shapes differ {Y.shape} vs {ref.shape}")
    mu_y, mu_r = Y.mean(0), ref.mean(0)
    yc, rc = Y - mu_y, ref - mu_r
    u, _, vt = np.linalg.svd(yc.T @ rc)
    R = u @ vt  # (2, 2): maximises trace(R^T Yc^T Rc) over orthogonal matrices
    ny, nr = rms_radius(Y), rms_radius(ref)
    s = nr / ny if scale and ny > 0 else 1.0
    t = mu_r - s * mu_y @ R
    return R, float(s), t


def procrustes_align(Y: np.ndarray, ref: np.ndarray, scale: bool = True) -> np.ndarray:
    """Y rotated/reflected, scaled uniformly and translated onto ref (same shape), as float32."""
    R, s, t = procrustes_transform(Y, ref, scale)
    return (s * np.asarray(Y, dtype=np.float64) @ R + t).astype(np.float32)


def frame_displacement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance a point moves from frame a to frame b, in units of b's RMS radius."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    r = rms_radius(b)
    return float(np.linalg.norm(a - b, axis=1).mean() / r) if r > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# The projector
# ----------------------------------------------------------------------------------------------
class ConceptProjector:
    """Concepts (P, D) to a 2-D map; see the module docstring.

    Fitted attributes: embedding_ (P, 2) float32; method_ ("umap" | "pca" | "tsne": what was
    actually used, PCA while UMAP warms up); note_ (one sentence for the UI, "" if nothing to say);
    n_updates_ (update calls since the last fit).
    """

    def __init__(self, method: str = "umap", seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
                 refine_epochs: int = REFINE_EPOCHS, align: bool = True, refine_learning_rate: float = REFINE_LEARNING_RATE):
        self.method = method
        self.seed = seed
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.refine_epochs = refine_epochs
        self.align = align
        self.refine_learning_rate = refine_learning_rate

    # --- public API -------------------------------------------------------------------------
    def fit(self, X: np.ndarray) -> ConceptProjector:
        """A fresh layout of X (P, D)."""
        X = self._check(X)
        previous = getattr(self, "method_", None)
        shown = getattr(self, "embedding_", None)
        method, note = self._resolve()
        raw = self._fit_raw(X, method, init=None)
        affine = (np.eye(2), 1.0, np.zeros(2))
        if previous == "pca" and method == "umap":
            note = "UMAP is ready: switched from PCA (a new layout)"
            if self.align and shown is not None and len(shown) == len(X):  # turned onto the PCA map on screen
                affine = procrustes_transform(raw, shown)
        self._set(X, method, raw, affine=affine)
        self.note_ = note
        self.n_updates_ = 0
        return self

    def update(self, X: np.ndarray) -> ConceptProjector:
        """The next frame of the same points (new concepts): starts from the current layout and is
        aligned to it. Falls back to `fit` when nothing was fitted or the number of points changed."""
        X = self._check(X)
        if not hasattr(self, "embedding_") or len(X) != len(self.embedding_):
            return self.fit(X)
        prev = self.embedding_
        method, note = self._resolve()
        switched = method != self.method_
        if method == "umap":
            # from the current layout; a switch from PCA gets a full optimisation (default epochs)
            raw = self._fit_raw(X, "umap", init=prev, n_epochs=None if switched else self.refine_epochs,
                                learning_rate=1.0 if switched else self.refine_learning_rate)
        elif method == "tsne":
            raw = self._fit_raw(X, "tsne", init=prev, refine=True)
        else:
            raw = self._fit_raw(X, "pca", init=None)
        if self.align:
            affine = procrustes_transform(raw, prev, scale=method != "pca")
        else:
            affine = (np.eye(2), 1.0, np.zeros(2))
        self._set(X, method, raw, affine)
        if switched:  # only PCA (UMAP warming up) -> UMAP (ready) can happen
            note = "UMAP is ready: switched from PCA, starting from the PCA layout (the layout changes once)"
        self.note_ = note
        self.n_updates_ += 1
        return self

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).embedding_

    def transform(self, X_new: np.ndarray) -> np.ndarray:
        """New concepts (M, D) placed on the current map (M, 2); fitted points do not move.

        UMAP: its own transform (new points are optimised against the fitted points, which stay
        fixed). PCA: the projection. t-SNE has no transform: each new point goes to the
        distance-weighted mean position of its k = 5 nearest fitted points in concept space (an
        approximation: it can only land inside the convex hull of existing points)."""
        self._check_fitted()
        X_new = np.asarray(X_new, dtype=np.float32)
        if X_new.ndim != 2 or X_new.shape[1] != self.X_.shape[1]:
            raise ValueError(f"transform: expected (M, {self.X_.shape[1]}) concepts, got {X_new.shape}")
        if len(X_new) == 0:
            return np.zeros((0, 2), np.float32)
        if self.method_ == "tsne":
            return _knn_interpolate(self.X_, self.embedding_, X_new, k=5)
        if self.method_ == "pca":
            raw = self._model.transform(X_new)
        else:
            raw = _umap_transform(self._model, self.X_, X_new)
        R, s, t = self._affine
        return (s * np.asarray(raw, np.float64) @ R + t).astype(np.float32)

    def inverse_transform(self, grid_xy: np.ndarray) -> np.ndarray:
        """Map points (G, 2) -> concepts (G, D): exact for PCA (the PCA plane through the concepts'
        mean, with the alignment undone). UMAP's inverse is approximate and ~9 s for a 60x60 grid,
        t-SNE has none: both raise (regions use engine.viz.regions.neighbour_regions there)."""
        self._check_fitted()
        if self.method_ != "pca":
            raise NotImplementedError(f"inverse_transform is exact for PCA only (this map is {self.method_}); "
                                      "use engine.viz.regions.neighbour_regions for approximate regions")
        R, s, t = self._affine
        raw = (np.asarray(grid_xy, np.float64) - t) @ R.T / s  # R orthogonal: R^-1 = R^T
        return self._model.inverse_transform(raw).astype(np.float32)

    # --- internals --------------------------------------------------------------------------
    def _check(self, X) -> np.ndarray:
        if self.method not in METHODS:
            raise ValueError(f"unknown projection method {self.method!r}: choose one of {', '.join(METHODS)}")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) < 3:
            raise ValueError(f"need at least 3 concept vectors (P, D) to project, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("concepts contain NaN or infinity (did training diverge?)")
        return X

    def _check_fitted(self) -> None:
        if not hasattr(self, "embedding_"):
            raise RuntimeError("ConceptProjector is not fitted: call fit(X) first")

    def _resolve(self) -> tuple[str, str]:
        """The method to use now and the note that goes with it."""
        if self.method != "umap":
            return self.method, ""
        status = umap_status()
        if status == "cold":  # nobody started it: start it now, so that the note below is true
            start_umap_warmup()
            status = umap_status()
        if status == "ready":
            return "umap", ""
        if status == "failed":
            return "pca", f"UMAP is unavailable ({umap_error()}): showing PCA"
        return "pca", f"PCA for now: {UMAP_WARMING}"  # seconds (~10 on a first start)

    def _fit_raw(self, X: np.ndarray, method: str, init: np.ndarray | None, n_epochs: int | None = None,
                 refine: bool = False, learning_rate: float = 1.0) -> np.ndarray:
        n = len(X)
        if method == "pca":
            self._model = PCA(n_components=2, random_state=self.seed).fit(X)
            return self._model.transform(X)
        if method == "umap":
            self._model = _umap_fit(X, n_neighbors=self.n_neighbors, min_dist=self.min_dist, seed=self.seed,
                                    init=init, n_epochs=n_epochs, learning_rate=learning_rate)
            return self._model.embedding_
        # t-SNE
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(1.0, (n - 1) / 3.0)))
        if init is not None and refine:
            tsne = TSNE(n_components=2, perplexity=perplexity, init=np.asarray(init, np.float32),
                        early_exaggeration=1.0, max_iter=max(250, self.refine_epochs), random_state=self.seed)
        else:
            tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=self.seed)
        self._model = tsne
        return tsne.fit_transform(X)

    def _set(self, X, method, raw, affine) -> None:
        R, s, t = affine
        self.X_ = X
        self.method_ = method
        self._affine = (np.asarray(R, np.float64), float(s), np.asarray(t, np.float64))
        self.embedding_ = (s * np.asarray(raw, np.float64) @ R + t).astype(np.float32)


# UMAP through precomputed distances. umap-learn computes the exact neighbours of small data sets
# (< 4096 points) with sklearn's pairwise_distances and a numba metric, which sklearn 1.9 calls once
# per pair from Python: ~10 s for 2,000 points, on every refit. We give it the dense Euclidean
# distances (one matrix product) and the k nearest neighbours (argpartition) instead: a
# warm-started refit of 2,000 points drops to ~0.4 s, and nothing new needs compiling (NN-descent,
# umap's other path, compiles for tens of seconds on first use).
DENSE_LIMIT = 8000  # above this many points (P^2 distances), umap's own NN-descent path is used


_EXPECTED_UMAP_WARNINGS = (  # what this module's way of calling umap always triggers
    "using precomputed metric; inverse_transform will be unavailable",
    "n_jobs value .* overridden to 1 by setting random_state",
    r"precomputed_knn\[2\] \(knn_search_index\) is not an NNDescent object",
    "Transforming new data with precomputed metric",
)


def _quiet_umap() -> None:
    """Silence umap's expected warnings with targeted process-wide filters. Not
    warnings.catch_warnings(): it swaps the global filter list and is not thread-safe (a warm-up
    thread and a view's thread interleaving can leave every warning silenced for good)."""
    for message in _EXPECTED_UMAP_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module="umap")


def _distances(A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances (len(A), len(B)) as float32 (sklearn: one matrix product)."""
    from sklearn.metrics import pairwise_distances

    D = pairwise_distances(A, B, n_jobs=1).astype(np.float32)
    if B is None:
        np.fill_diagonal(D, 0.0)
    return D


def _nearest(D: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances (n, k) of each row's k smallest entries, nearest first."""
    idx = np.argpartition(D, k - 1, axis=1)[:, :k]
    dist = np.take_along_axis(D, idx, 1)
    order = np.argsort(dist, 1, kind="stable")
    return np.take_along_axis(idx, order, 1).astype(np.int32), np.take_along_axis(dist, order, 1)


def _umap_fit(X: np.ndarray, n_neighbors: int, min_dist: float, seed: int, init: np.ndarray | None,
              n_epochs: int | None, learning_rate: float = 1.0):
    umap = import_umap()  # already imported by the warm-up when called from a projector

    n = len(X)
    k = max(2, min(n_neighbors, n - 1))
    kwargs = {"n_neighbors": k, "min_dist": min_dist, "random_state": seed, "n_epochs": n_epochs}
    if init is not None:
        kwargs["init"] = np.asarray(init, np.float32)  # umap rescales it into [0, 10]^2
        kwargs["learning_rate"] = learning_rate
    elif n <= k + 1:
        kwargs["init"] = "random"  # the spectral init needs more points than neighbours
    _quiet_umap()
    if n > DENSE_LIMIT:
        return umap.UMAP(**kwargs).fit(X)
    D = _distances(X)
    return umap.UMAP(metric="precomputed", precomputed_knn=_nearest(D, k), **kwargs).fit(D)


def _umap_transform(model, X_fit: np.ndarray, X_new: np.ndarray) -> np.ndarray:
    """umap's own transform (new points optimised against the fixed fitted layout). A model fitted
    on precomputed distances takes the distances from the new points to the fitted ones; umap
    refuses that when the kNN were precomputed without a search index, although its precomputed
    branch needs no index (it sorts the given rows), so the empty index attribute is dropped."""
    _quiet_umap()
    if getattr(model, "metric", None) != "precomputed":
        return model.transform(X_new)
    if hasattr(model, "_knn_search_index") and model._knn_search_index is None:
        del model._knn_search_index
    return model.transform(_distances(X_new, X_fit))


def _knn_interpolate(X_fit: np.ndarray, Y_fit: np.ndarray, X_new: np.ndarray, k: int = 5) -> np.ndarray:
    """Each new point at the inverse-distance-weighted mean map position of its k nearest fitted
    points in concept space (an exact duplicate of a fitted point lands on it)."""
    from scipy.spatial import cKDTree

    k = min(k, len(X_fit))
    dist, idx = cKDTree(X_fit).query(X_new, k=k)
    dist, idx = dist.reshape(len(X_new), k), idx.reshape(len(X_new), k)
    w = 1.0 / np.maximum(dist, 1e-12)
    w /= w.sum(1, keepdims=True)
    return (w[..., None] * Y_fit[idx]).sum(1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# A whole run as one moving picture
# ----------------------------------------------------------------------------------------------
def stable_layouts(frames: list[np.ndarray], method: str = "umap", seed: int = 0, backwards: bool = True,
                   **kwargs) -> list[np.ndarray]:
    """Layouts (P, 2) of every frame of a run (same points), as one smoothly moving sequence: the
    batch form of the replay that engine.viz.live.LiveMap lays out frame by frame for the app and the
    report (tests hold the two equal), kept for bench projection, which compares both directions.
    With `backwards` (the default) the LAST frame is fitted from scratch and the others are updates
    going back in time: the trained, most structured frame gets the best layout and earlier frames
    morph out of it (see engine.bench.projection for the measurement).
    A "umap" request waits for nothing: if UMAP is not ready it is PCA throughout."""
    if not frames:
        return []
    if method == "umap" and umap_status() != "ready":
        method = "pca"  # one method for the whole sequence, never a switch half-way
    order = list(range(len(frames)))[::-1] if backwards else list(range(len(frames)))
    proj = ConceptProjector(method, seed=seed, **kwargs).fit(frames[order[0]])
    out: list[np.ndarray | None] = [None] * len(frames)
    out[order[0]] = proj.embedding_
    for i in order[1:]:
        out[i] = proj.update(frames[i]).embedding_
    return out  # type: ignore[return-value]
