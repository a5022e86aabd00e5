"""One browser console: redeem its link at the helper, then carry bytes both ways.

The browser sends the console link's token once, in its first WebSocket message (the token is
in the URL's fragment, which never reaches a server or an access log). This module passes it to
the helper's web socket in a ``redeem`` request and from then on only translates: the helper's
``CONSOLE_DATA`` frames become binary WebSocket messages and its session messages (``notice``,
``ping``, ``closed``) text messages, as they are; the browser's binary messages become
keystroke frames, and of its text messages only ``detach``, ``resize`` and ``pong`` are passed
on, rebuilt here from checked values. Who the console belongs to, whether it may be opened,
and every limit on it are the helper's business; this side decides nothing about anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import WSMsgType, web

from vpsshell import protocol

REDEEM_WAIT_SECONDS = 15.0  # for the browser's first message, and for the helper's reply
BROWSER_MESSAGE_MAX_BYTES = 1024  # a text message: detach, resize or pong
MAX_WINDOW = 10000


def to_page(message_type: str, **fields: Any) -> str:
    """A message of the service's own for the page (``attached``, ``refused``): ``type``
    tells them from the helper's session messages, which carry ``event`` and pass as they are."""
    return json.dumps({**fields, "type": message_type})


def _window(untrusted: dict[str, Any]) -> tuple[int, int]:
    rows, cols = untrusted.get("rows"), untrusted.get("cols")
    if type(rows) is int and type(cols) is int and 0 < rows <= MAX_WINDOW >= cols > 0:
        return rows, cols
    return 0, 0


def browser_text(untrusted_text: str) -> dict[str, Any] | None:
    """What a browser's text message is, rebuilt: ``{"op": "redeem", ...}`` or one of the
    session messages the helper takes; None for anything else."""
    if len(untrusted_text) > BROWSER_MESSAGE_MAX_BYTES:
        return None
    try:
        untrusted = json.loads(untrusted_text)
    except ValueError:
        return None
    if not isinstance(untrusted, dict):
        return None
    op = untrusted.get("op")
    if op == "redeem":
        token = untrusted.get("token")
        rows, cols = _window(untrusted)
        token = token if isinstance(token, str) else ""
        return {"op": "redeem", "token": token, "rows": rows, "cols": cols}
    if op == protocol.OP_DETACH:
        return protocol.detach()
    if op == protocol.OP_PONG:
        return protocol.pong()
    if op == protocol.OP_RESIZE:
        rows, cols = _window(untrusted)
        return protocol.resize(rows, cols) if rows else None
    return None


async def _read_reply(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The helper's reply to the redeem request (progress messages skipped)."""
    async with asyncio.timeout(REDEEM_WAIT_SECONDS):
        while True:
            frame = await protocol.read_frame(reader)
            if frame is None:
                raise ConnectionError("the helper closed the connection")
            frame_type, payload = frame
            if frame_type == protocol.FRAME_MESSAGE:
                message = protocol.decode_message(payload)
                if "progress" not in message:
                    return message


async def _helper_to_browser(reader: asyncio.StreamReader, ws: web.WebSocketResponse) -> None:
    while (frame := await protocol.read_frame(reader)) is not None:
        frame_type, payload = frame
        if frame_type == protocol.FRAME_CONSOLE_DATA:
            await ws.send_bytes(payload)
        else:
            await ws.send_str(json.dumps(protocol.decode_message(payload)))


async def _browser_to_helper(ws: web.WebSocketResponse, writer: asyncio.StreamWriter) -> None:
    async for message in ws:
        if message.type == WSMsgType.BINARY:
            data: bytes = message.data
            for start in range(0, len(data), protocol.MAX_FRAME_BYTES):
                chunk = data[start : start + protocol.MAX_FRAME_BYTES]
                writer.write(protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, chunk))
        elif message.type == WSMsgType.TEXT:
            session_message = browser_text(message.data)
            if session_message is None or session_message.get("op") == "redeem":
                continue  # nothing else is passed on; one redeem per connection
            writer.write(protocol.encode_message(session_message))
        else:
            return
        await writer.drain()  # the helper's input limit slows the browser down, here


async def run_console(
    ws: web.WebSocketResponse, helper_socket: str, remote: str, first: dict[str, Any]
) -> str:
    """Redeem ``first`` (the browser's ``redeem`` message) and relay until either side ends;
    returns how it ended, for the service's log (never the token)."""
    try:
        reader, writer = await asyncio.open_unix_connection(
            helper_socket, limit=2 * protocol.MAX_FRAME_BYTES
        )
    except OSError:
        await _refuse(ws, "unavailable", "the console service cannot reach the host's helper")
        return "helper unreachable"
    try:
        args = {
            "token": first["token"],
            "rows": first["rows"],
            "cols": first["cols"],
            "remote": remote[:64],
        }
        writer.write(protocol.encode_message(protocol.request(1, "redeem", args)))
        await writer.drain()
        try:
            reply = await _read_reply(reader)
        except (TimeoutError, ConnectionError, protocol.ProtocolError):
            await _refuse(ws, "unavailable", "the host's helper did not answer")
            return "no answer from the helper"
        if not reply.get("ok"):
            error = reply.get("error") or {}
            await _refuse(ws, str(error.get("kind", "failed")), str(error.get("message", "")))
            return f"refused: {error.get('kind')}"
        await ws.send_str(to_page("attached", **reply.get("result", {})))
        to_browser = asyncio.create_task(_helper_to_browser(reader, ws))
        to_helper = asyncio.create_task(_browser_to_helper(ws, writer))
        done, _ = await asyncio.wait({to_browser, to_helper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (to_browser, to_helper):
            task.cancel()
        await asyncio.gather(to_browser, to_helper, return_exceptions=True)
        return "the helper ended it" if to_browser in done else "the browser left"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _refuse(ws: web.WebSocketResponse, kind: str, message: str) -> None:
    with contextlib.suppress(ConnectionError):  # the browser left already
        await ws.send_str(to_page("refused", kind=kind, text=message))
