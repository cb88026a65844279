"""bench live --browser: a watched demo against an unwatched one, in a real Chromium."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.bench.watched import CHROMIUM, PARTS, cpu_seconds, last_step, watched_ratio, window_cores
from engine.train.job import OS_THREAD_NAME, name_os_thread

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux /proc")
def test_cpu_time_of_the_servers_children_and_training_threads_counts_as_training():
    before = cpu_seconds(os.getpid())
    assert set(window_cores(before, before, 1.0)) == set(PARTS)
    subprocess.run([sys.executable, "-c", BURN.format(s=0.4) + "time.sleep(0)"], check=True)  # a finished child
    child = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.4) + "time.sleep(60)"])
    measured = threading.Event()
    try:
        def train():
            name_os_thread(OS_THREAD_NAME)
            exec(BURN.format(s=0.3))
            measured.wait(60)  # a finished thread's time joins its process's own (under "server")

        thread = threading.Thread(target=train)
        thread.start()
        deadline = time.monotonic() + 30
        training = lambda: window_cores(before, cpu_seconds(os.getpid()), 1.0)["training"]  # noqa: E731 (CPU seconds)
        while training() < 0.6 and time.monotonic() < deadline:
            time.sleep(0.1)
        during = window_cores(before, cpu_seconds(os.getpid()), 1.0)
    finally:
        measured.set()
        child.kill()
    thread.join()
    # the child still running (0.4 s) and the named thread (0.3 s); the finished child is not a process any more
    assert 0.6 <= during["training"] < 1.5
    assert during["other"] >= 0


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
    result = watched_ratio(rounds=1, window_s=2.0, warm_s=0.5, settle_s=0.5, kept_windows=1)
    assert set(result["steps_per_s"]) == {"watched", "unwatched"}
    assert 0 < result["click_to_map_s"] <= result["click_to_umap_s"] < 300
    assert len(result["kept_open_cores"]) == 1 and set(result["kept_open_cores"][0]) == set(PARTS)
    assert len(result["steps_per_s"]["watched"]) == len(result["steps_per_s"]["unwatched"]) == 1
    assert result["ratio_median"] is None or result["ratio_median"] > 0  # None: no step in the unwatched window
