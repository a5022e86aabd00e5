"""Console hubs: one per domain, brokering its serial console to any number of tenants.

A hub holds the one backend stream of its domain (reopening it when the domain restarts, so a
session survives reboots), a bounded scrollback ring, a bounded on-disk log, at most one writer
and any number of read-only watchers. The helper never hands a tenant a file descriptor: bytes
are copied, raw, in ``CONSOLE_DATA`` frames. Every attachment has a bounded outgoing queue; a
client that cannot keep up is dropped with a message, so neither the guest nor other viewers
ever wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from vpsshell import protocol
from vpsshell.backends.base import Backend, ConsoleStream, DomainInfo, LifecycleEvent
from vpsshell.daemon.console_log import ConsoleLog
from vpsshell.daemon.peer import Caller
from vpsshell.errors import TemporaryFailure, VpsError

log = logging.getLogger("vpsshell.console")

REOPEN_DELAY_SECONDS = 2.0  # first retry after a console could not be opened
REOPEN_DELAY_MAX_SECONDS = 60.0  # backing off while it keeps failing; events wake it at once
MAX_ATTACHMENTS_PER_DOMAIN = 64
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
        self._push(protocol.encode_message({"v": 1, "event": "notice", "text": text}), force=True)

    def close(self, reason: str, text: str) -> None:
        """End the attachment: a final ``closed`` message, then the connection closes."""
        if self.closed_reason is not None:
            return
        self._push(
            protocol.encode_message({"v": 1, "event": "closed", "reason": reason, "text": text}),
            force=True,
        )
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
        ring_bytes: int,
        on_detach: Callable[[Attachment, str], None],
    ) -> None:
        self.backend = backend
        self.uuid = info.uuid
        self.name = info.name
        self.log = console_log
        self.ring = bytearray()
        self.ring_bytes = ring_bytes
        self.attachments: list[Attachment] = []
        self.writer: Attachment | None = None
        self._stream: ConsoleStream | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._on_detach = on_detach

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name=f"console-{self.name}")

    async def stop(self) -> None:
        for attachment in list(self.attachments):
            attachment.close("helper-stopping", "the vpsshell helper is stopping")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._stream is not None:
            await self._stream.close()

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
        frames = data_frames(data)
        for attachment in list(self.attachments):
            if not attachment.offer_frames(frames):
                self.detach(attachment, "too-slow", "your connection could not keep up; detached")

    def attach(self, attachment: Attachment, *, takeover: bool, replay: int) -> None:
        if len(self.attachments) >= MAX_ATTACHMENTS_PER_DOMAIN:
            raise TemporaryFailure(f"{self.name}: too many console sessions; try again later")
        if attachment.mode == "write" and self.writer is not None:
            if not takeover:
                raise TemporaryFailure(
                    f"{self.name}: the console already has a writer; use --takeover to take "
                    "it over, or --watch to watch"
                )
            displaced = self.writer
            self.detach(
                displaced,
                "takeover",
                f"console of {self.name} taken over by {attachment.caller.user}",
            )
        attachment.hub = self
        if replay > 0 and self.ring:
            attachment.offer_frames(data_frames(bytes(self.ring[-replay:])))
        self.attachments.append(attachment)
        if attachment.mode == "write":
            self.writer = attachment

    def detach(self, attachment: Attachment, reason: str, text: str) -> None:
        if attachment in self.attachments:
            self.attachments.remove(attachment)
            if self.writer is attachment:
                self.writer = None
            self._on_detach(attachment, reason)
        attachment.close(reason, text)

    async def write(self, attachment: Attachment, data: bytes) -> None:
        """Keystrokes from a client: only the current writer's reach the guest."""
        if attachment is not self.writer or self._stream is None:
            return
        try:
            await self._stream.write(data)
        except VpsError:
            pass  # the domain is not running; its console takes no input

    def notice(self, text: str) -> None:
        for attachment in self.attachments:
            attachment.notice(text)


class ConsoleManager:
    """All hubs of the helper, keyed by domain UUID.

    Console logs are kept per name, and hubs of one name share one: a name can belong to two
    UUIDs over a helper's life (a Xen domain started by hand gets a UUID of its own), and two
    writers of one file would garble it."""

    def __init__(
        self,
        backend: Backend,
        log_dir: str,
        *,
        ring_bytes: int,
        log_bytes: int,
        log_files: int,
        queue_bytes: int,
        on_detach: Callable[[Attachment, str], None],
    ) -> None:
        self.backend = backend
        self.log_dir = log_dir
        self.ring_bytes = ring_bytes
        self.log_bytes = log_bytes
        self.log_files = log_files
        self.queue_bytes = queue_bytes
        self.hubs: dict[str, ConsoleHub] = {}
        self.logs: dict[str, ConsoleLog] = {}
        self._pruning: set[asyncio.Task[None]] = set()
        self._on_detach = on_detach
        backend.subscribe(self._on_event)

    def hub_for(self, info: DomainInfo) -> ConsoleHub:
        hub = self.hubs.get(info.uuid)
        if hub is None:
            console_log = self.logs.get(info.name)
            if console_log is None:
                console_log = ConsoleLog(self.log_dir, info.name, self.log_bytes, self.log_files)
                self.logs[info.name] = console_log
            hub = ConsoleHub(self.backend, info, console_log, self.ring_bytes, self._on_detach)
            self.hubs[info.uuid] = hub
            hub.start()
        return hub

    async def start_all(self) -> None:
        """Open a hub for every domain, so logs and scrollback exist before anyone attaches."""
        for info in await self.backend.list_domains():
            self.hub_for(info)

    async def stop(self) -> None:
        for task in list(self._pruning):
            task.cancel()
        for hub in list(self.hubs.values()):
            await hub.stop()
        for console_log in self.logs.values():
            console_log.close()

    def new_attachment(self, caller: Caller, mode: str) -> Attachment:
        return Attachment(caller, mode, self.queue_bytes)

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
            self._pruning.add(task)
            task.add_done_callback(self._pruning.discard)

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
            }
            for a in self.attachments()
        ]
