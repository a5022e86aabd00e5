"""Keeps the caller's domains and their states fresh for the toolbar and for completion.

A ``DomainWatch`` holds the helper's latest ``list`` and refreshes it from an asyncio task while
the prompt waits, on connections of its own (never the one commands use), with non-blocking sockets
on the prompt's event loop: no thread, and nothing left open once ``run`` is cancelled and
``close`` called. It keeps one ``events --follow --lines=0`` stream open and asks for ``list`` when
events arrive (a burst of them gives one request), right after a command (``poke``; then every
second for a while, only while there is no stream), and every second while a domain is starting or
shutting down (not every change of state is an event). Otherwise it polls only as a safety net:
every ``max(refresh_seconds, 60)`` seconds while the stream is up, every ``refresh_seconds`` while
it is not. A helper that refuses the stream (one without ``events``) is not asked again; a stream
that ends (the helper restarting, the connection lost) is opened again after 2 s, then 4, 8... up
to 60. Each ``list`` is one audit line and one token of the caller's rate limit; the stream is one
request however many events it carries. It never prints: errors go into the snapshot, for the
toolbar.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from vpsshell import protocol
from vpsshell.client import PENDING, reply_result, unreachable
from vpsshell.errors import Denied, TemporaryFailure, Unavailable, UsageError, VpsError

TRANSITIONAL = frozenset({"starting", "shutting-down"})
REQUEST_ID = 1  # one request per connection
FOLLOW_ARGS = {"follow": True, "lines": 0}


@dataclass(frozen=True)
class Timing:
    """How often the watch asks, in seconds (tests make them short)."""

    fast: float = 1.0  # while a domain changes state, and for a while after a command
    busy_after_command: float = 10.0
    with_events: float = 60.0  # the safety net while the stream is up (or refresh_seconds)
    burst: float = 0.2  # an event waits this long for the rest of its burst
    retry_first: float = 2.0  # re-opening a stream that ended or could not be opened
    retry_max: float = 60.0
    request_timeout: float = 5.0


@dataclass(frozen=True)
class Snapshot:
    """What the helper said last: the domains (None before the first answer), or an error."""

    domains: tuple[dict[str, Any], ...] | None = None
    error: str | None = None


def _domains(untrusted: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(untrusted, list):
        raise VpsError("the helper sent a malformed domain list")
    return tuple(item for item in untrusted if isinstance(item, dict))


def retry_delays(timing: Timing) -> list[float]:
    """The waits before each new attempt at the stream, until they reach ``retry_max``."""
    delays = [timing.retry_first]
    while delays[-1] < timing.retry_max:
        delays.append(min(delays[-1] * 2, timing.retry_max))
    return delays


async def _next_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next message frame (others are skipped); ``EOFError`` at the end."""
    while True:
        frame = await protocol.read_frame(reader)
        if frame is None:
            raise EOFError("the vpsshell helper closed the connection")
        frame_type, payload = frame
        if frame_type == protocol.FRAME_MESSAGE:
            return protocol.decode_message(payload)


