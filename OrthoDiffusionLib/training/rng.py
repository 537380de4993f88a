"""Seeds and random-generator states of a pretraining run, so a checkpoint can restore every rank's
draws exactly (sample order, augmentation, t and ε come from the loop generator; Python's and
NumPy's global generators are saved too, in case a library draws from them)."""

from __future__ import annotations

import random

import numpy as np


def rank_seed(seed: int, rank: int, stream: int = 0) -> int:
    """A distinct 63-bit seed per (run seed, rank, stream): the loop, held-out noise, DDIM samples."""
    return (int(seed) * 1_000_003 + rank * 7919 + stream * 104_729) & 0x7FFF_FFFF_FFFF_FFFF


def python_state() -> list:
    v, s, g = random.getstate()
    return [v, list(s), g]


def numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def set_python_state(st) -> None:
    random.setstate((st[0], tuple(st[1]), st[2]))


def set_numpy_state(st) -> None:
    np.random.set_state((st[0], np.asarray(st[1], dtype=np.uint32), st[2], st[3], st[4]))
