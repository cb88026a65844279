"""umap, imported with its numba functions set to keep their compiled code on disk
(engine.viz.project's warm-up and fits import it through `import_umap`)."""
from __future__ import annotations

import sys
import threading
import types
from collections import Counter

_cache_lock = threading.Lock()
_umap_cached = False  # import_umap has set umap's numba functions to cache their code


def import_umap():
    """umap, its numba functions set to keep their compiled code on disk. umap-learn compiles them
    afresh in every process (unlike pynndescent, which caches its own): ~9 s of a core at each server
    start, taken from a demo that starts at once (bench live --browser). With numba's cache (next to
    umap's files, or numba's user-wide folder where those are read-only) a later process loads them:
    `python -m engine bench projection --smoke` read umap_warmup_s 9.6 s, then 1.3 s."""
    global _umap_cached
    import umap
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    with _cache_lock:
        if _umap_cached:
            return umap
        _umap_cached = True
        modules = [m for name, m in list(sys.modules.items()) if name == "umap" or name.startswith("umap.")]
        jitted = {id(f): f for m in modules for f in vars(m).values() if isinstance(f, Dispatcher)}  # one each,
        shared = Counter(f.py_func for f in jitted.values())  # though several modules import it
        for module in modules:
            for attr, f in list(vars(module).items()):
                if not isinstance(f, Dispatcher) or not isinstance(f._cache, NullCache):
                    continue
                if shared[f.py_func] > 1:
                    if f.targetoptions.get("parallel"):
                        continue  # umap's parallel layout epochs (not reproducible: unused here) compile as before
                    f = renamed_jit(f)
                    setattr(module, attr, f)
                f.enable_caching()  # before its first compilation: what numba.njit(cache=True) does
    return umap


def renamed_jit(f):
    """A function jitted twice (umap's serial and parallel layout epochs: ~7 s of the compilation)
    would share one cache file, as numba names it by the Python function and not by its options, and
    a serial fit could then load parallel, nondeterministic code: the serial one is jitted again from
    a copy of the function under a name of its own."""
    import numba

    py = f.py_func
    copy = types.FunctionType(py.__code__, py.__globals__, py.__name__, py.__defaults__, py.__closure__)
    copy.__qualname__ = f"{py.__qualname__}_serial"
    options = {k: v for k, v in f.targetoptions.items() if k != "nopython"}
    return numba.njit(copy, **options)
