"""Per-user budgets: token buckets keyed by uid, for requests and for new connections.

A bucket holds ``burst`` tokens and refills at ``rate_per_minute``; each request (or each new
connection) takes one. Everything a tenant sends is counted, well-formed or not, so a flood of
garbage costs the flooder's budget and nobody else's. The table of buckets is bounded: a user
whose bucket is full again is forgotten, so a helper that has seen many users keeps only the
busy ones.
"""

from __future__ import annotations

import time

MAX_TRACKED_USERS = 100_000


class TokenBucket:
    """``rate_per_minute`` sustained per uid, bursts up to ``burst``."""

    def __init__(self, rate_per_minute: float, burst: float) -> None:
        self.rate = rate_per_minute / 60.0
        self.capacity = max(1.0, burst)
        self._buckets: dict[int, tuple[float, float]] = {}

    def _tokens(self, uid: int, now: float) -> float:
        tokens, stamp = self._buckets.get(uid, (self.capacity, now))
        return min(self.capacity, tokens + (now - stamp) * self.rate)

    def take(self, uid: int) -> bool:
        """Take one token for ``uid``; False (and nothing taken) if the budget is spent."""
        now = time.monotonic()
        tokens = self._tokens(uid, now)
        if tokens < 1.0:
            self._buckets[uid] = (tokens, now)
            return False
        self._buckets[uid] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_TRACKED_USERS:
            self._forget_rested(now)
        return True

    def seconds_until_token(self, uid: int) -> float:
        """How long until ``uid`` has a whole token again (0 if it has one now)."""
        missing = 1.0 - self._tokens(uid, time.monotonic())
        return max(0.0, missing / self.rate) if self.rate > 0 else 60.0

    def _forget_rested(self, now: float) -> None:
        rested = [uid for uid in self._buckets if self._tokens(uid, now) >= self.capacity]
        for uid in rested:
            del self._buckets[uid]


def request_bucket(requests_per_minute: int) -> TokenBucket:
    """The request budget: bursts up to a quarter of a minute's worth (at least 10)."""
    return TokenBucket(requests_per_minute, max(10.0, requests_per_minute / 4))
