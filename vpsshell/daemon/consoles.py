"""Console hubs: one per domain UUID, brokering its serial console to the tenants attached.

A hub holds the one backend stream of its domain (reopening it when the domain restarts, so a
session survives reboots), a bounded scrollback ring, a bounded on-disk log, at most one writer
and a bounded number of read-only watchers. The writer's slot is never counted with the
watchers, so no number of watchers can keep a tenant from attaching as the writer; watchers are
capped per user and per domain, so one co-tenant cannot take every slot. The helper never hands
a tenant a file descriptor: bytes are copied, raw, in ``CONSOLE_DATA`` frames. Every attachment
has a bounded outgoing queue; a client that cannot keep up is dropped with a message, so neither
the guest nor other viewers ever wait for it.

Hubs, scrollback and logs are keyed by UUID, never by name: a name that now stands for another
domain (the admin re-created it) starts with an empty scrollback and an empty log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from vpsshell import protocol
from vpsshell.backends.base import Backend, ConsoleStream, DomainInfo, HostEvent, LifecycleEvent
from vpsshell.daemon.config import Limits
from vpsshell.daemon.console_log import ConsoleLog, expire_logs
from vpsshell.daemon.peer import Caller
from vpsshell.daemon.recordings import Recording, RecordingStore
from vpsshell.errors import TemporaryFailure, VpsError
from vpsshell.recording_format import list_directory

log = logging.getLogger("vpsshell.console")

REOPEN_DELAY_SECONDS = 2.0  # first retry after a console could not be opened
REOPEN_DELAY_MAX_SECONDS = 60.0  # backing off while it keeps failing; events wake it at once
# An attachment whose session has not begun this long after the attach (its request's reply
# never went out) is detached, so nothing on that path can hold a console slot.
SESSION_START_SECONDS = 30.0
RECORDINGS_FLUSH_SECONDS = 5.0  # at the helper's stop, for the recordings' last records
LOG_EXPIRY_INTERVAL_SECONDS = 3600.0  # how often logs of domains long gone are looked for
EVENT_NOTICES = {
    "started": "{name} started",
    "stopped": "{name} stopped",
    "crashed": "{name} crashed",
    "rebooted": "{name} is rebooting",
    "shutdown": "{name} is shutting down",
    "migrated": "{name} migrated",
}

_attachment_ids = itertools.count(1)


def data_frames(data: bytes) -> list[bytes]:
    """Console bytes as ``CONSOLE_DATA`` frames (encoded once, shared by every client)."""
    return [
        protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, data[i : i + 32768])
        for i in range(0, len(data), 32768)
    ]


class InputBudget:
    """What one user may type into one console: a token bucket of bytes, ``per_second``
    sustained, ``burst`` at once.

    ``charge`` takes the bytes of a frame already read and says how long to wait before acting
    on it; a frame larger than what is left runs the bucket into debt, paid for by waiting, so
    the bytes acted on stay within ``burst + per_second * t`` plus one frame."""

    def __init__(
        self, per_second: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now

    def charge(self, size: int) -> float:
        self._refill()
        self._tokens -= size
        return 0.0 if self._tokens >= 0 else -self._tokens / self.per_second

    def full(self) -> bool:
        self._refill()
        return self._tokens >= self.burst


class Attachment:
    """One tenant connection attached to a hub, with its bounded outgoing queue."""

    def __init__(self, caller: Caller, mode: str, queue_limit: int) -> None:
        self.id = next(_attachment_ids)
        self.caller = caller
        self.mode = mode  # "write" | "watch"
        self.since = time.time()
        self.queue_limit = queue_limit
        self._frames: deque[bytes] = deque()
        self._queued = 0
        self._ready = asyncio.Event()
        self.closed_reason: str | None = None
        self.hub: ConsoleHub | None = None
        self.session_started = False
        self.size: tuple[int, int] | None = None  # rows, cols of the tenant's terminal, if any
        self.via: str | None = None  # "web": a browser through vpsshell-web

    def _push(self, frame: bytes, *, force: bool = False) -> bool:
        if self.closed_reason is not None:
            return False
        if not force and self._queued + len(frame) > self.queue_limit:
            return False
        self._frames.append(frame)
        self._queued += len(frame)
        self._ready.set()
        return True

    def offer_frames(self, frames: list[bytes]) -> bool:
        """Queue encoded console frames; False if the client is too far behind."""
        return all(self._push(frame) for frame in frames)

    def notice(self, text: str) -> None:
        self._push(protocol.encode_message(protocol.notice(text)), force=True)

    def resize(self, rows: int, cols: int) -> None:
        """The tenant's window changed size (serial consoles have none: the writer's goes in
        the console's recording)."""
        if (rows, cols) != self.size and self.hub is not None:
            self.hub.resized(self, rows, cols)
        self.size = (rows, cols)

    def close(self, reason: str, text: str) -> None:
        """End the attachment: a final ``closed`` message, then the connection closes."""
        if self.closed_reason is not None:
            return
        self._push(protocol.encode_message(protocol.closed(reason, text)), force=True)
        self.closed_reason = reason
        self._ready.set()

    async def next_frames(self) -> list[bytes]:
        """Frames to send; an empty list once closed and drained."""
        while not self._frames:
            if self.closed_reason is not None:
                return []
            self._ready.clear()
            await self._ready.wait()
        frames = list(self._frames)
        self._frames.clear()
        self._queued = 0
        return frames


