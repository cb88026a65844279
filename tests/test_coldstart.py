"""A fast cold start: built-in data prefetched at server start and kept on disk."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import engine.data.glyphs as glyphs
from engine.data.imageset import Preprocess
from engine.data.sources import clear_cache, diskcache, load_imageset, prefetch

SPEC = "glyphs:classes=12,drawings=3,seed=5"
OPTIONS = {"classes": 12, "drawings": 3, "seed": 5}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh disk cache folder and an empty in-process cache."""
    monkeypatch.setenv("CONCEPTSCAPE_CACHE", str(tmp_path / "cache"))
    clear_cache()
    yield tmp_path / "cache"
    clear_cache()


@pytest.fixture
def calls(monkeypatch):
    """Counts calls of the glyph generator (a slow one: 0.2 s, so loads can overlap)."""
    real, count = glyphs.generate_glyphs, []

    def counted(*a, **k):
        count.append(1)
        time.sleep(0.2)
        return real(*a, **k)

    monkeypatch.setattr(glyphs, "generate_glyphs", counted)
    return count


def forbid_generation(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the glyph generator ran at click time")

    monkeypatch.setattr(glyphs, "generate_glyphs", fail)


def test_prefetch_makes_the_click_time_load_a_cache_hit(cache, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_CACHE", "off")  # the in-process cache alone
    prefetch(SPEC, Preprocess()).join(timeout=60)
    forbid_generation(monkeypatch)
    data = load_imageset(SPEC, Preprocess())
    assert data.num_classes == 12 and len(data.images) == 36 and data.source == SPEC


def test_a_load_while_prefetch_draws_waits_for_it(cache, calls, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_CACHE", "off")
    thread = prefetch(SPEC)
    time.sleep(0.05)  # the prefetch is drawing now
    results = []
    loaders = [threading.Thread(target=lambda: results.append(load_imageset(SPEC))) for _ in range(2)]
    for t in loaders:
        t.start()
    for t in [thread, *loaders]:
        t.join(timeout=60)
    assert len(calls) == 1 and len(results) == 2
    assert results[0].images is results[1].images  # the very arrays the prefetch cached


def test_prefetch_of_a_bad_spec_is_quiet_and_the_load_reports():
    prefetch("glyphs:colours=3").join(timeout=10)
    with pytest.raises(Exception, match="unknown glyphs option"):
        load_imageset("glyphs:colours=3")


def test_prepare_server_warms_the_forkserver_then_the_data_then_umap(cache, monkeypatch):
    """One after the other, so that on 2 cores the forkserver's imports (what Start demo waits for)
    do not race UMAP's compilation."""
    from engine import config
    from engine.data import sources
    from engine.services import training
    from engine.train import worker
    from engine.viz import project

    done = []
    load = sources.load_imageset
    monkeypatch.setattr(worker, "warm_up", lambda: done.append("forkserver"))
    monkeypatch.setattr(sources, "load_imageset", lambda *a, **k: done.append("data") or load(*a, **k))
    monkeypatch.setattr(project, "start_umap_warmup", lambda: done.append("umap"))
    monkeypatch.setitem(config.PRESETS, "demo", dict(config.PRESETS["demo"], dataset=SPEC))
    training._prepare_server()
    assert done[0] == "forkserver" and done[-1] == "umap" and "data" in done
    forbid_generation(monkeypatch)
    clear_cache()  # a new process: the disk cache alone
    assert load_imageset(SPEC).num_classes == 12
    assert list(cache.glob("glyphs-*.npz"))


def test_disk_cache_round_trips_without_drawing(cache, calls, monkeypatch):
    first = load_imageset(SPEC)
    assert len(calls) == 1 and len(list(cache.glob("glyphs-*.npz"))) == 1
    clear_cache()
    forbid_generation(monkeypatch)
    again = load_imageset(SPEC)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert again.class_names == first.class_names and again.groups == first.groups
    assert again.inverted == first.inverted and again.source == SPEC
    assert not again.images.flags.writeable  # shared with the in-process cache: read-only


def test_disk_cache_key_is_options_preprocessing_and_generator_version(monkeypatch):
    key = diskcache.glyph_key(OPTIONS, Preprocess())
    assert key == diskcache.glyph_key(dict(reversed(OPTIONS.items())), Preprocess())  # order does not matter
    assert key != diskcache.glyph_key({**OPTIONS, "seed": 6}, Preprocess())
    assert key != diskcache.glyph_key(OPTIONS, Preprocess(image_size=32))
    assert key != diskcache.glyph_key(OPTIONS, Preprocess(channels=3))
    monkeypatch.setattr(diskcache, "_version", "a-newer-generator")
    assert key != diskcache.glyph_key(OPTIONS, Preprocess())


def test_a_new_generator_version_draws_again(cache, calls, monkeypatch):
    load_imageset(SPEC)
    clear_cache()
    monkeypatch.setattr(diskcache, "_version", "a-newer-generator")
    load_imageset(SPEC)
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "wrong-key"])
def test_a_damaged_entry_is_regenerated(cache, calls, damage):
    first = load_imageset(SPEC)
    clear_cache()
    (path,) = cache.glob("glyphs-*.npz")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":  # a flipped byte in the pixels: the zip's CRC no longer matches
        i = len(raw) // 2  # the pixels are most of the file
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
    elif damage == "garbage":
        path.write_bytes(b"not a zip at all")
    else:  # another request's file under this name
        np.savez(path, key=np.asarray("glyphs-other"), images=first.images, labels=first.labels,
                 class_names=np.asarray(first.class_names), groups=np.asarray(first.groups), inverted=False)
    again = load_imageset(SPEC)
    assert len(calls) == 2  # drawn again
    np.testing.assert_array_equal(first.images, again.images)
    clear_cache()
    assert diskcache.read(path.stem) is not None  # and the entry rewritten whole


def test_cache_off_and_large_sets_write_nothing(cache, monkeypatch):
    monkeypatch.setattr(diskcache, "MAX_CACHED_BYTES", 100)
    load_imageset(SPEC)
    assert not cache.exists() or not list(cache.glob("*.npz"))
    clear_cache()
    monkeypatch.setenv("CONCEPTSCAPE_CACHE", "off")
    assert diskcache.cache_dir() is None
    load_imageset("glyphs:classes=5,drawings=2")
    assert not cache.exists() or not list(cache.glob("*.npz"))