class DomainWatch:
    """The latest ``Snapshot``, refreshed in the background by ``run``."""

    def __init__(
        self, socket_path: str, refresh_seconds: float, timing: Timing | None = None
    ) -> None:
        self.path = socket_path
        self.refresh_seconds = refresh_seconds
        self.timing = timing or Timing()
        self.snapshot = Snapshot()
        self.following = False  # the event stream is up
        self._busy_until = 0.0
        self._events_waiting = False
        self._wake = asyncio.Event()
        self._open: set[asyncio.StreamWriter] = set()

    def names(self) -> list[str]:
        return [str(d.get("name")) for d in self.snapshot.domains or ()]

    def seed(self, untrusted: Any) -> None:
        """Use a list the session fetched anyway (the login greeting)."""
        try:
            self.snapshot = Snapshot(_domains(untrusted))
        except VpsError:
            pass

    def poke(self) -> None:
        """A command just ran: refresh now, and without events quickly for a while (with
        them, the events its effects cause wake the refresh)."""
        self._busy_until = time.monotonic() + self.timing.busy_after_command
        self._wake.set()

    def interval(self) -> float:
        """How long the next refresh may wait if nothing wakes it."""
        changing = any(d.get("state") in TRANSITIONAL for d in self.snapshot.domains or ())
        busy = time.monotonic() < self._busy_until and not self.following
        if changing or busy:
            return min(self.timing.fast, self.refresh_seconds)
        if self.following:
            return max(self.refresh_seconds, self.timing.with_events)
        return self.refresh_seconds

    # -- the helper's side ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _request(
        self, op: str, args: dict[str, Any]
    ) -> AsyncIterator[tuple[Any, asyncio.StreamReader, asyncio.StreamWriter]]:
        """One request on a new connection: its result, and the reader and writer for the
        session after the reply. The connection is closed on leaving; failures are VpsErrors."""
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(self.timing.request_timeout):
                    reader, writer = await asyncio.open_unix_connection(self.path)
                    self._open.add(writer)
                    writer.write(protocol.encode_message(protocol.request(REQUEST_ID, op, args)))
                    result = PENDING
                    while result is PENDING:
                        result = reply_result(await _next_message(reader), REQUEST_ID)
            except TimeoutError:
                raise TemporaryFailure("timed out waiting for the vpsshell helper") from None
            except (OSError, EOFError, protocol.ProtocolError) as exc:
                if writer is None and isinstance(exc, OSError):
                    raise unreachable(self.path, exc) from None
                raise Unavailable(f"lost the connection to the vpsshell helper: {exc}") from None
            yield result, reader, writer
        finally:
            if writer is not None:
                writer.close()
                self._open.discard(writer)

    async def refresh(self) -> bool:
        """Ask the helper for ``list`` once; True if anything visible changed."""
        try:
            async with self._request("list", {}) as (untrusted, _, _):
                fresh = Snapshot(_domains(untrusted))
        except VpsError as exc:
            fresh = Snapshot(self.snapshot.domains, exc.message)
        changed = fresh != self.snapshot
        self.snapshot = fresh
        return changed

    async def _read_events(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Wake the refresh for every event, until the helper ends the stream or it is lost;
        answer each ping at once (the helper drops a follower that does not)."""
        while True:
            try:
                untrusted = await _next_message(reader)
            except (OSError, EOFError, protocol.ProtocolError):
                return
            event = protocol.session_event(untrusted)
            if event == protocol.EVENT_CLOSED:
                return
            if event == protocol.EVENT_PING:
                writer.write(protocol.encode_message(protocol.pong()))
            if event == protocol.EVENT_RECORD:
                self._events_waiting = True
                self._wake.set()

    def _stream_up(self, up: bool) -> None:
        # both ways the list may be stale: events were missed before the stream opened, and
        # a helper that stopped may come back with other states
        self.following = up
        self._wake.set()

    async def _follow(self) -> None:
        """Keep the event stream open for as long as the helper lets it be."""
        delays = retry_delays(self.timing)
        attempt = 0
        while True:
            opened = time.monotonic()
            try:
                async with self._request("events", FOLLOW_ARGS) as (_, reader, writer):
                    self._stream_up(True)
                    try:
                        await self._read_events(reader, writer)
                    finally:
                        self._stream_up(False)
            except (UsageError, Denied):
                return  # a helper without events: polling only (a retry would be refused too)
            except VpsError:
                pass
            if time.monotonic() - opened >= self.timing.retry_max:
                attempt = 0  # it was up for a while: start the backoff again
            await asyncio.sleep(delays[min(attempt, len(delays) - 1)])
            attempt += 1

    # -- the schedule -----------------------------------------------------------------------

    async def _next_reason(self) -> None:
        """Wait for a poke, an event (and the rest of its burst), a change of the stream, or
        the end of the interval."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that comes as
        # the wait ends (cpython gh-86296), and the shell would never get to leave
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.interval()):
                await self._wake.wait()
        if self._events_waiting:
            await asyncio.sleep(self.timing.burst)
        self._events_waiting = False
        self._wake.clear()

    async def _poll(self, on_change: Callable[[], None]) -> None:
        if self.snapshot.domains is None and await self.refresh():  # nothing seeded
            on_change()
        while True:
            await self._next_reason()
            if await self.refresh():
                on_change()

    async def run(self, on_change: Callable[[], None]) -> None:
        """Follow and refresh until cancelled, calling ``on_change`` whenever the snapshot
        changed."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow())
            tasks.create_task(self._poll(on_change))

    def close(self) -> None:
        """Close any connection still open (``run`` closes its own when it is cancelled)."""
        for writer in list(self._open):
            writer.close()
        self._open.clear()
