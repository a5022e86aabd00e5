"""The helper's event record: lifecycle events from the backend and the helper's own events.

Every event gets a sequence number and a UTC time, is kept in a bounded in-memory history (for
``events`` without ``--follow``) and is handed to listeners (the hook runner) and to followers
(``events --follow`` sessions). Recording never waits: each follower has a bounded queue and a
follower that falls behind is closed with a message; a listener that raises is logged and
skipped. This module decides nothing about who may see an event: the tenant API filters at
send time against the policy of that moment.

The history is kept per domain UUID, never per name: a name the administrator gives to another
domain (undefined and re-created, so a new UUID) starts with an empty history, and a renamed
domain keeps its own. It is bounded in total: when it is full, the oldest event of the domain
with the most events goes, so a flood of events about one domain (a tenant attaching and
detaching in a loop) cannot push another domain's events out. An event without a UUID is not
kept. Events only hooks and admins see (``denied``, ``policy-reloaded``, ``host-lost``,
``host-back``) are not kept at all: their domain names are whatever a tenant asked for, and a
host's details (its address, libvirt's error) are not for tenants.

With an ``EventStore`` (``event_store``), every kept event is also written to a file as it is
recorded, and the newest kept events are loaded back on start: ``events`` after a helper restart
still lists them, and ``seq`` goes on from the highest stored. ``events`` reads the file
(``kept``), so it lists what the file keeps (``events_keep``, ``events_keep_days``), not only
what memory holds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vpsshell.backends.base import Backend, HostEvent, LifecycleEvent

if TYPE_CHECKING:
    from vpsshell.daemon.event_store import EventStore

log = logging.getLogger("vpsshell.events")

LIFECYCLE_KINDS = frozenset({"started", "stopped", "crashed", "rebooted", "shutdown", "migrated"})
CONSOLE_KINDS = frozenset({"console-attached", "console-detached", "console-takeover"})
TENANT_KINDS = LIFECYCLE_KINDS | CONSOLE_KINDS  # what a tenant's ``events`` may show
HOST_KINDS = frozenset({"host-lost", "host-back"})  # a host of a gateway's backend
ADMIN_KINDS = frozenset({"denied", "policy-reloaded"}) | HOST_KINDS  # hooks and the log only
KINDS = TENANT_KINDS | ADMIN_KINDS
MAX_DETAIL_CHARS = 256


@dataclass(frozen=True)
class Event:
    seq: int
    time: str  # UTC, ISO 8601: 2026-11-28T00:40:01Z
    kind: str
    domain: str | None  # the domain's name; for ``denied`` the name the tenant asked for
    uuid: str | None
    detail: str
    user: str | None  # who caused a helper event; None for backend events
    host: str | None = None  # the host of a host event

    def to_json(self) -> dict[str, Any]:
        found = {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "domain": self.domain,
            "uuid": self.uuid,
            "detail": self.detail,
            "user": self.user,
        }
        if self.host is not None:
            found["host"] = self.host
        return found


Listener = Callable[[Event], None]


class Follower:
    """One ``--follow`` session's bounded queue of events, in order."""

    def __init__(self, record: EventRecord, limit: int) -> None:
        self._record = record
        self.limit = limit
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        self.closed_reason: str | None = None
        self.closed_text = ""

    def offer(self, event: Event) -> None:
        if self.closed_reason is not None:
            return
        if len(self._queue) >= self.limit:
            self.close("too-slow", "your connection could not keep up with the events; stopped")
            return
        self._queue.append(event)
        self._ready.set()

    def close(self, reason: str, text: str) -> None:
        """No more events; ``next_events`` returns what is queued, then nothing."""
        if self.closed_reason is None:
            self.closed_reason, self.closed_text = reason, text
            self._record.unfollow(self)
            self._ready.set()
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def next_events(self) -> list[Event]:
        """The queued events, waiting for at least one; ``[]`` once closed and drained."""
        while not self._queue:
            if self.closed_reason is not None:
                return []
            self._ready.clear()
            await self._ready.wait()
        events = list(self._queue)
        self._queue.clear()
        return events


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class EventRecord:
    def __init__(
        self, history_limit: int, follower_queue: int, store: EventStore | None = None
    ) -> None:
        self.history_limit = history_limit
        self.follower_queue = follower_queue
        self._by_uuid: dict[str, deque[Event]] = {}
        self._kept = 0
        self._followers: list[Follower] = []
        self._listeners: list[Listener] = []
        self._store = store
        first_seq = 1
        if store is not None:
            store.open()
            for event in store.load(history_limit):
                if event.uuid:
                    self._keep(event, event.uuid)
            first_seq = store.last_seq() + 1
        self._seq = itertools.count(first_seq)
        self.last_seq = first_seq - 1  # of the last event recorded

    def subscribe_backend(self, backend: Backend) -> None:
        backend.subscribe(self._on_backend_event)
        backend.subscribe_hosts(self._on_host_event)

    def _on_host_event(self, event: HostEvent) -> None:
        if event.kind not in HOST_KINDS:
            log.warning("backend sent a host event of unknown kind %r; not recorded", event.kind)
            return
        self.record(event.kind, domain=None, detail=event.detail, host=event.host)

    def _on_backend_event(self, event: LifecycleEvent) -> None:
        if event.kind not in LIFECYCLE_KINDS:
            log.warning("backend sent an event of unknown kind %r; not recorded", event.kind)
            return
        self.record(event.kind, domain=event.name, uuid=event.uuid, detail=event.detail)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def record(
        self,
        kind: str,
        *,
        domain: str | None,
        uuid: str | None = None,
        detail: str = "",
        user: str | None = None,
        host: str | None = None,
    ) -> Event:
        """Record one event now: history, followers, listeners. Never waits, never raises."""
        assert kind in KINDS, kind
        event = Event(
            next(self._seq), utc_now(), kind, domain, uuid, detail[:MAX_DETAIL_CHARS], user, host
        )
        self.last_seq = event.seq
        if kind not in LIFECYCLE_KINDS:  # backends log their own events
            log.info(
                "event: %s %s%s%s",
                kind,
                domain or host or "-",
                f" by {user}" if user else "",
                f" ({event.detail})" if event.detail else "",
            )
        if kind in TENANT_KINDS and domain is not None:
            if uuid:
                self._keep(event, uuid)
                if self._store is not None:
                    self._store.add(event)
            else:  # every caller passes the UUID; without one no tenant could be shown it
                log.warning("event %s of %s has no UUID; not kept for events", kind, domain)
        for follower in list(self._followers):
            follower.offer(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", event)
        return event

    def _keep(self, event: Event, uuid: str) -> None:
        self._by_uuid.setdefault(uuid, deque()).append(event)
        self._kept += 1
        while self._kept > self.history_limit:
            fullest = max(self._by_uuid, key=lambda key: len(self._by_uuid[key]))
            queue = self._by_uuid[fullest]
            queue.popleft()
            self._kept -= 1
            if not queue:
                del self._by_uuid[fullest]

    def history(self, uuids: Iterable[str] | None = None, since: str = "") -> list[Event]:
        """Kept events (of the domains with these UUIDs only, if given; at or after ``since``,
        a UTC time like ``Event.time``, if given), oldest first."""
        keys = self._by_uuid if uuids is None else uuids
        events = [
            event for key in keys for event in self._by_uuid.get(key, ()) if event.time >= since
        ]
        events.sort(key=lambda event: event.seq)
        return events

    async def kept(self, uuids: Iterable[str], since: str, limit: int) -> list[Event]:
        """The newest ``limit`` kept events of these UUIDs at or after ``since``, oldest first,
        up to the last event recorded when called (later ones go to followers made before).
        With a file they come from it, which keeps far more than memory (``events_keep``), and
        are merged with the in-memory history (which holds any the file failed to take)."""
        upto = self.last_seq
        wanted = list(uuids)
        memory = [event for event in self.history(wanted, since) if event.seq <= upto]
        if limit <= 0:
            return []
        if self._store is None or not wanted:
            return memory[-limit:]
        stored = await asyncio.to_thread(self._store.query, wanted, since, upto, limit)
        merged = {event.seq: event for event in stored}
        merged.update((event.seq, event) for event in memory)
        return sorted(merged.values(), key=lambda event: event.seq)[-limit:]

    def uuids(self) -> list[str]:
        """UUIDs of the domains with kept events."""
        return list(self._by_uuid)

    def follow(self) -> Follower:
        follower = Follower(self, self.follower_queue)
        self._followers.append(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        if follower in self._followers:
            self._followers.remove(follower)

    def close(self) -> None:
        """The helper is stopping: end every follower; close the file."""
        for follower in list(self._followers):
            follower.close("helper-stopping", "the vpsshell helper is stopping")
        if self._store is not None:
            self._store.close()
