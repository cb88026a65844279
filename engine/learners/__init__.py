"""Meta-learners in concept space, chosen by name."""
from engine.errors import UserError
from engine.learners.base import LearnerConfig, MetaLearner, TaskResult
from engine.learners.maml import MAML
from engine.learners.matching import MatchingNet
from engine.learners.metasgd import MetaSGD
from engine.learners.protonet import ProtoNet
from engine.learners.reptile import Reptile

LEARNERS: dict[str, type[MetaLearner]] = {cls.name: cls for cls in (ProtoNet, MatchingNet, MAML, MetaSGD, Reptile)}


def build_learner(name: str, concept_dim: int, cfg: LearnerConfig) -> MetaLearner:
    if name not in LEARNERS:
        raise UserError(f"unknown learner {name!r}: choose one of {', '.join(LEARNERS)}")
    if cfg.inner_steps < 0:
        raise UserError(f"--inner-steps must be 0 or more (got {cfg.inner_steps})")
    if LEARNERS[name].adapts_by_steps and cfg.inner_steps < 1:
        raise UserError(f"{name} adapts by gradient steps: it needs --inner-steps of at least 1")
    return LEARNERS[name](concept_dim, cfg)


__all__ = ["LEARNERS", "LearnerConfig", "MetaLearner", "TaskResult", "build_learner"]
