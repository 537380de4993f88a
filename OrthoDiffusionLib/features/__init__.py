"""Diffusion features: q_sample with seeded noise, one forward pass stopped after the deepest
requested block, optional K-draw ensembles, and an on-disk cache."""

from .cache import FeatureCache
from .extract import FeatureExtractor, FeatureSpec, noise_seed

__all__ = ["FeatureCache", "FeatureExtractor", "FeatureSpec", "noise_seed"]
