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
import urllib.parse
from collections.abc import Callable, Collection, Coroutine
from typing import Any, TypeVar

import libvirt

from vpsshell.backends.base import (
    ACTIVE_STATES,
    Backend,
    ConsoleStream,
    DomainInfo,
    DomainState,
    HostEvent,
    LifecycleEvent,
)
from vpsshell.backends.libvirt_config import LibvirtConfig, parse_libvirt_config
from vpsshell.backends.libvirt_console import LibvirtConsoleStream
from vpsshell.backends.libvirt_host import LibvirtHost, RawEvent, ensure_event_loop
from vpsshell.backends.libvirt_inventory import (
    AmbiguousCopies,
    DomainRecord,
    Inventory,
    choose_copy,
)
from vpsshell.backends.libvirt_uptime import UptimeBook
from vpsshell.checks import is_offered_domain_name, is_sysrq_key, is_uuid
from vpsshell.errors import ActionFailed, TemporaryFailure, VpsError, not_found_or_denied

logger = logging.getLogger("vpsshell.libvirt")

T = TypeVar("T")

REBOOT_COALESCE_SECONDS = 3.0  # QEMU reports one reboot as two RESETs in quick succession
OWN_ACTION_SECONDS = 60.0  # a reboot event this soon after our reboot/reset/sysrq names it
# libxl's reboot is a new domain once the guest has shut down, which can take minutes
OWN_RESTART_SECONDS = 600.0

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


def _read(dom: Any) -> DomainRecord:
    state, max_memory_kib, _memory, vcpus, _cpu_time = dom.info()
    return DomainRecord(
        name=dom.name(),
        uuid=dom.UUIDString().lower(),
        domain_id=dom.ID(),
        state=_STATES.get(state, DomainState.RUNNING),
        vcpus=vcpus,
        memory_kib=max_memory_kib,
    )


def _inventory(conn: Any) -> list[DomainRecord]:
    records = []
    for dom in conn.listAllDomains(0):
        try:
            records.append(_read(dom))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # undefined meanwhile
                raise
    return records


def _by_name(conn: Any, name: str) -> DomainRecord | None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise
    record = _read(dom)
    return record if record.name == name else None


