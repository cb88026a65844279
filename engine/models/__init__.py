"""Concept generator backbones and the concept discriminator."""
from engine.models.backbones import BACKBONES, build_generator
from engine.models.discriminator import ConceptDiscriminator

__all__ = ["BACKBONES", "build_generator", "ConceptDiscriminator"]
