"""Figures: what each chart draws (trace kinds, counts, names, colours, customdata, frames,
sliders, annotations), that bad input is refused with a clear message, and a concept map and
replay built from a real short run."""
from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from engine.viz.charts import (
    adaptation_curves,
    concept_map,
    concept_map_pca,
    confusion_matrix,
    episode_view,
    nearest_neighbours,
    replay,
    smooth,
    thumbnail_grid,
    tile,
    training_curves,
    waiting_map,
)
from engine.viz.charts.concept_map import WEBGL_FROM, ClassColors
from engine.viz.charts.style import (
    CORRECT,
    MAP_PAD,
    NEUTRAL,
    REGION_CAPTION,
    SPLIT_COLORS,
    SPLIT_SYMBOLS,
    WRONG,
    palette,
)
from engine.viz.regions import RegionGrid

SPLITS = ["meta-train", "meta-test", "external"]


# ------------------------------------------------------------------------------ synthetic inputs
def make_probe(per_class: int = 4, classes: int = 3, size: int = 8, channels: int = 1) -> dict:
    split, label, names, index = [], [], [], []
    for s, prefix in enumerate(("train", "test", "ext")):
        for c in range(classes):
            for j in range(per_class):
                split.append(s)
                label.append(c + (1 if s == 2 else 0))  # external labels 1..classes: not all of D's classes
                names.append(f"{prefix}-class-{c}")
                index.append(100 * s + 10 * c + j)
    p = len(split)
    rng = np.random.default_rng(0)
    return {"images": rng.integers(0, 256, (p, size, size, channels), dtype=np.uint8),
            "split": np.asarray(split, np.int8), "label": np.asarray(label, np.int64),
            "class_name": np.asarray(names), "image_index": np.asarray(index, np.int64),
            "external_classes": np.asarray([f"ext-class-{c - 1}" for c in range(classes + 2)])}


