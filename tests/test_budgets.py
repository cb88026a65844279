"""Budgets checked before work starts (issue 14, finding 4 and the flags of finding 6): greedy
requests are refused within seconds, with the numbers, and without allocating what they ask for;
long runs and many jobs keep the server's memory bounded."""
from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine import cli, config
from engine.config import REPO, TrainConfig
from engine.data import glyphs
from engine.data.imageset import Preprocess
from engine.data.sources import clear_cache, load_imageset
from engine.errors import UserError
from engine.services import catalog, training, uploads
from engine.train import budget, launch, trainer
from engine.train import job as job_module
from engine.train.job import MAX_SNAPSHOTS, JobRegistry, Thinned, TrainingJob

GIB = 2**30
GREEDY = ["--ways", 30, "--shots", 5, "--queries", 15, "--meta-batch", 64]


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "", (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_rendering(monkeypatch):
    """Glyph generation fails loudly if it gets as far as drawing (or allocating) anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("work was started for a request that should have been refused")
    monkeypatch.setattr(glyphs, "_render", refuse)
    monkeypatch.setattr(glyphs, "_alphabet_style", refuse)
    clear_cache()


# ------------------------------------------------------------------------------------------ glyphs
@pytest.mark.parametrize("size, channels, fits", [(None, None, 5), (84, None, 5), (84, 3, 2)])
def test_a_huge_glyph_set_is_refused_at_once_with_what_would_fit(no_rendering, size, channels, fits):
    started = time.monotonic()
    with pytest.raises(UserError) as e:
        load_imageset("glyphs:classes=20000,drawings=1000", Preprocess(size, channels))
    assert time.monotonic() - started < 2
    message = str(e.value)
    assert "20,000,000 images" in message and f"{glyphs.MAX_IMAGES:,} images" in message
    assert message.endswith(f"with classes=20000 at most drawings={fits} fit")  # by count, then by bytes
    if size == 84:
        assert "84x84" in message and "GiB" in message


def test_the_glyph_byte_budget_counts_size_and_channels(no_rendering):
    # 100,000 images fit the count, but not at 84 px RGB (2 GiB): the bytes decide
    with pytest.raises(UserError, match=r"2\.0 GiB.*drawings=25"):
        load_imageset("glyphs:classes=2000,drawings=50", Preprocess(84, 3))
    glyphs.glyph_budget(400, 20, 28, 1)  # the demo's set: within budget


def test_a_huge_glyph_set_from_the_command_line_exits_2_without_a_run_folder(no_rendering, tmp_path):
    out = tmp_path / "run"
    line = one_error_line(*run_cli("train", "--dataset", "glyphs:classes=20000,drawings=1000", "--out", out))
    assert "at most 100,000 images" in line
    assert not out.exists()


def test_the_data_page_shows_the_glyph_cap(no_rendering, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(str(REPO / "app_pages" / "1_Data.py"), default_timeout=30).run()
    at.radio(key="data_source").set_value("Folder on the server").run()
    started = time.monotonic()
    at.text_input(key="data_folder").set_value("glyphs:classes=20000,drawings=1000").run()
    assert time.monotonic() - started < 10
    assert not at.exception, at.exception
    assert any("at most 100,000 images" in e.value for e in at.error), [e.value for e in at.error]


# -------------------------------------------------------------------------------------- step memory
def test_the_step_estimate_grows_with_every_setting_that_sizes_a_step():
    base = TrainConfig()
    small = budget.step_bytes(base)
    for change in (dict(ways=10), dict(shots=5), dict(queries=10), dict(meta_batch=8), dict(ext_batch=512),
                   dict(width=128), dict(image_size=56), dict(channels=3), dict(backbone="resnet12")):
        assert budget.step_bytes(base.with_overrides(**change)) > small, change
    assert budget.step_bytes(base.with_overrides(lam=0.0)) < small  # no external images without D
    # the request: ~30 GB (28.7 GiB) at the defaults, 38,464 images
    greedy = base.with_overrides(ways=30, shots=5, queries=15, meta_batch=64)
    assert budget.step_images(greedy) == 64 * 30 * 20 + 64
    assert 25e9 < budget.step_bytes(greedy) < 40e9


def test_available_memory_is_read_from_the_machine():
    have = budget.available_bytes("cpu")
    assert have is not None and 0 < have < 2**50


def test_a_step_that_cannot_fit_is_refused_by_the_cli_before_the_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "available_bytes", lambda device="cpu": 16 * GIB)

    def no_data(cfg):
        raise AssertionError("the data was read for a run that cannot fit")
    monkeypatch.setattr(trainer, "load_data", no_data)
    out = tmp_path / "run"
    started = time.monotonic()
    line = one_error_line(*run_cli("train", *GREEDY, "--out", out))
    assert time.monotonic() - started < 5
    assert "28.7 GiB" in line and "38,464 images" in line and "16.0 GiB available" in line
    assert "--meta-batch" in line and "--ways" in line
    assert not out.exists()


def test_the_exact_check_after_the_data_uses_its_image_size(tmp_path, monkeypatch):
    """Before the data is read the images are taken at their smallest (28 px gray); once read, their
    own size decides, still before the model or the run folder exists."""
    cfg = TrainConfig(dataset="glyphs:classes=60,drawings=8,seed=1", image_size=None, steps=2, width=8,
                      meta_batch=2, ext_batch=8, val_episodes=4)
    small = budget.step_bytes(cfg)
    monkeypatch.setattr(budget, "available_bytes", lambda device="cpu": int(small * 2))  # 28 px fits
    big = cfg.with_overrides(image_size=84)
    assert budget.step_bytes(big) > small * 2
    with pytest.raises(UserError, match="84x84x1"):
        launch.start_run(big, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_app_refuses_in_the_forms_words_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "available_bytes", lambda device="cpu": 16 * GIB)
    registry = JobRegistry()
    cfg = TrainConfig(ways=30, shots=5, queries=15, meta_batch=64)
    words = {"meta_batch": "Meta-batch", "ways": "N (ways)", "shots": "K (shots)", "queries": "Q (queries)",
             "ext_batch": "External batch"}
    with pytest.raises(UserError) as e:
        training.start_runs(cfg, str(tmp_path / "run"), registry=registry, words=words)
    assert "lower Meta-batch, N (ways), K (shots), Q (queries) or External batch" in str(e.value)
    assert "--" not in str(e.value)
    assert len(registry) == 0 and not (tmp_path / "run").exists()
    # a run and its twin need a step each
    fits_one = cfg.with_overrides(meta_batch=20)
    assert budget.step_bytes(fits_one) < 0.8 * 16 * GIB < 2 * budget.step_bytes(fits_one)
    with pytest.raises(UserError, match="for 2 runs side by side"):
        training.start_runs(fits_one, str(tmp_path / "run"), twin=True, registry=registry)
    assert len(registry) == 0


def test_the_train_page_shows_the_refusal_in_its_own_words(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONCEPTSCAPE_RUNS", raising=False)
    monkeypatch.setattr(budget, "available_bytes", lambda device="cpu": 16 * GIB)
    at = AppTest.from_file(str(REPO / "app_pages" / "2_Train.py"), default_timeout=30).run()
    for key, value in dict(train_ways=30, train_shots=5, train_queries=15, train_meta_batch=64).items():
        at.number_input(key=key).set_value(value)
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "lower Meta-batch, N (ways)" in at.error[0].value
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ------------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize("flag, value, bound", [
    ("--seed", 99999999999999999999999, "4,294,967,295"),
    ("--width", 100000, "512"),
    ("--ext-batch", 100000000, "4,096"),
    ("--val-episodes", 100000000, "10,000"),
    ("--steps", 10**9, "10,000,000"),
    ("--concept-dim", 100000, "2,048"),
    ("--probe-per-class", 10**6, "100"),
    ("--probe-classes", 10**6, "200"),
    ("--image-size", 100000, "512"),
])
def test_flags_over_their_limit_exit_2_naming_the_flag_and_leave_no_run_folder(tmp_path, flag, value, bound):
    out = tmp_path / "run"
    started = time.monotonic()
    line = one_error_line(*run_cli("train", flag, value, "--out", out))
    assert time.monotonic() - started < 5
    assert line == f"error: {flag} must be at most {bound} (got {value})"
    assert not out.exists()


def test_the_largest_seed_numpy_takes_is_accepted():
    cfg = TrainConfig(seed=config.SEED_MAX, split_seed=config.SEED_MAX)
    np.random.seed(cfg.seed)  # numpy's own range


def test_the_app_shows_the_same_flag_message():
    with pytest.raises(UserError, match=r"^--width must be at most 512 \(got 100000\)$"):
        config.preset("demo").with_overrides(width=100000)


# ------------------------------------------------------------------------------- a job's memory
def test_thinned_keeps_at_most_its_cap_evenly_spaced_and_always_the_newest():
    kept = Thinned(200)
    for i in range(100_000):
        kept.add(i)
        if i % 997 == 0 or i > 99_990:
            items = kept.items()
            assert len(items) <= 201 and items[-1] == i  # the newest, always
    items = kept.items()
    assert items[0] == 0 and len(items) >= 100
    gaps = np.diff(items[:-1])
    assert len(set(gaps.tolist())) == 1  # evenly spaced (the newest apart)


def test_a_job_fed_a_long_run_keeps_a_bounded_number_of_snapshots_and_records():
    job = TrainingJob(TrainConfig(), out="unused")  # never started: only its bookkeeping is used
    steps = 50_000
    for step in range(1, steps + 1):
        job._on_event("train", {"kind": "train", "step": step, "meta_loss": 1.0})
        if step % 100 == 0:
            job._on_event("val", {"kind": "val", "step": step, "val_acc": 0.5})
        if step % 20 == 0:
            job._on_event("snapshot", {"step": step, "concepts": np.zeros((1, 2), np.float32)})
    snaps = job.snapshots()
    assert len(snaps) <= MAX_SNAPSHOTS + 1 and int(snaps[-1]["step"]) == steps
    metrics = job.metrics()
    train = [m["step"] for m in metrics if m["kind"] == "train"]
    val = [m["step"] for m in metrics if m["kind"] == "val"]
    assert len(train) <= job_module.MAX_TRAIN_RECORDS + 1 and train[-1] == steps
    assert val == list(range(100, steps + 1, 100))  # 500 validations: under their cap, all kept
    order = [(m["step"], m["kind"] == "val") for m in metrics]
    assert order == sorted(order)  # still in the order they were recorded


def test_resuming_a_long_run_loads_only_the_snapshots_it_keeps(tmp_path, monkeypatch):
    from engine.runs import RunDir

    loaded = []
    monkeypatch.setattr(RunDir, "open", classmethod(lambda cls, path: cls(path)))
    monkeypatch.setattr(RunDir, "snapshot_steps", lambda self: list(range(0, 5000, 5)))
    monkeypatch.setattr(RunDir, "load_snapshot", lambda self, s, rows=None: loaded.append(s) or {"step": np.asarray(s)})
    monkeypatch.setattr(RunDir, "read_metrics", lambda self: [])

    class Fake:
        step, cfg = 0, TrainConfig()

        def run(self, run, control, on_event):
            return {}
    monkeypatch.setattr(job_module, "resume_run", lambda path: (Fake(), RunDir(path)))
    j = TrainingJob(resume_from=str(tmp_path)).start()
    assert j.join(10)
    assert len(loaded) <= MAX_SNAPSHOTS + 1 and loaded[-1] == 4995
    assert [s["step"] for s in j.snapshots()] == loaded


# ---------------------------------------------------------------------------------- the registry
class Waiting(TrainingJob):
    """A job that trains nothing: it waits until told to end."""

    def __init__(self, out):
        super().__init__(TrainConfig(), out=out)
        self.end = threading.Event()

    def _main(self):
        self._state = job_module.RunState.RUNNING
        self.end.wait(30)
        self._state = job_module.RunState.FINISHED
        self.finished_at = time.monotonic()


def test_the_registry_refuses_jobs_over_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_MAX_JOBS", "2")
    registry = JobRegistry()
    jobs = [registry.start(Waiting(str(tmp_path / f"r{i}"))) for i in range(2)]
    with pytest.raises(UserError, match=r"2 training jobs already running.*at once is 2 \(CONCEPTSCAPE_MAX_JOBS\)"):
        registry.start(Waiting(str(tmp_path / "r2")))
    with pytest.raises(UserError, match="2 new jobs"):
        registry.check_room(2)
    jobs[0].end.set()
    assert jobs[0].join(10)
    registry.start(Waiting(str(tmp_path / "r2")))  # room again
    for j in registry.active():
        j.end.set()
        j.join(10)


def test_the_registry_releases_the_oldest_finished_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_MAX_FINISHED_JOBS", "3")
    registry = JobRegistry()
    dirs = [str(tmp_path / f"r{i}") for i in range(6)]
    for d in dirs:
        j = registry.start(Waiting(d))
        j.end.set()
        assert j.join(10)
    assert len(registry) == 3
    assert [registry.get(d) is not None for d in dirs] == [False, False, False, True, True, True]


def test_a_job_cap_refusal_in_the_app_starts_neither_run_nor_twin(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_MAX_JOBS", "2")
    registry = JobRegistry()
    first = registry.start(Waiting(str(tmp_path / "busy")))
    with pytest.raises(UserError, match="already running"):
        training.start_runs(TrainConfig(), str(tmp_path / "run"), twin=True, registry=registry)
    assert registry.active() == [first] and not (tmp_path / "run").exists()
    first.end.set()
    first.join(10)


# ------------------------------------------------------------------------------------ the catalog
def test_the_catalog_does_not_read_an_unchanged_metrics_file_again(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format_version": 1, "config": TrainConfig(steps=10).to_dict()}))
    metrics = run / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"kind": "train", "step": s, "meta_loss": 1.0}) + "\n" for s in range(1, 6))
                       + json.dumps({"kind": "val", "step": 5, "val_acc": 0.5, "val_ci95": 0.1}) + "\n")
    read = []
    original = catalog.read_metric_records
    monkeypatch.setattr(catalog, "read_metric_records", lambda lines: read.append(list(lines)) or original(read[-1]))
    first = catalog.metrics_digest(metrics)
    assert (first.steps_done, first.val_acc, first.val_ci95) == (5, 0.5, 0.1)
    assert len(read) == 1
    for _ in range(5):
        assert catalog.metrics_digest(metrics).steps_done == 5
    assert len(read) == 1  # unchanged: not read again
    with metrics.open("a") as f:  # a run that trains on: only the new lines are read
        f.write(json.dumps({"kind": "train", "step": 6, "meta_loss": 1.0}) + "\n")
    assert catalog.metrics_digest(metrics).steps_done == 6
    assert len(read) == 2 and len([line for line in read[-1] if line.strip()]) == 1
    metrics.write_text(json.dumps({"kind": "train", "step": 2, "meta_loss": 1.0}) + "\n")  # shorter: read again
    again = catalog.metrics_digest(metrics)
    assert (again.steps_done, again.val_acc) == (2, None)


def test_a_cut_off_last_line_counts_once_it_is_finished(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"kind": "train", "step": 1}) + "\n" + '{"kind": "train", "st')
    assert catalog.metrics_digest(metrics).steps_done == 1
    with metrics.open("a") as f:
        f.write('ep": 2}\n')
    assert catalog.metrics_digest(metrics).steps_done == 2


# ------------------------------------------------------------------------------------ uploads
class Sent:
    """An uploaded file as Streamlit hands it over: its size is known before its bytes are read."""

    def __init__(self, name: str, size: int):
        self.name, self.size, self.reads = name, size, 0

    def getvalue(self) -> bytes:
        self.reads += 1
        return b"x" * self.size


def test_uploaded_files_over_the_limits_are_never_read():
    limits = uploads.LIMITS
    big = Sent("big.png", limits.max_file_bytes + 1)
    many = [Sent(f"{i}.png", 10) for i in range(5)]
    kept, problems = uploads.read_uploaded([big, *many], limits, max_files=3)
    assert [name for name, _ in kept] == ["0.png", "1.png", "2.png"]
    assert big.reads == 0 and [f.reads for f in many] == [1, 1, 1, 0, 0]
    assert len(problems) == 3 and problems[0].startswith("big.png: ")
    # the bytes budget: a file that would pass it is not read
    a, b = Sent("a.png", 600), Sent("b.png", 600)
    kept, problems = uploads.read_uploaded([a, b], limits, budget=1000)
    assert [n for n, _ in kept] == ["a.png"] and b.reads == 0 and "past" in problems[0]


def test_streamlit_limits_each_uploader():
    text = (REPO / ".streamlit" / "config.toml").read_text()
    assert "maxUploadSize" in text
    for files in (("app_pages/1_Data.py", "ui/class_builder.py", "engine/services/class_builder.py"),
                  ("app_pages/3_Adapt.py",)):
        source = "".join((REPO / f).read_text() for f in files)  # a page and the ui/ part that holds its uploaders
        assert source.count(".file_uploader(") == source.count("max_upload_size=")
        assert "read_uploaded(" in source
    assert Path(REPO / "app_pages" / "3_Adapt.py").read_text().count("f.getvalue()") == 0


def test_on_a_gpu_the_gpus_free_memory_decides(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * GIB, 80 * GIB))
    assert budget.available_bytes("cuda") == 8 * GIB and budget.available_bytes("cuda:0") == 8 * GIB
    cfg = TrainConfig(meta_batch=32, ways=20, shots=5, queries=15)
    assert budget.step_bytes(cfg) > 0.8 * 8 * GIB
    monkeypatch.setattr(budget, "available_bytes", lambda device="cpu": 8 * GIB if "cuda" in device else 64 * GIB)
    budget.check_step_memory(cfg, "cpu")  # fits the machine's memory, not the GPU's
    with pytest.raises(UserError, match=r"but the GPU has 8\.0 GiB available"):
        budget.check_step_memory(cfg, "cuda:0")


def test_resume_over_the_job_cap_starts_neither_run_nor_twin(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSCAPE_MAX_JOBS", "2")
    monkeypatch.setattr(training, "_continuable", lambda run_dir: True)
    registry = JobRegistry()
    busy = registry.start(Waiting(str(tmp_path / "busy")))
    with pytest.raises(UserError, match="2 new jobs cannot start now"):
        training.resume_runs(str(tmp_path / "run"), registry=registry, root=tmp_path)
    assert registry.active() == [busy]
    busy.end.set()
    busy.join(10)


def test_a_refusal_names_the_limit_not_what_is_left_of_it():
    """A page passing what is left of a limit (room, bytes) has the refusal say the limit itself."""
    files = [Sent(f"{i}.png", 10) for i in range(3)]
    _, problems = uploads.read_uploaded(files, uploads.LIMITS, max_files=1, count_words="over the 5 support images of a class")
    assert problems == ["1.png: over the 5 support images of a class, left out",
                        "2.png: over the 5 support images of a class, left out"]
    _, problems = uploads.read_uploaded(files, uploads.LIMITS, budget=15, budget_words="would take the task past its 40 MiB limit")
    assert problems[0] == "1.png: would take the task past its 40 MiB limit, left out"
    kept, problems = uploads.read_uploaded(files, uploads.LIMITS, max_files=-2)  # camera photos used the room up
    assert kept == [] and len(problems) == 3