class ConsoleHub:
    def __init__(
        self,
        backend: Backend,
        info: DomainInfo,
        console_log: ConsoleLog,
        limits: Limits,
        on_detach: Callable[[Attachment, str], None],
        recordings: RecordingStore | None = None,
    ) -> None:
        self.backend = backend
        self.recordings = recordings
        self.recording: Recording | None = None  # while anyone is attached
        self.uuid = info.uuid
        self.name = info.name
        self.log = console_log
        self.limits = limits
        self.ring = bytearray()
        self.ring_bytes = limits.console_ring_bytes
        self.attachments: list[Attachment] = []
        self.writer: Attachment | None = None
        self._stream: ConsoleStream | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._on_detach = on_detach
        self._input_budgets: dict[int, InputBudget] = {}

    def input_budget(self, uid: int) -> InputBudget:
        """The input allowance of this user on this console, shared by their sessions: a new
        session (a reconnect, a takeover of one's own) does not bring a new burst."""
        attached = {a.caller.uid for a in self.attachments}
        for other in [u for u, b in self._input_budgets.items() if u not in attached and b.full()]:
            del self._input_budgets[other]  # nothing left to remember
        budget = self._input_budgets.get(uid)
        if budget is None:
            limits = self.limits
            budget = InputBudget(
                limits.console_input_bytes_per_second, limits.console_input_burst_bytes
            )
            self._input_budgets[uid] = budget
        return budget

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name=f"console-{self.name}")

    async def stop(self) -> None:
        for attachment in list(self.attachments):
            attachment.close("helper-stopping", "the vpsshell helper is stopping")
        if self.recording is not None:
            self.recording.close("the helper stopped")
            self.recording = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._stream is not None:
            await self._stream.close()
        self.log.close()
        self.log.mark_seen()

    def wake(self) -> None:
        """The domain (re)started: try to open its console now."""
        self._wake.set()

    async def _follow(self) -> None:
        """Keep a backend stream open for as long as the domain exists; reopen after it ends."""
        delay = REOPEN_DELAY_SECONDS / 2
        while True:
            try:
                self._stream = await self.backend.open_console(self.uuid)
            except VpsError as exc:
                log.debug("console of %s not available yet: %s", self.name, exc.message)
                self._stream = None
            except Exception:
                log.exception("opening the console of %s failed", self.name)
                self._stream = None
            opened = self._stream is not None
            if self._stream is not None:
                try:
                    while data := await self._stream.read():
                        self._output(data)
                except Exception:
                    log.exception("console stream of %s failed", self.name)
                with contextlib.suppress(Exception):
                    await self._stream.close()
                self._stream = None
            delay = REOPEN_DELAY_SECONDS if opened else min(delay * 2, REOPEN_DELAY_MAX_SECONDS)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
                delay = REOPEN_DELAY_SECONDS / 2  # woken by an event: try now, back off anew
            except TimeoutError:
                pass

    def _output(self, data: bytes) -> None:
        self.ring += data
        if len(self.ring) > self.ring_bytes:
            del self.ring[: len(self.ring) - self.ring_bytes]
        self.log.append(data)
        if self.recording is not None:
            self.recording.output(data)
        frames = data_frames(data)
        for attachment in list(self.attachments):
            if not attachment.offer_frames(frames):
                self.detach(attachment, "too-slow", "your connection could not keep up; detached")

    def attach(self, attachment: Attachment, *, takeover: bool, replay: int) -> None:
        """Add an attachment, or raise ``TemporaryFailure`` with why not. Never awaits: the
        caller returns its session right after, and that session detaches it on every way out.
        """
        marker = "attached"  # in the log's index, with who and how
        if attachment.mode == "watch":
            watchers = [a for a in self.attachments if a.mode == "watch"]
            mine = sum(a.caller.uid == attachment.caller.uid for a in watchers)
            if mine >= self.limits.console_watchers_per_user:
                raise TemporaryFailure(
                    f"{self.name}: you already watch this console in {mine} sessions; "
                    "end one of them first"
                )
            if len(watchers) >= self.limits.console_watchers_per_domain:
                raise TemporaryFailure(
                    f"{self.name}: too many sessions watch this console; try again later"
                )
        elif self.writer is not None:
            if not takeover:
                raise TemporaryFailure(
                    f"{self.name}: the console already has a writer; use --takeover to take "
                    "it over, or --watch to watch"
                )
            displaced = self.writer
            marker = "took-over"
            self.detach(
                displaced,
                "takeover",
                f"console of {self.name} taken over by {attachment.caller.user}",
            )
        attachment.hub = self
        scrollback = bytes(self.ring[-replay:]) if replay > 0 else b""
        if scrollback:
            attachment.offer_frames(data_frames(scrollback))
        self._record(attachment, scrollback, "took over" if marker == "took-over" else marker)
        self.attachments.append(attachment)
        self.log.mark(marker, attachment.caller.user, attachment.mode)
        if attachment.mode == "write":
            self.writer = attachment
        asyncio.get_running_loop().call_later(
            SESSION_START_SECONDS, self._detach_if_unclaimed, attachment
        )

    def _record(self, attachment: Attachment, scrollback: bytes, how: str) -> None:
        """The console's recording notes a session attached; the first one begins it, with
        the scrollback that session was shown and its window's size."""
        if self.recording is None and self.recordings is not None and not self.attachments:
            self.recording = self.recordings.begin(
                domain=self.name, uuid=self.uuid, size=attachment.size
            )
            if self.recording is not None and scrollback:
                self.recording.output(scrollback)
        elif self.recording is not None and attachment.mode == "write" and attachment.size:
            self.recording.resize(*attachment.size)  # the new writer's window from now on
        if self.recording is not None:
            self.recording.attached(attachment.caller.user, attachment.mode, how)

    def resized(self, attachment: Attachment, rows: int, cols: int) -> None:
        if self.recording is not None and attachment is self.writer:
            self.recording.resize(rows, cols)

    def _detach_if_unclaimed(self, attachment: Attachment) -> None:
        if not attachment.session_started and attachment in self.attachments:
            log.warning("console session %d on %s never started", attachment.id, self.name)
            self.detach(attachment, "not-started", "the console session never started")

    def detach(self, attachment: Attachment, reason: str, text: str) -> None:
        if attachment in self.attachments:
            self.attachments.remove(attachment)
            self.log.mark("detached", attachment.caller.user, attachment.mode)
            if self.writer is attachment:
                self.writer = None
            if self.recording is not None:
                self.recording.marker(
                    f"{attachment.caller.user} detached ({attachment.mode}): {reason}"
                )
                if not self.attachments and reason != "takeover":  # the taker goes on with it
                    self.recording.close(reason)
                    self.recording = None
            self._on_detach(attachment, reason)
        attachment.close(reason, text)

    async def write(self, attachment: Attachment, data: bytes) -> None:
        """Keystrokes from a client: only the current writer's reach the guest."""
        if attachment is not self.writer or self._stream is None:
            return
        if self.recording is not None:
            self.recording.input(data)
        try:
            await self._stream.write(data)
        except VpsError:
            pass  # the domain is not running; its console takes no input

    def notice(self, text: str) -> None:
        for attachment in self.attachments:
            attachment.notice(text)
        if self.recording is not None:
            self.recording.marker(text)


