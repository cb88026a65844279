"""Smoke versions of the benchmarks, so the commands in BENCHMARKS.md cannot rot."""
from __future__ import annotations

import io
import pytest

from engine.bench import throughput
from engine.config import preset

TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", width=8, concept_dim=16, meta_batch=2, ext_batch=8)


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_throughput_benchmark_reports_a_ratio(learner):
    result = throughput(preset("smoke").with_overrides(learner=learner, inner_steps=2, **TINY), rounds=2,
                        steps_per_round=2, log=io.StringIO())
    assert result["images_per_step"] == 2 * 5 * (1 + 4) + 8  # tasks x ways x (shots + queries) + external
    assert result["trainer_ms_per_step"] > 0 and result["raw_ms_per_step"] > 0
    assert 0 < result["ratio_min"] <= result["ratio_median"] <= result["ratio_max"]


@pytest.mark.slow
def test_projection_benchmark_smoke():
    from engine.bench_projection import projection_benchmark

    result = projection_benchmark(None, points=(60,), reps=1, stability_max_points=60, log=io.StringIO())
    (row,) = result["results"]
    assert row["points"] == 60 and row["umap_update_s"] > 0 and row["regions_exact_pca_60x60_s"] > 0
    stability = row["stability"]
    assert stability["frames"] == result["source"]["snapshots"]
    # the measured claim: warm-started, aligned updates move less than independent (aligned) refits
    assert stability["ratio_update_vs_aligned_refits"] < 1.0
