"""The tenant's end of a download (``recording ID``): the bytes the helper sends after its reply
go to stdout unchanged, until its ``closed`` message says the download is ``complete``; a
connection that ends without it (the helper stopped, a recording cut short) is an error."""

from __future__ import annotations

import socket
from typing import Any

from vpsshell import protocol
from vpsshell.errors import ExitCode, Unavailable
from vpsshell.shell.environment import Environment

RECV_SECONDS = 60.0  # a helper that sends nothing for this long has stopped sending


def _exactly(sock: socket.socket, count: int) -> bytes | None:
    """``count`` bytes, or None at the end of the stream before any of them."""
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            if data:
                raise Unavailable("the vpsshell helper closed the connection mid-frame")
            return None
        data += chunk
    return bytes(data)


def receive(sock: socket.socket, result: Any, env: Environment) -> ExitCode:
    received = 0
    complete = False
    sock.settimeout(RECV_SECONDS)
    env.stdout.flush()  # whatever was written as text goes first
    out = getattr(env.stdout, "buffer", None)
    try:
        while (header := _exactly(sock, protocol.HEADER.size)) is not None:
            frame_type, length = protocol.parse_header(header)
            payload = _exactly(sock, length) or b""
            if frame_type != protocol.FRAME_CONSOLE_DATA:
                message = protocol.decode_message(payload)
                if message.get("event") == protocol.EVENT_CLOSED:
                    complete = message.get("reason") == "complete"
                    break
                continue  # another message: not part of the file
            if out is not None:
                out.write(payload)
            else:
                env.stdout.write(payload.decode("utf-8", errors="replace"))
            received += len(payload)
    except TimeoutError:
        raise Unavailable(f"the vpsshell helper stopped sending after {received} bytes") from None
    except protocol.ProtocolError as exc:
        raise Unavailable(f"the vpsshell helper sent something unreadable: {exc}") from None
    finally:
        sock.close()
        env.stdout.flush()
    if not complete:
        raise Unavailable(f"the download ended early, after {received} bytes")
    return ExitCode.OK
