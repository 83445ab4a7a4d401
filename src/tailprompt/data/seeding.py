"""Random streams derived from explicit parts (seed, dataset, class, ...), never from global RNG state."""

from __future__ import annotations

import hashlib

import numpy as np


def derived_seed(*parts: object) -> int:
    """A 63-bit integer that depends only on `parts` (stable across processes, platforms and versions).

    Python's `hash()` is salted per process, so the parts are hashed with sha256 instead.
    """
    blob = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def derived_rng(*parts: object) -> np.random.Generator:
    """A numpy generator seeded by `derived_seed(*parts)`: draws never touch or depend on global state."""
    return np.random.Generator(np.random.PCG64(derived_seed(*parts)))
