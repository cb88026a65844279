"""Image data: one in-memory form (ImageSet), how it is prepared (Preprocess), and where it comes from."""
from engine.data.imageset import ImageSet, Preprocess
from engine.data.sources import load_imageset, parse_spec

__all__ = ["ImageSet", "Preprocess", "load_imageset", "parse_spec"]