def make_snapshot(probe: dict, step: int = 10, seed: int = 0, trained: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    p = len(probe["split"])
    pred = probe["label"].copy()
    pred[::3] = (pred[::3] + 1) % len(probe["external_classes"])  # every third prediction wrong
    return {"step": np.int64(step), "concepts": rng.normal(size=(p, 6)).astype(np.float32),
            "disc_pred": pred, "disc_conf": rng.uniform(0.2, 1.0, p).astype(np.float32),
            "disc_trained": np.bool_(trained)}


def make_regions(exact: bool = True, gx: int = 12, gy: int = 10, classes: int = 5) -> RegionGrid:
    x, y = np.linspace(-3, 3, gx), np.linspace(-2, 2, gy)
    pred = (np.arange(gy * gx).reshape(gy, gx) // 7) % classes
    conf = np.tile(np.linspace(0.05, 1.0, gx), (gy, 1))
    return RegionGrid(x=x, y=y, pred=pred, conf=conf, exact=exact,
                      method="exact (PCA inverse)" if exact else "nearest probes",
                      class_names=[f"ext-class-{c - 1}" for c in range(classes)])


@pytest.fixture
def probe():
    return make_probe()


@pytest.fixture
def xy(probe):
    return np.random.default_rng(1).normal(size=(len(probe["split"]), 2))


def points(fig):
    """The traces that draw probe images (key-only legend entries carry no customdata)."""
    return [t for t in fig.data if isinstance(t, go.Scatter | go.Scattergl) and t.customdata is not None]


def annotation_texts(fig) -> list[str]:
    return [a.text for a in fig.layout.annotations]


# ------------------------------------------------------------------------------ concept_map
def test_concept_map_one_points_trace_per_split_with_rows_in_customdata(probe, xy):
    snap = make_snapshot(probe)
    fig = concept_map(xy, probe, snap)
    traces = points(fig)
    assert all(isinstance(t, go.Scatter) for t in traces)  # SVG: a small probe costs the browser less
    assert len(traces) == 3 and fig.data[:3] == tuple(traces)  # the points first, legend entries after
    assert [t.name for t in traces] == SPLITS
    for code, t in enumerate(traces):
        rows = np.flatnonzero(probe["split"] == code)
        custom = np.asarray(t.customdata)
        assert custom[:, 0].astype(int).tolist() == rows.tolist()  # probe row: selections map back to images
        assert custom[:, 1].tolist() == probe["class_name"][rows].tolist()
        assert set(custom[:, 2]) == {SPLITS[code]}
        assert custom[:, 3].astype(int).tolist() == probe["image_index"][rows].tolist()
        np.testing.assert_allclose(t.x, xy[rows, 0], rtol=1e-6)
        np.testing.assert_allclose(t.y, xy[rows, 1], rtol=1e-6)
        assert t.marker.symbol == SPLIT_SYMBOLS[code]
        assert "%{customdata[1]}" in t.hovertemplate and "%{text}" in t.hovertemplate
        assert all("predicts" in s and "%" in s for s in t.text)  # D's prediction and confidence in hover
    ext = traces[2]
    assert any("ext-class-" in s for s in ext.text)
    assert fig.layout.uirevision == "concept-map"
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.scaleratio == 1
    assert fig.layout.xaxis.showticklabels is False and fig.layout.yaxis.showticklabels is False
    assert fig.layout.title.text and "step 10" in fig.layout.title.text
    assert concept_map(xy, probe, uirevision="run-7").layout.uirevision == "run-7"


def test_concept_map_large_point_sets_are_webgl_in_figure_and_frames():
    big = make_probe(per_class=WEBGL_FROM // 9 + 1)  # 3 splits x 3 classes
    assert len(big["split"]) >= WEBGL_FROM
    pts = np.random.default_rng(2).normal(size=(len(big["split"]), 2))
    assert all(isinstance(t, go.Scattergl) for t in points(concept_map(pts, big)))
    fig = replay([(0, pts), (5, pts + 1)], big)
    assert all(isinstance(t, go.Scattergl) for f in fig.frames for t in f.data)  # frames match their traces


def test_concept_map_without_snapshot_has_no_d_line(probe, xy):
    fig = concept_map(xy, probe, title="My map")
    assert all(s == "" for t in points(fig) for s in t.text)
    assert "My map" in fig.layout.title.text


def test_concept_map_missing_split_gets_no_trace(probe, xy):
    keep = probe["split"] != 1
    sub = {k: (v[keep] if k != "external_classes" else v) for k, v in probe.items()}
    fig = concept_map(xy[keep], sub)
    assert [t.name for t in points(fig)] == ["meta-train", "external"]
    assert [t.name for t in fig.data if t.showlegend] == ["meta-train", "external"]  # no key for a missing split


def test_class_colours_keyed_on_split_and_label(probe, xy):
    fig = concept_map(xy, probe, color_by="class")
    colour = {}
    for code, t in enumerate(points(fig)):
        rows = np.flatnonzero(probe["split"] == code)
        for r, c in zip(rows, t.marker.color):
            colour.setdefault((code, int(probe["label"][r])), set()).add(c)
    assert all(len(v) == 1 for v in colour.values())  # one colour per class
    assert len({next(iter(v)) for v in colour.values()}) == len(colour) == 9  # (split, label) keys differ
    # meta-train class 1 and meta-test class 1 share a label but not a colour
    assert colour[(0, 1)] != colour[(1, 1)]


def test_split_colouring(probe, xy):
    fig = concept_map(xy, probe, color_by="split")
    assert [t.marker.color for t in points(fig)] == [SPLIT_COLORS[c] for c in range(3)]


def test_correct_colouring_green_red_for_external_grey_otherwise(probe, xy):
    snap = make_snapshot(probe)
    fig = concept_map(xy, probe, snap, color_by="correct")
    for code, t in enumerate(points(fig)):
        rows = np.flatnonzero(probe["split"] == code)
        if code != 2:
            assert set(t.marker.color) == {NEUTRAL}
        else:
            right = snap["disc_pred"][rows] == probe["label"][rows]
            assert list(t.marker.color) == [CORRECT if r else WRONG for r in right]
            assert 0 < right.sum() < len(rows)


def test_prediction_colouring_matches_class_colour_of_that_external_class(probe, xy):
    snap = make_snapshot(probe)
    pred_fig = concept_map(xy, probe, snap, color_by="prediction")
    class_fig = concept_map(xy, probe, snap, color_by="class")
    colors = ClassColors(probe)
    for t in points(pred_fig):
        rows = np.asarray(t.customdata)[:, 0].astype(int)
        assert list(t.marker.color) == [colors.external(p) for p in snap["disc_pred"][rows]]
    # an external image D gets right has the same colour in both colourings
    ext_rows = np.flatnonzero(probe["split"] == 2)
    right = np.flatnonzero(snap["disc_pred"][ext_rows] == probe["label"][ext_rows])
    assert [pred_fig.data[2].marker.color[i] for i in right] == [class_fig.data[2].marker.color[i] for i in right]


def test_untrained_discriminator_is_said(probe, xy):
    fig = concept_map(xy, probe, make_snapshot(probe, trained=False), color_by="prediction")
    assert any("untrained" in a for a in annotation_texts(fig))
    assert all("untrained" in s for s in fig.data[0].text)


@pytest.mark.parametrize("exact, word, absent", [(True, "exact", "approximate"), (False, "approximate", "exact")])
def test_regions_heatmap_behind_points_and_note_says_exact_or_approximate(probe, xy, exact, word, absent):
    regions = make_regions(exact)
    fig = concept_map(xy, probe, make_snapshot(probe), regions=regions)
    assert isinstance(fig.data[0], go.Heatmap)  # drawn first: behind the points
    assert len(points(fig)) == 3
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (10, 12)
    np.testing.assert_allclose(heat.x, regions.x)
    assert heat.showscale is False
    notes = [a.text for a in fig.layout.annotations if a.name == "regions"]
    assert len(notes) == 1 and word in notes[0] and absent not in notes[0]
    # hue = class, lightness = confidence: one band per (class present, confidence level)
    z = np.asarray(heat.z)
    scale = heat.colorscale
    bands = len(scale) // 2
    assert np.nanmin(z) >= 0 and np.nanmax(z) < bands
    assert len({c for _, c in scale}) > 5


def test_regions_without_hover_leave_out_the_names_per_cell(probe, xy):
    regions = make_regions()
    with_hover = concept_map(xy, probe, make_snapshot(probe), regions=regions)
    without = concept_map(xy, probe, make_snapshot(probe), regions=regions, region_hover=False)
    assert "D predicts" in with_hover.data[0].hovertemplate and np.asarray(with_hover.data[0].text).shape == (10, 12)
    assert without.data[0].text is None and without.data[0].hoverinfo == "skip"
    np.testing.assert_array_equal(np.asarray(without.data[0].z), np.asarray(with_hover.data[0].z))
    assert len(without.to_json()) < len(with_hover.to_json())
    assert all(t.hovertemplate for t in points(without))  # the points still say what they are


def test_region_colour_darker_where_more_confident(probe, xy):
    regions = make_regions()
    regions.pred[:] = 2
    fig = concept_map(xy, probe, regions=regions)
    heat = fig.data[0]
    z = np.asarray(heat.z)
    scale = heat.colorscale
    bands = len(scale) // 2

    def lightness(v):
        rgb = scale[2 * int(v)][1][4:-1].split(",")
        return sum(map(int, rgb))
    assert lightness(z[0, 0]) > lightness(z[0, -1])  # conf 0.05 paler than conf 1.0
    assert bands == 5  # one class present, five confidence bands
    # the hue is external class 2's point colour
    assert ClassColors(probe).external(2) == ClassColors(probe).key(2, 2)


def test_map_equal_scale_with_ranges_fitted_to_the_points(probe):
    # a long thin cloud: ranges are the data's extent plus one fixed margin on every side
    xy = np.random.default_rng(2).normal(size=(len(probe["split"]), 2)) * [10.0, 1.0] + [50.0, -3.0]
    fig = concept_map(xy, probe, height=640)
    xa, ya = fig.layout.xaxis, fig.layout.yaxis
    assert ya.scaleanchor == "x" and ya.scaleratio == 1  # equal scale on x and y
    assert xa.constrain == ya.constrain == "range"  # the plot keeps the panel, no strip
    assert xa.autorange is False and ya.autorange is False  # fixed: nothing rescales between refreshes
    lo, hi = xy.min(0), xy.max(0)
    margin = MAP_PAD * (hi - lo).max()
    np.testing.assert_allclose(xa.range, [lo[0] - margin, hi[0] + margin])
    np.testing.assert_allclose(ya.range, [lo[1] - margin, hi[1] + margin])
    assert fig.layout.height == 640


def test_map_legend_one_entry_per_split_with_its_shape(probe, xy):
    fig = concept_map(xy, probe, make_snapshot(probe))
    keys = [t for t in fig.data if t.showlegend]
    assert [t.name for t in keys] == SPLITS
    assert [t.marker.symbol for t in keys] == [SPLIT_SYMBOLS[c] for c in range(3)]
    assert all(t.showlegend is False for t in points(fig))  # the points' many colours are not a key
    # clicking a split's entry shows or hides that split's points
    assert [t.legendgroup for t in keys] == [t.legendgroup for t in points(fig)]
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0  # under the map
    split_keys = [t for t in concept_map(xy, probe, color_by="split").data if t.showlegend]
    assert [t.marker.color for t in split_keys] == [SPLIT_COLORS[c] for c in range(3)]
    # the class is named in every point's hover
    assert all("%{customdata[1]}" in t.hovertemplate for t in points(fig))


def test_region_key_adds_height_instead_of_squeezing_the_plot(probe, xy):
    """The map with D's key is taller by the key's rows (a header and 3 classes: 2 rows of 2), so its
    plot keeps the size the map has without regions (it was a wide short strip)."""
    from engine.viz.charts.concept_map import KEY_COLUMNS, KEY_ROW_PX
    plain = concept_map(xy, probe, make_snapshot(probe), height=500)
    shaded = concept_map(xy, probe, make_snapshot(probe), regions=make_regions(), height=500)
    assert plain.layout.height == 500
    assert shaded.layout.height == 500 + KEY_ROW_PX * -(-4 // KEY_COLUMNS)


def test_regions_only_for_the_probes_external_classes_with_a_key(probe, xy):
    regions = make_regions()  # D knows 5 classes (0..4); the probe shows 1, 2 and 3
    fig = concept_map(xy, probe, make_snapshot(probe), regions=regions)
    heat = fig.data[0]
    z = np.asarray(heat.z, dtype=float)
    shown = np.isin(regions.pred, [1, 2, 3])
    assert np.isnan(z[~shown]).all() and not np.isnan(z[shown]).any()  # other classes blank
    assert heat.hoverongaps is False
    header, *keys = [t for t in fig.data if t.showlegend and t.legendgroup == "regions"]
    assert header.name == "<b>D's regions</b> (3 of 5):"  # the key says what it is, and how many of D's classes
    assert [t.name for t in keys] == ["ext-class-0", "ext-class-1", "ext-class-2"]  # classes 1, 2, 3 by name
    colors = ClassColors(probe)
    assert [t.marker.color for t in keys] == [colors.external(c) for c in (1, 2, 3)]
    assert [t.marker.color for t in keys] == [colors.key(2, c) for c in (1, 2, 3)]  # like their points
    assert all(t.legend == "legend2" for t in [header, *keys])
    assert fig.layout.legend2.orientation == "h"  # its own key, under the splits' key
    assert heat.legendgroup == "regions" and heat.legend == "legend2"  # a click on the key hides the shading
    assert not [t for t in concept_map(xy, probe).data if t.legendgroup == "regions"]  # no regions, no key


def test_regions_caption_over_the_plot_never_on_it(probe, xy):
    fig = concept_map(xy, probe, make_snapshot(probe), regions=make_regions(exact=False),
                      method_note="UMAP of 36 probe images' concepts")
    caption = next(a for a in fig.layout.annotations if a.name == "regions")
    flat = caption.text.replace("<br>", " ")
    assert REGION_CAPTION in flat and "approximate" in flat
    assert caption.text.count("<br>") == 1  # two short lines
    for a in fig.layout.annotations:  # every note sits above the plot area
        assert a.yref == "paper" and a.y >= 1 and a.yanchor == "bottom"
    sub = next(a for a in fig.layout.annotations if a.name == "subtitle")
    assert sub.yshift > caption.yshift  # the subtitle above the caption, neither on the points
    lines = sum(a.text.count("<br>") + 1 for a in fig.layout.annotations)
    assert fig.layout.margin.t >= 60 + 15 * lines  # room for them all


def test_method_note_shown(probe, xy):
    fig = concept_map(xy, probe, method_note="UMAP warming up: PCA shown")
    assert any("UMAP warming up: PCA shown" in a for a in annotation_texts(fig))
    long = "UMAP is warming up (first use compiles for ~10 s): showing PCA meanwhile"
    sub = next(a.text for a in concept_map(xy, probe, method_note=long).layout.annotations if a.name == "subtitle")
    assert sub.count("<br>") == 2 and all(len(line) <= 70 for line in sub.split("<br>"))  # wrapped for a narrow map


def test_concept_map_refuses_bad_input(probe, xy):
    snap = make_snapshot(probe)
    with pytest.raises(ValueError, match=r"xy must have shape \(points, 2\)"):
        concept_map(xy[:, :1], probe)
    with pytest.raises(ValueError, match="xy has 35 rows, expected 36"):
        concept_map(xy[:-1], probe)
    with pytest.raises(ValueError, match="NaN"):
        concept_map(np.full_like(xy, np.nan), probe)
    with pytest.raises(ValueError, match="color_by must be one of"):
        concept_map(xy, probe, snap, color_by="colour")
    with pytest.raises(ValueError, match="needs a snapshot"):
        concept_map(xy, probe, color_by="correct")
    with pytest.raises(ValueError, match="no external set"):
        concept_map(xy, probe, {"step": 1, "concepts": snap["concepts"]}, color_by="prediction")
    with pytest.raises(ValueError, match="probe is missing label"):
        concept_map(xy, {k: v for k, v in probe.items() if k != "label"})
    with pytest.raises(ValueError, match=r"disc_pred.* has 35 entries"):
        concept_map(xy, probe, {**snap, "disc_pred": snap["disc_pred"][:-1]})
    bad = make_regions()
    bad.conf = bad.conf[:, :-1]
    with pytest.raises(ValueError, match=r"regions.conf must have shape \(len\(y\), len\(x\)\)"):
        concept_map(xy, probe, regions=bad)
    with pytest.raises(ValueError, match="uirevision"):
        concept_map(xy, probe, uirevision="")


def test_concept_map_pca_keeps_the_app_call_working(probe):
    snap = make_snapshot(probe, step=42)
    fig = concept_map_pca(probe, snap)
    assert len(points(fig)) == 3 and "PCA" in fig.layout.title.text and "42" in fig.layout.title.text
    with pytest.raises(ValueError, match="concepts"):
        concept_map_pca(probe, {"step": 1})


# ------------------------------------------------------------------------------ replay
def make_frames(probe, steps=(0, 1, 2, 4, 8)):
    rng = np.random.default_rng(3)
    p = len(probe["split"])
    return [(s, rng.normal(size=(p, 2)) * (1 + i)) for i, s in enumerate(steps)]


def test_replay_frames_slider_buttons_and_fixed_ranges(probe):
    frames = make_frames(probe)
    snaps = [make_snapshot(probe, step=s, seed=i) for i, (s, _) in enumerate(frames)]
    fig = replay(frames, probe, snaps, color_by="correct")
    assert len(fig.frames) == len(frames)
    assert [f.name for f in fig.frames] == ["0", "1", "2", "4", "8"]
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["0", "1", "2", "4", "8"]
    assert [list(s.args[0]) for s in slider.steps] == [["0"], ["1"], ["2"], ["4"], ["8"]]
    assert slider.active == 4  # opens on the last frame
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert any("Play" in lb for lb in labels) and any("Pause" in lb for lb in labels)
    # ranges fixed and covering every frame's points
    allxy = np.concatenate([f[1] for f in frames])
    xr, yr = fig.layout.xaxis.range, fig.layout.yaxis.range
    assert fig.layout.xaxis.autorange is False and fig.layout.yaxis.autorange is False
    assert xr[0] < allxy[:, 0].min() and xr[1] > allxy[:, 0].max()
    assert yr[0] < allxy[:, 1].min() and yr[1] > allxy[:, 1].max()
    # frames carry positions (and what D changes) only, one update per split trace
    for (_, pts), snap, frame in zip(frames, snaps, fig.frames):
        assert len(frame.data) == 3 and all(isinstance(t, go.Scatter) for t in frame.data)
        assert frame.traces == (0, 1, 2)
        assert all(t.customdata is None and t.hovertemplate is None for t in frame.data)
        ext_rows = np.flatnonzero(probe["split"] == 2)
        np.testing.assert_allclose(frame.data[2].x, pts[ext_rows, 0], rtol=1e-6)
        right = snap["disc_pred"][ext_rows] == probe["label"][ext_rows]
        assert list(frame.data[2].marker.color) == [CORRECT if r else WRONG for r in right]
    # the figure itself shows the last frame, with full hover data
    np.testing.assert_allclose(fig.data[0].x, frames[-1][1][probe["split"] == 0, 0], rtol=1e-6)
    assert np.asarray(fig.data[0].customdata).shape[1] == 4
    assert fig.layout.uirevision == "replay"


def test_replay_class_colouring_without_snapshots_has_minimal_frames(probe):
    fig = replay(make_frames(probe, (0, 5)), probe, start="first", uirevision="r1")
    assert fig.layout.sliders[0].active == 0 and fig.layout.uirevision == "r1"
    for frame in fig.frames:
        assert all(set(t.to_plotly_json()) == {"type", "x", "y"} for t in frame.data)


def test_replay_regions_per_frame(probe):
    frames = make_frames(probe, (0, 4, 8))
    regions = [make_regions(True), None, make_regions(False)]
    fig = replay(frames, probe, regions=regions)
    assert isinstance(fig.data[0], go.Heatmap) and len(points(fig)) == 3
    assert all(isinstance(f.data[0], go.Heatmap) for f in fig.frames)
    assert fig.frames[0].traces == (0, 1, 2, 3)
    assert np.asarray(fig.frames[0].data[0].z).shape == (10, 12)
    assert all(v is None for row in fig.frames[1].data[0].z for v in row)  # no regions at step 4

    def region_note(frame):
        return [a.text for a in frame.layout.annotations if a.name == "regions"]
    assert "exact" in region_note(fig.frames[0])[0]
    assert region_note(fig.frames[1]) == []
    assert "approximate" in region_note(fig.frames[2])[0]
    # frames keep the subtitle (annotations are replaced whole by a frame)
    assert all(any(a.name == "subtitle" for a in f.layout.annotations) for f in fig.frames)
    # the captions sit between the subtitle and the plot, never on either
    sub = next(a for a in fig.layout.annotations if a.name == "subtitle")
    longest = max(len(region_note(f)[0].split("<br>")) for f in fig.frames if region_note(f))
    assert sub.yshift >= 6 + 15 * longest and all(a.y >= 1 for a in fig.layout.annotations)
    keys = [t for t in fig.data if t.showlegend]  # splits, then the shaded classes
    assert [t.name for t in keys][:3] == SPLITS and all(t.legend == "legend2" for t in keys[3:])
    assert "D's regions" in keys[3].name and len(keys) == 3 + 1 + 3


def test_replay_refuses_bad_input(probe):
    frames = make_frames(probe, (0, 4))
    with pytest.raises(ValueError, match="at least one frame"):
        replay([], probe)
    with pytest.raises(ValueError, match="distinct"):
        replay([frames[0], frames[0]], probe)
    with pytest.raises(ValueError, match="snapshots has 1 entries, frames has 2"):
        replay(frames, probe, [make_snapshot(probe)])
    with pytest.raises(ValueError, match="regions has 1 entries"):
        replay(frames, probe, regions=[None])
    with pytest.raises(ValueError, match=r"frames\[1\] xy has 3 rows"):
        replay([frames[0], (4, frames[1][1][:3])], probe)
    with pytest.raises(ValueError, match="needs snapshots"):
        replay(frames, probe, color_by="prediction")
    with pytest.raises(ValueError, match=r"must be a \(step, xy\) pair"):
        replay([frames[0][1]], probe)


# ------------------------------------------------------------------------------ training curves
def make_metrics(steps: int = 60, lam: float = 1.0, val_every: int = 20) -> list[dict]:
    rng = np.random.default_rng(int(lam * 10))
    out = []
    for s in range(1, steps + 1):
        d = lam > 0
        out.append({"kind": "train", "step": s, "meta_loss": 2 / s ** 0.3 + rng.normal(0, 0.1),
                    "meta_acc": min(1, 0.2 + s / 80), "disc_loss": 3 / s ** 0.2 if d else None,
                    "disc_acc": min(1, s / 90) if d else None, "lr": 1e-3, "seconds": s * 0.1})
        if s % val_every == 0:
            out.append({"kind": "val", "step": s, "val_acc": 0.3 + s / 200, "val_ci95": 0.03, "seconds": s * 0.1})
    return out


def test_training_curves_thinned_to_max_points_keep_the_first_and_last_step():
    metrics = make_metrics(steps=1000, val_every=100)
    full, thin = training_curves(metrics), training_curves(metrics, max_points=50)
    per_step = [i for i, t in enumerate(full.data) if t.x is not None and len(t.x) == 1000]  # every step drawn
    assert len(per_step) >= 4  # raw and smoothed meta / D curves
    assert all(len(thin.data[i].x) == 50 and thin.data[i].x[0] == 1 and thin.data[i].x[-1] == 1000 for i in per_step)
    assert len(thin.to_json()) < len(full.to_json()) / 4
    with pytest.raises(ValueError, match="max_points"):
        training_curves(metrics, max_points=1)


def test_training_curves_smoothed_raw_val_band_two_panels():
    fig = training_curves(make_metrics())
    named = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in named] == ["meta loss", "discrimination loss", "meta accuracy", "discrimination accuracy",
                                       "validation accuracy ± 95% CI"]
    raw = [t for t in fig.data if t.name and t.name.endswith("(raw)")]
    assert len(raw) == 4 and all(t.hoverinfo == "skip" for t in raw)
    band = [t for t in fig.data if t.fill == "toself"]
    assert len(band) == 1 and band[0].xaxis == "x2"
    np.testing.assert_allclose(band[0].y[:3], [0.3 + 20 / 200 + 0.03, 0.3 + 40 / 200 + 0.03, 0.3 + 60 / 200 + 0.03])
    by_name = {t.name: t for t in fig.data}
    assert by_name["meta loss"].xaxis == "x" and by_name["meta accuracy"].xaxis == "x2"
    assert list(by_name["validation accuracy ± 95% CI"].x) == [20, 40, 60]
    # smoothed is smoother than raw
    assert np.std(np.diff(by_name["meta loss"].y)) < np.std(np.diff(by_name["meta loss (raw)"].y))
    assert fig.layout.xaxis.title.text == "training step" and fig.layout.yaxis2.tickformat == ".0%"
    assert fig.layout.uirevision == "training-curves"
    assert "Training" in fig.layout.title.text


def test_training_curves_twin_dashed_with_lambda_zero():
    fig = training_curves(make_metrics(), twin_metrics=make_metrics(lam=0.0))
    twin = [t for t in fig.data if t.name and "(λ = 0)" in t.name]
    assert {t.name for t in twin} >= {"meta loss (λ = 0)", "meta accuracy (λ = 0)",
                                      "validation accuracy ± 95% CI (λ = 0)"}
    assert all(t.line.dash == "dash" for t in twin if t.fill != "toself")
    assert not any("discrimination" in t.name for t in twin)  # lam = 0: no D curves
    own = [t for t in fig.data if t.name and "λ" not in t.name]
    assert all(t.line.dash is None for t in own)
    assert sum(t.fill == "toself" for t in fig.data) == 2  # a CI band each


def test_training_curves_chance_lines_at_one_over_ways_and_external_classes():
    fig = training_curves(make_metrics(), ways=5, external_classes=80)
    dotted = {t.name: t for t in fig.data if t.line.dash == "dot"}
    assert len(dotted) == 2
    meta = next(t for n, t in dotted.items() if "5-way" in n)
    disc = next(t for n, t in dotted.items() if "80 external" in n)
    assert list(meta.y) == [0.2, 0.2] and list(disc.y) == [1 / 80, 1 / 80]
    assert meta.xaxis == disc.xaxis == "x2"  # in the accuracy panel
    assert list(meta.x) == [0, 60]  # across the steps drawn
    assert meta.showlegend is not False and disc.showlegend is not False  # named in the legend
    # from the records when not given; no D chance line without a D curve
    recs = [{**m, "ways": 4} if m["kind"] == "train" else m for m in make_metrics(lam=0.0)]
    fig = training_curves(recs, external_classes=80)
    assert [list(t.y) for t in fig.data if t.line.dash == "dot"] == [[0.25, 0.25]]
    assert not [t for t in training_curves(make_metrics()).data if t.line.dash == "dot"]  # unknown: none drawn
    with pytest.raises(ValueError, match="ways must be a whole number"):
        training_curves(make_metrics(), ways=1)


def test_training_curves_a_colour_per_series_and_height():
    fig = training_curves(make_metrics(), twin_metrics=make_metrics(lam=0.0), height=520)
    main = {t.name: t.line.color for t in fig.data if t.showlegend is not False and "λ" not in t.name}
    series = ["meta loss", "discrimination loss", "meta accuracy", "discrimination accuracy",
              "validation accuracy ± 95% CI"]
    assert len({main[n] for n in series}) == len(series)  # no two series share a colour
    assert main["meta loss"] != main["meta accuracy"]  # loss and accuracy not the same blue
    twin = {t.name: t for t in fig.data if t.name and "(λ = 0)" in t.name and t.fill != "toself"}
    assert twin["meta accuracy (λ = 0)"].line.dash == "dash"  # the twin: dashed, named in the legend
    key = [t for t in fig.data if t.legendgroup == "twin" and t.showlegend is not False]
    assert [t.name for t in key] == ["λ = 0 twin (dashed)"] and key[0].line.dash == "dash"  # one entry for the twin
    assert all(t.legendgroup == "twin" for t in twin.values())  # a click on it shows or hides all its curves
    assert fig.layout.height == 520
    assert training_curves(make_metrics()).layout.height >= 440  # tall enough by default


def test_training_curves_empty_and_bad():
    fig = training_curves([])
    assert any(a.name == "empty" for a in fig.layout.annotations)
    with pytest.raises(ValueError, match="list of metrics records"):
        training_curves({"kind": "train"})
    with pytest.raises(ValueError, match="has no 'step'"):
        training_curves([{"kind": "train", "meta_loss": 1.0}])


def test_smooth_keeps_gaps_and_averages():
    out = smooth([1.0, 3.0, None, 5.0, 7.0], window=2)
    assert out[0] == 1.0 and out[1] == 2.0 and np.isnan(out[2]) and out[3] == 5.0 and out[4] == 6.0


# ------------------------------------------------------------------------------ adaptation curves
def make_curve(axis="steps", n=6, base=0.2, learner="maml"):
    steps = list(range(n)) if axis == "steps" else list(range(1, n + 1))
    acc = [base + 0.1 * i for i in range(n)]
    return {"axis": axis, "steps": steps, "accuracy": acc, "accuracy_ci95": [0.02] * n,
            "loss": [2 - 0.2 * i for i in range(n)], "loss_ci95": [0.05] * n, "learner": learner, "ways": 5, "shots": 1}


def test_adaptation_curves_overlay_with_bands():
    a, b = make_curve(), make_curve(base=0.1)
    fig = adaptation_curves([("DEML maml", a), ("vanilla maml", b)])
    lines = [t for t in fig.data if t.fill != "toself"]
    bands = [t for t in fig.data if t.fill == "toself"]
    assert [t.name for t in lines] == ["DEML maml", "vanilla maml"] and len(bands) == 2
    assert list(lines[0].x) == a["steps"] and list(lines[0].y) == a["accuracy"]
    assert lines[0].line.dash is None and lines[1].line.dash == "dash"
    assert lines[0].line.color != lines[1].line.color
    assert max(bands[0].y) == pytest.approx(max(a["accuracy"]) + 0.02)
    assert "inner" in fig.layout.xaxis.title.text and fig.layout.uirevision == "adaptation"
    loss = adaptation_curves([("DEML maml", a)], metric="loss")
    assert list(loss.data[-1].y) == a["loss"] and "loss" in loss.layout.yaxis.title.text


def test_adaptation_curves_shots_and_single_point():
    c = make_curve("shots", n=1)
    fig = adaptation_curves([("DEML protonet", c)])
    line = fig.data[-1]
    assert list(line.x) == [1] and "shots" in fig.layout.xaxis.title.text
    assert line.error_y.visible and list(line.error_y.array) == [0.02]


def test_adaptation_curves_refuse_mixed_axes_and_bad_input():
    with pytest.raises(ValueError, match="cannot overlay curves against inner steps with curves against shots"):
        adaptation_curves([("maml", make_curve("steps")), ("protonet", make_curve("shots"))])
    with pytest.raises(ValueError, match="at least one"):
        adaptation_curves([])
    with pytest.raises(ValueError, match="metric must be one of"):
        adaptation_curves([("a", make_curve())], metric="f1")
    with pytest.raises(ValueError, match="same nonzero length"):
        adaptation_curves([("a", {**make_curve(), "accuracy": [0.5]})])
    with pytest.raises(ValueError, match="has no 'axis'"):
        adaptation_curves([("a", {"steps": [0]})])


# ------------------------------------------------------------------------------ episode view
def make_detail(gradient: bool = True, n: int = 3, k: int = 2, q: int = 4, steps: int = 3) -> dict:
    rng = np.random.default_rng(5)
    qlab = np.repeat(np.arange(n), q)
    d = {"support_xy": rng.normal(size=(n * k, 2)), "support_labels": np.repeat(np.arange(n), k),
         "query_xy": rng.normal(size=(n * q, 2)), "query_labels": qlab,
         "class_names": [f"class {c}" for c in range(n)], "learner": "maml" if gradient else "protonet",
         "support_images": np.arange(n * k) + 1000, "query_images": np.arange(n * q) + 2000}
    if gradient:
        path = np.stack([np.where(np.arange(n * q) < (s + 1) * n * q // (steps + 1), qlab, (qlab + 1) % n)
                         for s in range(steps + 1)])
        d.update(steps_pred=path, query_pred=path[-1])
    else:
        pred = qlab.copy()
        pred[:2] = (pred[:2] + 1) % n
        d.update(query_pred=pred, prototypes_xy=rng.normal(size=(n, 2)))
    return d


def test_episode_view_metric_learner_support_prototypes_queries():
    d = make_detail(gradient=False)
    fig = episode_view(d)
    names = [t.name for t in fig.data]
    assert names == ["class 0", "class 1", "class 2", "prototype (class mean)", "query, answered right",
                     "query, answered wrong"]
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    colors = palette(3)
    support = fig.data[:3]
    assert [t.marker.color for t in support] == colors and all(t.marker.size >= 14 for t in support)
    assert fig.data[3].marker.symbol == "star" and list(fig.data[3].marker.color) == colors
    right, wrong = fig.data[4], fig.data[5]
    assert len(right.x) == 10 and len(wrong.x) == 2
    assert right.marker.line.color == CORRECT and wrong.marker.line.color == WRONG
    assert np.asarray(wrong.customdata)[:, 0].astype(int).tolist() == [0, 1]
    assert np.asarray(wrong.customdata)[:, 3].astype(int).tolist() == [2000, 2001]
    assert list(wrong.marker.color) == [colors[0], colors[0]]  # fill = true class
    assert not fig.frames and not fig.layout.sliders
    assert any("10/12" in a for a in annotation_texts(fig))
    assert "3-way 2-shot" in fig.layout.title.text and fig.layout.uirevision == "episode"


def test_episode_view_gradient_learner_step_slider_recolours_queries():
    d = make_detail(gradient=True, steps=3)
    d["regions"] = make_regions(True, classes=3)
    d["regions"].class_names = d["class_names"]
    fig = episode_view(d)
    assert isinstance(fig.data[0], go.Heatmap)
    assert len(fig.frames) == 4
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == ["0", "1", "2", "3"] and slider.active == 3
    q = len(d["query_labels"])
    for k, frame in enumerate(fig.frames):
        right, wrong = frame.data
        expected = int((d["steps_pred"][k] == d["query_labels"]).sum())
        assert len(right.x) == expected and len(wrong.x) == q - expected
        assert frame.traces == (len(fig.data) - 2, len(fig.data) - 1)
        sub = next(a.text for a in frame.layout.annotations if a.name == "subtitle")
        assert f"{expected}/{q}" in sub
    assert len(fig.data[-2].x) == q  # final step: all right
    assert any(a.name == "regions" and "exact" in a.text for a in fig.layout.annotations)


def test_episode_view_refuses_bad_input():
    d = make_detail()
    with pytest.raises(ValueError, match="missing query_pred"):
        episode_view({k: v for k, v in d.items() if k != "query_pred"})
    with pytest.raises(ValueError, match=r"query_labels must index class_names \(0..2\)"):
        episode_view({**d, "query_labels": d["query_labels"] + 1})
    with pytest.raises(ValueError, match=r"steps_pred must have shape"):
        episode_view({**d, "steps_pred": d["steps_pred"][:, :-1]})
    with pytest.raises(ValueError, match="support_labels has 5 entries, expected 6"):
        episode_view({**d, "support_labels": d["support_labels"][:-1]})
    with pytest.raises(ValueError, match="prototypes_xy has 2 rows, expected 3"):
        episode_view({**make_detail(False), "prototypes_xy": np.zeros((2, 2))})


# ------------------------------------------------------------------------------ confusion matrix
def test_confusion_matrix_counts_text_row_share_and_hover():
    m = np.array([[8, 2, 0], [1, 4, 5], [0, 0, 0]])
    fig = confusion_matrix(m, ["a", "b", "c"], title="Discriminator")
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap) and len(fig.data) == 1
    assert np.asarray(heat.text).tolist() == [["8", "2", "0"], ["1", "4", "5"], ["0", "0", "0"]]
    assert heat.texttemplate == "%{text}"
    np.testing.assert_allclose(heat.z, [[0.8, 0.2, 0], [0.1, 0.4, 0.5], [0, 0, 0]])
    custom = np.asarray(heat.customdata)
    assert custom.shape == (3, 3, 3) and custom[1, 2, :2].tolist() == [1, 2]
    assert "true <b>%{y}</b> predicted as <b>%{x}</b>: %{text} images" in heat.hovertemplate
    assert list(heat.x) == ["a", "b", "c"] and fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.xaxis.title.text == "predicted class" and fig.layout.yaxis.title.text == "true class"
    assert any("12 of 20 right" in a for a in annotation_texts(fig))
    assert "Discriminator" in fig.layout.title.text and fig.layout.uirevision == "confusion"


def test_confusion_matrix_refuses_bad_input():
    with pytest.raises(ValueError, match="must be square"):
        confusion_matrix(np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="class_names has 1 names for a 2x2 matrix"):
        confusion_matrix(np.zeros((2, 2)), ["a"])
    with pytest.raises(ValueError, match="non-negative whole counts"):
        confusion_matrix(np.array([[1, -1], [0, 0]]), ["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        confusion_matrix(np.zeros((2, 2)), ["a", "a"])


# ------------------------------------------------------------------------------ thumbnails
def decode(fig) -> np.ndarray:
    src = fig.data[0].source
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def test_thumbnail_grid_tiles_gray_to_rgb_with_gaps():
    imgs = np.random.default_rng(0).integers(0, 256, (10, 5, 7, 1), dtype=np.uint8)
    fig = thumbnail_grid(imgs, captions=[f"img {i}" for i in range(10)], columns=4, title="Selection")
    grid = decode(fig)
    assert grid.shape == (3 * 5 + 2 * 2, 4 * 7 + 3 * 2, 3)
    np.testing.assert_array_equal(grid, tile(imgs, 4))
    np.testing.assert_array_equal(grid[0:5, 0:7, 0], imgs[0, :, :, 0])
    np.testing.assert_array_equal(grid[7:12, 9:16, 2], imgs[5, :, :, 0])  # row 1, column 1
    assert (grid[:, 7:9] == grid[0, 7]).all()  # the gap column
    assert isinstance(fig.data[0], go.Image)
    hover = fig.data[1]
    assert list(hover.customdata) == list(range(10)) and list(hover.text)[3] == "img 3"
    assert fig.layout.meta["rows"] == 3 and fig.layout.meta["columns"] == 4
    assert fig.layout.uirevision == "thumbnails" and "Selection" in fig.layout.title.text


def test_thumbnail_grid_rgb_and_fewer_images_than_columns():
    imgs = np.full((3, 4, 4, 3), 200, np.uint8)
    imgs[1, ..., 0] = 10
    grid = decode(thumbnail_grid(imgs))
    assert grid.shape == (4, 3 * 4 + 2 * 2, 3)
    assert grid[0, 6].tolist() == [10, 200, 200]


def test_thumbnail_grid_empty_and_bad():
    fig = thumbnail_grid(np.zeros((0, 28, 28, 1), np.uint8))
    assert len(fig.data) == 0 and any("no images selected" in a for a in annotation_texts(fig))
    with pytest.raises(ValueError, match="uint8"):
        thumbnail_grid(np.zeros((2, 4, 4, 1), np.float32))
    with pytest.raises(ValueError, match=r"C 1 or 3"):
        thumbnail_grid(np.zeros((2, 4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="captions has 1 entries for 2 images"):
        thumbnail_grid(np.zeros((2, 4, 4, 1), np.uint8), captions=["x"])
    with pytest.raises(ValueError, match="columns must be a positive integer"):
        thumbnail_grid(np.zeros((2, 4, 4, 1), np.uint8), columns=0)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 20), cols=st.integers(1, 9), h=st.integers(1, 6), w=st.integers(1, 6))
def test_tile_shape(m, cols, h, w):
    rows = -(-m // min(cols, m))
    c = min(cols, m)
    assert tile(np.zeros((m, h, w, 1), np.uint8), cols).shape == (rows * h + (rows - 1) * 2, c * w + (c - 1) * 2, 3)


# ------------------------------------------------------------------------------ nearest neighbours
def test_nearest_neighbours_order_and_self_excluded():
    z = np.array([[0.0], [10.0], [1.0], [3.0], [-2.5]])
    assert nearest_neighbours(z, 0, k=3).tolist() == [2, 4, 3]
    assert nearest_neighbours(z, 1, k=10).tolist() == [3, 2, 0, 4]  # at most P - 1
    assert nearest_neighbours(z, 0, k=0).tolist() == []
    with pytest.raises(ValueError, match="out of range"):
        nearest_neighbours(z, 5)
    with pytest.raises(ValueError, match="points, dims"):
        nearest_neighbours(np.zeros(4), 0)
    with pytest.raises(ValueError, match="non-negative"):
        nearest_neighbours(z, 0, k=-1)


@settings(max_examples=25, deadline=None)
@given(z=arrays(np.float64, st.tuples(st.integers(2, 12), st.integers(1, 4)), elements=st.floats(-5, 5)),
       data=st.data())
def test_nearest_neighbours_matches_brute_force(z, data):
    i = data.draw(st.integers(0, len(z) - 1))
    got = nearest_neighbours(z, i, k=3)
    d = np.linalg.norm(z - z[i], axis=1)
    others = [j for j in range(len(z)) if j != i]
    assert i not in got and len(got) == min(3, len(z) - 1)
    assert sorted(d[got].tolist()) == sorted(d[others])[: len(got)]


# ------------------------------------------------------------------------------ a real short run
def test_concept_map_and_replay_from_a_real_run():
    from sklearn.decomposition import PCA

    from engine.config import preset
    from engine.train.trainer import Trainer
    from engine.viz.regions import discriminator_logits, softmax

    cfg = preset("smoke").with_overrides(steps=8, width=8, val_every=4, val_episodes=8, snapshot_every=4,
                                         checkpoint_every=8, dataset="glyphs:classes=60,drawings=8,seed=1",
                                         meta_batch=2, ext_batch=8)
    trainer = Trainer(cfg)
    events = []
    trainer.run(None, on_event=lambda kind, rec: events.append((kind, rec)))
    probe = trainer.probe
    snaps = [rec for kind, rec in events if kind == "snapshot"]
    metrics = [rec for kind, rec in events if kind in ("train", "val")]
    assert [int(s["step"]) for s in snaps] == [0, 1, 2, 4, 8]
    pca = PCA(n_components=2, random_state=0).fit(snaps[-1]["concepts"])  # one basis: frames stay aligned
    frames = [(int(s["step"]), pca.transform(s["concepts"])) for s in snaps]

    def exact_regions(snap, pts, grid=20):
        gx = np.linspace(pts[:, 0].min(), pts[:, 0].max(), grid)
        gy = np.linspace(pts[:, 1].min(), pts[:, 1].max(), grid)
        plane = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
        probs = softmax(discriminator_logits(snap, pca.inverse_transform(plane)))
        return RegionGrid(x=gx, y=gy, pred=probs.argmax(-1).reshape(grid, grid), conf=probs.max(-1).reshape(grid, grid),
                          exact=True, method="exact (PCA inverse)", class_names=list(probe["external_classes"]))

    xy = frames[-1][1]
    fig = concept_map(xy, probe, snaps[-1], color_by="correct", regions=exact_regions(snaps[-1], xy))
    assert isinstance(fig.data[0], go.Heatmap)
    assert [t.name for t in points(fig)] == SPLITS
    rows = np.concatenate([np.asarray(t.customdata)[:, 0].astype(int) for t in points(fig)])
    assert sorted(rows.tolist()) == list(range(len(probe["split"])))
    assert any(a.name == "regions" and "exact" in a.text for a in fig.layout.annotations)
    assert "step 8" in fig.layout.title.text

    anim = replay(frames, probe, snaps, color_by="prediction",
                  regions=[exact_regions(s, f[1]) for s, f in zip(snaps, frames)])
    assert len(anim.frames) == len(snaps) == len(anim.layout.sliders[0].steps)
    assert [s.label for s in anim.layout.sliders[0].steps] == ["0", "1", "2", "4", "8"]
    assert len(anim.to_json()) < 400_000  # frames stay small
    assert training_curves(metrics).layout.uirevision == "training-curves"
    assert len(points(concept_map_pca(probe, snaps[-1]))) == 3


def test_waiting_map_is_an_empty_frame_of_the_maps_size_with_its_message():
    fig = waiting_map("appears soon", title="DEML (λ = 3)", height=430)
    assert not fig.data and fig.layout.height == 430
    assert [a.text for a in fig.layout.annotations] == ["appears soon"]
    assert "DEML (λ = 3)" in fig.layout.title.text
    assert fig.layout.xaxis.visible is False and fig.layout.yaxis.visible is False