class ConsoleManager:
    """All hubs of the helper, keyed by domain UUID, each with its own log (``UUID.log``).

    A name can stand for two UUIDs over a helper's life (a Xen domain started by hand gets a
    UUID of its own; an admin re-creates a domain under an old name): each UUID has its own hub,
    scrollback and log, so nothing of one domain is ever shown as another's. Logs of UUIDs the
    helper has not seen for ``console_log_keep_days``, and beyond the
    ``console_log_keep_domains`` seen last, are removed every hour."""

    def __init__(
        self,
        backend: Backend,
        log_dir: str,
        limits: Limits,
        *,
        on_detach: Callable[[Attachment, str], None],
        recordings: RecordingStore | None = None,
    ) -> None:
        self.backend = backend
        self.recordings = recordings
        self.log_dir = log_dir
        self.limits = limits
        self.hubs: dict[str, ConsoleHub] = {}
        # held by the log expiry (a worker thread) while it removes a domain's files, and here
        # while a hub is added: a domain that comes back during the expiry keeps its log
        self._files_lock = threading.Lock()
        self._expiry: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._others_reported = False
        self._background: set[asyncio.Task[None]] = set()  # prunes, hubs after a host is back
        self._on_detach = on_detach
        backend.subscribe(self._on_event)
        backend.subscribe_hosts(self._on_host_event)

    def hub_for(self, info: DomainInfo) -> ConsoleHub:
        hub = self.hubs.get(info.uuid)
        if hub is None:
            limits = self.limits
            console_log = ConsoleLog(
                self.log_dir,
                info.uuid,
                limits.console_log_bytes,
                limits.console_log_files,
                limits.console_log_bytes_per_hour,
            )
            hub = ConsoleHub(
                self.backend, info, console_log, limits, self._on_detach, self.recordings
            )
            with self._files_lock:
                self.hubs[info.uuid] = hub
            console_log.mark_seen()
            hub.start()
        return hub

    async def start_all(self) -> None:
        """Open a hub for every domain, so logs and scrollback exist before anyone attaches;
        then (the live domains known) begin expiring the logs of domains long gone. Returns
        at once: a backend's hosts may take their timeout to answer, and the helper serves
        meanwhile (a console asked for first gets its hub then)."""
        if self._opening is None:
            self._opening = asyncio.create_task(self._open_all(), name="console-hubs")

    async def _open_all(self) -> None:
        if self.recordings is not None:
            directory = self.recordings.directory
            try:
                found = await asyncio.to_thread(list_directory, directory)
            except OSError as exc:
                log.error("cannot read console recordings in %s: %s", directory, exc)
            else:
                self.recordings.adopt(found)
                log.info("%d console recording(s) in %s", len(found), directory)
        await self._open_hubs()
        self._expiry = asyncio.create_task(self._expire_logs(), name="console-log-expiry")

    async def _open_hubs(self) -> None:
        """A hub for every domain the backend lists now (those it has keep theirs)."""
        try:
            domains = await self.backend.list_domains()
        except VpsError as exc:
            log.warning("consoles: domains not listed (%s); hubs open on demand", exc)
            return
        for info in domains:
            self.hub_for(info)

    async def stop(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        for task in list(self._background):
            task.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        for hub in list(self.hubs.values()):
            await hub.stop()
        if self.recordings is not None:  # the recordings' last records reach the disk
            if not await asyncio.to_thread(self.recordings.writer.flush, RECORDINGS_FLUSH_SECONDS):
                log.error("console recordings were not all written in time; their ends are lost")
            await asyncio.sleep(0)  # their ends (callbacks of the writer) are noted

    async def expire_logs_now(self) -> list[str]:
        """One pass of the log expiry; returns the UUIDs whose logs were removed."""
        keep_days = self.limits.console_log_keep_days
        keep_domains = self.limits.console_log_keep_domains
        removed, others = await asyncio.to_thread(
            expire_logs,
            self.log_dir,
            is_live=self.hubs.__contains__,
            keep_seconds=keep_days * 86400.0,
            keep_domains=keep_domains,
            lock=self._files_lock,
        )
        if removed:
            log.info(
                "removed the console logs of %d domain(s) not seen for %d days or beyond the "
                "%d kept: %s",
                len(removed),
                keep_days,
                keep_domains,
                " ".join(removed[:20]) + (" ..." if len(removed) > 20 else ""),
            )
        if others and not self._others_reported:
            self._others_reported = True
            log.warning(
                "%s holds %d console log file(s) not named by a domain UUID (per-name logs of "
                "an earlier vpsshell): never shown to tenants; remove them when you no longer "
                "need them",
                self.log_dir,
                others,
            )
        return removed

    async def _expire_logs(self) -> None:
        while True:
            try:
                await self.expire_logs_now()
                if self.recordings is not None:
                    self.recordings.enforce()
            except OSError as exc:
                log.error("cannot expire console logs in %s: %s", self.log_dir, exc)
            except Exception:
                log.exception("expiring console logs in %s failed", self.log_dir)
            await asyncio.sleep(LOG_EXPIRY_INTERVAL_SECONDS)

    def new_attachment(self, caller: Caller, mode: str) -> Attachment:
        return Attachment(caller, mode, self.limits.console_client_queue_bytes)

    def _on_event(self, event: LifecycleEvent) -> None:
        hub = self.hubs.get(event.uuid)
        if hub is None:
            return
        template = EVENT_NOTICES.get(event.kind)
        if template:
            hub.notice(template.format(name=hub.name))
        if event.kind in ("started", "rebooted", "migrated"):
            hub.wake()
        if event.kind in ("stopped", "crashed"):
            task = asyncio.get_running_loop().create_task(self._prune(hub))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _on_host_event(self, event: HostEvent) -> None:
        """A host is back: its domains' consoles reopen now, not after their back-off (a
        domain that ran on through the outage sends no event of its own), and domains first
        seen now get their hubs."""
        if event.kind == "host-back":
            for hub in list(self.hubs.values()):
                hub.wake()
            # a host down since the start has domains without hubs (and logs) yet
            task = asyncio.get_running_loop().create_task(self._open_hubs())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _prune(self, hub: ConsoleHub) -> None:
        """A domain stopped: if its UUID no longer stands for its name (a Xen domain started by
        hand with a UUID of its own, which is gone with it), its hub would retry its console
        forever; stop it once nobody is attached."""
        try:
            info = await self.backend.lookup(hub.name)
        except VpsError:
            return  # the backend cannot say now; the next stop asks again
        if (info is not None and info.uuid == hub.uuid) or hub.attachments:
            return
        if self.hubs.get(hub.uuid) is hub:
            del self.hubs[hub.uuid]
            await hub.stop()
            log.info("console of %s (%s) closed: that domain is gone", hub.name, hub.uuid)

    def attachments(self) -> list[Attachment]:
        return [a for hub in self.hubs.values() for a in hub.attachments]

    def revoke(self, still_allowed: Callable[[Attachment, str], bool]) -> int:
        """Detach every attachment whose user may no longer use it; returns how many."""
        ended = 0
        for hub in self.hubs.values():
            for attachment in list(hub.attachments):
                if not still_allowed(attachment, hub.name):
                    hub.detach(attachment, "revoked", f"access to {hub.name}'s console ended")
                    ended += 1
        return ended

    def kick(self, *, attachment_id: int | None, user: str | None) -> int:
        """An admin ends sessions, by attachment id or by user; returns how many."""
        if attachment_id is None and user is None:
            return 0
        ended = 0
        for hub in self.hubs.values():
            for attachment in list(hub.attachments):
                if attachment.id == attachment_id or attachment.caller.user == user:
                    hub.detach(attachment, "kicked", "an administrator ended this console session")
                    ended += 1
        return ended

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "id": a.id,
                "user": a.caller.user,
                "uid": a.caller.uid,
                "pid": a.caller.pid,
                "domain": a.hub.name if a.hub else None,
                "mode": a.mode,
                "since": a.since,
                "via": a.via,
            }
            for a in self.attachments()
        ]
