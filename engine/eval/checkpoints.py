"""A trained run, loaded back for evaluation, adaptation and the live views."""
from __future__ import annotations

import numpy as np
import torch

from engine.config import TrainConfig
from engine.data.imageset import ImageSet, Preprocess
from engine.data.sources import load_imageset
from engine.data.splits import make_splits
from engine.models.deml import DEMLModel, resolve_device, seeded_model
from engine.errors import UserError
from engine.runs import RunDir


CURVE_SHOTS = 5  # metric learners' adaptation curves run over 1..5 shots unless told otherwise


def load_trained(run_dir: str, device: str = "auto") -> tuple[TrainConfig, DEMLModel, torch.device]:
    """The run's config and its model at the last good checkpoint (weights only, no code)."""
    run = RunDir.open(run_dir)
    cfg = TrainConfig.from_dict(run.config())
    state, _ = run.load_checkpoint()
    dev = resolve_device(device)
    model = seeded_model(cfg, cfg.channels, state["external_classes"], cfg.seed)  # weights replaced just below
    model.load_state_dict(state["model"])
    return cfg, model.to(dev).eval(), dev


def evaluation_classes(cfg: TrainConfig, dataset: str | None, classes: str) -> ImageSet:
    """The images to evaluate on, prepared exactly as the run's training data (size, channels,
    polarity). classes="test": the meta-test part under the run's split; "all": every class."""
    data = load_imageset(dataset or cfg.dataset, Preprocess(cfg.image_size, cfg.channels, cfg.polarity))
    if classes == "all":
        return data
    external = "auto" if cfg.external == "auto" else None
    return make_splits(data, cfg.split_config(), external).test


def run_evaluation(run_dir: str, kind: str, dataset: str | None = None, classes: str = "test",
                   ways: int | None = None, shots: int | None = None, queries: int | None = None,
                   episodes: int = 600, seed: int = 0, steps: int | None = None, device: str = "auto",
                   progress=None, warn=None) -> dict:
    """kind "evaluate": accuracy with its 95% CI; "curve": the adaptation curve (inner steps
    0..steps, default 10, or shots 1..K). Ways/shots/queries default to the run's. The result
    is appended to the run's evaluations.jsonl and returned. A metric learner's curve runs over
    1..max(K, 5) shots."""
    from engine.data.episodes import EpisodeSampler
    from engine.eval.evaluate import adaptation_curve, evaluate

    cfg, model, dev = load_trained(run_dir, device)
    data = evaluation_classes(cfg, dataset, classes)
    if kind == "curve" and shots is None and not model.learner.adapts_by_steps:
        # a shots curve needs more than the run's own 1 shot, as many as the classes hold
        w, q = ways or cfg.ways, queries or cfg.queries
        room = int(np.sort(data.counts())[-w]) - q if data.num_classes >= w else cfg.shots
        shots = max(cfg.shots, min(CURVE_SHOTS, room))
    sampler = EpisodeSampler(data, *(cfg_value if given is None else given  # 0 is refused, not replaced
                                     for given, cfg_value in ((ways, cfg.ways), (shots, cfg.shots),
                                                              (queries, cfg.queries))))
    for w in sampler.warnings():
        (warn or (lambda _: None))(w)
    if kind == "evaluate":
        result = evaluate(model, sampler, episodes, seed, dev, steps, progress)
    else:
        result = adaptation_curve(model, sampler, episodes, seed, dev, 10 if steps is None else steps, progress)
    result.update(dataset=data.source, classes=classes, learner=cfg.learner, kind=kind)
    RunDir(run_dir).append_evaluation(result)
    return result


def recorded_or_new(run_dir: str, kind: str, episodes: int, progress=None) -> dict:
    """The run's own test-split result of `kind` at its ways/shots: the latest recorded one with at
    least `episodes` episodes, else a new one (recorded too)."""
    cfg = TrainConfig.from_dict(RunDir.open(run_dir).config())
    for rec in reversed(RunDir(run_dir).read_evaluations()):
        if (rec.get("kind") == kind and rec.get("classes") == "test" and rec.get("ways") == cfg.ways
                and (len(rec.get("steps", [])) > 1 if kind == "curve" else rec.get("shots") == cfg.shots)
                and rec.get("episodes", 0) >= episodes
                and rec.get("dataset") == f"{cfg.dataset} [meta-test]"):
            return rec
    return run_evaluation(run_dir, kind, episodes=episodes, progress=progress)


def find_twin(run_dir: str) -> str | None:
    """The run beside this one with the same settings but the other side of lambda = 0 (DEML vs
    vanilla), or None. Configs are compared after filling defaults, so runs written before a
    setting existed still match."""
    run = RunDir.open(run_dir)
    mine = TrainConfig.from_dict(run.config()).to_dict()
    for other in sorted(run.path.parent.iterdir()):
        if other == run.path or not (other / "config.json").is_file():
            continue
        try:
            theirs = TrainConfig.from_dict(RunDir(other).config()).to_dict()
        except UserError:
            continue
        if ({k: v for k, v in theirs.items() if k != "lam"} == {k: v for k, v in mine.items() if k != "lam"}
                and (theirs["lam"] == 0) != (mine["lam"] == 0)):
            return str(other)
    return None
