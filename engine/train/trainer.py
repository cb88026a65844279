"""The DEML joint loop: each step samples a meta-batch of tasks and a batch of external images,
passes the task images and the external images through G separately (engine/models/deml.py
external_pass: the external batch never reaches the task images' normalisation, nor the running
statistics evaluation uses), and takes one Adam step on L_meta + lambda * L_disc over G, D and M.
lambda = 0 is the vanilla meta-learner with everything else identical: the same data order, the
same initial weights and, at the same weights, the same meta loss as at any lambda > 0.

Randomness per step comes from numpy generators seeded by (seed, step), so a run resumed from a
checkpoint draws exactly the batches the uninterrupted run would have drawn.

Under torchrun (engine/train/distributed.py) each of W processes draws the same global step and trains
on its 1/W of the tasks and of the external images; gradients are averaged over the processes, so
every rank takes the step one process would take on the whole batch (up to float rounding).
Only rank 0 validates, snapshots, checkpoints and writes the run directory. A single process is
world size 1, and the code paths are the same.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import TrainConfig
from engine.data.augment import augment, batch_rows
from engine.data.episodes import EpisodeSampler, HeldOutSampler, channels_first, class_major_labels, take
from engine.data.imageset import ImageSet, Preprocess
from engine.data.sources import load_imageset
from engine.data.splits import Splits, make_splits
from engine.errors import UserError
from engine.eval.evaluate import (
    curve_sampler,
    curve_scores,
    curve_summary,
    episode_accuracies,
    mean_ci95,
    shared_concepts,
)
from engine.models import head_start
from engine.models.deml import eval_mode, external_pass, resolve_device, seeded_model
from engine.records import AdaptationRecord, Probe, Snapshot, TrainRecord, ValRecord
from engine.runs import RunDir
from engine.train import distributed
from engine.train.budget import check_step_memory

SPLIT_CODES = {"meta-train": 0, "meta-test": 1, "external": 2}
TIMED_SNAPSHOTS = 400  # on long runs snapshots by time come at most every 1/400 of the time trained so far
_clock = time.monotonic  # the wall clock of snapshots by time (tests replace it)
CURVE_EPISODES = 20  # episodes of the adaptation curve measured at each validation (at most val_episodes)


def load_data(cfg: TrainConfig) -> tuple[TrainConfig, Splits]:
    """Read the dataset and external set, split them, and pin the resolved image size and
    channels into the config (so evaluation prepares other data the same way)."""
    data = load_imageset(cfg.dataset, cfg.preprocess()).without_groups(cfg.exclude_groups)
    cfg = cfg.with_overrides(image_size=data.image_size, channels=data.channels)
    if cfg.external in ("auto", "none"):
        external: ImageSet | str | None = "auto" if cfg.external == "auto" else None
    else:
        if cfg.external == cfg.dataset:
            raise UserError("--external names the same data as --dataset: its classes would overlap the "
                            "meta-learning classes; use --external auto for a class-disjoint part of it")
        external = load_imageset(cfg.external, Preprocess(data.image_size, data.channels, cfg.polarity))
    splits = make_splits(data, cfg.split_config(), external)
    if cfg.lam > 0 and splits.external is None:
        raise UserError("--lam > 0 needs an external set for the discriminator: use --external auto or a SPEC, "
                        "or --lam 0 for the vanilla meta-learner")
    return cfg, splits


@dataclass
class Control:
    """Pause/stop requests from another thread (the app), read by the loop between steps."""

    paused: bool = False
    stop: bool = False


class Trainer:
    def __init__(self, cfg: TrainConfig, splits: Splits | None = None):
        device = distributed.device(resolve_device(cfg.device))
        if splits is None:
            check_step_memory(cfg, device, processes=distributed.world_size())  # before the data is read: the smallest images it can have
            cfg, splits = load_data(cfg)
        check_step_memory(cfg, device, processes=distributed.world_size())  # the data's own size and channels, before the model exists
        cfg = head_start.resolve(cfg, splits.train.channels)  # "auto" becomes on/off: config.json says how it started
        self.cfg, self.splits = cfg, splits
        self.device = device
        if cfg.amp and self.device.type != "cuda":
            raise UserError(f"--amp (bf16 autocast) needs a CUDA GPU, but this run trains on {self.device}: "
                            "add --device cuda, or leave --amp out")
        # with W processes each takes a contiguous 1/W of every step's tasks and external images
        self.task_share = distributed.share(cfg.meta_batch, "--meta-batch")
        self.ext_share = distributed.share(cfg.ext_batch, "--ext-batch") if cfg.lam > 0 else None
        self.warnings: list[str] = []
        self.train_sampler = EpisodeSampler(splits.train, cfg.ways, cfg.shots, cfg.queries)
        self.val_sampler = self._val_sampler(splits)
        self.warnings += self.train_sampler.warnings() + self.val_sampler.warnings()
        ext = splits.external
        self.ext_images = channels_first(ext.images) if ext is not None else None  # uint8 (E, C, H, W)
        self.ext_labels = torch.tensor(ext.labels) if ext is not None else None
        self.model = seeded_model(cfg, splits.train.channels, ext.num_classes if ext is not None else 0,
                                  cfg.seed).to(self.device)
        head_start.apply(self.model.generator, cfg)  # --head-start on: the built-in generator's weights
        if distributed.world_size() > 1 and self.device.type == "cuda":
            # batch statistics over the whole step's batch, as one process has them (NCCL only: with
            # gloo on CPU each rank normalises by its own share; norm "group" does not depend on it)
            self.model.generator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model.generator)
        distributed.broadcast_module(self.model)  # every rank starts from rank 0's parameters
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # validation episodes depend on split_seed only, so a DEML run and its lambda=0 twin share them
        self.val_index = self.val_sampler.fixed(cfg.val_episodes, cfg.split_seed)
        # the adaptation curve at each validation: few fixed episodes of the validation classes, with
        # more shots than K for a metric learner's shot curve (as many as those classes hold)
        self.curve_sampler = self.val_sampler if splits.val_held_out is not None else \
            curve_sampler(self.model, splits.val, self.val_sampler)  # held-out queries: curves at K shots
        self.curve_index = self.curve_sampler.fixed(min(CURVE_EPISODES, cfg.val_episodes), cfg.split_seed)
        self.probe = self._probe()
        self.step = 0
        self.seconds = 0.0  # training wall time, summed over resumes
        # the training loop's wall time (steps, validation, snapshots), summed over resumes: what
        # --minutes budgets; with several processes the mean of their clocks, so all agree on it
        self.loop_seconds = 0.0
        self.last_val: ValRecord | None = None
        self._started_at = _clock()
        self._last_snapshot_at: float | None = None  # when run() took its last snapshot (by _clock)

    def _val_sampler(self, splits: Splits) -> EpisodeSampler:
        try:
            if splits.val_held_out is not None:
                return HeldOutSampler(splits.val, splits.val_held_out, self.cfg.ways, self.cfg.shots, self.cfg.queries)
            return EpisodeSampler(splits.val, self.cfg.ways, self.cfg.shots, self.cfg.queries)
        except UserError as e:
            raise UserError(f"meta-validation split: {e}; give it more classes with --val-split "
                            "or lower --ways") from None

    # --- one optimisation step ---------------------------------------------------------------
    def progress(self) -> float:
        """How far training is, 0..1: the fraction of the steps done or, with --minutes, of the
        time budget used (whichever is further). The learning-rate schedule follows it."""
        done = self.step / max(1, self.cfg.steps)
        if self.cfg.minutes > 0:
            done = max(done, self.loop_seconds / (60 * self.cfg.minutes))
        return min(1.0, done)

    def time_is_up(self) -> bool:
        return self.cfg.minutes > 0 and self.loop_seconds >= 60 * self.cfg.minutes

    def lr_at(self, progress: float) -> float:
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        return self.cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    def sample_batch(self, step: int) -> dict:
        """Step `step`'s images and labels: a meta-batch of tasks, then (lambda > 0) external images.
        The whole step is drawn from (seed, step) alone; each process keeps its share (all of it
        when alone), so W processes together train on exactly what one would."""
        cfg, dev = self.cfg, self.device
        rng = np.random.default_rng([cfg.seed, step])
        tasks = take(self.train_sampler.draw(cfg.meta_batch, rng), self.task_share.start, self.task_share.stop)
        t, (nk, nq) = len(tasks.classes), (tasks.support.shape[1], tasks.query.shape[1])  # T (this rank's), N*K, N*Q
        index = torch.from_numpy(np.concatenate([tasks.support.reshape(-1), tasks.query.reshape(-1)]))
        batch = {"tasks": t, "nk": nk, "nq": nq,  # labels made on the device: nothing to copy
                 "support_labels": class_major_labels(cfg.ways, cfg.shots, t, dev),
                 "query_labels": class_major_labels(cfg.ways, cfg.queries, t, dev),
                 # uint8 travels (a quarter of float32's bytes) and becomes [0, 1] floats on the device
                 "x": augment(self._images(self.train_sampler.images[index]), cfg.augment, (cfg.seed, step),
                              batch_rows(cfg.meta_batch, self.task_share, nk, nq))}  # (T*N*K + T*N*Q, C, H, W)
        if cfg.lam > 0:  # drawn after the tasks, from the same generator: the tasks are the same at any lambda
            n_ext = len(self.ext_images)
            pick = rng.choice(n_ext, cfg.ext_batch, replace=cfg.ext_batch > n_ext)[self.ext_share]
            pick = torch.from_numpy(pick)
            batch["x_ext"] = self._images(self.ext_images[pick])  # (B, C, H, W)
            batch["ext_labels"] = self._to_device(self.ext_labels[pick])
        return batch

    @staticmethod
    def step_images(batch: dict) -> torch.Tensor:
        """All of a step's images, task and external, in one tensor (for benchmarks of G's cost)."""
        return torch.cat([batch["x"]] + ([batch["x_ext"]] if "x_ext" in batch else []))

    def _images(self, uint8: torch.Tensor) -> torch.Tensor:
        return self._to_device(uint8).float().div_(255.0)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the training device. On CUDA it is copied into pinned (page-locked) memory
        first, so the transfer runs asynchronously and the host goes on queueing the step."""
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def train_step(self) -> TrainRecord:
        cfg, t0 = self.cfg, time.perf_counter()
        b = self.sample_batch(self.step)
        x, t, nk, nq = b["x"], b["tasks"], b["nk"], b["nq"]
        self.model.train()
        # --amp: G, which has the compute, in bf16; the meta-learner's (second-order) inner loops
        # and D stay in float32, where concept space is small and precision matters
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            z = self.model.generator(x).float()  # (T*N*K + T*N*Q, D): the task images alone
            if "x_ext" in b:  # its own pass: batch statistics of the external images, running ones untouched
                z_ext = external_pass(self.model.generator, b["x_ext"]).float()  # (B, D)
        zs = z[: t * nk].view(t, nk, -1)  # (T, N*K, D)
        zq = z[t * nk: t * (nk + nq)].view(t, nq, -1)  # (T, N*Q, D)
        result = self.model.learner.meta_loss(zs, b["support_labels"], zq, b["query_labels"], cfg.ways)
        loss = result.loss
        stats = [result.query_loss, result.accuracy]  # stay on the device until the step is queued
        if "ext_labels" in b:
            ext_labels = b["ext_labels"]
            disc_logits = self.model.discriminator(z_ext)  # (B, external classes)
            disc_loss = F.cross_entropy(disc_logits, ext_labels)
            loss = loss + cfg.lam * disc_loss
            stats += [disc_loss.detach(), (disc_logits.argmax(-1) == ext_labels).float().mean()]
        progress = self.progress()  # before the step: where the schedule takes its learning rate
        lr = self.lr_at(progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # each rank's loss is the mean over its equal share, so the mean of the ranks' gradients
        # is the gradient of the mean loss over the whole meta-batch (and external batch)
        distributed.average_gradients(self.model.parameters())
        self.optimizer.step()
        # the step's one host-device sync, after all of it is queued (so step_seconds is honest on
        # CUDA too); with several processes, the mean over all of them: the whole batch's numbers
        values = distributed.average(torch.stack([s.float() for s in stats])).tolist()
        meta_loss, meta_acc, disc_loss, disc_acc = values + [None] * (4 - len(values))
        record = {"kind": "train", "step": self.step + 1, "meta_loss": meta_loss, "meta_acc": meta_acc,
                  "disc_loss": disc_loss, "disc_acc": disc_acc}
        self.step += 1
        dt = time.perf_counter() - t0
        self.seconds += dt
        images = len(x) + (len(b["x_ext"]) if "x_ext" in b else 0)
        record.update(lr=lr, step_seconds=dt, images_per_s=images * distributed.world_size() / dt,
                      seconds=self.seconds, progress=round(progress, 5))
        return record

    # --- validation and snapshots -------------------------------------------------------------
    def val_concepts(self) -> tuple[np.ndarray, torch.Tensor]:
        """The concepts of every image of the validation and curve episodes, now (each image through
        G once): validate() and adaptation() share them, so the curve costs little more than its learner."""
        return shared_concepts(self.model, self.val_sampler, (self.val_index, self.curve_index), self.device)

    def validate(self, table=None) -> ValRecord:
        """Mean accuracy on the fixed validation episodes; `table`: val_concepts() (else computed here)."""
        acc = episode_accuracies(self.model, self.val_sampler, self.val_index, self.device, table=table)
        mean, ci = mean_ci95(acc)
        self.last_val = {"kind": "val", "step": self.step, "val_acc": mean, "val_ci95": ci,
                         "episodes": len(acc), "seconds": self.seconds,
                         "val_per_episode": [round(float(a), 4) for a in acc]}  # paired DEML-vs-twin headline
        return self.last_val

    def adaptation(self, table=None) -> AdaptationRecord:
        """The adaptation curve now, on the fixed curve episodes: query accuracy after 0..S inner steps
        (gradient learners) or with 1..K' shots (metric learners); its fields: engine.records.AdaptationRecord.
        `table`: val_concepts() (else computed here)."""
        steps = self.cfg.inner_steps
        acc, loss = curve_scores(self.model, self.curve_sampler, self.curve_index, self.device, steps, table=table)
        curve = curve_summary(self.model, self.curve_sampler, acc, loss, len(self.curve_index.classes),
                              self.cfg.split_seed, steps)
        return {"kind": "adaptation", "step": self.step,
                "axis": "inner_steps" if self.model.learner.adapts_by_steps else "shots",
                "x": [int(v) for v in curve["steps"]], "accuracy": [float(a) for a in curve["accuracy"]],
                "ways": self.curve_sampler.ways, "episodes": curve["episodes"]}

    def _probe(self) -> Probe:
        """A fixed set of images whose concepts every snapshot records (for the live map); its
        fields: engine.records.Probe."""
        rng = np.random.default_rng([self.cfg.split_seed, 0x9B0BE])
        parts = [("meta-train", self.splits.train), ("meta-test", self.splits.test)]
        if self.splits.external is not None:
            parts.append(("external", self.splits.external))
        images, split, label, names, index = [], [], [], [], []
        for split_name, data in parts:
            per_class = data.class_indices()
            classes = [c for c in range(data.num_classes) if len(per_class[c])]
            chosen = np.sort(rng.choice(classes, min(self.cfg.probe_classes, len(classes)), replace=False))
            for c in chosen:
                idx = np.sort(rng.choice(per_class[c], min(self.cfg.probe_per_class, len(per_class[c])), replace=False))
                images.append(data.images[idx])
                split += [SPLIT_CODES[split_name]] * len(idx)
                label += [int(c)] * len(idx)
                names += [data.class_names[c]] * len(idx)
                index += idx.tolist()
        return {
            "images": np.concatenate(images),
            "split": np.asarray(split, dtype=np.int8),
            "label": np.asarray(label, dtype=np.int64),
            "class_name": np.asarray(names, dtype=str),
            "image_index": np.asarray(index, dtype=np.int64),
            "external_classes": np.asarray(self.splits.external.class_names if self.splits.external else [], dtype=str),
        }

    def snapshot(self) -> Snapshot:
        """Concepts of the probe images and the discriminator's view of them, now; its fields:
        engine.records.Snapshot."""
        with eval_mode(self.model):
            x = channels_first(self.probe["images"]).float().div_(255).to(self.device)
            z = self.model.concepts(x)  # (P, D)
            out: Snapshot = {"step": np.int64(self.step), "concepts": z.cpu().numpy().astype(np.float32)}
            if self.model.discriminator is not None:
                with torch.no_grad():
                    probs = torch.softmax(self.model.discriminator(z), -1)  # (P, external classes)
                conf, pred = probs.max(-1)
                out.update(disc_pred=pred.cpu().numpy(), disc_conf=conf.cpu().numpy(),
                           disc_trained=np.bool_(self.cfg.lam > 0))
                for k, v in self.model.discriminator.state_dict().items():  # for exact regions on a PCA map
                    out[f"disc.{k}"] = v.cpu().numpy()
        return out

    def snapshot_due(self) -> bool:
        """By step: 0, 1, 2, 4, 8... early on (the first seconds move the most), then every
        snapshot_every steps and the last step. By time: when cfg.snapshot_seconds of wall time
        passed since the last snapshot (the gap grows to 1/TIMED_SNAPSHOTS of the time this process
        has trained, so a long run does not fill its folder). Snapshots only read the model:
        when they are taken never changes what is trained."""
        s, every = self.step, self.cfg.snapshot_every
        early = s < every and s & (s - 1) == 0
        if early or s % every == 0 or s == self.cfg.steps:
            return True
        if self.cfg.snapshot_seconds <= 0 or self._last_snapshot_at is None:
            return False
        now = _clock()
        gap = max(self.cfg.snapshot_seconds, (now - self._started_at) / TIMED_SNAPSHOTS)
        return now - self._last_snapshot_at >= gap

    # --- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        return {"step": self.step, "seconds": self.seconds, "loop_seconds": self.loop_seconds, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "config": self.cfg.to_dict(),
                "external_classes": self.model.external_classes, "last_val": self.last_val}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seconds, self.last_val = state["step"], state["seconds"], state.get("last_val")
        self.loop_seconds = state.get("loop_seconds", self.seconds)  # checkpoints older than --minutes

    # --- the loop ----------------------------------------------------------------------------
    def run(self, run: RunDir | None = None, control: Control | None = None,
            on_event: Callable[[str, dict], None] | None = None) -> dict:
        """Train until cfg.steps (or a stop request), writing metrics, snapshots and checkpoints
        to `run` and handing every record to `on_event(kind, record)`."""
        main = distributed.is_main()
        if not main:  # the other ranks train in lockstep and record nothing (and lock nothing)
            run, on_event = None, None
        if run is None:
            return self._run(None, control, on_event)
        # one trainer per run folder, across processes: held from start_run / resume_run on (or
        # taken here), let go when training ends however it ends (by the OS if the process dies)
        try:
            run.acquire_lock()
            return self._run(run, control, on_event)
        finally:
            run.release_lock()

    def _run(self, run: RunDir | None, control: Control | None,
             on_event: Callable[[str, dict], None] | None) -> dict:
        control = control or Control()
        main = distributed.is_main()
        emit = on_event or (lambda kind, rec: None)
        pending: list[dict] = []
        last_flush = time.monotonic()

        def record(rec: dict):
            nonlocal last_flush
            pending.append(rec)
            emit(rec["kind"], rec)
            if run is not None and time.monotonic() - last_flush > 1.0:
                run.append_metrics(pending)
                pending.clear()
                last_flush = time.monotonic()

        def checkpoint():
            if run is not None:
                run.append_metrics(pending)
                pending.clear()
                run.save_checkpoint(self.state(), self.step)
            emit("checkpoint", {"step": self.step})

        def validate():
            if main:  # the others wait for rank 0 in the next step's gradient all-reduce
                table = self.val_concepts()  # one pass of G over both sets of episodes' images
                record(self.validate(table))
                record(self.adaptation(table))

        def snapshot():
            if not main:
                return
            snap = self.snapshot()
            self._last_snapshot_at = _clock()
            if run is not None:
                run.save_snapshot(self.step, snap)
            emit("snapshot", snap)

        self._started_at = self._last_snapshot_at = _clock()  # snapshots by time count from here
        for w in self.warnings:
            emit("warning", {"message": w})
        if run is not None and not (run.path / "snapshots" / "probe.npz").exists():
            run.save_probe(self.probe)
        if self.step == 0:
            snapshot()
        # a stop request (Ctrl-C) that reaches any rank stops every rank at the same step
        last = _clock()
        while self.step < self.cfg.steps and not self.time_is_up() and not distributed.any_rank(control.stop, self.device):
            if control.paused:
                time.sleep(0.05)
                last = _clock()  # time paused is not training time
                continue
            record(self.train_step())
            if self.step % self.cfg.val_every == 0 or self.step == self.cfg.steps:
                validate()
            if self.snapshot_due():
                snapshot()
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                checkpoint()
            now = _clock()
            self._count_loop_time(now - last)
            last = now
        if self.time_is_up() and self.step < self.cfg.steps:
            # --minutes ran out: the run ends here, finished, and config.json records the steps it did
            self.cfg = self.cfg.with_overrides(steps=self.step)
            if run is not None:
                run.update_config(self.cfg.to_dict())
            snapshot()
        if self.last_val is None or self.last_val["step"] != self.step:
            validate()
        checkpoint()  # also on stop, so a stopped run can be resumed where it was left
        distributed.barrier()  # every rank returns once rank 0's last checkpoint is on disk
        return self.summary(run)

    def _count_loop_time(self, seconds: float) -> None:
        if self.cfg.minutes > 0 and distributed.active():  # one clock for all: the mean of theirs
            seconds = float(distributed.average(torch.tensor([seconds], device=self.device)).item())
        self.loop_seconds += seconds

    def summary(self, run: RunDir | None = None) -> dict:
        return {"run_dir": str(run.path) if run else None, "steps": self.step, "seconds": round(self.seconds, 3),
                "loop_seconds": round(self.loop_seconds, 3), "minutes": self.cfg.minutes,
                "val_accuracy": self.last_val["val_acc"] if self.last_val else None,
                "val_ci95": self.last_val["val_ci95"] if self.last_val else None,
                "learner": self.cfg.learner, "lam": self.cfg.lam, "device": str(self.device)}
