"""Socket plumbing of the helper: listening sockets, connections, frames, limits.

This module knows framing and limits, not operations: each decoded request goes to an API
object (tenant or admin). It identifies every connection by ``SO_PEERCRED`` before reading a
byte, takes its connection slot before waiting for anything (``admission``), checks the
account (PAM, ``admit``) when it opens and again every ``account_recheck_seconds`` while it
lasts, caps frame sizes and idle time, and drops a connection that sends garbage, without
letting any of that reach the rest of the helper. Refusals a tenant can provoke at will are
audited folded (``AuditLog.write_folded``), so a flood costs the flooder, not the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from vpsshell import protocol
from vpsshell.daemon.admission import Admission
from vpsshell.daemon.audit import AuditLog
from vpsshell.daemon.config import Limits
from vpsshell.daemon.peer import Caller, peer_credentials, resolve_caller

log = logging.getLogger("vpsshell.server")

# what takes over a connection after the reply that allowed it (a console, an events follower)
Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Answer(NamedTuple):
    """An API's answer to one request: the reply to send and, for a request that opens a
    console or an events follower, the session that runs on the connection after it."""

    reply: dict[str, Any]
    session: Session | None = None


def _closed_reader() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_eof()
    return reader


# a check of a caller's account (PAM account management): None if accepted, else why not; the
# float is the oldest verdict that may be reused (None: the checker's own default)
Admit = Callable[[Caller, float | None], Awaitable[str | None]]

RequestHandler = Callable[
    [Caller, dict[str, Any], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[Answer],
]


def prepare_socket_path(path: str) -> None:
    """Make the parent directory and remove a stale socket; refuse if a helper is listening."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # stale
    else:
        raise RuntimeError(f"another helper is already listening on {path}")
    finally:
        probe.close()


