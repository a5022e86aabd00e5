"""A small blocking client for the helper's sockets, used by the tenant's shell (``vpsshell -c``
and the REPL, on the tenant socket) and by ``vpsshell-admin`` (on the admin socket).

It frames requests, waits for the reply with a deadline, passes ``progress`` messages to a
callback and turns error replies into ``VpsError``s. It sends no identity: the helper reads the
caller from the socket's peer credentials. It builds and reads messages only through
``protocol``. ``reply_result`` and ``unreachable`` are shared with the interactive shell's
background watch, which speaks the same protocol on the event loop. It must never import the
shell or the helper (``vpsshell-admin`` uses it without the tenant shell), nor anything at load
time that ``vpsshell -c`` would not need.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from vpsshell import protocol
from vpsshell.errors import TemporaryFailure, Unavailable, VpsError, error_from_wire

CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_REPLY_TIMEOUT_SECONDS = 90.0
PENDING: Any = object()  # ``reply_result``: not the final reply yet


def unreachable(path: str, exc: OSError) -> Unavailable:
    reason = exc.strerror or str(exc)
    return Unavailable(f"cannot reach the vpsshell helper at {path}: {reason}")


def reply_result(
    message: dict[str, Any],
    request_id: int,
    on_progress: Callable[[str], None] | None = None,
) -> Any:
    """The result if ``message`` is the final reply to ``request_id`` (an error reply raises
    its ``VpsError``), else ``PENDING``: a progress message (passed to ``on_progress``) or a
    message for another request."""
    if message.get("id") not in (request_id, None):
        return PENDING
    if "progress" in message:
        if on_progress is not None:
            on_progress(str(message["progress"]))
        return PENDING
    if message.get("ok"):
        return message.get("result")
    error = message.get("error") or {}
    raise error_from_wire(str(error.get("kind")), str(error.get("message")))


class HelperClient:
    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._next_id = 1

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking, bounded by SO_SNDTIMEO: while another tenant floods the helper its listen
        # queue is full, and a blocking connect() waits its turn in the kernel. With
        # settimeout() Python would connect non-blocking, and a full queue fails at once.
        seconds = int(CONNECT_TIMEOUT_SECONDS)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", seconds, 0))
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise unreachable(self.path, exc) from None
        # the bound was for connecting: a console's writes may wait for the helper much longer
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", 0, 0))
        self._sock = sock
        return sock

    def open_console(self, op: str, args: dict[str, Any]) -> tuple[Any, socket.socket]:
        """Make a console (or ``events --follow``) request; on success the connection becomes
        the session.

        Returns the reply's result and the socket, which now belongs to the caller (this
        client will open a new connection for any later request)."""
        result = self.call(op, args, timeout=30.0)
        sock = self._connect()
        self._sock = None
        sock.settimeout(None)
        return result, sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _recv_exact(self, sock: socket.socket, count: int) -> bytes:
        chunks = []
        while count:
            chunk = sock.recv(count)
            if not chunk:
                raise Unavailable("the vpsshell helper closed the connection")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def _read_message(self, sock: socket.socket) -> dict[str, Any]:
        while True:
            frame_type, length = protocol.parse_header(self._recv_exact(sock, protocol.HEADER.size))
            payload = self._recv_exact(sock, length)
            if frame_type == protocol.FRAME_MESSAGE:
                return protocol.decode_message(payload)

    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_REPLY_TIMEOUT_SECONDS,
        on_progress: Callable[[str], None] | None = None,
    ) -> Any:
        """Send one request and return its result; raises VpsError for error replies."""
        sock = self._connect()
        request_id = self._next_id
        self._next_id += 1
        try:
            sock.settimeout(timeout)
            try:
                sock.sendall(protocol.encode_message(protocol.request(request_id, op, args or {})))
            except (BrokenPipeError, ConnectionResetError):
                # the helper refused the connection (too many, rate limited, account refused)
                # and closed it: its one-line reason may still be waiting to be read
                pass
            while True:
                result = reply_result(self._read_message(sock), request_id, on_progress)
                if result is not PENDING:
                    return result
        except VpsError:
            raise
        except TimeoutError:
            self.close()
            raise TemporaryFailure("timed out waiting for the vpsshell helper") from None
        except (OSError, protocol.ProtocolError) as exc:
            self.close()
            raise Unavailable(f"lost the connection to the vpsshell helper: {exc}") from None
