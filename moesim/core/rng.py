"""The seed tree: every random draw comes from the scenario seed through a named stream.

`stream(seed, "routing", layer)` always yields the same generator for the same arguments, and
different purposes never share a stream, so adding a draw in one place cannot shift another.
"""
from __future__ import annotations

import hashlib

import numpy as np


def _key_words(key: object) -> list[int]:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return [int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")]


def seed_sequence(seed: int, purpose: str, *keys: object) -> np.random.SeedSequence:
    """A SeedSequence keyed by (seed, purpose, *keys); stable across runs and platforms."""
    words: list[int] = []
    for key in (purpose, *keys):
        words.extend(_key_words(key))
    return np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(words))


def stream(seed: int, purpose: str, *keys: object) -> np.random.Generator:
    """A PCG64 generator for one purpose; the only way code in moesim gets randomness."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, purpose, *keys)))