def _by_uuid(conn: Any, uuid: str) -> DomainRecord | None:
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
            LibvirtHost(host, config.timeout_seconds, self._on_raw_event, self._on_host_state)
            for host in config.hosts
        ]
        self._hosts_by_name = {host.name: host for host in self.hosts}
        self._book = UptimeBook(state_dir, clock)
        self._seen = Inventory()
        # host -> set once its first inventory is read, or its first connection failed
        self._settled: dict[str, asyncio.Event] = {}
        self._last_active: dict[str, str] = {}  # uuid -> host it last started or migrated to
        self._incoming: dict[str, str] = {}  # uuid -> host a live migration is bringing it to
        self._rereading: dict[tuple[str, str], bool] = {}  # (host, uuid) -> read again after
        self._changed: dict[str, set[str]] = {}  # host -> uuids with events during an inventory
        self._conflicts: dict[str, tuple[str, ...]] = {}  # name -> hosts, as last reported
        self._unusable: set[tuple[str, str]] = set()  # (host, name) already reported
        self._own_action: dict[str, tuple[str, float]] = {}  # uuid -> (verb, monotonic)
        self._last_reboot: dict[str, float] = {}
        self._running_id: dict[str, int] = {}  # uuid -> libvirt id of the run last started
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
        for host in self.hosts:  # all at once: a slow host delays nobody
            self._settled[host.name] = asyncio.Event()
            host.start()
        self._spawn_task(self._refresh_forever())

    async def close(self) -> None:
        for stream in list(self._streams):
            await stream.close()
        self._streams.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(host.close() for host in self.hosts), return_exceptions=True)

    async def list_domains(self) -> list[DomainInfo]:
        await self._await_first_inventories()
        names = sorted({record.name for _, record in self._seen.all()})
        return self._resolve_names(names)

    async def domains_named(self, names: Collection[str]) -> list[DomainInfo]:
        if any(not self._seen.named(name) for name in names):
            await self._await_first_inventories(names)  # a slow host delays no one else
        return self._resolve_names(sorted(names))

    async def lookup(self, name: str) -> DomainInfo | None:
        if not is_offered_domain_name(name):
            return None  # never a numeric id, never a name the helper would not accept
        if not self._seen.named(name):
            await self._await_first_inventories([name])
        if not self._seen.named(name):
            return await self._lookup_live(name)
        resolved = self._resolve(name)  # None: its name is not offered (all digits...)
        return self._info(*resolved) if resolved is not None else None

    async def info(self, uuid: str) -> DomainInfo:
        """From the record when it is current (one copy, its host answered within the
        timeout: the record follows every event and action of the domain), else read from
        its host (so a host that stopped answering gives a temporary failure in time)."""
        copies = self._seen.copies(uuid)
        if len(copies) == 1 and is_uuid(uuid):
            host = self._hosts_by_name[copies[0][0]]
            if host.answered_lately:
                return self._info(host, copies[0][1])
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
        stream = LibvirtConsoleStream(self._name_of(uuid))

        def open_console(dom: Any) -> None:
            state = _state(dom)
            if state not in (DomainState.RUNNING, DomainState.PAUSED):
                raise _refuse(dom, f"is not running ({state.value})")
            opened = dom.connect().newStream(libvirt.VIR_STREAM_NONBLOCK)
            dom.openConsole(None, opened, 0)
            stream.attach(opened)

        try:
            host, _ = await self._on_domain(uuid, "console", open_console)
        except BaseException:
            await stream.close()
            raise
        stream.host = host.name
        self._streams = {s for s in self._streams if not s.ended}
        self._streams.add(stream)
        return stream

    # -- for the administrator --------------------------------------------------------------

    def host_states(self) -> list[dict[str, Any]]:
        """Each host's connection, as ``vpsshell-admin hosts`` shows it (admins only: the
        URIs and libvirt's errors may name addresses tenants must not see)."""
        return [
            {
                "name": host.name,
                "uri": host.uri,
                "state": host.state,
                "since": host.since,
                "last_error": host.last_error,
                "domains": self._seen.count(host.name),
                "keepalive_interval": host.keepalive[0],
                "keepalive_count": host.keepalive[1],
            }
            for host in self.hosts
        ]

    async def migrate(self, uuid: str, to: str, timeout: float) -> DomainInfo:
        """Live-migrate the domain to host ``to`` (a label): its definition moves with it, so
        no stale copy stays behind on the source. Returns the domain as it is afterwards."""
        destination = self._hosts_by_name.get(to)
        if destination is None:
            raise ActionFailed(f"no host called {to!r} (see vpsshell-admin hosts)")
        source = await self._locate(uuid, "migrate")
        if source is destination:
            raise ActionFailed(f"{self._name_of(uuid)} is already on host {to}")
        target_conn = await destination.call(lambda conn: conn, "migrate")
        address = migration_address(destination.uri)

        def migrate(conn: Any) -> None:
            dom = conn.lookupByUUIDString(uuid)
            _require_running(dom)
            flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
            if dom.isPersistent():
                flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
            dom.migrate(target_conn, flags, None, f"tcp://{address}" if address else None, 0)

        try:
            await source.call(migrate, "migrate", timeout=timeout)
        except libvirt.libvirtError as exc:
            raise self._translate(exc, source, self._name_of(uuid), "migrate") from None
        self._last_active[uuid] = destination.name
        record = await destination.call(lambda conn: _by_uuid(conn, uuid), "status")
        if record is None:
            raise ActionFailed(f"{self._name_of(uuid)}: not found on {to} after the migration")
        self._seen.put(destination.name, record)
        return self._info(destination, record)

    # -- names --------------------------------------------------------------------------------

    async def _await_first_inventories(self, names: Collection[str] = ()) -> None:
        """Hosts still connecting for the first time may hold any name: wait for them,
        within the timeout, but only until every one of ``names`` is found (so a tenant
        whose domains are all on hosts that answered waits for no other). A host that failed
        is not waited for (its domains are unknown)."""
        deadline = time.monotonic() + self.config.timeout_seconds
        while True:
            waiting = [  # lost hosts are settled: only those on their way are waited for
                event for event in self._settled.values() if not event.is_set()
            ]
            if not waiting or (names and all(self._seen.named(name) for name in names)):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            any_settled = [asyncio.ensure_future(event.wait()) for event in waiting]
            try:
                await asyncio.wait(
                    any_settled, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in any_settled:
                    waiter.cancel()

    def _resolve_names(self, names: list[str]) -> list[DomainInfo]:
        found = []
        for name in names:
            try:
                resolved = self._resolve(name)
            except VpsError:
                continue  # a name on two hosts: logged for the admin, never listed
            if resolved is not None:
                found.append(self._info(*resolved))
        return found

    def _resolve(self, name: str) -> tuple[LibvirtHost, DomainRecord] | None:
        """The domain called ``name`` as last seen, from the record alone (no call): None if
        there is none or its name is not offered; ActionFailed if the name is ambiguous."""
        copies = self._seen.named(name)
        if not copies:
            return None
        uuids = {record.uuid for _, record in copies}
        if len(uuids) > 1:
            hosts = sorted(host for host, _ in copies)
            self._report_conflict(name, hosts)
            raise ActionFailed(
                f"{name}: this name is defined on more than one host ({', '.join(hosts)}); "
                "the administrator must make it unique"
            )
        self._report_conflict(name, None)
        uuid = uuids.pop()
        try:
            chosen = choose_copy(self._seen.copies(uuid), self._last_active.get(uuid))
        except AmbiguousCopies as exc:
            raise self._ambiguous(name, exc) from None
        if chosen is None or chosen[1].name != name:
            return None  # renamed meanwhile: the copy that is the domain has another name
        host = self._hosts_by_name[chosen[0]]
        if _is_xen_dom0(host.uri, chosen[1]) or not self._usable(host, name):
            return None
        return host, chosen[1]

    async def _lookup_live(self, name: str) -> DomainInfo | None:
        """A name the record does not hold: ask every answering host (a domain defined a
        moment ago). A host that cannot answer and was never read might hold it: do not
        guess then."""
        asked = await self._ask(
            [host for host in self.hosts if host.connected], lambda conn: _by_name(conn, name)
        )
        for host, answer in asked:
            if isinstance(answer, DomainRecord):
                self._seen.put(host.name, answer)
            elif isinstance(answer, libvirt.libvirtError):
                raise self._translate(answer, host, name, "lookup") from None
            elif isinstance(answer, BaseException) and not isinstance(answer, VpsError):
                raise answer
        if not self._seen.named(name):
            for host, answer in asked:
                if isinstance(answer, VpsError) and host.name not in self._seen.complete:
                    raise answer
            for host in self.hosts:
                if not host.connected and host.name not in self._seen.complete:
                    raise host.unreachable()
            return None
        resolved = self._resolve(name)
        return self._info(*resolved) if resolved is not None else None

    def _ambiguous(self, name: str, exc: AmbiguousCopies) -> ActionFailed:
        logger.error(
            "domain %s is defined on hosts %s and none of the copies is clearly the live "
            "one: undefine the stale copy",
            name,
            ", ".join(exc.hosts),
        )
        return ActionFailed(
            f"{name}: this domain is defined on more than one host ({', '.join(exc.hosts)}); "
            "the administrator must remove the stale copy"
        )

    # -- acting on one domain ---------------------------------------------------------------

    async def _on_domain(
        self, uuid: str, verb: str, work: Callable[[Any], T], *, own_action: str = ""
    ) -> tuple[LibvirtHost, T]:
        """Run ``work(domain)`` on the domain's host, the domain looked up by UUID; returns
        the host and what ``work`` returned."""
        if not is_uuid(uuid):
            raise not_found_or_denied(uuid)
        host = await self._locate(uuid, verb)
        for attempt in (1, 2):
            mine = (own_action, time.monotonic())
            if own_action:  # before the call: its reboot event may come before it returns
                self._own_action[uuid] = mine
            try:
                result = await host.call(lambda conn: work(conn.lookupByUUIDString(uuid)), verb)
            except libvirt.libvirtError as exc:
                self._forget_own_action(uuid, mine)
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN and attempt == 1:
                    self._seen.remove(host.name, uuid)  # migrated or undefined: look again
                    host = await self._locate(uuid, verb)
                    continue
                raise self._translate(exc, host, self._name_of(uuid), verb) from None
            except BaseException:
                self._forget_own_action(uuid, mine)
                raise
            if isinstance(result, DomainRecord):
                self._seen.put(host.name, result)
            else:
                await self._read_after_action(host, uuid)
            return host, result
        raise AssertionError("unreachable")

    async def _locate(self, uuid: str, verb: str) -> LibvirtHost:
        """The host of the copy of ``uuid`` that is the domain. With copies on several hosts
        (a migration under way or just done) each is read afresh before choosing, and a
        ``start`` is refused while any copy cannot be read: it might be running there."""
        copies = self._seen.copies(uuid)
        if not copies:
            return await self._find_host(uuid)
        if len(copies) == 1:
            return self._hosts_by_name[copies[0][0]]
        hosts = [self._hosts_by_name[host] for host, _ in copies]
        fresh: list[tuple[str, DomainRecord]] = []
        for host, answer in await self._ask(hosts, lambda conn: _by_uuid(conn, uuid)):
            if isinstance(answer, DomainRecord):
                self._seen.put(host.name, answer)
                fresh.append((host.name, answer))
            elif answer is None:
                self._seen.remove(host.name, uuid)
            elif isinstance(answer, VpsError):
                if verb == "start":
                    raise answer  # it may be running on the host that cannot answer
            elif isinstance(answer, libvirt.libvirtError):
                raise self._translate(answer, host, self._name_of(uuid), verb) from None
            elif isinstance(answer, BaseException):
                raise answer
        if not fresh:
            return await self._find_host(uuid)
        try:
            chosen = choose_copy(fresh, self._last_active.get(uuid))
        except AmbiguousCopies as exc:
            raise self._ambiguous(self._name_of(uuid), exc) from None
        assert chosen is not None
        return self._hosts_by_name[chosen[0]]

    def _forget_own_action(self, uuid: str, mine: tuple[str, float]) -> None:
        """A failed action names no event; another call failing (a console reopened while
        the domain restarts) leaves the action that is under way its name."""
        if self._own_action.get(uuid) is mine:
            del self._own_action[uuid]

    async def _read_after_action(self, host: LibvirtHost, uuid: str) -> None:
        """The domain as the action left it, into the record before the action returns (a
        ``status`` right after it is answered from the record). The action is done either
        way: a host that cannot answer now leaves the record to the next event or read."""
        try:
            record = await host.call(lambda conn: _by_uuid(conn, uuid), "lookup")
        except (VpsError, libvirt.libvirtError):
            self._reread_soon(host, uuid)
            return
        if record is None:
            self._seen.remove(host.name, uuid)
        else:
            self._seen.put(host.name, record)

    @staticmethod
    async def _ask(
        hosts: list[LibvirtHost], work: Callable[[Any], T]
    ) -> list[tuple[LibvirtHost, T | BaseException]]:
        """``work`` on each of ``hosts`` at once: each host with its answer or its error."""
        answers = await asyncio.gather(
            *(host.call(work, "lookup") for host in hosts), return_exceptions=True
        )
        return list(zip(hosts, answers, strict=True))

    async def _find_host(self, uuid: str) -> LibvirtHost:
        """Ask every connected host for a UUID the record does not hold."""
        asked = await self._ask(
            [host for host in self.hosts if host.connected], lambda conn: _by_uuid(conn, uuid)
        )
        found = [(host, answer) for host, answer in asked if isinstance(answer, DomainRecord)]
        for host, record in found:
            self._seen.put(host.name, record)
        if found:
            return await self._locate(uuid, "lookup") if len(found) > 1 else found[0][0]
        for _, answer in asked:
            if isinstance(answer, VpsError):
                raise answer
        for host in self.hosts:
            if not host.connected and host.name not in self._seen.complete:
                raise host.unreachable()  # never read: it may be there
        raise not_found_or_denied(self._name_of(uuid))

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

    # -- keeping the record -----------------------------------------------------------------

    def _spawn_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_forever(self) -> None:
        """A full inventory of every answering host now and then, besides events: a change
        libvirt sent no event for (or one lost with a connection) is seen within a period."""
        while True:
            await asyncio.sleep(self.config.refresh_seconds)
            for host in self.hosts:
                if host.answering:
                    self._spawn_task(self._take_inventory(host, report_missed=False))

    async def _take_inventory(self, host: LibvirtHost, *, report_missed: bool) -> None:
        changed = self._changed.setdefault(host.name, set())
        changed.clear()
        try:
            records = await host.call(_inventory, "list")
        except VpsError:
            return  # the host's state says why; the reconnect brings another inventory
        except libvirt.libvirtError as exc:
            logger.warning("host %s: listing domains failed: %s", host.name, exc)
            self._settled[host.name].set()  # nothing to wait for: it answered, without a list
            return
        before = self._seen.replace(host.name, records)
        self._settled[host.name].set()
        for record in records:  # which run is current, for a restart under a new id
            if record.state in ACTIVE_STATES and record.domain_id > 0:
                self._running_id.setdefault(record.uuid, record.domain_id)
        for uuid in changed:  # events came while listing: the listing may predate them
            self._reread_soon(host, uuid)
        changed.clear()
        if report_missed:
            self._report_missed(host, before, records)

    def _reread_soon(self, host: LibvirtHost, uuid: str) -> None:
        """Read one domain of ``host`` again (after its event or an action); reads of the
        same domain never overlap, and one asked for during a read runs after it."""
        key = (host.name, uuid)
        self._changed.setdefault(host.name, set()).add(uuid)
        if key in self._rereading:
            self._rereading[key] = True
            return
        self._rereading[key] = False
        self._spawn_task(self._reread(host, uuid))

    async def _reread(self, host: LibvirtHost, uuid: str) -> None:
        key = (host.name, uuid)
        try:
            while True:
                self._rereading[key] = False
                try:
                    record = await host.call(lambda conn: _by_uuid(conn, uuid), "lookup")
                except (VpsError, libvirt.libvirtError):
                    return  # the host is down: its next inventory brings this domain
                if record is None:
                    self._seen.remove(host.name, uuid)
                else:
                    self._seen.put(host.name, record)
                if not self._rereading[key]:
                    return
        finally:
            del self._rereading[key]

    def _name_of(self, uuid: str) -> str:
        copies = self._seen.copies(uuid)
        return copies[0][1].name if copies else uuid

    def _info(self, host: LibvirtHost, record: DomainRecord) -> DomainInfo:
        key = UptimeBook.key(host.name, record.uuid)
        state = record.state
        uptime: int | None = None
        if not host.answering:
            state = DomainState.UNKNOWN  # what it last said may no longer be true
        elif record.state in ACTIVE_STATES:
            uptime = self._book.seconds(key, record.domain_id)
        else:
            self._book.stopped(key)
        return DomainInfo(
            name=record.name,
            uuid=record.uuid,
            state=state,
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

    def _report_conflict(self, name: str, hosts: list[str] | None) -> None:
        """Log a name defined on several hosts once, and once when it is unique again."""
        if hosts is None:
            if self._conflicts.pop(name, None) is not None:
                logger.info("domain name %r is unique again", name)
            return
        ordered = tuple(hosts)
        if self._conflicts.get(name) != ordered:
            self._conflicts[name] = ordered
            logger.error(
                "domain name %r is defined on hosts %s: it is not resolved for tenants "
                "until it is unique (rename or undefine one of them)",
                name,
                ", ".join(ordered),
            )

    # -- hosts ------------------------------------------------------------------------------

    def _on_host_state(self, host: LibvirtHost, change: str, why: str) -> None:
        """A host connected, was lost or is back (``LibvirtHost._set_state``)."""
        if change == "lost":
            self._settled[host.name].set()  # nobody waits for its first inventory any more
            logger.warning("host %s lost: %s", host.name, why)
            for stream in self._streams:
                if stream.host == host.name:
                    stream.abandon()
            self.emit_host(HostEvent("host-lost", host.name, why))
            return
        if change == "back":
            logger.info("host %s is back", host.name)
            self.emit_host(HostEvent("host-back", host.name))
        # events may have been lost meanwhile: read everything, report what changed
        self._spawn_task(self._take_inventory(host, report_missed=change == "back"))

    def _report_missed(
        self, host: LibvirtHost, before: dict[str, DomainRecord], records: list[DomainRecord]
    ) -> None:
        left = dict(before)
        for record in records:
            old = left.pop(record.uuid, None)
            was_up = old is not None and old.state in ACTIVE_STATES
            if record.state in ACTIVE_STATES and (
                not was_up or old is None or old.domain_id != record.domain_id
            ):
                self.emit(LifecycleEvent("started", record.uuid, record.name, "missed"))
            elif was_up and record.state not in ACTIVE_STATES:
                self._book.stopped(UptimeBook.key(host.name, record.uuid))
                self.emit(LifecycleEvent("stopped", record.uuid, record.name, "missed"))
        for old in left.values():
            if old.state in ACTIVE_STATES and not self._seen.copies(old.uuid):
                self.emit(LifecycleEvent("stopped", old.uuid, old.name, "missed"))

    # -- events -----------------------------------------------------------------------------

    def emit(self, event: LifecycleEvent) -> None:
        """Log the event with its host, then deliver it like every backend does."""
        logger.info(
            "event: %s/%s %s%s",
            self._last_active.get(event.uuid, "?"),
            event.name,
            event.kind,
            f" ({event.detail})" if event.detail else "",
        )
        super().emit(event)

    def _on_raw_event(self, raw: RawEvent) -> None:
        uuid = raw.uuid.lower()
        host = raw.host
        key = UptimeBook.key(host.name, uuid)
        self._reread_soon(host, uuid)
        if raw.kind == "reboot":
            now = time.monotonic()
            last = self._last_reboot.get(uuid)
            self._last_reboot[uuid] = now
            if last is not None and now - last < REBOOT_COALESCE_SECONDS:
                return
            verb, at = self._own_action.pop(uuid, ("", 0.0))
            detail = verb if verb and now - at < OWN_ACTION_SECONDS else "guest"
            self._book.booted(key, raw.domain_id)
            self.emit(LifecycleEvent("rebooted", uuid, raw.name, detail))
            return
        if self._migration_step(host, uuid, raw):
            return
        exact = (raw.event, raw.detail)
        mapped = _LIFECYCLE[exact] if exact in _LIFECYCLE else _LIFECYCLE.get((raw.event, None))
        if mapped is None:
            return  # defined, undefined, suspended, resumed: no tenant-visible event
        kind, detail = mapped
        running = self._running_id.get(uuid)
        if kind == "stopped" and running is not None and 0 < raw.domain_id != running:
            return  # an earlier run of it, reported after its successor started (libxl)
        if kind == "started" and running is not None and 0 < running != raw.domain_id:
            # started again under a new id without being seen to stop: libxl's reboot is a
            # new domain, and it sends no reboot event
            self._running_id[uuid] = raw.domain_id
            verb, at = self._own_action.pop(uuid, ("", 0.0))
            recent = verb and time.monotonic() - at < OWN_RESTART_SECONDS
            self._book.booted(key, raw.domain_id)
            self.emit(LifecycleEvent("rebooted", uuid, raw.name, verb if recent else "guest"))
            return
        if kind == "migrated":  # "out": the source's half of a migration
            self._running_id.pop(uuid, None)
            self._book.stopped(key)
        elif kind == "started":
            self._last_active[uuid] = host.name
            if raw.domain_id > 0:
                self._running_id[uuid] = raw.domain_id
            self._book.started(key, raw.domain_id)
        elif kind == "stopped":
            self._running_id.pop(uuid, None)
            self._book.stopped(key)
        self.emit(LifecycleEvent(kind, uuid, raw.name, detail))

    def _migration_step(self, host: LibvirtHost, uuid: str, raw: RawEvent) -> bool:
        """The destination's half of a live migration: it starts paused at the beginning
        (no event yet: the source still runs the domain) and is ``migrated in`` when it
        resumes; one that stops before it resumes was a failed migration (no event). True if
        ``raw`` was such a step."""
        if raw.event == _STARTED and raw.detail == libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED:
            self._incoming[uuid] = host.name
            return True
        if self._incoming.get(uuid) != host.name:
            return False
        if raw.event == libvirt.VIR_DOMAIN_EVENT_RESUMED:
            del self._incoming[uuid]
            self._last_active[uuid] = host.name
            self._book.started(UptimeBook.key(host.name, uuid), raw.domain_id)
            self.emit(LifecycleEvent("migrated", uuid, raw.name, "in"))
            return True
        if raw.event == _STOPPED:
            del self._incoming[uuid]
            logger.warning("host %s: incoming migration of %s ended", host.name, raw.name)
            return True
        return False


def _is_xen_dom0(uri: str, record: DomainRecord) -> bool:
    """Xen's Domain-0, which libvirt's libxl driver lists as a running domain: it is the
    host itself, never a tenant's (the xen backend hides it the same way)."""
    return record.domain_id == 0 and urllib.parse.urlsplit(uri).scheme.split("+")[0] == "xen"


def migration_address(uri: str) -> str | None:
    """Where migration data goes to reach the host of ``uri``: its address as the URI names
    it (``qemu+tls://10.0.0.2/system`` -> ``10.0.0.2``), None for a local URI (libvirt then
    uses the host's own name)."""
    host = urllib.parse.urlsplit(uri).hostname
    if not host:
        return None
    return f"[{host}]" if ":" in host else host
