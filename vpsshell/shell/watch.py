"""Keeps the caller's domains and their states fresh for the toolbar and for completion.

A ``DomainWatch`` asks the helper for ``list`` on its own connection (not the one commands
use), from an asyncio task while the prompt is idle. The helper client is blocking, so each
call runs in a one-thread executor. It polls every second while a domain is changing state or
just after a command, and every ``refresh_seconds`` otherwise: each poll is one request, one
audit line and one token of the caller's rate limit. It never prints.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from vpsshell.errors import VpsError

FAST_SECONDS = 1.0
BUSY_AFTER_COMMAND_SECONDS = 10.0
FETCH_TIMEOUT_SECONDS = 5.0
TRANSITIONAL = frozenset({"starting", "shutting-down"})


@dataclass(frozen=True)
class Snapshot:
    """What the helper said last: the domains (None before the first answer), or an error."""

    domains: tuple[dict[str, Any], ...] | None = None
    error: str | None = None


def _domains(untrusted: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(untrusted, list):
        raise VpsError("the helper sent a malformed domain list")
    return tuple(item for item in untrusted if isinstance(item, dict))


class DomainWatch:
    """The latest ``Snapshot``, refreshed in the background by ``run``."""

    def __init__(self, fetch: Callable[[], Any], refresh_seconds: float) -> None:
        self._fetch = fetch
        self.refresh_seconds = refresh_seconds
        self.snapshot = Snapshot()
        self._busy_until = 0.0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpsshell-watch")

    def names(self) -> list[str]:
        return [str(d.get("name")) for d in self.snapshot.domains or ()]

    def seed(self, untrusted: Any) -> None:
        """Use a list the session fetched anyway (the login greeting)."""
        try:
            self.snapshot = Snapshot(_domains(untrusted))
        except VpsError:
            pass

    def poke(self) -> None:
        """A command just ran: refresh now, and quickly for a while."""
        self._busy_until = time.monotonic() + BUSY_AFTER_COMMAND_SECONDS
        self._wake.set()

    def interval(self) -> float:
        changing = any(d.get("state") in TRANSITIONAL for d in self.snapshot.domains or ())
        if changing or time.monotonic() < self._busy_until:
            return min(FAST_SECONDS, self.refresh_seconds)
        return self.refresh_seconds

    def _fetch_snapshot(self) -> Snapshot:
        try:
            return Snapshot(_domains(self._fetch()))
        except VpsError as exc:
            return Snapshot(self.snapshot.domains, exc.message)

    async def refresh(self) -> bool:
        """Ask the helper once; True if anything visible changed."""
        loop = asyncio.get_running_loop()
        fresh = await loop.run_in_executor(self._executor, self._fetch_snapshot)
        changed = fresh != self.snapshot
        self.snapshot = fresh
        return changed

    async def run(self, on_change: Callable[[], None]) -> None:
        """Refresh until cancelled, calling ``on_change`` whenever the snapshot changed."""
        while True:
            if await self.refresh():
                on_change()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval())
            except TimeoutError:
                pass
            self._wake.clear()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
