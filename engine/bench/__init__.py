"""Benchmarks (python -m engine bench NAME): measured in one process, compared as ratios, since
this machine is shared and noisy. Results go to stdout as one JSON line.

BENCHMARKS is the registry the command line is built from. Each benchmark module owns its flags
(`add_arguments(parser)`) and its `run(args) -> dict | None`; every benchmark also takes --smoke:
the same code on tiny sizes, in seconds, which is what the test suite runs.
"""
from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass
from types import ModuleType

from engine.errors import UserError

# TrainConfig overrides for --smoke: a tiny model (and, where the data is not fixed, tiny built-in data)
SMOKE_DATA = "glyphs:classes=60,drawings=8,seed=1"
# ... as overrides: on 3 tiny alphabets every meta-train alphabet trains (the demo preset keeps 2 of 10)
SMOKE_DATA_SET = dict(dataset=SMOKE_DATA, train_limit=0)
SMOKE_MODEL = dict(width=8, concept_dim=16, meta_batch=2, ext_batch=8, val_episodes=4, probe_classes=2,
                   probe_per_class=2)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark module, imported on use: projection and live pull in plotly and scikit-learn,
    which `python -m engine --help` and the other commands should not pay for."""

    module: str  # engine.bench.<module>
    help: str

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--smoke", action="store_true",
                            help="tiny sizes, the same code: seconds, to check that the benchmark still runs")
        self.load().add_arguments(parser)

    def run(self, args: argparse.Namespace) -> dict | None:
        return self.load().run(args)


BENCHMARKS: dict[str, Benchmark] = {
    "throughput": Benchmark("throughput", "trainer cost against the raw generator forward + backward"),
    "profile": Benchmark("profile", "one step's parts (sampling, G, learner, D, Adam), FLOPs per image, fraction of peak"),
    "projection": Benchmark("projection", "concept-map refresh time and stability"),
    "live": Benchmark("live", "live view refresh time, and the training it slows down"),
    "omniglot": Benchmark("omniglot", "5w1s/5w5s/20w1s/20w5s on unseen Omniglot alphabets, over training time"),
    "deml": Benchmark("deml", "what the discriminator adds: vanilla, pooled, cross-domain, lambda sweep"),
    "cost": Benchmark("cost", "CPU settings, vmap against the loop, cost growth, peak memory"),
    "headstart": Benchmark("headstart", "the built-in generator against training from scratch, on small uploads"),
    "smalldata": Benchmark("smalldata", "a 400-step ProtoNet on Omniglot's small1.zip, scored on small2's unseen alphabets"),
    "summary": Benchmark("summary", "markdown tables (and an accuracy-against-time plot) of omniglot / deml results"),
}


def add_rounds(parser: argparse.ArgumentParser, default: int = 6) -> None:
    parser.add_argument("--rounds", type=int, default=default, help="interleaved measurement rounds")


def check_rounds(rounds: int) -> int:
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1 (got {rounds})")
    return rounds


def add_sets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="sets",
                        help="train with a setting changed (a train flag, repeatable), e.g. --set norm=group")


def parse_sets(pairs: list[str]) -> dict:
    """["head-start=off", "rotations=true", "lr=0.002"] -> TrainConfig overrides (numbers and true / false
    as JSON reads them, anything else as text); a name that is no train setting is a UserError. Each
    value is checked against its field where the config is built (TrainConfig.from_dict)."""
    from engine.config import TrainConfig

    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep:
            raise UserError(f"--set {pair!r}: write NAME=VALUE with NAME a train flag (e.g. --set head-start=off)")
        if name not in TrainConfig.__dataclass_fields__:
            raise UserError(f"--set {name}: not a train setting (python -m engine train --help lists them)")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def with_sets(cfg, sets: dict):
    """`cfg` with the --set overrides, each checked against its field (a wrong type is one UserError line)."""
    return type(cfg).from_dict({**cfg.to_dict(), **sets}, source="--set")
