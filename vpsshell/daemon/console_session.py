"""The console half of a tenant connection, after its ``console`` request was allowed.

Two loops share the connection: one sends the attachment's queued frames (guest output and
notices), the other reads the client's frames (keystrokes as ``CONSOLE_DATA``; ``detach`` and
``resize`` messages). Whichever ends first ends the other; the attachment is always detached
from its hub on the way out, so the detach is audited exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib

from vpsshell import protocol
from vpsshell.daemon.consoles import Attachment, ConsoleHub

DRAIN_SECONDS = 2.0
MAX_SESSION_SECONDS = 7 * 86400.0


async def _send_loop(attachment: Attachment, writer: asyncio.StreamWriter) -> None:
    while frames := await attachment.next_frames():
        writer.write(b"".join(frames))
        await writer.drain()


async def _receive_loop(
    attachment: Attachment, hub: ConsoleHub, reader: asyncio.StreamReader
) -> str:
    """Returns why the client side ended: ``detached`` or ``disconnected``."""
    while True:
        try:
            header = await reader.readexactly(protocol.HEADER.size)
            frame_type, length = protocol.parse_header(header)
            payload = await asyncio.wait_for(reader.readexactly(length), 30.0)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            return "disconnected"
        except protocol.ProtocolError:
            return "protocol-error"
        if frame_type == protocol.FRAME_CONSOLE_DATA:
            await hub.write(attachment, payload)
            continue
        try:
            untrusted = protocol.decode_message(payload)
        except protocol.ProtocolError:
            return "protocol-error"
        if untrusted.get("op") == "detach":
            return "detached"
        # "resize" and anything else: serial consoles have no window size; ignored


async def run_console_session(
    attachment: Attachment,
    hub: ConsoleHub,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    sender = asyncio.create_task(_send_loop(attachment, writer))
    receiver = asyncio.create_task(_receive_loop(attachment, hub, reader))
    try:
        done, _ = await asyncio.wait(
            {sender, receiver}, timeout=MAX_SESSION_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        if receiver in done:
            reason = receiver.result()
            hub.detach(attachment, reason, "detached")
        elif not done:
            hub.detach(attachment, "time-limit", "console session time limit reached")
        # let the final frames (the "closed" message) go out, then end the connection
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, DRAIN_SECONDS)
    finally:
        hub.detach(attachment, "disconnected", "detached")
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
