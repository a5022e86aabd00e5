"""One libvirt connection ("host") of the libvirt backend, and libvirt's event-loop thread.

libvirt-python is blocking, so every call runs on a short-lived daemon thread and the asyncio
loop waits for it with a timeout: a hung ``libvirtd`` costs the tenant one timeout and a clear
temporary error, never blocks the loop or another host, and never keeps the helper from
exiting. Once a call on a host has overrun its timeout, further calls on that host fail at once
until it returns, so a hung daemon does not pile up threads. The connection is opened when the
backend starts (every host at once, none waiting for another), with the host's keepalive, and
reopened in the background when it fails or libvirt says it closed (``libvirtd`` restarted, the
link cut, keepalive unanswered); events of the new connection are registered again. While a
host is down its calls fail at once: only the background loop waits for it.

A host's state is what ``vpsshell-admin hosts`` shows: ``connecting`` (never connected yet),
``connected``, ``not-answering`` (connected, but a call overran its timeout) or ``unreachable``
(not connected; reconnecting), with the time it entered that state and libvirt's last error.
Going from connected to anything but connected is reported once as lost; coming back, once as
back (the backend turns both into host events and re-reads the host's domains).

libvirt's default event loop runs in one process-wide daemon thread; the lifecycle, reboot and
close callbacks it calls only read names and ids off their arguments (no RPC) and hand them to
the asyncio loop with ``call_soon_threadsafe``. Nothing here ever looks a domain up by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from vpsshell.backends.libvirt_config import HostConfig
from vpsshell.errors import TemporaryFailure

logger = logging.getLogger("vpsshell.libvirt")

T = TypeVar("T")

# Threads that run one host's calls: a call costs no thread start, and a hung host holds at
# most this many (below libvirtd's default of 5 requests in progress per client).
WORKERS_PER_HOST = 4
STUCK_CONNECTS_MAX = 4  # connection attempts left hanging on a host before none is begun
RECONNECT_FIRST_DELAY_SECONDS = 0.5
RECONNECT_MAX_DELAY_SECONDS = 30.0
CLOSE_WAIT_SECONDS = 2.0

_event_loop_lock = threading.Lock()
_event_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it on a daemon thread.

    Process-wide and idempotent; must happen before the first connection is opened, or that
    connection gets no events and no keepalive."""
    global _event_loop_thread
    with _event_loop_lock:
        if _event_loop_thread is not None:
            return
        # libvirt prints every error to stderr by default; they are raised as exceptions anyway.
        libvirt.registerErrorHandler(lambda _ctx, _error: None, None)
        libvirt.virEventRegisterDefaultImpl()
        _event_loop_thread = threading.Thread(
            target=_run_event_loop, name="libvirt-events", daemon=True
        )
        _event_loop_thread.start()


def _run_event_loop() -> None:
    while True:
        try:
            if libvirt.virEventRunDefaultImpl() < 0:
                threading.Event().wait(0.1)  # do not spin on a persistent failure
        except Exception:
            logger.exception("libvirt event loop iteration failed")
            threading.Event().wait(0.1)


def run_in_event_thread(work: Callable[[], None]) -> None:
    """Run ``work`` on libvirt's event thread soon (a zero timeout that removes itself)."""

    def fire(timer: int, _opaque: object) -> None:
        libvirt.virEventRemoveTimeout(timer)
        try:
            work()
        except Exception:
            logger.exception("libvirt event-thread task failed")

    libvirt.virEventAddTimeout(0, fire, None)


@dataclass(frozen=True)
class RawEvent:
    """A libvirt domain event, as read on the event thread; ``event``/``detail`` are libvirt's
    numbers (``kind`` "reboot" events have none)."""

    host: LibvirtHost
    uuid: str
    name: str
    domain_id: int
    kind: str  # "lifecycle" | "reboot"
    event: int = -1
    detail: int = -1


