"""The ``libvirt`` backend: domains of one or more libvirt connections in one namespace.

Each ``[[backend.hosts]]`` entry is one connection (``qemu:///system``, ``xen:///system``,
``qemu+ssh://node2/system``, ``test:///abs/path.xml``) with a label shown as the domain's host.
A name is resolved on every host; the domain is then acted on by UUID only, and never looked up
by numeric id (virsh's ``start 3`` trap: all-digit names are never resolved). A name defined on
two hosts is logged as an error for the admin and never resolved for tenants: picking one would
be a guess. Each tenant action is the libvirt call an admin would choose: start = create,
shutdown = shutdown (ACPI or agent, as the domain is set up), reboot = reboot, poweroff =
destroy, reset = reset, sysrq = send-key Alt+SysRq+KEY, console = openConsole on a
non-blocking stream (without ``--force``: an admin's ``virsh console`` is not stolen).

Lifecycle and reboot events come from libvirt's event thread through ``libvirt_host``, are
turned into ``LifecycleEvent`` on the asyncio loop, and drive the uptime book
(``libvirt_uptime``: libvirt has no uptime). Blocking calls run on threads with a timeout
(``libvirt_host``); a host that is down or hung gives ``TemporaryFailure`` and never delays the
other hosts. libvirt's own error text goes to the helper's log; tenants get a short message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from vpsshell.backends.base import Backend, ConsoleStream, DomainInfo, DomainState, LifecycleEvent
from vpsshell.backends.libvirt_config import LibvirtConfig, parse_libvirt_config
from vpsshell.backends.libvirt_console import LibvirtConsoleStream
from vpsshell.backends.libvirt_host import LibvirtHost, RawEvent, ensure_event_loop
from vpsshell.backends.libvirt_uptime import UptimeBook
from vpsshell.checks import is_offered_domain_name, is_sysrq_key, is_uuid
from vpsshell.errors import ActionFailed, TemporaryFailure, VpsError, not_found_or_denied

logger = logging.getLogger("vpsshell.libvirt")

T = TypeVar("T")

REBOOT_COALESCE_SECONDS = 3.0  # QEMU reports one reboot as two RESETs in quick succession
OWN_ACTION_SECONDS = 60.0  # a reboot event this soon after our reboot/reset/sysrq names it

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: DomainState.STARTING,
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
}
_UP = frozenset(
    {DomainState.RUNNING, DomainState.PAUSED, DomainState.SHUTTING_DOWN, DomainState.STARTING}
)

# (libvirt event, detail) -> (LifecycleEvent kind, detail); None as detail: any other detail;
# None as the value: no tenant-visible event.
_STARTED, _STOPPED = libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STOPPED
_SHUTDOWN, _CRASHED = libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_CRASHED
_LIFECYCLE: dict[tuple[int, int | None], tuple[str, str] | None] = {
    (_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED): ("started", ""),
    (_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED): ("migrated", "in"),
    (_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED): ("started", "restored"),
    (_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT): ("started", "snapshot"),
    (_STARTED, None): ("started", ""),
    (_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN): ("stopped", "shutdown"),
    (_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED): ("stopped", "destroyed"),
    (_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED): ("stopped", "crashed"),
    (_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED): ("migrated", "out"),
    (_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED): ("stopped", "saved"),
    (_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED): ("stopped", "failed"),
    (_STOPPED, None): ("stopped", ""),
    (_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST): ("shutdown", "guest"),
    # QEMU killed by a signal (a destroy, which says so itself as "stopped destroyed")
    (_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST): None,
    (_SHUTDOWN, None): ("shutdown", ""),
    (_CRASHED, libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED): ("crashed", "panicked"),
    (_CRASHED, None): ("crashed", ""),
}

# Linux input keycodes (linux/input-event-codes.h) for send-key Alt+SysRq+KEY.
KEY_LEFTALT, KEY_SYSRQ = 56, 99
_SYSRQ_KEYCODES = dict(
    zip(
        "1234567890qwertyuiopasdfghjklzxcvbnm",
        [*range(2, 12), *range(16, 26), *range(30, 39), *range(44, 51)],
        strict=True,
    )
)

_MESSAGE_ERRORS = {libvirt.VIR_ERR_OPERATION_INVALID}
_UNSUPPORTED_ERRORS = {
    libvirt.VIR_ERR_NO_SUPPORT,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
}
_BUSY_ERRORS = {
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_RESOURCE_BUSY,
}


@dataclass(frozen=True)
class _Record:
    """What one domain looked like, read on a worker thread."""

    name: str
    uuid: str
    domain_id: int  # libvirt's runtime id: for the uptime book, never for lookups
    state: DomainState
    vcpus: int
    memory_kib: int


def _read(dom: Any) -> _Record:
    state, max_memory_kib, _memory, vcpus, _cpu_time = dom.info()
    return _Record(
        name=dom.name(),
        uuid=dom.UUIDString().lower(),
        domain_id=dom.ID(),
        state=_STATES.get(state, DomainState.RUNNING),
        vcpus=vcpus,
        memory_kib=max_memory_kib,
    )


def _inventory(conn: Any) -> list[_Record]:
    records = []
    for dom in conn.listAllDomains(0):
        try:
            records.append(_read(dom))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # undefined meanwhile
                raise
    return records


def _by_name(conn: Any, name: str) -> _Record | None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise
    record = _read(dom)
    return record if record.name == name else None


def _by_uuid(conn: Any, uuid: str) -> _Record | None:
    try:
        return _read(conn.lookupByUUIDString(uuid))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _state(dom: Any) -> DomainState:
    return _STATES.get(dom.info()[0], DomainState.RUNNING)


def _refuse(dom: Any, what: str) -> ActionFailed:
    return ActionFailed(f"{dom.name()} {what}")


def _require_running(dom: Any) -> None:
    state = _state(dom)
    if state is not DomainState.RUNNING:
        raise _refuse(dom, f"is not running ({state.value})")


class LibvirtBackend(Backend):
    """Domains of several libvirt connections, resolved by name, acted on by UUID."""

    kind = "libvirt"

    def __init__(
        self, config: LibvirtConfig, state_dir: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__()
        self.config = config
        self.hosts = [
            LibvirtHost(host, config.timeout_seconds, self._on_raw_event, self._on_reconnected)
            for host in config.hosts
        ]
        self._book = UptimeBook(state_dir, clock)
        self._where: dict[str, LibvirtHost] = {}  # uuid -> host it was last seen on
        self._names: dict[str, str] = {}  # uuid -> name, for messages
        self._known: dict[str, dict[str, _Record]] = {}  # host -> last inventory by uuid
        self._conflicts: dict[str, tuple[str, ...]] = {}  # name -> hosts, as last reported
        self._unusable: set[tuple[str, str]] = set()  # (host, name) already reported
        self._own_action: dict[str, tuple[str, float]] = {}  # uuid -> (verb, monotonic)
        self._last_reboot: dict[str, float] = {}
        self._streams: set[LibvirtConsoleStream] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, table: dict[str, Any], state_dir: str) -> LibvirtBackend:
        """Build from the daemon config's ``[backend]`` table; connects to nothing."""
        return cls(parse_libvirt_config(table), state_dir)

    # -- Backend interface ------------------------------------------------------------------

    async def open(self) -> None:
        ensure_event_loop()  # before any connection, or it gets no events
        self._book.load()

    async def close(self) -> None:
        for stream in list(self._streams):
            await stream.close()
        self._streams.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(host.close() for host in self.hosts), return_exceptions=True)

    async def list_domains(self) -> list[DomainInfo]:
        answers = await asyncio.gather(
            *(self._inventory(host) for host in self.hosts), return_exceptions=True
        )
        found: list[tuple[LibvirtHost, _Record]] = []
        seen_hosts: dict[str, set[str]] = {}
        for host, answer in zip(self.hosts, answers, strict=True):
            records: list[_Record]
            if isinstance(answer, VpsError):
                records = list(self._known.get(host.name, {}).values())  # for conflicts only
            elif isinstance(answer, BaseException):
                raise answer
            else:
                records = answer
                found += [(host, record) for record in answer]
            for record in records:
                seen_hosts.setdefault(record.name, set()).add(host.name)
        conflicts = {name: hosts for name, hosts in seen_hosts.items() if len(hosts) > 1}
        self._report_conflicts(conflicts, complete=True)
        return [
            self._info(host, record)
            for host, record in found
            if record.name not in conflicts and self._usable(host, record.name)
        ]

    async def lookup(self, name: str) -> DomainInfo | None:
        if not is_offered_domain_name(name):
            return None  # never a numeric id, never a name the helper would not accept
        answers = await asyncio.gather(
            *(host.call(lambda conn: _by_name(conn, name), "lookup") for host in self.hosts),
            return_exceptions=True,
        )
        found: list[tuple[LibvirtHost, _Record]] = []
        unreachable: list[tuple[LibvirtHost, VpsError]] = []
        for host, answer in zip(self.hosts, answers, strict=True):
            if isinstance(answer, VpsError):
                unreachable.append((host, answer))
            elif isinstance(answer, libvirt.libvirtError):
                raise self._translate(answer, host, name, "lookup") from None
            elif isinstance(answer, BaseException):
                raise answer
            elif answer is not None:
                found.append((host, answer))
        if len(found) > 1:
            hosts = tuple(sorted(host.name for host, _ in found))
            self._report_conflicts({name: set(hosts)}, complete=False)
            raise ActionFailed(
                f"{name}: this name is defined on more than one host ({', '.join(hosts)}); "
                "the administrator must make it unique"
            )
        for host, error in unreachable:
            known = self._known.get(host.name, {}).values()
            if not found or any(record.name == name for record in known):
                raise error  # it may be there (too): do not guess
        if not found:
            return None
        host, record = found[0]
        self._remember(host, record)
        return self._info(host, record)

    async def info(self, uuid: str) -> DomainInfo:
        host, record = await self._on_domain(uuid, "status", _read)
        return self._info(host, record)

    async def start(self, uuid: str) -> None:
        def create(dom: Any) -> None:
            state = _state(dom)
            if state in (DomainState.RUNNING, DomainState.STARTING):
                raise _refuse(dom, f"is already {state.value}")
            if state is not DomainState.SHUTOFF:
                raise _refuse(dom, f"is not shut off ({state.value})")
            dom.create()

        await self._on_domain(uuid, "start", create)

    async def shutdown(self, uuid: str) -> None:
        def shutdown(dom: Any) -> None:
            _require_running(dom)
            dom.shutdown()  # ACPI power button, or the guest agent where the domain has one

        await self._on_domain(uuid, "shutdown", shutdown)

    async def reboot(self, uuid: str) -> None:
        def reboot(dom: Any) -> None:
            _require_running(dom)
            dom.reboot(0)

        await self._on_domain(uuid, "reboot", reboot, own_action="reboot")

    async def poweroff(self, uuid: str) -> None:
        def destroy(dom: Any) -> None:
            if _state(dom) is DomainState.SHUTOFF:
                raise _refuse(dom, "is already shut off")
            dom.destroy()

        await self._on_domain(uuid, "poweroff", destroy)

    async def reset(self, uuid: str) -> None:
        def reset(dom: Any) -> None:
            state = _state(dom)
            if state is DomainState.SHUTOFF:
                raise _refuse(dom, f"is not running ({state.value})")
            dom.reset(0)

        await self._on_domain(uuid, "reset", reset, own_action="reset")

    async def sysrq(self, uuid: str, key: str) -> None:
        if not is_sysrq_key(key):
            raise ActionFailed(f"{key!r} is not a SysRq key (one of 0-9 or a-z)")
        keys = [KEY_LEFTALT, KEY_SYSRQ, _SYSRQ_KEYCODES[key]]

        def send_key(dom: Any) -> None:
            _require_running(dom)
            dom.sendKey(libvirt.VIR_KEYCODE_SET_LINUX, 0, keys, len(keys), 0)

        await self._on_domain(uuid, "sysrq", send_key, own_action="sysrq")

    async def open_console(self, uuid: str) -> ConsoleStream:
        stream = LibvirtConsoleStream(self._names.get(uuid, uuid))

        def open_console(dom: Any) -> None:
            state = _state(dom)
            if state not in (DomainState.RUNNING, DomainState.PAUSED):
                raise _refuse(dom, f"is not running ({state.value})")
            opened = dom.connect().newStream(libvirt.VIR_STREAM_NONBLOCK)
            dom.openConsole(None, opened, 0)
            stream.attach(opened)

        try:
            await self._on_domain(uuid, "console", open_console)
        except BaseException:
            await stream.close()
            raise
        self._streams = {s for s in self._streams if not s.ended}
        self._streams.add(stream)
        return stream

    # -- acting on one domain ---------------------------------------------------------------

    async def _on_domain(
        self, uuid: str, verb: str, work: Callable[[Any], T], *, own_action: str = ""
    ) -> tuple[LibvirtHost, T]:
        """Run ``work(domain)`` on the domain's host, the domain looked up by UUID; returns
        the host and what ``work`` returned."""
        if not is_uuid(uuid):
            raise not_found_or_denied(uuid)
        host = self._where.get(uuid) or await self._find_host(uuid)
        for attempt in (1, 2):
            if own_action:  # before the call: its reboot event may come before it returns
                self._own_action[uuid] = (own_action, time.monotonic())
            try:
                result = await host.call(lambda conn: work(conn.lookupByUUIDString(uuid)), verb)
            except libvirt.libvirtError as exc:
                self._own_action.pop(uuid, None)
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN and attempt == 1:
                    self._where.pop(uuid, None)  # migrated or undefined: look again, once
                    host = await self._find_host(uuid)
                    continue
                raise self._translate(exc, host, self._names.get(uuid, uuid), verb) from None
            except BaseException:
                self._own_action.pop(uuid, None)
                raise
            if isinstance(result, _Record):
                self._remember(host, result)
            return host, result
        raise AssertionError("unreachable")

    async def _find_host(self, uuid: str) -> LibvirtHost:
        answers = await asyncio.gather(
            *(host.call(lambda conn: _by_uuid(conn, uuid), "lookup") for host in self.hosts),
            return_exceptions=True,
        )
        found = [
            (host, answer)
            for host, answer in zip(self.hosts, answers, strict=True)
            if isinstance(answer, _Record)
        ]
        if len(found) == 1:
            self._remember(*found[0])
            return found[0][0]
        name = self._names.get(uuid, uuid)
        if len(found) > 1:
            raise ActionFailed(f"{name}: this domain is defined on more than one host")
        for answer in answers:
            if isinstance(answer, VpsError):
                raise answer
        raise not_found_or_denied(name)

    def _translate(self, exc: Any, host: LibvirtHost, name: str, verb: str) -> VpsError:
        code = exc.get_error_code()
        message = ((exc.get_error_message() or "").splitlines() or [""])[0][:200]
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            return not_found_or_denied(name)
        if code in _MESSAGE_ERRORS:
            return ActionFailed(f"{name}: {message}")
        if code in _UNSUPPORTED_ERRORS:
            return ActionFailed(f"{name}: {verb} is not supported on host {host.name}")
        if code in _BUSY_ERRORS:
            return TemporaryFailure(f"{name}: the hypervisor is busy; try again later")
        logger.warning("host %s: %s of %s failed: %s", host.name, verb, name, message)
        return ActionFailed(
            f"{name}: {verb} failed on host {host.name} (details in the helper's log)"
        )

    # -- bookkeeping ------------------------------------------------------------------------

    async def _inventory(self, host: LibvirtHost) -> list[_Record]:
        records = await host.call(_inventory, "list")
        self._known[host.name] = {record.uuid: record for record in records}
        for record in records:
            self._remember(host, record)
        return sorted(records, key=lambda record: record.name)

    def _remember(self, host: LibvirtHost, record: _Record) -> None:
        self._where[record.uuid] = host
        self._names[record.uuid] = record.name
        self._known.setdefault(host.name, {})[record.uuid] = record

    def _info(self, host: LibvirtHost, record: _Record) -> DomainInfo:
        key = UptimeBook.key(host.name, record.uuid)
        if record.state in _UP:
            uptime: int | None = self._book.seconds(key, record.domain_id)
        else:
            uptime = None
            self._book.stopped(key)
        return DomainInfo(
            name=record.name,
            uuid=record.uuid,
            state=record.state,
            vcpus=record.vcpus,
            memory_mib=record.memory_kib // 1024,
            uptime_seconds=uptime,
            host=host.name,
        )

    def _usable(self, host: LibvirtHost, name: str) -> bool:
        if is_offered_domain_name(name):
            return True
        if (host.name, name) not in self._unusable:
            self._unusable.add((host.name, name))
            logger.warning(
                "host %s: domain %r is not offered to tenants: its name is all digits or not "
                "a valid vpsshell domain name",
                host.name,
                name,
            )
        return False

    def _report_conflicts(self, conflicts: dict[str, set[str]], *, complete: bool) -> None:
        for name, hosts in sorted(conflicts.items()):
            ordered = tuple(sorted(hosts))
            if self._conflicts.get(name) != ordered:
                self._conflicts[name] = ordered
                logger.error(
                    "domain name %r is defined on hosts %s: it is not resolved for tenants "
                    "until it is unique (rename or undefine one of them)",
                    name,
                    ", ".join(ordered),
                )
        if complete:
            for name in [name for name in self._conflicts if name not in conflicts]:
                del self._conflicts[name]
                logger.info("domain name %r is unique again", name)

    # -- events -----------------------------------------------------------------------------

    def emit(self, event: LifecycleEvent) -> None:
        """Log the event with its host, then deliver it like every backend does."""
        host = self._where.get(event.uuid)
        logger.info(
            "event: %s/%s %s%s",
            host.name if host else "?",
            event.name,
            event.kind,
            f" ({event.detail})" if event.detail else "",
        )
        super().emit(event)

    def _on_raw_event(self, raw: RawEvent) -> None:
        uuid = raw.uuid.lower()
        host = raw.host
        key = UptimeBook.key(host.name, uuid)
        self._names[uuid] = raw.name
        if raw.kind == "reboot":
            now = time.monotonic()
            last = self._last_reboot.get(uuid)
            self._last_reboot[uuid] = now
            if last is not None and now - last < REBOOT_COALESCE_SECONDS:
                return
            verb, at = self._own_action.pop(uuid, ("", 0.0))
            detail = verb if verb and now - at < OWN_ACTION_SECONDS else "guest"
            self._where[uuid] = host
            self._book.booted(key, raw.domain_id)
            self.emit(LifecycleEvent("rebooted", uuid, raw.name, detail))
            return
        exact = (raw.event, raw.detail)
        mapped = _LIFECYCLE[exact] if exact in _LIFECYCLE else _LIFECYCLE.get((raw.event, None))
        if raw.event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED and self._where.get(uuid) is host:
            del self._where[uuid]
        if mapped is None:
            return  # defined, undefined, suspended, resumed: no tenant-visible event
        kind, detail = mapped
        if kind == "migrated" and detail == "out":
            if self._where.get(uuid) is host:
                del self._where[uuid]
            self._book.stopped(key)
        elif kind in ("started", "migrated"):
            self._where[uuid] = host
            self._book.started(key, raw.domain_id)
        elif kind == "stopped":
            self._book.stopped(key)
        self.emit(LifecycleEvent(kind, uuid, raw.name, detail))

    def _on_reconnected(self, host: LibvirtHost) -> None:
        """Events were lost while disconnected: compare states and report what changed."""
        task = asyncio.get_running_loop().create_task(self._resync(host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self, host: LibvirtHost) -> None:
        before = dict(self._known.get(host.name, {}))
        try:
            records = await self._inventory(host)
        except VpsError:
            return
        for record in records:
            old = before.pop(record.uuid, None)
            was_up = old is not None and old.state in _UP
            if record.state in _UP and (
                not was_up or old is None or old.domain_id != record.domain_id
            ):
                self.emit(LifecycleEvent("started", record.uuid, record.name, "missed"))
            elif was_up and record.state not in _UP:
                self._book.stopped(UptimeBook.key(host.name, record.uuid))
                self.emit(LifecycleEvent("stopped", record.uuid, record.name, "missed"))
        for old in before.values():
            if old.state in _UP:
                self.emit(LifecycleEvent("stopped", old.uuid, old.name, "missed"))
