"""The backend interface: what the helper needs from a hypervisor, and nothing more.

A backend lists domains, resolves a name to a domain (identified by UUID from then on), reports
state, performs the power actions, sends SysRq, opens a console stream and emits lifecycle
events. It never decides who may do what (that is the policy's job) and never sees a user name.
Domain names reaching a backend have been validated by the helper, and actions are only ever
called with a UUID the backend itself returned.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum
from typing import Any

from vpsshell.checks import HOST_LABEL_MAX, HOST_LABEL_PATTERN, is_host_label

logger = logging.getLogger("vpsshell.backend")


class BackendConfigError(Exception):
    """The ``[backend]`` config table is unusable; raised at start-up, never to a tenant."""


def check_table(where: str, table: Any, known: frozenset[str]) -> None:
    """``table`` must be a TOML table holding only ``known`` keys."""
    if not isinstance(table, dict):
        raise BackendConfigError(f"{where}: must be a table")
    unknown = sorted(str(key) for key in table if key not in known)
    if unknown:
        raise BackendConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )


def check_backend_table(
    table: Any, kind: str, known: frozenset[str], *, type_optional: bool = False
) -> None:
    """The ``[backend]`` table of backend ``kind``: known keys only, and ``type`` is ``kind``."""
    check_table("backend", table, known)
    found = table.get("type", kind if type_optional else None)
    if found != kind:
        raise BackendConfigError(f"backend.type: expected {kind!r}, got {table.get('type')!r}")


def check_timeout(table: dict[str, Any], default: float, low: float, high: float) -> float:
    """``backend.timeout_seconds``: a finite number of seconds from ``low`` to ``high``."""
    return check_seconds(table, "timeout_seconds", default, low, high)


def check_seconds(
    table: dict[str, Any], key: str, default: float, low: float, high: float
) -> float:
    """``backend.KEY``: a finite number of seconds from ``low`` to ``high``."""
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise BackendConfigError(
            f"backend.{key}: must be a number of seconds from {low:g} to {high:g}, got {value!r}"
        )
    return float(value)


def check_host_label(where: str, value: Any) -> str:
    """A host label from the backend's config (the HOST column tenants see)."""
    if not is_host_label(value):
        raise BackendConfigError(
            f"{where}: must be a host label matching {HOST_LABEL_PATTERN} "
            f"(at most {HOST_LABEL_MAX} characters), got {value!r}"
        )
    return value


class DomainState(str, Enum):
    RUNNING = "running"
    SHUTOFF = "shutoff"
    PAUSED = "paused"
    CRASHED = "crashed"
    STARTING = "starting"
    SHUTTING_DOWN = "shutting-down"
    UNKNOWN = "unknown"  # its host cannot be reached: what it last reported is not shown


#: states in which a domain exists as a running guest (it has an uptime, a console...)
ACTIVE_STATES = frozenset(
    {DomainState.RUNNING, DomainState.PAUSED, DomainState.SHUTTING_DOWN, DomainState.STARTING}
)


@dataclass(frozen=True)
class DomainInfo:
    """A snapshot of one domain, as ``status --json`` shows it."""

    name: str
    uuid: str
    state: DomainState
    vcpus: int
    memory_mib: int
    uptime_seconds: int | None
    host: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uuid": self.uuid,
            "state": self.state.value,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "uptime_seconds": self.uptime_seconds,
            "host": self.host,
        }


@dataclass(frozen=True)
class LifecycleEvent:
    """A backend event: ``kind`` is one of started stopped crashed rebooted shutdown migrated."""

    kind: str
    uuid: str
    name: str
    detail: str = ""


EventSink = Callable[[LifecycleEvent], None]


@dataclass(frozen=True)
class HostEvent:
    """A host of a multi-host backend: ``kind`` is ``host-lost`` (it stopped answering or its
    connection closed) or ``host-back`` (connected and answering again). For admins' hooks
    only; ``detail`` may name the host's address or libvirt's error."""

    kind: str
    host: str
    detail: str = ""


HostEventSink = Callable[[HostEvent], None]


class ConsoleStream(abc.ABC):
    """One open console of one domain: raw bytes out of the guest, raw bytes into it."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """Next chunk of guest output; ``b""`` when the stream has ended."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send keystrokes to the guest."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the stream; idempotent."""


class Backend(abc.ABC):
    """A hypervisor. Errors are raised as ``vpsshell.errors.VpsError`` subclasses:
    ``ActionFailed`` for a wrong state or a refused action, ``TemporaryFailure`` when the
    hypervisor cannot be reached right now."""

    kind: str = "base"

    def __init__(self) -> None:
        self._event_sinks: list[EventSink] = []
        self._host_sinks: list[HostEventSink] = []

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect or load state; called once before any other method."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything; called once at helper shutdown."""

    def subscribe(self, sink: EventSink) -> None:
        """Register a callback for lifecycle events."""
        self._event_sinks.append(sink)

    def emit(self, event: LifecycleEvent) -> None:
        """Deliver to every sink; a failing sink is logged and cannot stop the others (events
        are often sent from timer tasks or callbacks, where an exception would go unnoticed)."""
        for sink in list(self._event_sinks):
            try:
                sink(event)
            except Exception:
                logger.exception("event sink failed on %s", event)

    def subscribe_hosts(self, sink: HostEventSink) -> None:
        """Register a callback for host events (backends with several hosts send them)."""
        self._host_sinks.append(sink)

    def emit_host(self, event: HostEvent) -> None:
        for sink in list(self._host_sinks):
            try:
                sink(event)
            except Exception:
                logger.exception("host event sink failed on %s", event)

    @abc.abstractmethod
    async def list_domains(self) -> list[DomainInfo]:
        """Every domain this backend knows, in a stable order."""

    async def domains_named(self, names: Collection[str]) -> list[DomainInfo]:
        """The domains among ``names`` that exist, in a stable order. A backend that keeps an
        index answers in proportion to ``names``, not to all its domains (``list`` on a
        gateway asks for the caller's own domains only)."""
        return [domain for domain in await self.list_domains() if domain.name in names]

    @abc.abstractmethod
    async def lookup(self, name: str) -> DomainInfo | None:
        """The domain called ``name`` (exact match), or None. Never matches numeric ids or
        UUIDs: a name is what a tenant types, a UUID what the helper acts on."""

    @abc.abstractmethod
    async def info(self, uuid: str) -> DomainInfo:
        """Current state of the domain with this UUID."""

    @abc.abstractmethod
    async def start(self, uuid: str) -> None: ...

    @abc.abstractmethod
    async def shutdown(self, uuid: str) -> None:
        """Ask the guest to shut down gracefully; returns once the request is delivered."""

    @abc.abstractmethod
    async def reboot(self, uuid: str) -> None: ...

    @abc.abstractmethod
    async def poweroff(self, uuid: str) -> None:
        """Hard stop, no guest sync."""

    @abc.abstractmethod
    async def reset(self, uuid: str) -> None:
        """Hard reset of a running domain."""

    @abc.abstractmethod
    async def sysrq(self, uuid: str, key: str) -> None: ...

    @abc.abstractmethod
    async def open_console(self, uuid: str) -> ConsoleStream: ...