class _Job:
    """One call for a host's workers; one the caller gave up on before it began never runs
    (a call queued behind calls a hung host holds must not act minutes later)."""

    def __init__(self, run: Callable[[], None], on_skip: Callable[[], None]) -> None:
        self._run = run
        self._on_skip = on_skip
        self._lock = threading.Lock()
        self._started = False
        self._given_up = False

    def give_up(self) -> bool:
        """True if it had not begun (and now never will)."""
        with self._lock:
            if not self._started:
                self._given_up = True
            return self._given_up

    def __call__(self) -> None:
        with self._lock:
            if self._given_up:
                skipped = True
            else:
                skipped, self._started = False, True
        if skipped:
            self._on_skip()
        else:
            self._run()


class _Workers:
    """A few daemon threads, started as needed, running one host's calls in order."""

    def __init__(self, name: str, count: int) -> None:
        self._name = name
        self._count = count
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, job: _Job) -> None:
        with self._lock:
            start = self._idle == 0 and self._threads < self._count
            if start:
                self._threads += 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            job()


class ConnectionLost(Exception):
    """A call failed because the connection is gone (libvirtd stopped or restarted)."""


def _refuse_credentials(credentials: list[Any], _opaque: object) -> int:
    return -1  # never prompt: the helper has no one to ask


CONNECTING, CONNECTED, NOT_ANSWERING, UNREACHABLE = (
    "connecting",
    "connected",
    "not-answering",
    "unreachable",
)


