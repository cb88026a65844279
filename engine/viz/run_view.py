"""A run as the live view reads it (no layout here: engine.viz.live lays out its map): from its job
while one trains in this process, else from its run folder, where each snapshot is loaded once,
damaged files are skipped and said, and new ones are picked up."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import UserError
from engine.records import ACTIVE, CONTINUABLE, MetricRecord, Probe, RunState, Snapshot, val_records
from engine.runs import RunDir
from engine.train.job import TrainingJob


class DiskRun:
    """A run without a job in this process (finished earlier, or trained by the command line):
    its records read from the run directory, each snapshot loaded once, new ones picked up."""

    def __init__(self, run_dir: str):
        self.run = RunDir(run_dir)
        self._snapshots: dict[int, Snapshot] = {}
        self._probe: Probe | None = None
        self.problems: dict[str, str] = {}  # file name -> why it was skipped (a damaged probe or snapshot)
        self._failed: dict[int, int] = {}  # step -> mtime_ns of a snapshot file that did not load

    def exists(self) -> bool:
        return (self.run.path / "config.json").is_file()

    def probe(self) -> Probe | None:
        """The run's probe; None while there is none, or when it is damaged (said in `problems`)."""
        if self._probe is None and (self.run.path / "snapshots" / "probe.npz").is_file():
            try:
                self._probe = self.run.load_probe()
                self.problems.pop("probe.npz", None)
            except UserError as e:
                self.problems["probe.npz"] = str(e)
        return self._probe

    def snapshots(self) -> list[Snapshot]:
        """The snapshots that load and match the probe, in order. Snapshots are written atomically,
        so one that does not load is damaged: it is skipped (said in `problems`) and tried again
        only when its file changes."""
        probe = self.probe()
        rows = len(probe["images"]) if probe is not None else None
        present = self.run.snapshot_steps()
        for gone in set(self._snapshots) - set(present):  # dropped by a resume from an earlier checkpoint
            del self._snapshots[gone]
        for s in present:
            if s in self._snapshots:
                continue
            name = f"step_{s:07d}.npz"
            try:
                stamp = (self.run.path / "snapshots" / name).stat().st_mtime_ns
            except OSError:
                continue
            if self._failed.get(s) == stamp:
                continue
            loaded, skipped = self.run.load_snapshots([s], rows)
            if loaded:
                self._snapshots[s] = loaded[0]
                self.problems.pop(name, None)
            else:
                self._failed[s] = stamp
                self.problems[name] = skipped[0]
        return [self._snapshots[s] for s in sorted(self._snapshots)]


@dataclass
class RunView:
    """Everything the live view shows of one run, read in one go."""

    run_dir: str | None
    source: str  # "job" (training in this process), "disk" (a saved run), "none"
    state: RunState  # a TrainingJob state, SAVED, ELSEWHERE (another process trains it; no Resume), or NONE
    progress: dict = field(default_factory=dict)  # TrainingJob.progress() (or the same keys from disk)
    device: str | None = None  # "CPU" / "GPU" while a job trains
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    metrics: list[MetricRecord] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    probe: Probe | None = None
    twin_dir: str | None = None
    twin_state: RunState | None = None
    twin_metrics: list[MetricRecord] | None = None
    twin_progress: dict | None = None
    twin_snapshots: list[Snapshot] = field(default_factory=list)  # the twin's, for its map beside this one
    twin_probe: Probe | None = None  # the twin's probe (the same images as this run's: same split_seed)
    lam: float | None = None  # the run's lambda (0: it is the vanilla side of a twin pair)
    holder: str | None = None  # ELSEWHERE: the process that trains it ("process 123 on host (started ...)")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE or self.twin_state in ACTIVE

    @property
    def resumable(self) -> bool:
        """A stopped (or unfinished saved) run with a checkpoint: training can continue it (not
        while another process trains it or its twin)."""
        p = self.progress
        return self.state in CONTINUABLE and self.twin_state != RunState.ELSEWHERE and bool(p) and p.get("step", 0) < p.get("steps", 0) \
            and self.run_dir is not None and bool(RunDir(self.run_dir).checkpoints())


def device_name(job: TrainingJob) -> str | None:
    t = job.trainer
    if t is None:
        return None
    return "GPU" if t.device.type == "cuda" else t.device.type.upper()


def config_lam(run: RunDir) -> float | None:
    try:
        return run.train_config().lam
    except UserError:
        return None


def val_summary(metrics: list[MetricRecord], twin_metrics: list[MetricRecord] | None = None) -> dict | None:
    """The validation accuracy (and its 95% CI) at the latest step this run and its twin both validated,
    with the twin's and the difference in points (so it agrees with the paired headline,
    eval.headline); without a common step, this run's latest alone. None before the first validation."""
    vals = {int(m["step"]): m for m in val_records(metrics) if m.get("val_acc") is not None}
    if not vals:
        return None
    twin = {int(m["step"]): m for m in val_records(twin_metrics or []) if m.get("val_acc") is not None}
    common = vals.keys() & twin.keys()
    step = max(common) if common else max(vals)
    last = vals[step]
    out = {"step": step, "acc": float(last["val_acc"]), "ci95": last.get("val_ci95"),
           "twin_acc": None, "twin_step": None, "delta": None}
    if common:
        t = float(twin[step]["val_acc"])
        out.update(twin_acc=t, twin_step=step, delta=out["acc"] - t)
    return out
