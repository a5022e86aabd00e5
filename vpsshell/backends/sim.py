"""The ``sim`` backend: a small pure-Python hypervisor living inside the helper.

It is the embedded default and the demo, so it behaves like a real host rather than a mock:
domains move through starting/running/shutting-down/shutoff/crashed on asyncio timers taken
from the config, every transition emits the lifecycle events the other backends emit, and the
state (with each domain's wall-clock start time) survives helper restarts in
``STATE_DIR/sim-state.json``. Each domain's serial console is a ``SimGuest`` (``sim_guest``)
whose output is broadcast to every open ``SimConsoleStream``.

It must never block the event loop on a slow console reader (each stream drops its own oldest
output instead), never crash on a damaged state file (it is logged and ignored), never accept a
numeric id where a name is expected, and never use randomness: timings come only from the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from vpsshell.backends.base import (
    Backend,
    BackendConfigError,
    ConsoleStream,
    DomainInfo,
    DomainState,
    LifecycleEvent,
    check_backend_table,
    check_host_label,
    check_table,
)
from vpsshell.backends.output_buffer import OutputBuffer
from vpsshell.backends.sim_guest import SimGuest
from vpsshell.checks import (
    DOMAIN_NAME_MAX,
    HOST_LABEL_PATTERN,
    is_domain_name,
    is_sysrq_key,
    is_uuid,
)
from vpsshell.errors import ActionFailed, not_found_or_denied

logger = logging.getLogger("vpsshell.sim")

STATE_FILE_NAME = "sim-state.json"
STATE_FILE_VERSION = 1
CONSOLE_BUFFER_BYTES = 1 << 20  # pending output per stream before its oldest chunks go

# Default domain UUIDs are uuid5(this namespace, name): stable across restarts and hosts.
SIM_UUID_NAMESPACE = uuidlib.UUID("6f1d6a1e-4a36-5c7e-9d0b-7673707368c1")

_VCPUS_MAX = 512
_MEMORY_MIB_MAX = 4 * 1024 * 1024  # 4 TiB
_SECONDS_MAX = 600.0
_TABLE_KEYS = frozenset({"type", "host", "domains"})
_DOMAIN_KEYS = frozenset(
    {"name", "uuid", "vcpus", "memory_mib", "boot_seconds", "shutdown_seconds"}
)
_REQUIRED_DOMAIN_KEYS = ("name", "vcpus", "memory_mib", "boot_seconds")

# What started the current boot: decides which event marks its end ("rebooted" is sent at the
# restart itself, so a reboot's boot ends silently).
_BOOT_START, _BOOT_RESET, _BOOT_REBOOT = "start", "reset", "reboot"


# -- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class SimDomainConfig:
    """One ``[[backend.domains]]`` entry, validated."""

    name: str
    uuid: str
    vcpus: int
    memory_mib: int
    boot_seconds: float
    shutdown_seconds: float = 1.0


def parse_sim_config(table: dict[str, Any]) -> tuple[str, list[SimDomainConfig]]:
    """Validate the ``[backend]`` table of a sim backend: (host label, domains)."""
    check_backend_table(table, "sim", _TABLE_KEYS, type_optional=True)
    host = check_host_label("backend.host", table.get("host", os.uname().nodename))
    entries = table.get("domains", [])
    if not isinstance(entries, list):
        raise BackendConfigError("backend.domains: must be an array of tables")
    domains = [_parse_domain(f"backend.domains[{i}]", entry) for i, entry in enumerate(entries)]
    names: dict[str, int] = {}
    uuids: dict[str, int] = {}
    for index, domain in enumerate(domains):
        where = f"backend.domains[{index}]"
        if domain.name in names:
            raise BackendConfigError(
                f"{where}.name: {domain.name!r} is already the name of "
                f"backend.domains[{names[domain.name]}]"
            )
        if domain.uuid in uuids:
            raise BackendConfigError(
                f"{where}.uuid: {domain.uuid} is already the UUID of "
                f"backend.domains[{uuids[domain.uuid]}]"
            )
        names[domain.name] = uuids[domain.uuid] = index
    for index, domain in enumerate(domains):
        # Names and UUIDs share one lookup namespace.
        if uuids.get(domain.name, index) != index:
            raise BackendConfigError(
                f"backend.domains[{index}].name: {domain.name!r} is the UUID of "
                f"backend.domains[{uuids[domain.name]}]"
            )
    return host, domains


def _parse_domain(where: str, entry: Any) -> SimDomainConfig:
    check_table(where, entry, _DOMAIN_KEYS)
    missing = [key for key in _REQUIRED_DOMAIN_KEYS if key not in entry]
    if missing:
        raise BackendConfigError(f"{where}: missing {', '.join(missing)}")
    name = entry["name"]
    if not is_domain_name(name):
        raise BackendConfigError(
            f"{where}.name: must match {HOST_LABEL_PATTERN} and be at most {DOMAIN_NAME_MAX} "
            f"characters, got {name!r}"
        )
    if name.isdigit():
        raise BackendConfigError(
            f"{where}.name: {name!r} is all digits and would read as a numeric domain id"
        )
    where = f"{where} ({name})"
    raw_uuid = entry.get("uuid")
    if raw_uuid is None:
        domain_uuid = str(uuidlib.uuid5(SIM_UUID_NAMESPACE, name))
    elif isinstance(raw_uuid, str) and is_uuid(raw_uuid.lower()):
        domain_uuid = raw_uuid.lower()
    else:
        raise BackendConfigError(
            f"{where}.uuid: must be a UUID like 8-4-4-4-12 hex digits, got {raw_uuid!r}"
        )
    return SimDomainConfig(
        name=name,
        uuid=domain_uuid,
        vcpus=_int_in(f"{where}.vcpus", entry["vcpus"], 1, _VCPUS_MAX),
        memory_mib=_int_in(f"{where}.memory_mib", entry["memory_mib"], 1, _MEMORY_MIB_MAX),
        boot_seconds=_seconds(f"{where}.boot_seconds", entry["boot_seconds"]),
        shutdown_seconds=_seconds(f"{where}.shutdown_seconds", entry.get("shutdown_seconds", 1)),
    )


def _int_in(where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BackendConfigError(f"{where}: must be an integer from {low} to {high}, got {value!r}")
    return value


def _seconds(where: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= _SECONDS_MAX
    ):
        raise BackendConfigError(
            f"{where}: must be a number of seconds from 0 to {_SECONDS_MAX:g}, got {value!r}"
        )
    return float(value)


# -- consoles -----------------------------------------------------------------------------


class SimConsoleStream(ConsoleStream):
    """One reader/writer of a sim domain's serial console.

    Output waits in this stream's own ``OutputBuffer`` (bounded; the oldest is dropped and
    counted in ``dropped_bytes``), so a reader that stalls never slows the guest or the other
    streams."""

    def __init__(
        self,
        limit: int,
        send: Callable[[bytes], None],
        on_close: Callable[[SimConsoleStream], None],
    ) -> None:
        self._output = OutputBuffer(limit)
        self._send = send
        self._on_close = on_close
        self._closed = False

    @property
    def pending_bytes(self) -> int:
        return self._output.pending_bytes

    @property
    def dropped_bytes(self) -> int:
        return self._output.dropped_bytes

    def deliver(self, data: bytes) -> None:
        """Queue guest output for this stream (called by the backend, never blocks)."""
        self._output.put(data)

    async def read(self) -> bytes:
        return await self._output.get()

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise ActionFailed("the console stream is closed")
        self._send(data)

    async def close(self) -> None:
        self.end()

    def end(self) -> None:
        """Close synchronously (the backend uses this when it shuts down); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._output.end(discard=True)
        self._on_close(self)