class LibvirtHost:
    """A time-limited, self-healing connection to one libvirt URI, and its state."""

    def __init__(
        self,
        config: HostConfig,
        timeout: float,
        on_event: Callable[[RawEvent], None],
        on_state: Callable[[LibvirtHost, str, str], None],
    ) -> None:
        self.name = config.name
        self.uri = config.uri
        self.keepalive = (config.keepalive_interval, config.keepalive_count)
        self.timeout = timeout
        self._on_event = on_event
        self._on_state = on_state  # (host, change, why): change is connected, lost or back
        self.state = CONNECTING
        self.since = time.time()
        self.last_error = ""
        self._lost = False  # reported lost, not back yet
        self._answered_at = 0.0  # monotonic time of the last call that returned
        self._workers = _Workers(f"libvirt-{config.name}", WORKERS_PER_HOST)
        self._queued: dict[asyncio.Future[Any], _Job] = {}  # calls given to the workers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None
        self._callback_ids: list[int] = []
        # A connection is closed only once no call runs on it: libvirt frees a closed
        # connection even while another thread is inside a call on it (and crashes there).
        self._use_lock = threading.Lock()
        self._in_use: dict[int, int] = {}  # id(connection) -> calls running on it
        self._retired: dict[int, tuple[Any, list[int]]] = {}  # to close when idle
        self._connecting: asyncio.Future[tuple[Any, list[int]]] | None = None
        self._connecting_since = 0.0
        self._abandoned: set[asyncio.Future[tuple[Any, list[int]]]] = set()
        self._overdue: set[asyncio.Future[Any]] = set()
        self._reconnect: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def answering(self) -> bool:
        """Connected, and no call is overdue: its domains' states can be believed."""
        return self.state == CONNECTED

    @property
    def answered_lately(self) -> bool:
        """Answering, and it answered a call or a keepalive probe within the timeout: what
        it last said of its domains may stand for what it would say now."""
        return self.answering and time.monotonic() - self._answered_at < self.timeout

    def start(self) -> None:
        """Begin connecting in the background (returns at once), and probing the host."""
        self._bind_loop()
        self._ensure_reconnecting(first_delay=0.0)
        self._prober = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        """Every ``keepalive_interval`` seconds one round trip to the host; one unanswered
        for ``keepalive_count`` intervals drops the connection (as libvirt's keepalive would,
        after about interval x (count + 1) s) and the background loop reconnects."""
        interval, count = self.keepalive
        while not self._closing:
            await asyncio.sleep(interval)
            conn = self._conn
            if conn is None:
                continue
            self._enter(conn)

            def probe(conn: Any = conn) -> None:
                try:
                    conn.getLibVersion()
                finally:
                    self._leave(conn)

            answered = self._spawn(probe, "keepalive")
            try:
                await asyncio.wait_for(asyncio.shield(answered), interval * count)
            except TimeoutError:
                self._drop(conn, f"no answer to a keepalive probe within {interval * count} s")
            except libvirt.libvirtError as exc:
                if not _is_alive(conn):
                    self._drop(conn, exc.get_error_message() or "connection closed")

    def _set_state(self, why: str = "") -> None:
        """Derive the state from the connection and overdue calls; report lost and back."""
        if self._conn is not None:
            state = NOT_ANSWERING if self._overdue else CONNECTED
        elif self.state == CONNECTING and not why:
            state = CONNECTING
        else:
            state = UNREACHABLE
        if why:
            self.last_error = why
        if state == self.state:
            return
        self.state, self.since = state, time.time()
        if state == CONNECTED:
            change, self._lost = ("back" if self._lost else "connected"), False
            self._on_state(self, change, "")
        elif not self._lost:
            self._lost = True
            self._on_state(self, "lost", why or state)

    # -- calls ------------------------------------------------------------------------------

    async def call(self, work: Callable[[Any], T], what: str, *, timeout: float | None = None) -> T:
        """Run ``work(connection)`` on a thread, within the timeout (the host's, unless this
        call is known to be long: a migration). Raises TemporaryFailure when the host cannot
        answer now; libvirt errors of ``work`` itself pass through."""
        if self._closing:
            raise TemporaryFailure("the vpsshell helper is stopping")
        self._refuse_if_stalled()
        if self._conn is None and self.state != CONNECTING:
            raise self.unreachable()  # the background loop is reconnecting: nobody waits
        conn = await self._connection()

        def guarded() -> T:
            try:
                return work(conn)
            except libvirt.libvirtError as exc:
                if not _is_alive(conn):
                    raise ConnectionLost(exc.get_error_message()) from exc
                raise
            finally:
                self._leave(conn)

        self._enter(conn)  # on the loop, before the thread exists: no close can slip between

        try:
            running = self._spawn(guarded, what, pooled=True, on_skip=lambda: self._leave(conn))
            return await self._wait(running, what, timeout)
        except ConnectionLost as exc:
            self._drop(conn, str(exc))
            raise self.unreachable() from None

    def _refuse_if_stalled(self) -> None:
        if self._overdue:
            raise self.unreachable()

    def unreachable(self) -> TemporaryFailure:
        """What a tenant is told about a host that is down: its label, never its URI."""
        if self._overdue:
            return TemporaryFailure(
                f"host {self.name} is not answering (libvirt is hung or overloaded); "
                "try again later"
            )
        return TemporaryFailure(f"host {self.name} cannot be reached right now; try again later")

    def _spawn(
        self,
        work: Callable[[], T],
        what: str,
        *,
        pooled: bool = False,
        on_skip: Callable[[], None] = lambda: None,
    ) -> asyncio.Future[T]:
        """Run ``work`` off the loop: on the host's workers (``pooled``: calls), or on a
        thread of its own (connecting, closing, the keepalive probe: never queued behind
        calls a hung host holds)."""
        loop = self._bind_loop()
        future: asyncio.Future[T] = loop.create_future()
        # an overdue call may end with an exception nobody awaits any more: read it here
        future.add_done_callback(lambda done: done.cancelled() or done.exception())

        def settle(ok: bool, value: Any) -> None:
            if future.done():
                return
            if ok:
                self._answered_at = time.monotonic()
                future.set_result(value)
            else:
                future.set_exception(value)

        def run() -> None:
            try:
                outcome: tuple[bool, Any] = (True, work())
            except BaseException as exc:  # handed over, never lost
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(settle, *outcome)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting for this any more

        if pooled:
            job = _Job(run, on_skip)
            self._queued[future] = job
            future.add_done_callback(lambda done: self._queued.pop(done, None))
            self._workers.submit(job)
        else:
            threading.Thread(target=run, name=f"libvirt-{self.name}-{what}", daemon=True).start()
        return future

    async def _wait(self, future: asyncio.Future[T], what: str, timeout: float | None = None) -> T:
        timeout = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            job = self._queued.get(future)
            if job is not None and job.give_up():  # never began: every worker is stuck
                future.cancel()
                raise TemporaryFailure(
                    f"host {self.name} is not answering (libvirt is hung or overloaded); "
                    "try again later"
                ) from None
            if future not in self._overdue:
                self._overdue.add(future)
                future.add_done_callback(self._call_returned)
                self._set_state(f"{what} got no answer within {timeout:g} s")
                logger.warning(
                    "host %s (%s): %s got no answer within %g s; calls to this host fail "
                    "until it answers",
                    self.name,
                    self.uri,
                    what,
                    timeout,
                )
            raise TemporaryFailure(
                f"host {self.name} did not answer within {timeout:g} s; try again later"
            ) from None

    def _call_returned(self, future: asyncio.Future[Any]) -> None:
        self._overdue.discard(future)
        if not self._overdue:
            logger.info("host %s answers again", self.name)
            self._set_state()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a LibvirtHost is bound to one asyncio loop")
        return loop

    # -- the connection ---------------------------------------------------------------------

    async def _connection(self) -> Any:
        if self._conn is not None:
            return self._conn
        connecting = self._connecting
        if connecting is not None and self._stuck(connecting):
            connecting = None  # begin another: a stuck one may never end (no TLS timeout)
        if connecting is None:
            connecting = self._connecting = self._spawn(self._open_blocking, "connect")
            self._connecting_since = time.monotonic()
            connecting.add_done_callback(self._opened)
        try:
            return (await self._wait(connecting, "connect"))[0]
        except ConnectionLost:
            raise self.unreachable() from None

    def _open_blocking(self) -> tuple[Any, list[int]]:
        try:
            conn = libvirt.openAuth(
                self.uri,
                [
                    [libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE],
                    _refuse_credentials,
                    None,
                ],
                0,
            )
        except libvirt.libvirtError as exc:
            raise ConnectionLost(exc.get_error_message()) from exc
        with contextlib.suppress(libvirt.libvirtError):  # local drivers have no keepalive
            # libvirt's own keepalive closes the connection from its event thread, and
            # libvirt 9.0's client can crash when calls are waiting on it then; the host's
            # own probe (``_keep_alive``) notices a silent host instead, and a connection is
            # only ever closed once no call uses it.
            conn.setKeepAlive(-1, 0)
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(self._closed_by_libvirt, None)
        ids = [
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
            )
        ]
        try:
            ids.append(
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._rebooted, None
                )
            )
        except libvirt.libvirtError as exc:
            logger.info("host %s: no reboot events (%s)", self.name, exc.get_error_message())
        return conn, ids

    def _stuck(self, connecting: asyncio.Future[tuple[Any, list[int]]]) -> bool:
        """Has this connection attempt hung long enough to leave it and begin another?
        libvirt has no timeout of its own for a TLS handshake a host never answers; at most
        ``STUCK_CONNECTS_MAX`` attempts are left hanging at a time (each holds a thread)."""
        if time.monotonic() - self._connecting_since < 2 * self.timeout:
            return False
        if len(self._abandoned) >= STUCK_CONNECTS_MAX:
            return False
        self._abandoned.add(connecting)
        self._overdue.discard(connecting)
        self._connecting = None
        return True

    def _opened(self, future: asyncio.Future[tuple[Any, list[int]]]) -> None:
        if future in self._abandoned:
            self._abandoned.discard(future)
            if future.cancelled() or future.exception() is not None:
                return
            conn, ids = future.result()
            if self._conn is not None or self._closing:
                self._retire(conn, ids)  # a later attempt won meanwhile
                return
        elif future is self._connecting:
            self._connecting = None
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            if self.state in (CONNECTING, CONNECTED):
                logger.warning("host %s (%s): cannot connect: %s", self.name, self.uri, error)
            self._set_state(str(error)[:300] or type(error).__name__)
            self._ensure_reconnecting()
            return
        conn, ids = future.result()
        if self._closing or self._conn is not None:  # stopping, or another attempt won
            self._retire(conn, ids)
            return
        self._conn, self._callback_ids = conn, ids
        again = self.state != CONNECTING
        logger.info("host %s: %sconnected to %s", self.name, "re" if again else "", self.uri)
        self._set_state()

    def _drop(self, conn: Any, why: str) -> None:
        """Forget a dead connection and reconnect in the background (events must resume even
        if no tenant asks anything)."""
        if conn is None or conn is not self._conn:
            return
        ids = self._callback_ids
        self._conn, self._callback_ids = None, []
        logger.warning("host %s: connection to libvirt lost (%s); reconnecting", self.name, why)
        self._retire(conn, ids)
        self._overdue.clear()  # they belong to the old connection: the next one starts clean
        self._set_state(f"connection lost: {why}")
        self._ensure_reconnecting()

    def _ensure_reconnecting(self, first_delay: float = RECONNECT_FIRST_DELAY_SECONDS) -> None:
        if not self._closing and (self._reconnect is None or self._reconnect.done()):
            self._reconnect = asyncio.get_running_loop().create_task(
                self._reconnect_loop(first_delay)
            )

    async def _reconnect_loop(self, delay: float) -> None:
        while not self._closing and self._conn is None:
            await asyncio.sleep(delay)
            try:
                await self._connection()
            except TemporaryFailure:
                delay = min(
                    max(delay, RECONNECT_FIRST_DELAY_SECONDS) * 2, RECONNECT_MAX_DELAY_SECONDS
                )

    async def close(self) -> None:
        self._closing = True
        for task in (self._reconnect, self._prober):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        conn, ids = self._conn, self._callback_ids
        self._conn, self._callback_ids = None, []
        if conn is not None:
            closing = self._retire(conn, ids)
            if closing is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(closing), CLOSE_WAIT_SECONDS)

    def _enter(self, conn: Any) -> None:
        with self._use_lock:
            self._in_use[id(conn)] = self._in_use.get(id(conn), 0) + 1

    def _leave(self, conn: Any) -> None:
        """A call on ``conn`` ended (on its worker thread): the last one out closes a
        connection retired meanwhile."""
        with self._use_lock:
            running = self._in_use[id(conn)] - 1
            if running:
                self._in_use[id(conn)] = running
                return
            del self._in_use[id(conn)]
            retired = self._retired.pop(id(conn), None)
        if retired is not None:
            _close_quietly(*retired)

    def _retire(self, conn: Any, ids: list[int]) -> asyncio.Future[None] | None:
        """Close a connection no longer used: now (on a thread: a dead host can make even
        that slow) if no call runs on it, else when the last one ends."""
        with self._use_lock:
            if self._in_use.get(id(conn)):
                self._retired[id(conn)] = (conn, ids)
                return None
        return self._spawn(lambda: _close_quietly(conn, ids), "close")

    # -- libvirt's event thread -------------------------------------------------------------

    def _hand_over(self, work: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the helper is exiting
            loop.call_soon_threadsafe(work, *args)

    def _lifecycle(self, conn: Any, dom: Any, event: int, detail: int, _opaque: object) -> None:
        raw = RawEvent(self, dom.UUIDString(), dom.name(), dom.ID(), "lifecycle", event, detail)
        self._hand_over(self._deliver, conn, raw)

    def _rebooted(self, conn: Any, dom: Any, _opaque: object) -> None:
        raw = RawEvent(self, dom.UUIDString(), dom.name(), dom.ID(), "reboot")
        self._hand_over(self._deliver, conn, raw)

    def _closed_by_libvirt(self, conn: Any, reason: int, _opaque: object) -> None:
        reasons = {0: "error", 1: "end of file", 2: "keepalive timeout", 3: "client"}
        self._hand_over(self._drop_by_identity, conn, reasons.get(reason, str(reason)))

    def _drop_by_identity(self, conn: Any, why: str) -> None:
        # the close callback gets a new Python wrapper of the same connection
        if self._conn is not None and _same_connection(conn, self._conn):
            self._drop(self._conn, why)

    def _deliver(self, conn: Any, raw: RawEvent) -> None:
        if self._conn is not None and _same_connection(conn, self._conn):
            self._on_event(raw)


def _same_connection(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a.c_pointer() == b.c_pointer())
    except (AttributeError, libvirt.libvirtError):
        return False


def _is_alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _close_quietly(conn: Any, callback_ids: list[int]) -> None:
    for callback_id in callback_ids:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(callback_id)
    with contextlib.suppress(libvirt.libvirtError):
        conn.unregisterCloseCallback()
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
