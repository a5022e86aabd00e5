"""XenStore for the xen backend, through pyxs, with pyxs 0.4.1's known problems worked around.

The backend reads a few nodes (a domain's ``vm`` path, ``start_time``, ``console/tty`` and that
node's permissions) and watches ``@introduceDomain`` and ``@releaseDomain``. It never writes to
XenStore. pyxs 0.4.1 (PyPI) has three problems that matter to a long-running helper, handled
here the same way for Debian's newer python3-pyxs:

* it cannot write an empty value (its payload check wants one byte or more): vpsshell writes
  nothing at all, so that one cannot bite;
* a call waits forever when the connection drops (the router thread dies and nobody sets the
  reply): every call has a deadline, after which the connection is shut down and every waiting
  call is released with an error (``_abort``); the next call connects again;
* ``Monitor.wait()`` has no timeout: the watch thread takes events from the monitor's queue
  with a timeout instead, checks that the router is alive, and reconnects with a backoff
  (watches are re-registered, and XenStore fires each one once on registration, so the backend
  rescans and reports what changed while it was away).

Watch events reach the asyncio loop only through ``call_soon_threadsafe``. Nothing here decides
anything: values read from XenStore are returned as text for the backend to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import queue
import socket
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import pyxs

logger = logging.getLogger("vpsshell.xen")

CALL_TIMEOUT_SECONDS = 5.0
WATCH_POLL_SECONDS = 1.0
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0
WATCHES = (b"@introduceDomain", b"@releaseDomain")


class XenStoreUnavailable(Exception):
    """XenStore did not answer (not running, connection lost, call timed out)."""


def _abort(client: Any) -> None:
    """Shut a pyxs client's connection down and release every call waiting on it. Never joins
    the router thread: it may itself be stuck in a read."""
    router = client.router
    with contextlib.suppress(OSError):  # first: a router that sees it stops quietly
        router.w_terminator.sendall(b"\x00")
    transport = getattr(router.connection, "transport", None)
    sock = getattr(transport, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    packet, op = pyxs.client.Packet, pyxs.client.Op
    for rq_id, rvar in list(router.rvars.items()):
        router.rvars.pop(rq_id, None)
        rvar.set(packet(op.ERROR, b"EIO\x00", rq_id))


class _Router(pyxs.Router):  # type: ignore[misc]
    """pyxs's router, ending quietly when the connection drops (pyxs lets the exception
    escape its thread, which prints a traceback into the helper's log each time)."""

    def __call__(self) -> None:
        try:
            super().__call__()
        except (pyxs.PyXSError, OSError, ValueError) as exc:
            logger.debug("XenStore connection ended: %s", exc)


def _connect(path: str) -> Any:
    client = pyxs.Client(router=_Router(pyxs.connection.UnixSocketConnection(path)))
    try:
        client.connect()
    except pyxs.ConnectionError as exc:
        raise XenStoreUnavailable(f"cannot connect to XenStore at {path}: {exc}") from None
    return client


def _watch(monitor: Any, path: bytes) -> None:
    monitor.watch(path, b"vpsshell" + path)


def _with_deadline(client: Any, seconds: float, work: Callable[[], Any]) -> Any:
    """Run ``work`` (pyxs calls on ``client``) on this thread; past the deadline the client is
    aborted, which makes the stuck call raise."""
    timer = threading.Timer(seconds, _abort, (client,))
    timer.daemon = True
    timer.start()
    try:
        return work()
    finally:
        timer.cancel()


class XenStore:
    """Reads with deadlines, and a watch thread feeding a callback on the asyncio loop."""

    def __init__(
        self,
        socket_path: str,
        on_watch: Callable[[str], None],
        *,
        call_timeout: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self.socket_path = socket_path
        self._on_watch = on_watch
        self._timeout = call_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._client: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.watching = False  # the watch connection is up (events are live)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the watch thread (it connects, and keeps reconnecting, by itself)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._watch_loop, name="xenstore-watch", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stop.set()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            _abort(client)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, WATCH_POLL_SECONDS * 3)

    # -- reads ------------------------------------------------------------------------------

    async def read(self, path: str) -> str | None:
        """The value at ``path``, or None if it does not exist (or may not be read)."""
        return await asyncio.to_thread(self._call, lambda c: self._read(c, path))

    async def owner(self, path: str) -> int | None:
        """The domain that owns ``path`` (first entry of its permissions), or None."""
        return await asyncio.to_thread(self._call, lambda c: self._owner(c, path))

    @staticmethod
    def _read(client: Any, path: str) -> str | None:
        try:
            value: bytes = client.read(path.encode("ascii"))
        except pyxs.PyXSError as exc:
            if exc.args and exc.args[0] in (errno.ENOENT, errno.EACCES, errno.EPERM):
                return None
            raise
        return value.decode("ascii", "replace")

    @staticmethod
    def _owner(client: Any, path: str) -> int | None:
        try:
            perms: list[bytes] = client.get_perms(path.encode("ascii"))
        except pyxs.PyXSError as exc:
            if exc.args and exc.args[0] in (errno.ENOENT, errno.EACCES, errno.EPERM):
                return None
            raise
        first = perms[0].decode("ascii", "replace") if perms else ""
        return int(first[1:]) if first[1:].isdigit() else None

    def _call(self, work: Callable[[Any], Any]) -> Any:
        """Run ``work(client)`` on this worker thread with a deadline, connecting if needed;
        a dead or stuck connection is dropped so that the next call starts afresh."""
        with self._lock:
            client = self._client
            if client is None or not client.router.thread.is_alive():
                if client is not None:
                    _abort(client)
                client = self._client = _connect(self.socket_path)
        try:
            return _with_deadline(client, self._timeout, lambda: work(client))
        except (pyxs.ConnectionError, OSError) as exc:
            self._drop(client)
            raise XenStoreUnavailable(f"XenStore connection lost: {exc}") from None
        except pyxs.PyXSError as exc:
            if exc.args and exc.args[0] == errno.EIO:  # released by _abort: deadline passed
                self._drop(client)
                raise XenStoreUnavailable(
                    f"XenStore did not answer within {self._timeout:g} s"
                ) from None
            raise

    def _drop(self, client: Any) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        _abort(client)

    # -- watches ----------------------------------------------------------------------------

    def _notify(self, what: str) -> None:
        loop = self._loop
        if loop is None or self._stop.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the helper is exiting
            loop.call_soon_threadsafe(self._on_watch, what)

    def _watch_loop(self) -> None:
        backoff = RECONNECT_MIN_SECONDS
        reported = False
        while not self._stop.is_set():
            client = None
            try:
                client = _connect(self.socket_path)
                monitor = client.monitor()
                for path in WATCHES:
                    _with_deadline(client, self._timeout, partial(_watch, monitor, path))
                self.watching = True
                if reported:
                    logger.info("XenStore watches are back")
                reported = False
                backoff = RECONNECT_MIN_SECONDS
                self._notify("connected")
                while not self._stop.is_set():
                    try:
                        event = monitor.events.get(timeout=WATCH_POLL_SECONDS)
                    except queue.Empty:
                        if not client.router.thread.is_alive():
                            raise XenStoreUnavailable("the XenStore connection closed") from None
                        continue
                    self._notify(event.path.decode("ascii", "replace"))
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                if not self._stop.is_set() and not reported:
                    logger.warning(
                        "XenStore watches lost (%s); domain events are delayed until they are back",
                        exc,
                    )
                    reported = True
            finally:
                self.watching = False
                if client is not None:
                    _abort(client)
            if not self._stop.is_set():
                self._notify("lost")
            self._stop.wait(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)
