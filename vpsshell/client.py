"""A small blocking client for the helper's sockets, used by the tenant's shell (``vpsshell -c``
and the REPL, on the tenant socket) and by ``vpsshell-admin`` (on the admin socket).

It frames requests, waits for the reply with a deadline, passes ``progress`` messages to a
callback and turns error replies into ``VpsError``s. It sends no identity: the helper reads the
caller from the socket's peer credentials. It builds and reads messages only through
``protocol``. ``reply_result`` and ``unreachable`` are shared with the interactive shell's
background watch, which speaks the same protocol on the event loop. It must never import the
shell or the helper (``vpsshell-admin`` uses it without the tenant shell), nor anything at load
time that ``vpsshell -c`` would not need.

The socket stays blocking, its waits bounded by the kernel (``SO_SNDTIMEO``/``SO_RCVTIMEO``):
a Python socket timeout would make every ``send``/``recv`` a ``poll`` plus the call. A reply is
read with one ``recv`` where it fits; a request whose reply hands the connection over (a
console) reads exactly its reply and nothing of what follows it.

A caller outside the group that may use the tenant socket is refused by the kernel before the
helper hears of it, so the client explains (``unreachable``): the tenant is told that their
account may not use vpsshell here, and the admin's syslog (authpriv) gets the account and the
group's name, which is the host's business, not the tenant's.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any

from vpsshell import protocol
from vpsshell.errors import Denied, TemporaryFailure, Unavailable, VpsError, error_from_wire

CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_REPLY_TIMEOUT_SECONDS = 90.0
RECV_BYTES = protocol.HEADER.size + protocol.MAX_FRAME_BYTES  # a whole frame in one recv
PENDING: Any = object()  # ``reply_result``: not the final reply yet


def _bound_waits(sock: socket.socket, seconds: float | None) -> None:
    """Limit each ``send``/``recv`` (and ``connect``) of the blocking ``sock`` to ``seconds``
    (None: no limit); when the limit passes, the call fails with ``EAGAIN``."""
    if seconds is None:
        whole, micro = 0, 0
    else:
        seconds = max(seconds, 0.001)  # 0 would mean no limit at all
        whole, micro = int(seconds), int(seconds % 1 * 1_000_000)
    value = struct.pack("@ll", whole, micro)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)


NOT_A_TENANT = "your account may not use vpsshell here (ask your provider)"


def unreachable(path: str, exc: OSError) -> VpsError:
    """Why connecting to the helper at ``path`` failed, as the tenant is told it."""
    if isinstance(exc, PermissionError) and _outside_socket_group(path):
        return Denied(NOT_A_TENANT)
    reason = exc.strerror or str(exc)
    return Unavailable(f"cannot reach the vpsshell helper at {path}: {reason}")


def _outside_socket_group(path: str) -> bool:
    """Whether ``path`` is a socket that lets its group in and we are not in that group; if
    so, say so in syslog for the admin. (The admin socket, 0600, lets no group in: a refusal
    there stays a plain "Permission denied".)"""
    try:
        found = os.stat(path)
    except OSError:
        return False
    lets_group_in = stat.S_ISSOCK(found.st_mode) and found.st_mode & stat.S_IWGRP
    if not lets_group_in or found.st_gid in (os.getgid(), *os.getgroups()):
        return False
    import grp
    import pwd
    import syslog

    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    try:
        group = grp.getgrgid(found.st_gid).gr_name
    except KeyError:
        group = f"gid {found.st_gid}"
    syslog.openlog("vpsshell", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(
        syslog.LOG_WARNING,
        f"{user} (uid {uid}) may not use vpsshell: not in group {group}, which may connect "
        f"to {path} (usermod -aG {group} {user} would let them)",
    )
    syslog.closelog()
    return True


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
        self._waits: float | None = None  # the bound of the socket's sends and recvs
        self._read_ahead = bytearray()  # received, not yet taken
        self._exact_reads = False  # True while a request that hands the socket over waits

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking, bounded by SO_SNDTIMEO: while another tenant floods the helper its listen
        # queue is full, and a blocking connect() waits its turn in the kernel. With
        # settimeout() Python would connect non-blocking, and a full queue fails at once.
        _bound_waits(sock, CONNECT_TIMEOUT_SECONDS)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise unreachable(self.path, exc) from None
        self._sock, self._waits = sock, CONNECT_TIMEOUT_SECONDS
        self._read_ahead.clear()
        return sock

    def open_console(self, op: str, args: dict[str, Any]) -> tuple[Any, socket.socket]:
        """Make a console (or ``events --follow``) request; on success the connection becomes
        the session.

        Returns the reply's result and the socket, which now belongs to the caller (this
        client will open a new connection for any later request)."""
        self._exact_reads = True
        try:
            result = self.call(op, args, timeout=30.0)
        finally:
            self._exact_reads = False
        sock = self._connect()
        self._sock = None
        _bound_waits(sock, None)  # a console waits for its peer as long as it takes
        return result, sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _take(self, sock: socket.socket, count: int, exact: bool) -> bytes:
        """The next ``count`` bytes: those read ahead, then from the socket, reading ahead as
        much as comes unless ``exact`` (what follows belongs to whoever takes the socket)."""
        buffer = self._read_ahead
        while len(buffer) < count:
            chunk = sock.recv(count - len(buffer) if exact else RECV_BYTES)
            if not chunk:
                raise Unavailable("the vpsshell helper closed the connection")
            buffer += chunk
        taken = bytes(buffer[:count])
        del buffer[:count]
        return taken

    def _read_message(self, sock: socket.socket, exact: bool) -> dict[str, Any]:
        while True:
            header = self._take(sock, protocol.HEADER.size, exact)
            frame_type, length = protocol.parse_header(header)
            payload = self._take(sock, length, exact)
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
            if timeout != self._waits:
                _bound_waits(sock, timeout)
                self._waits = timeout
            try:
                sock.sendall(protocol.encode_message(protocol.request(request_id, op, args or {})))
            except (BrokenPipeError, ConnectionResetError):
                # the helper refused the connection (too many, rate limited, account refused)
                # and closed it: its one-line reason may still be waiting to be read
                pass
            while True:
                message = self._read_message(sock, self._exact_reads)
                result = reply_result(message, request_id, on_progress)
                if result is not PENDING:
                    return result
        except VpsError:
            raise
        except (BlockingIOError, TimeoutError):  # EAGAIN: the bound of _bound_waits passed
            self.close()
            raise TemporaryFailure("timed out waiting for the vpsshell helper") from None
        except (OSError, protocol.ProtocolError) as exc:
            self.close()
            raise Unavailable(f"lost the connection to the vpsshell helper: {exc}") from None
