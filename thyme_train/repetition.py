"""Repetition early stop (THYME.md §4): Rabin-Karp rolling hashes over the generated token ids
(or characters) flag a rollout once one substring's repeats cover more than `threshold` of the
output, so a degenerate loop is cut the moment it dominates.

    det = RepetitionDetector()
    for token in stream:
        if det.feed(token):          # or det.extend(tokens)
            break                    # det.finding says which substring, where, how much

Coverage of a substring = the positions its occurrences cover (overlaps counted once) / the
output length. Substring lengths are checked on a geometric grid (`min_len` .. `max_len`, ratio
`growth`): a loop of period p is covered by any window length L >= p (its occurrences then tile
the loop), and the grid always holds one L in [p, growth * p], so every loop with a period up
to `max_len` is caught as soon as it covers the threshold, without trying every length.

Each (length, hash) bucket remembers the start of its first occurrence; a new occurrence counts
only after its tokens are compared with that first one, so a hash collision can never cause a
stop (colliding substrings get their own bucket). Cost per token: one rolling-hash step and one
dict lookup per grid length (~15 for 2..1024), plus an O(L) comparison when a window repeats.

`min_repeats` (default 3) keeps two copies of one long passage from counting as a loop: models
legitimately resubmit a corrected code block or restate a sentence once. `min_tokens` (default
32) keeps very short outputs from tripping on "ok ok ok".

Differences from the original release (THYME.md §4), which counted substrings naively over the
last 1,000 characters at a 30% threshold and skipped segments containing "answer": here the
whole output is watched incrementally at the paper's 50%, over token ids, with no keyword
exemption; see benchmarks/repetition_bench.py for the speed comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_MOD = (1 << 61) - 1            # a Mersenne prime: products stay exact in Python ints
_BASE = 1_000_003


@dataclass(frozen=True)
class Finding:
    start: int                  # first occurrence of the repeated substring (token index)
    length: int                 # its length in tokens
    occurrences: int            # verified occurrences so far
    covered: int                # positions its occurrences cover
    total: int                  # output length when it was flagged

    @property
    def coverage(self) -> float:
        return self.covered / self.total


class _Bucket:
    __slots__ = ("first", "last", "count", "covered")

    def __init__(self, first: int, length: int):
        self.first = self.last = first
        self.count = 1
        self.covered = length


class RepetitionDetector:
    """Incremental repetition detector over a stream of ints (token ids, or `ord` of chars).

    Args:
        threshold: stop when one substring's occurrences cover more than this share.
        min_len: shortest substring length checked (2 catches single-token loops too: a
            window of 2 tiles a period-1 run).
        max_len: longest substring length checked; loops with longer periods are not caught.
        growth: ratio between consecutive checked lengths (smaller = more lengths, slower, and
            flags a long-period loop a little earlier).
        min_repeats: occurrences a substring needs before it can trigger a stop.
        min_tokens: no stop before the output has this many tokens.
        modulus: the hash modulus (a 61-bit prime; tests pass a tiny one to force collisions).
    """

    def __init__(self, threshold: float = 0.5, min_len: int = 2, max_len: int = 1024,
                 growth: float = 1.5, min_repeats: int = 3, min_tokens: int = 32,
                 modulus: int = _MOD):
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        if growth <= 1:
            raise ValueError(f"growth must be > 1, got {growth}")
        self.threshold, self.min_repeats, self.min_tokens = threshold, min_repeats, min_tokens
        lengths, length = [], float(min_len)
        while int(length) <= max_len:
            if not lengths or int(length) != lengths[-1]:
                lengths.append(int(length))
            length *= growth
        if lengths[-1] != max_len:
            lengths.append(max_len)                 # the promised reach: periods up to max_len
        self.lengths: tuple[int, ...] = tuple(lengths)
        self._mod = modulus
        self._powers = {L: pow(_BASE, L, modulus) for L in self.lengths}
        self.tokens: list[int] = []
        self._prefix = [0]                          # prefix hashes: H[i] = hash(tokens[:i])
        self._buckets: dict[tuple[int, int], list[_Bucket]] = {}
        self.finding: Finding | None = None
        self.collisions = 0                          # hash matches whose tokens differed

    @property
    def stopped(self) -> bool:
        return self.finding is not None

    def feed(self, token: int) -> bool:
        """Add one token; True once the output is repetitive (and from then on)."""
        if self.finding is not None:
            self.tokens.append(token)
            return True
        toks, prefix = self.tokens, self._prefix
        toks.append(token)
        mod = self._mod
        h = (prefix[-1] * _BASE + token + 1) % mod
        prefix.append(h)
        n = len(toks)
        for L in self.lengths:
            if n < L:
                break
            start = n - L
            key = (L, (h - prefix[start] * self._powers[L]) % mod)
            buckets = self._buckets.get(key)
            if buckets is None:
                self._buckets[key] = [_Bucket(start, L)]
                continue
            bucket = self._match(buckets, start, L)
            if bucket is None:
                buckets.append(_Bucket(start, L))
                continue
            bucket.covered += min(L, start - bucket.last)
            bucket.last = start
            bucket.count += 1
            if (bucket.count >= self.min_repeats and n >= self.min_tokens
                    and bucket.covered > self.threshold * n):
                self.finding = Finding(bucket.first, L, bucket.count, bucket.covered, n)
                return True
        return False

    def extend(self, tokens: Iterable[int]) -> bool:
        """Feed several tokens; True once repetitive (stops reading at the flagging token)."""
        for t in tokens:
            if self.feed(t):
                return True
        return self.finding is not None

    def _match(self, buckets: list[_Bucket], start: int, L: int) -> _Bucket | None:
        """The bucket whose substring really equals tokens[start:start+L] (verification: a
        hash collision must never count as a repeat)."""
        toks = self.tokens
        window = toks[start:start + L]
        for bucket in buckets:
            if toks[bucket.first:bucket.first + L] == window:
                return bucket
            self.collisions += 1
        return None


def is_repetitive(sequence: Iterable[int] | str, **kwargs) -> Finding | None:
    """Run a detector over a whole sequence (token ids, or a string's characters)."""
    det = RepetitionDetector(**kwargs)
    det.extend(ord(c) for c in sequence) if isinstance(sequence, str) else det.extend(sequence)
    return det.finding
