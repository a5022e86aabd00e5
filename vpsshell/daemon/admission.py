"""Who may open a connection now: per-user and total connection slots, and a per-user rate.

A slot is taken the moment a connection is accepted, before the helper waits for anything
(the PAM account check included), and is given back when the connection ends, however it
ends. So connections still being checked count like open ones: a burst of hundreds of
``connect()`` calls from one tenant holds at most ``max_connections_per_user`` slots, and the
rest are turned away at once. New connections are also rate limited per uid, so that a loop
of connect/close cannot make the helper do work (account checks, audit records) for nothing.
This module must never wait: every answer is given synchronously.
"""

from __future__ import annotations

from collections import Counter

from vpsshell.daemon.config import Limits
from vpsshell.daemon.ratelimit import TokenBucket


class Admission:
    def __init__(self, limits: Limits, *, rate_limited: bool = True) -> None:
        self.per_user = limits.max_connections_per_user
        self.total = limits.max_connections
        self.rate = (
            TokenBucket(limits.connections_per_minute, limits.connections_burst)
            if rate_limited
            else None
        )
        self.held: Counter[int] = Counter()
        self.held_total = 0

    def reserve(self, uid: int) -> str | None:
        """Take a slot for a new connection of ``uid``; None if taken, else why not (the
        connection is then refused and holds nothing)."""
        if self.held[uid] >= self.per_user:
            return "too many open sessions; close one and try again"
        if self.held_total >= self.total:
            return "the helper is at its connection limit; try again shortly"
        if self.rate is not None and not self.rate.take(uid):
            return "too many new connections; slow down and try again"
        self.held[uid] += 1
        self.held_total += 1
        return None

    def release(self, uid: int) -> None:
        self.held[uid] -= 1
        self.held_total -= 1
        if self.held[uid] <= 0:
            del self.held[uid]
