"""Random choices from a `numpy.random.Generator`: every draw of the generator goes through the
sample's own `rng` (never global state), so a sample depends only on its (seed, index)."""

from __future__ import annotations


def pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def sample_distinct(rng, seq, n):
    return [seq[j] for j in rng.choice(len(seq), size=n, replace=False)]


def randint(rng, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi], inclusive."""
    return int(rng.integers(lo, hi + 1))