# -- domains ------------------------------------------------------------------------------


@dataclass
class _Domain:
    """Runtime state of one domain. Times are wall-clock (``SimBackend.clock``) seconds."""

    config: SimDomainConfig
    guest: SimGuest
    state: DomainState = DomainState.SHUTOFF
    since: float | None = None  # when the current boot began (uptime origin)
    phase_since: float = 0.0  # when the current state was entered
    boot_reason: str = _BOOT_START
    rebooting: bool = False  # shutting down on the way to a restart
    timer: asyncio.Task[None] | None = None
    streams: list[SimConsoleStream] = field(default_factory=list)


class SimBackend(Backend):
    """Simulated domains with real state transitions, consoles and persisted state."""

    kind = "sim"

    def __init__(
        self,
        domains: list[SimDomainConfig],
        state_dir: str,
        host: str,
        *,
        clock: Callable[[], float] = time.time,
        console_buffer_bytes: int = CONSOLE_BUFFER_BYTES,
    ) -> None:
        super().__init__()
        self.host = host
        self.state_dir = state_dir
        self.state_path = os.path.join(state_dir, STATE_FILE_NAME)
        self.clock = clock
        self._console_buffer_bytes = console_buffer_bytes
        self._domains: dict[str, _Domain] = {}
        self._by_name: dict[str, _Domain] = {}
        for config in domains:
            domain = self._new_domain(config)
            self._domains[config.uuid] = domain
            self._by_name[config.name] = domain

    @classmethod
    def from_config(
        cls,
        table: dict[str, Any],
        state_dir: str,
        *,
        clock: Callable[[], float] = time.time,
        console_buffer_bytes: int = CONSOLE_BUFFER_BYTES,
    ) -> SimBackend:
        """Build from the daemon config's ``[backend]`` table; touches no file."""
        host, domains = parse_sim_config(table)
        return cls(domains, state_dir, host, clock=clock, console_buffer_bytes=console_buffer_bytes)

    def _new_domain(self, config: SimDomainConfig) -> _Domain:
        holder: list[_Domain] = []
        guest = SimGuest(
            config.name,
            vcpus=config.vcpus,
            memory_mib=config.memory_mib,
            write=lambda data: self._broadcast(holder[0], data),
            uptime=lambda: self._uptime(holder[0]),
            wall_clock=self.clock,
        )
        holder.append(_Domain(config=config, guest=guest))
        return holder[0]

    # -- Backend interface ------------------------------------------------------------------

    async def open(self) -> None:
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise BackendConfigError(f"state_dir {self.state_dir}: {exc}") from exc
        records = self._load_records()
        missed: list[tuple[_Domain, str, str]] = []
        for domain in self._domains.values():
            record = records.get(domain.config.uuid)
            if record is not None:
                missed += [(domain, k, d) for k, d in self._restore(domain, record)]
        self._save()  # also forgets domains that are no longer configured
        for domain, kind, detail in missed:
            self._announce(kind, domain, detail)

    async def close(self) -> None:
        tasks = [d.timer for d in self._domains.values() if d.timer is not None]
        for domain in self._domains.values():
            self._cancel_timer(domain)
            for stream in list(domain.streams):
                stream.end()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # States are saved as they are: a helper restart is not a host power cut.
        self._save()

    async def list_domains(self) -> list[DomainInfo]:
        return [self._info(domain) for domain in self._domains.values()]

    async def lookup(self, name: str) -> DomainInfo | None:
        domain = self._by_name.get(name)  # by name only: a UUID is not a name
        return self._info(domain) if domain is not None else None

    async def info(self, uuid: str) -> DomainInfo:
        return self._info(self._get(uuid))

    async def start(self, uuid: str) -> None:
        domain = self._get(uuid)
        if domain.state in (DomainState.RUNNING, DomainState.STARTING):
            raise self._wrong_state(domain, f"is already {domain.state.value}")
        if domain.state is not DomainState.SHUTOFF:
            raise self._wrong_state(domain, f"is not shut off ({domain.state.value})")
        self._begin_boot(domain, _BOOT_START)

    async def shutdown(self, uuid: str) -> None:
        domain = self._get(uuid)
        if domain.state is DomainState.SHUTTING_DOWN:
            raise self._wrong_state(domain, "is already shutting down")
        self._require_running(domain)
        self._begin_shutdown(domain, reboot=False)

    async def reboot(self, uuid: str) -> None:
        domain = self._get(uuid)
        self._require_running(domain)
        self._begin_shutdown(domain, reboot=True)

    async def poweroff(self, uuid: str) -> None:
        domain = self._get(uuid)
        if domain.state is DomainState.SHUTOFF:
            raise self._wrong_state(domain, "is already shut off")
        domain.guest.powered_off()
        self._enter_shutoff(domain, "destroyed")

    async def reset(self, uuid: str) -> None:
        domain = self._get(uuid)
        resettable = (
            DomainState.RUNNING,
            DomainState.STARTING,
            DomainState.CRASHED,
            DomainState.PAUSED,
        )
        if domain.state not in resettable:
            raise self._wrong_state(domain, f"is not running ({domain.state.value})")
        self._begin_boot(domain, _BOOT_RESET)

    async def sysrq(self, uuid: str, key: str) -> None:
        domain = self._get(uuid)
        if not is_sysrq_key(key):
            raise ActionFailed(f"{key!r} is not a SysRq key (one of 0-9 or a-z)")
        self._require_running(domain)
        domain.guest.sysrq(key)
        if key == "b":
            self._restart(domain, "sysrq")
        elif key == "c":
            self._enter_crashed(domain, "sysrq triggered crash", "sysrq")
        elif key == "o":
            domain.guest.power_down()
            self._enter_shutoff(domain, "shutdown")

    async def open_console(self, uuid: str) -> ConsoleStream:
        domain = self._get(uuid)
        stream = SimConsoleStream(
            self._console_buffer_bytes,
            send=domain.guest.feed,
            on_close=domain.streams.remove,
        )
        domain.streams.append(stream)
        return stream

    # -- beyond the interface ---------------------------------------------------------------

    async def inject_crash(self, uuid: str) -> None:
        """Make the guest kernel panic (tests and the admin socket)."""
        domain = self._get(uuid)
        if domain.state in (DomainState.SHUTOFF, DomainState.CRASHED):
            raise self._wrong_state(domain, f"is not running ({domain.state.value})")
        self._enter_crashed(domain, "Fatal exception", "injected")

    # -- transitions ------------------------------------------------------------------------

    def _begin_boot(self, domain: _Domain, reason: str) -> None:
        self._cancel_timer(domain)
        self._enter_starting(domain, reason, self.clock())
        self._set_timer(domain, self._boot(domain, 0.0))

    def _enter_starting(self, domain: _Domain, reason: str, at: float) -> None:
        domain.guest.power_on()
        self._set_state(domain, DomainState.STARTING, at)
        domain.since = at
        domain.boot_reason = reason
        self._save()

    async def _boot(self, domain: _Domain, elapsed: float) -> None:
        """Print the boot log over ``boot_seconds``, then become running. ``elapsed`` seconds of
        the boot already passed (while the helper was down): their lines are not printed."""
        loop = asyncio.get_running_loop()
        began = loop.time() - elapsed
        for offset, chunk in domain.guest.boot_log(domain.config.boot_seconds):
            if offset < elapsed:
                continue
            await asyncio.sleep(max(0.0, began + offset - loop.time()))
            self._broadcast(domain, chunk)
        await asyncio.sleep(max(0.0, began + domain.config.boot_seconds - loop.time()))
        domain.guest.boot_finished()
        self._enter_running(domain)

    def _enter_running(self, domain: _Domain) -> None:
        self._set_state(domain, DomainState.RUNNING, self.clock())
        self._save()
        # a reset is a reboot the guest did not ask for: "rebooted (reset)", as Xen and libvirt
        if domain.boot_reason == _BOOT_RESET:
            self._announce("rebooted", domain, "reset")
        elif domain.boot_reason != _BOOT_REBOOT:
            self._announce("started", domain, "")

    def _begin_shutdown(self, domain: _Domain, *, reboot: bool) -> None:
        self._cancel_timer(domain)
        domain.guest.stopping()
        self._set_state(domain, DomainState.SHUTTING_DOWN, self.clock())
        domain.rebooting = reboot
        self._save()
        if not reboot:
            self._announce("shutdown", domain)
        self._set_timer(domain, self._finish_shutdown(domain))

    async def _finish_shutdown(self, domain: _Domain) -> None:
        await asyncio.sleep(domain.config.shutdown_seconds)
        if domain.rebooting:
            domain.guest.restarting()
            self._restart(domain, "reboot")
            await self._boot(domain, 0.0)
        else:
            domain.guest.power_down()
            self._enter_shutoff(domain, "shutdown")

    def _restart(self, domain: _Domain, detail: str) -> None:
        """The guest restarts in place (reboot, SysRq b): same domain, a fresh boot."""
        self._cancel_timer(domain)
        self._enter_starting(domain, _BOOT_REBOOT, self.clock())
        self._announce("rebooted", domain, detail)
        if domain.timer is None:  # else the caller is the timer and boots the guest itself
            self._set_timer(domain, self._boot(domain, 0.0))

    def _enter_shutoff(self, domain: _Domain, detail: str) -> None:
        self._cancel_timer(domain)
        self._set_state(domain, DomainState.SHUTOFF, self.clock())
        domain.since = None
        self._save()
        self._announce("stopped", domain, detail)

    def _enter_crashed(self, domain: _Domain, reason: str, detail: str) -> None:
        self._cancel_timer(domain)
        domain.guest.panic(reason)
        self._set_state(domain, DomainState.CRASHED, self.clock())
        domain.since = None
        self._save()
        self._announce("crashed", domain, detail)

    def _set_state(self, domain: _Domain, state: DomainState, at: float) -> None:
        logger.info("%s: %s -> %s", domain.config.name, domain.state.value, state.value)
        domain.state = state
        domain.phase_since = at
        domain.rebooting = False

    def _set_timer(self, domain: _Domain, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        task.add_done_callback(lambda done: self._timer_done(domain, done))
        domain.timer = task

    def _timer_done(self, domain: _Domain, task: asyncio.Task[None]) -> None:
        if domain.timer is task:
            domain.timer = None
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("%s: simulated domain timer failed", domain.config.name, exc_info=error)

    def _cancel_timer(self, domain: _Domain) -> None:
        """Stop the pending transition, unless the caller is that very timer (it is finishing
        its own work and will end by itself)."""
        timer = domain.timer
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
            domain.timer = None

    def _announce(self, kind: str, domain: _Domain, detail: str = "") -> None:
        self.emit(LifecycleEvent(kind, domain.config.uuid, domain.config.name, detail))

    # -- helpers ----------------------------------------------------------------------------

    def _get(self, uuid: str) -> _Domain:
        domain = self._domains.get(uuid)
        if domain is None:
            raise not_found_or_denied(uuid)
        return domain

    def _require_running(self, domain: _Domain) -> None:
        if domain.state is not DomainState.RUNNING:
            raise self._wrong_state(domain, f"is not running ({domain.state.value})")

    @staticmethod
    def _wrong_state(domain: _Domain, what: str) -> ActionFailed:
        return ActionFailed(f"{domain.config.name} {what}")

    def _uptime(self, domain: _Domain) -> float:
        if domain.since is None:
            return 0.0
        return max(0.0, self.clock() - domain.since)

    def _info(self, domain: _Domain) -> DomainInfo:
        return DomainInfo(
            name=domain.config.name,
            uuid=domain.config.uuid,
            state=domain.state,
            vcpus=domain.config.vcpus,
            memory_mib=domain.config.memory_mib,
            uptime_seconds=None if domain.since is None else int(self._uptime(domain)),
            host=self.host,
        )

    def _broadcast(self, domain: _Domain, data: bytes) -> None:
        for stream in domain.streams:
            stream.deliver(data)

    # -- persistence ------------------------------------------------------------------------

    def _save(self) -> None:
        """Write the state file atomically (temp file in the same directory, then rename)."""
        records = {
            domain.config.uuid: {
                "name": domain.config.name,
                "state": domain.state.value,
                "since": domain.since,
                "phase_since": domain.phase_since,
                "boot_reason": domain.boot_reason,
                "rebooting": domain.rebooting,
            }
            for domain in self._domains.values()
        }
        document = {"version": STATE_FILE_VERSION, "domains": records}
        try:
            fd, temp_path = tempfile.mkstemp(
                prefix=f".{STATE_FILE_NAME}.", suffix=".tmp", dir=self.state_dir
            )
        except OSError as exc:
            logger.error("cannot save sim state in %s: %s", self.state_dir, exc)
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mkstemp made it 0600
                json.dump(document, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_path, self.state_path)
        except OSError as exc:
            logger.error("cannot save sim state to %s: %s", self.state_path, exc)
            with contextlib.suppress(OSError):
                os.unlink(temp_path)

    def _load_records(self) -> dict[str, dict[str, Any]]:
        """The state file's per-domain records, or {} if it is missing, unreadable or damaged."""
        try:
            with open(self.state_path, encoding="utf-8") as handle:
                document = json.load(handle)
            return _check_document(document)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning(
                "ignoring sim state file %s (all domains start shut off): %s",
                self.state_path,
                exc,
            )
            return {}

    def _restore(self, domain: _Domain, record: dict[str, Any]) -> list[tuple[str, str]]:
        """Settle a domain where its timers would have taken it while the helper was down;
        returns the (kind, detail) events of those missed transitions."""
        config = domain.config
        state = DomainState(record["state"])
        since: float | None = record["since"]
        phase_since: float = record["phase_since"]
        reason: str = record["boot_reason"]
        events: list[tuple[str, str]] = []
        if state is DomainState.SHUTTING_DOWN:
            phase_since += config.shutdown_seconds
            if record["rebooting"]:
                state, since, reason = DomainState.STARTING, phase_since, _BOOT_REBOOT
                events.append(("rebooted", "reboot"))
            else:
                state, since = DomainState.SHUTOFF, None
                events.append(("stopped", "shutdown"))
        elapsed = max(0.0, self.clock() - phase_since)
        if state is DomainState.STARTING and elapsed >= config.boot_seconds:
            state, phase_since = DomainState.RUNNING, phase_since + config.boot_seconds
            if reason == _BOOT_RESET:
                events.append(("rebooted", "reset"))
            elif reason != _BOOT_REBOOT:
                events.append(("started", ""))
        domain.state, domain.since, domain.phase_since = state, since, phase_since
        domain.boot_reason = reason
        if state is DomainState.RUNNING:
            domain.guest.resume_silently()
        elif state is DomainState.STARTING:
            self._set_timer(domain, self._boot(domain, elapsed))
        logger.info("%s: restored as %s", config.name, state.value)
        return events


def _check_document(document: Any) -> dict[str, dict[str, Any]]:
    """Validate the state file's shape; raises ValueError on anything unexpected."""
    if not isinstance(document, dict) or document.get("version") != STATE_FILE_VERSION:
        raise ValueError("not a version 1 sim state document")
    records = document.get("domains")
    if not isinstance(records, dict):
        raise ValueError("'domains' is not an object")
    states = {s.value for s in DomainState} - {DomainState.PAUSED.value}
    reasons = {_BOOT_START, _BOOT_RESET, _BOOT_REBOOT}
    for key, record in records.items():
        if not isinstance(record, dict):
            raise ValueError(f"record {key!r} is not an object")
        since, phase_since = record.get("since"), record.get("phase_since")
        up = record.get("state") in (
            DomainState.RUNNING.value,
            DomainState.STARTING.value,
            DomainState.SHUTTING_DOWN.value,
        )
        if (
            record.get("state") not in states
            or not _is_time(phase_since)
            or not (_is_time(since) if up else since is None)
            or record.get("boot_reason") not in reasons
            or not isinstance(record.get("rebooting"), bool)
        ):
            raise ValueError(f"record {key!r} is malformed")
    return records


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
