"""The console half of a tenant connection, after its ``console`` request was allowed.

Two loops share the connection: one sends the attachment's queued frames (guest output and
notices), the other reads the client's frames (keystrokes as ``CONSOLE_DATA``; ``detach`` and
``resize`` messages, which only the session's recording keeps). Whichever ends first ends the
other; the attachment is always detached from its hub on the way out, so the detach is audited
exactly once, and a client that dies (killed, its socket closed) frees its slot as soon as the
helper reads the end of its stream.

What a client sends is rate limited (``InputBudget``, one per user and console, so a new
session does not bring a new allowance): beyond it the helper stops reading the socket for a
while, so the client's own sends block. Keystrokes are slowed, never dropped, and a flood of
them cannot hog the helper. While it waits the helper still notices a client that hung up, and
then stops typing what it left behind.

A client that is there but silent (its machine gone without closing the connection, a process
stopped or stuck) is found by pings (``keepalive``): any frame from the client counts as an
answer; after ``session_ping_misses`` intervals without one the session ends (``no-answer``)
and the writer's slot is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time

from vpsshell import protocol
from vpsshell.daemon.consoles import Attachment, ConsoleHub, InputBudget
from vpsshell.daemon.keepalive import Heard, keep_alive
from vpsshell.daemon.recordings import MAX_DIMENSION

DRAIN_SECONDS = 2.0
MAX_SESSION_SECONDS = 7 * 86400.0
HANGUP_CHECK_SECONDS = 0.1  # while input waits for its budget, how often to look for a hangup


def _hung_up(writer: asyncio.StreamWriter) -> bool:
    """The peer closed its end (POLLHUP: both directions shut, as when its process dies)."""
    sock = writer.get_extra_info("socket")
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLHUP)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


async def _wait_for_budget(delay: float, writer: asyncio.StreamWriter) -> bool:
    """Sleep ``delay`` seconds; False as soon as the client hangs up."""
    deadline = time.monotonic() + delay
    while True:
        if _hung_up(writer):
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, HANGUP_CHECK_SECONDS))


def window_size(untrusted: dict[str, object]) -> tuple[int, int] | None:
    """``rows`` and ``cols`` of a ``resize`` message, if both are sizes a window can have."""
    rows, cols = untrusted.get("rows"), untrusted.get("cols")
    if type(rows) is int and type(cols) is int and 0 < rows <= MAX_DIMENSION >= cols > 0:
        return rows, cols
    return None


async def _send_loop(attachment: Attachment, writer: asyncio.StreamWriter) -> None:
    while frames := await attachment.next_frames():
        writer.write(b"".join(frames))
        await writer.drain()


async def _receive_loop(
    attachment: Attachment,
    hub: ConsoleHub,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    budget: InputBudget,
    heard: Heard,
) -> str:
    """Returns why the client side ended: ``detached``, ``disconnected`` or
    ``protocol-error``."""
    while True:
        try:
            frame = await protocol.read_frame(reader)
        except protocol.IncompleteFrame:
            return "disconnected"
        except protocol.ProtocolError:
            return "protocol-error"
        if frame is None:
            return "disconnected"
        heard.now()
        frame_type, payload = frame
        # every byte counts, a watcher's too (its keystrokes go nowhere, but reading costs)
        delay = budget.charge(protocol.HEADER.size + len(payload))
        if delay > 0 and not await _wait_for_budget(delay, writer):
            return "disconnected"
        if frame_type == protocol.FRAME_CONSOLE_DATA:
            await hub.write(attachment, payload)
            await asyncio.sleep(0)  # a burst of buffered frames must not hold the loop
            continue
        try:
            untrusted = protocol.decode_message(payload)
        except protocol.ProtocolError:
            return "protocol-error"
        op = protocol.session_op(untrusted)
        if op == protocol.OP_DETACH:
            return "detached"
        if op == protocol.OP_RESIZE:  # serial consoles have no window size: only recorded
            size = window_size(untrusted)
            if size is not None:
                attachment.resize(*size)
        # "pong" only counts as heard; anything else is ignored


async def run_console_session(
    attachment: Attachment,
    hub: ConsoleHub,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    attachment.session_started = True
    budget = hub.input_budget(attachment.caller.uid)
    heard = Heard()
    limits = hub.limits
    sender = asyncio.create_task(_send_loop(attachment, writer))
    receiver = asyncio.create_task(_receive_loop(attachment, hub, reader, writer, budget, heard))
    pinger = asyncio.create_task(
        keep_alive(heard, writer, limits.session_ping_seconds, limits.session_ping_misses)
    )
    try:
        done, _ = await asyncio.wait(
            {sender, receiver, pinger},
            timeout=MAX_SESSION_SECONDS,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if receiver in done:
            reason = receiver.result()
            hub.detach(attachment, reason, "detached")
        elif pinger in done:
            hub.detach(attachment, "no-answer", "the console client stopped answering")
        elif not done:
            hub.detach(attachment, "time-limit", "console session time limit reached")
        # let the final frames (the "closed" message) go out, then end the connection
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, DRAIN_SECONDS)
    finally:
        hub.detach(attachment, "disconnected", "detached")
        for task in (sender, receiver, pinger):
            task.cancel()
        await asyncio.gather(sender, receiver, pinger, return_exceptions=True)
