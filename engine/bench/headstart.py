"""python -m engine bench headstart: what the built-in generator (--head-start) buys on a small upload.

Each seed cuts its own upload from Omniglot's images_background_small2.zip: 6 classes x 6 images, drawn
at random (so the seeds are different class draws as well as different initial weights and batches).
The asset never saw these alphabets: its preset leaves out every alphabet of small1 and small2.
Half of each class's images train (5-way 1-shot 2-query episodes of the upload's classes, 2 tasks and
32 external images a step, the project's default ProtoNet with lambda = 1 and the built-in glyphs as
the discriminator's set); the other half are held out. The same seed trains twice, from the built-in generator and from scratch, the same
steps: both arms have the same generator, so the same cost per step, and equal steps is equal time.

Scores, at step 0 and after training:
- held-out images: one 6-way task, the upload's training images as support, its held-out images as queries;
- new classes: 5-way 1-shot episodes of other small2 characters (not in the upload).
Mean over seeds with its Student-t 95% interval; the numbers repeat exactly with the seeds.
"""
from __future__ import annotations

import sys

import numpy as np

from engine.bench.machine import machine
from engine.config import TrainConfig, shared_dir
from engine.data.episodes import EpisodeIndex, EpisodeSampler
from engine.data.imageset import ImageSet, Preprocess
from engine.data.sources import load_imageset
from engine.data.splits import Splits
from engine.errors import UserError
from engine.eval.evaluate import episode_accuracies, mean_ci95
from engine.train.trainer import Trainer

EXTERNAL = "glyphs:classes=100,drawings=10,seed=0"  # the discriminator's set when an upload has too few classes
SMOKE = dict(seeds=(0, 1), steps=2, episodes=4, external="glyphs:classes=20,drawings=4,seed=0")


def small2_zip() -> str:
    path = shared_dir() / "data" / "omniglot" / "images_background_small2.zip"
    if not path.is_file():
        raise UserError(f"bench headstart reads {path}, which is not there; set CONCEPTSCAPE_SHARED "
                        "to the folder holding data/omniglot/")
    return str(path)


def cut_upload(data: ImageSet, classes: int, images: int, rng: np.random.Generator) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(train, held_out, rest): `classes` random classes of `data`, `images` random images of each,
    the first half training and the second held out; rest is every other class."""
    chosen = np.sort(rng.choice(data.num_classes, classes, replace=False))
    per_class = data.class_indices()
    picks = [rng.choice(per_class[c], images, replace=False) for c in chosen]
    half = images // 2

    def part(rows) -> ImageSet:
        idx = np.concatenate(rows)
        labels = np.repeat(np.arange(classes), [len(r) for r in rows])
        return ImageSet(data.images[idx], labels, [data.class_names[c] for c in chosen], None, data.source)

    rest = data.subset([c for c in range(data.num_classes) if c not in set(chosen.tolist())])
    return part([p[:half] for p in picks]), part([p[half:] for p in picks]), rest


def held_out_accuracy(trainer: Trainer, train: ImageSet, held_out: ImageSet) -> float:
    """One task of every upload class: its training images the support, its held-out images the queries."""
    n, k, q = train.num_classes, len(train.images) // train.num_classes, len(held_out.images) // held_out.num_classes
    both = ImageSet(np.concatenate([train.images, held_out.images]), np.concatenate([train.labels, held_out.labels]),
                    train.class_names, None, train.source)
    sampler = EpisodeSampler(both, n, k, q)
    per_class = both.class_indices()  # each class's training images first (image order), then its held-out ones
    index = EpisodeIndex(support=np.concatenate([p[:k] for p in per_class])[None],
                         query=np.concatenate([p[k:] for p in per_class])[None], classes=np.arange(n)[None])
    return float(episode_accuracies(trainer.model, sampler, index, trainer.device)[0])


def scores(trainer: Trainer, train: ImageSet, held_out: ImageSet, new: EpisodeIndex, new_sampler) -> dict:
    return {"held_out_images": round(held_out_accuracy(trainer, train, held_out), 5),
            "new_classes_5w1s": round(float(episode_accuracies(trainer.model, new_sampler, new, trainer.device).mean()), 5)}


def headstart_benchmark(seeds=(0, 1, 2, 3, 4), steps: int = 60, classes: int = 6, images: int = 6,
                        episodes: int = 200, external: str = EXTERNAL, log=sys.stderr) -> dict:
    if not seeds or steps < 1 or classes < 5 or images < 4 or episodes < 1:
        raise UserError("bench headstart needs at least one seed, --steps >= 1, --classes >= 5, --images >= 4 "
                        "and --episodes >= 1")
    prep = Preprocess(28, 1, "auto")
    data, ext = load_imageset(small2_zip(), prep), load_imageset(external, prep)
    base = TrainConfig(dataset=small2_zip(), external=external, image_size=28, channels=1, ways=5, shots=1,
                       queries=images // 2 - 1, meta_batch=2, ext_batch=32, steps=steps, val_episodes=4,
                       probe_classes=2, probe_per_class=2)
    runs: dict[str, list[dict]] = {"head_start": [], "scratch": []}
    for seed in seeds:
        train, held_out, rest = cut_upload(data, classes, images, np.random.default_rng([seed, 0x4E5]))
        new_sampler = EpisodeSampler(rest, 5, 1, 5)
        new = new_sampler.fixed(episodes, seed)
        splits = Splits(train=train, val=train, test=held_out, external=ext, report={})
        for arm, setting in (("head_start", "on"), ("scratch", "off")):
            trainer = Trainer(base.with_overrides(seed=seed, head_start=setting), splits)
            before = scores(trainer, train, held_out, new, new_sampler)
            while trainer.step < steps:
                trainer.train_step()
            after = scores(trainer, train, held_out, new, new_sampler)
            runs[arm].append({"seed": seed, "classes": train.class_names, "step0": before, "trained": after})
            print(f"seed {seed} {arm}: step 0 {before}  step {steps} {after}", file=log, flush=True)
    return {"benchmark": "headstart", "upload": f"{classes} classes x {images} images from images_background_small2.zip "
            f"({images // 2} train, {images - images // 2} held out per class)", "steps": steps, "seeds": list(seeds),
            "episodes": episodes, "external": external, "summary": summarise(runs), "runs": runs, "machine": machine()}


def summarise(runs: dict) -> dict:
    """Per arm, at step 0 and trained: each score's mean over seeds and its Student-t 95% half-width."""
    out = {}
    for arm, rows in runs.items():
        for when in ("step0", "trained"):
            for name in rows[0][when]:
                mean, ci = mean_ci95([r[when][name] for r in rows])
                out[f"{arm}/{when}/{name}"] = {"mean": round(mean, 4), "ci95": round(ci, 4)}
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=60, help="training steps of both arms")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1, each its own class draw")
    parser.add_argument("--episodes", type=int, default=200, help="5-way 1-shot episodes of new classes per seed")


def run(args) -> dict:
    if args.smoke:
        return headstart_benchmark(**SMOKE)
    return headstart_benchmark(seeds=tuple(range(args.seeds)), steps=args.steps, episodes=args.episodes)
