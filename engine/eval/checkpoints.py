"""A trained run, loaded back for evaluation, adaptation and the live views: its model at the
last good checkpoint (cached per run and checkpoint), and its held-out classes."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from functools import lru_cache

import torch

from engine.config import TrainConfig
from engine.data.imageset import ImageSet, Preprocess
from engine.data.sources import load_imageset
from engine.data.splits import make_splits
from engine.errors import UserError
from engine.models.deml import DEMLModel, resolve_device, seeded_model
from engine.runs import RunDir, as_run

MODEL_CACHE = 4  # models kept loaded (shared by every session)
# the gradient learners' shared output row of runs trained before the prototype head (issue 15)
OLD_HEAD_KEYS = {"learner.head.shared.row_weight", "learner.head.shared.row_bias"}


def refuse_old_head(run: RunDir, cfg: TrainConfig, state: dict) -> None:
    """A UserError for a checkpoint of a gradient learner trained before the prototype head."""
    if OLD_HEAD_KEYS & set(state.get("model", {})):
        raise UserError(f"{run.path} was trained with the earlier {cfg.learner} head, which started every task from "
                        "zero (a learned shared row that never learned); the head now starts from the support "
                        "prototypes and sums its inner loss over classes, so these weights would adapt differently "
                        "from how they were trained: train the run again with the same settings")


def load_trained(run: RunDir | str, device: str = "auto") -> tuple[TrainConfig, DEMLModel, torch.device]:
    """The run's config and its model at the last good checkpoint (weights only, no code)."""
    run = as_run(run)
    cfg = run.train_config()
    if cfg.channels is None:
        raise UserError(f"{run.path / 'config.json'} does not say how many channels the images have; "
                        "the run cannot be rebuilt")
    state, _ = run.load_checkpoint()
    refuse_old_head(run, cfg, state)
    dev = resolve_device(device)
    try:
        model = seeded_model(cfg, cfg.channels, state["external_classes"], cfg.seed)  # weights replaced just below
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, ValueError) as e:  # weights of other shapes or names
        raise UserError(f"the newest checkpoint of {run.path} does not fit its settings "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); train the run again") from e
    return cfg, model.to(dev).eval(), dev


def evaluation_classes(cfg: TrainConfig, dataset: str | None, classes: str) -> ImageSet:
    """The images to evaluate on, prepared exactly as the run's training data (size, channels,
    polarity). classes="test": the meta-test part under the run's split; "val": its meta-validation
    part (where choices are made); "all": every class."""
    data = load_imageset(dataset or cfg.dataset, Preprocess(cfg.image_size, cfg.channels, cfg.polarity))
    if classes == "all":
        return data
    external = "auto" if cfg.external == "auto" else None
    splits = make_splits(data, cfg.split_config(), external)
    return splits.val if classes == "val" else splits.test


@lru_cache(maxsize=4)
def held_out_classes(cfg: TrainConfig) -> ImageSet:
    """The run's meta-test classes, prepared as its training data (cached: splitting takes a moment)."""
    return evaluation_classes(cfg, None, "test")


_models: OrderedDict = OrderedDict()
_models_lock = threading.Lock()


def checkpoint_stamp(run: RunDir | str) -> tuple:
    """What identifies the weights a run would load now (its newest checkpoint's name and time)."""
    ckpts = (run if isinstance(run, RunDir) else RunDir(run)).checkpoints()
    if not ckpts:
        return ()
    st = ckpts[-1].stat()
    return ckpts[-1].name, st.st_mtime_ns, st.st_size


def load_model(run: RunDir | str, device: str = "auto") -> tuple[TrainConfig, DEMLModel, torch.device]:
    """load_trained, cached per run and checkpoint (a newer checkpoint reloads).
    The models are shared between sessions: only ever used in eval mode, never changed."""
    run = as_run(run)
    key = (os.path.realpath(run.path), checkpoint_stamp(run), device)
    with _models_lock:
        hit = _models.get(key)
        if hit is not None:
            _models.move_to_end(key)
            return hit
    loaded = load_trained(run, device)
    with _models_lock:
        _models[key] = loaded
        while len(_models) > MODEL_CACHE:
            _models.popitem(last=False)
    return loaded
