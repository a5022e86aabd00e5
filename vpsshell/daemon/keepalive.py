"""Finding a session client that is there but silent, for console and events sessions alike.

A client whose machine went away without closing the connection, or whose process is stopped
or stuck, would otherwise hold its session (and a console's writer slot) until the session's
time limit. The helper pings it at the start and every ``session_ping_seconds``; the session's
receive loop marks every frame it reads from the client as heard (a ``pong`` is only that);
once nothing has been heard for ``session_ping_misses`` intervals, ``keep_alive`` returns and
the session ends with the reason ``no-answer``. The ping carries both numbers, so the client
knows how long it may hear nothing from the helper before it takes the helper for gone.

It only writes pings and reads a clock: it never reads the connection and never waits for the
client, so a client that stops reading cannot hold it up.
"""

from __future__ import annotations

import asyncio
import time

from vpsshell import protocol


class Heard:
    """When the client was last heard from (any frame); its session's receive loop calls
    ``now`` for each one."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def now(self) -> None:
        self.last = time.monotonic()


async def keep_alive(
    heard: Heard, writer: asyncio.StreamWriter, seconds: float, misses: int
) -> None:
    """Ping every ``seconds``; returns once the client has said nothing for ``misses`` of them.
    The pings are written without waiting for a drain: a client that stops reading must not
    stop this loop, and a few bytes each interval cannot pile up to anything."""
    bound = seconds * misses
    ping = protocol.encode_message(protocol.ping(seconds, misses))
    next_ping = time.monotonic()
    while True:
        now = time.monotonic()
        if now - heard.last >= bound:
            return
        if now >= next_ping:
            writer.write(ping)
            next_ping = now + seconds
        await asyncio.sleep(min(next_ping, heard.last + bound) - now)
