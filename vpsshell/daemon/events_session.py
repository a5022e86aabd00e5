"""The ``events --follow`` half of a tenant connection, after its ``events`` request was allowed.

The helper sends each event the caller may see as a ``{"event": "record"}`` message, decided
when it is sent (``event_filter``), and ends with ``{"event": "closed"}``. The client sends
``{"op": "pong"}`` for each ping and, optionally, ``{"op": "detach"}``; whatever else it sends
is ignored, and its closing the connection ends the session. A client that stops reading is
dropped once its follower queue is full; it never holds up the helper. A client that is there
but silent (stopped, stuck, its machine gone without closing the connection) is found by the
same pings as a console's (``keepalive``) and dropped (``no-answer``, logged) once it has sent
nothing for ``session_ping_misses`` intervals, even while no event comes to fill its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from vpsshell import protocol
from vpsshell.daemon.config import Limits
from vpsshell.daemon.event_filter import EventFilter
from vpsshell.daemon.events import TENANT_KINDS, Follower
from vpsshell.daemon.keepalive import Heard, keep_alive

log = logging.getLogger("vpsshell.events")

DRAIN_SECONDS = 2.0
MAX_SESSION_SECONDS = 7 * 86400.0


async def _send_loop(follower: Follower, shown: EventFilter, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            # a quiet follower is authorized again at least this often, like an attached console
            async with asyncio.timeout(shown.recheck_seconds):
                events = await follower.next_events()
        except TimeoutError:
            ended = await shown.recheck()
            if ended is not None:
                follower.close("revoked", ended)
                break
            continue
        if not events:
            break
        if not any(e.kind in TENANT_KINDS or e.kind == "policy-reloaded" for e in events):
            continue  # nothing this follower could show, and no grant that could have changed
        shown.refresh()
        if shown.revoked:
            follower.close("revoked", f"you may no longer see the events of {shown.domain}")
            break
        frames = [
            protocol.encode_message(protocol.record(e.to_json())) for e in events if shown.shows(e)
        ]
        if frames:
            writer.write(b"".join(frames))
            await writer.drain()
    writer.write(
        protocol.encode_message(
            protocol.closed(follower.closed_reason or "disconnected", follower.closed_text)
        )
    )
    await writer.drain()


async def _receive_loop(reader: asyncio.StreamReader, heard: Heard) -> None:
    """Returns when the client detaches, leaves or breaks the framing; any other frame (a
    ``pong``) only counts as heard."""
    while True:
        try:
            frame = await protocol.read_frame(reader)
            if frame is None:
                return
            heard.now()
            untrusted = protocol.decode_message(frame[1])
        except protocol.ProtocolError:
            return
        if protocol.session_op(untrusted) == protocol.OP_DETACH:
            return


async def run_events_session(
    follower: Follower,
    shown: EventFilter,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    limits: Limits,
) -> None:
    caller = shown.caller  # as it was when the session began: who to name in the log
    who = f"{caller.user} (pid {caller.pid})" if caller is not None else "a tenant"
    heard = Heard()
    sender = asyncio.create_task(_send_loop(follower, shown, writer))
    receiver = asyncio.create_task(_receive_loop(reader, heard))
    closed = asyncio.create_task(follower.wait_closed())
    pinger = asyncio.create_task(
        keep_alive(heard, writer, limits.session_ping_seconds, limits.session_ping_misses)
    )
    tasks = (sender, receiver, closed, pinger)
    try:
        done, _ = await asyncio.wait(
            set(tasks), timeout=MAX_SESSION_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        if receiver in done:
            follower.close("detached", "detached")
        elif pinger in done and follower.closed_reason is None:
            follower.close("no-answer", "the events client stopped answering")
            log.warning(
                "events follower of %s dropped: no answer for %g s",
                who,
                limits.session_ping_seconds * limits.session_ping_misses,
            )
        elif not done:
            follower.close("time-limit", "events session time limit reached")
        # the final "closed" message goes out unless the client has stopped reading
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, DRAIN_SECONDS)
    finally:
        follower.close("disconnected", "disconnected")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