def bind_socket(path: str, mode: int, group: str | None) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode``, owned by root and ``group``."""
    prepare_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never exists with wider permissions than 0600
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.warning("socket group %r does not exist; %s stays mode 0600", group, path)
            mode = 0o600
    if gid != -1 and os.geteuid() == 0:
        os.chown(path, 0, gid)
    os.chmod(path, mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock


ACCEPTS_PER_TURN = 4  # connections taken from the listen queue per turn of the event loop


@functools.lru_cache(maxsize=64)
def _refusal_frame(kind: str, message: str) -> bytes:
    return protocol.encode_message(protocol.reply_error(None, kind, message))


def _turn_away(conn: socket.socket, kind: str, message: str) -> None:
    """Say why in one frame (if the peer's buffer takes it now) and close; never waits."""
    conn.setblocking(False)
    with contextlib.suppress(OSError):
        conn.send(_refusal_frame(kind, message))
    conn.close()


class Listener:
    """Serves one socket: reads framed requests and hands them to ``handle_request``."""

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        handle_request: RequestHandler,
        limits: Limits,
        audit: AuditLog,
        allowed_uids: frozenset[int] | None = None,
        admit: Admit | None = None,
        owns_path: bool = True,
        rate_limit_connections: bool = True,
        refusal: str = "not an admin",
    ) -> None:
        self.refusal = refusal  # what the audit says of a uid not in ``allowed_uids``
        self.owns_path = owns_path
        self.admit = admit  # a check of each new caller (PAM account management)
        self.name = name
        self.sock = sock
        self.path = sock.getsockname()
        self.handle_request = handle_request
        self.limits = limits
        self.audit = audit
        self.allowed_uids = allowed_uids
        self.admission = Admission(limits, rate_limited=rate_limit_connections)
        self._accepting = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept_some)
        self._accepting = True

    def stop_accepting(self) -> None:
        if self._accepting:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._accepting = False
            self.sock.close()

    def _accept_some(self) -> None:
        """Take a few connections from the listen queue, then let the loop serve others.

        A connection that may not be served is turned away right here, before it costs an
        asyncio transport or a task: the peer is checked, a slot is reserved or refused, and a
        refusal is one folded audit record and one pre-encoded reply. Taking at most
        ``ACCEPTS_PER_TURN`` per turn keeps a flood of connect() calls from holding the event
        loop while other tenants' requests wait (asyncio's own server takes 100 at a time)."""
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: leave the rest in the queue for now
                log.error("accepting a connection on %s failed: %s", self.path, exc)
                return
            self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        try:
            pid, uid, gid = peer_credentials(conn)
        except OSError:
            conn.close()
            return
        if self.allowed_uids is not None and uid not in self.allowed_uids:
            self._refuse(uid, pid, None, "denied", self.refusal)
            conn.close()
            return
        # the slot is taken before any await, so connections still being checked count
        full = self.admission.reserve(uid)
        if full is not None:
            self._refuse(uid, pid, None, "temporary", full)
            _turn_away(conn, "temporary", full)
            return
        task = asyncio.get_running_loop().create_task(self._on_connect(conn, pid, uid, gid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening; connections get ``grace`` seconds to end on their own (a console
        or follower told that the helper is stopping sends that and ends), then are cancelled."""
        self.stop_accepting()
        if self._tasks and grace > 0:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.owns_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _on_connect(self, conn: socket.socket, pid: int, uid: int, gid: int) -> None:
        """An admitted connection, holding its slot until it ends, however it ends."""
        try:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    sock=conn, limit=protocol.MAX_FRAME_BYTES * 2
                )
            except OSError:
                conn.close()
                return
            try:
                await self._serve(reader, writer, pid, uid, gid)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        finally:
            self.admission.release(uid)

    def _refuse(self, uid: int, pid: int, user: str | None, result: str, message: str) -> None:
        """Audit a connection turned away before any request was read (folded per uid and
        reason: a tenant can provoke these as fast as they can connect)."""
        self.audit.write_folded(
            ("connect", self.name, uid, result, message),
            socket=self.name,
            uid=uid,
            user=user,
            pid=pid,
            action="connect",
            decision="deny",
            result=result,
            message=message,
        )

    @staticmethod
    def _say(writer: asyncio.StreamWriter, kind: str, message: str) -> None:
        """One error reply to a connection that is about to be closed; never waits."""
        with contextlib.suppress(Exception):
            writer.write(_refusal_frame(kind, message))

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pid: int,
        uid: int,
        gid: int,
    ) -> None:
        caller = resolve_caller(pid, uid, gid)
        if caller is None:
            self._refuse(uid, pid, None, "denied", "uid has no passwd entry")
            self._say(writer, "denied", "unknown user")
            return
        if not await self._account_accepted(caller, writer, None):
            return
        await self._request_loop(caller, reader, writer)

    async def _account_accepted(
        self, caller: Caller, writer: asyncio.StreamWriter, max_age: float | None
    ) -> bool:
        if self.admit is None:
            return True
        refusal = await self.admit(caller, max_age)
        if refusal is None:
            return True
        self._refuse(caller.uid, caller.pid, caller.user, "denied", f"account refused: {refusal}")
        self._say(writer, "denied", "your account may not use vpsshell (ask your provider)")
        return False

    async def _request_loop(
        self, caller: Caller, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async def send(message: dict[str, Any]) -> None:
            await self._send(writer, message)

        recheck = self.limits.account_recheck_seconds
        checked = time.monotonic()
        while True:
            try:
                # idle between requests: a silent close; once a frame has begun, it is audited
                frame = await protocol.read_frame(reader, self.limits.idle_timeout_seconds)
                if frame is None:
                    return
                frame_type, payload = frame
                if frame_type != protocol.FRAME_MESSAGE:
                    raise protocol.ProtocolError("console data outside a console session")
                untrusted_message = protocol.decode_message(payload)
            except protocol.ProtocolError as exc:
                self.audit.write(
                    socket=self.name,
                    uid=caller.uid,
                    user=caller.user,
                    pid=caller.pid,
                    action="protocol",
                    decision="invalid",
                    result="usage",
                    message=str(exc),
                )
                with contextlib.suppress(ConnectionError):
                    await self._send(writer, protocol.reply_error(None, "usage", str(exc)))
                return
            if time.monotonic() - checked >= recheck:  # a long connection: is it still allowed?
                if not await self._account_accepted(caller, writer, recheck):
                    return
                checked = time.monotonic()
            # a console request hands the rest of the connection to its session
            reply, session = await self.handle_request(caller, untrusted_message, send)
            try:
                await self._send(writer, reply)
            except ConnectionError:
                if session is not None:
                    await session(_closed_reader(), writer)
                return
            if session is not None:
                await session(reader, writer)
                return
            await asyncio.sleep(0)  # pipelined requests: let other connections have a turn

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        try:
            frame = protocol.encode_message(message)
        except protocol.ProtocolError:  # a reply over the frame limit: say so, never drop it
            log.error("reply to request %r exceeds the frame limit", message.get("id"))
            frame = protocol.encode_message(
                protocol.reply_error(message.get("id"), "failed", "reply too large")
            )
        writer.write(frame)
        await writer.drain()
