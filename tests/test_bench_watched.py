"""bench live --browser: a watched demo against an unwatched one, in a real Chromium."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.bench.watched import CHROMIUM, last_step, watched_ratio


def test_last_step_reads_the_last_train_record(tmp_path):
    assert last_step(tmp_path) == 0  # no metrics yet
    lines = [{"kind": "train", "step": 1}, {"kind": "train", "step": 2}, {"kind": "val", "step": 2}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n{\"kind\": \"tra")  # cut short
    assert last_step(tmp_path) == 2


@pytest.mark.browser
@pytest.mark.slow
def test_watched_ratio_smoke():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found")
    pytest.importorskip("playwright")
    result = watched_ratio(rounds=1, window_s=2.0, warm_s=0.5)
    assert set(result["steps_per_s"]) == {"watched", "unwatched"}
    assert len(result["steps_per_s"]["watched"]) == len(result["steps_per_s"]["unwatched"]) == 1
    assert result["ratio_median"] is None or result["ratio_median"] > 0  # None: no step in the unwatched window
