"""The ``xen`` backend: domains of a Xen dom0, driven with ``xl``, watched through XenStore.

Domains are what ``xl list`` shows (Domain-0 excepted) plus the admin's domain config files
``domain_config_dir/NAME.cfg`` for those that are not running (only files, in a directory, that
pass the trusted-file rule of ``vpsshell.checks``). Each is tracked by UUID: the
running domain's, or for a file the ``uuid`` it sets, or else one derived from its name
(uuid5), which ``start`` passes to ``xl create`` so that the domain keeps it. A name is resolved
per request; an action then re-reads ``xl list -v`` and acts on the numeric domain id that this
UUID has *now*, after checking in XenStore that ``/local/domain/ID/vm`` still names that UUID:
a domain that is rebooting (``xl reboot`` builds a new domain with a new id) is never confused
with another, and no tenant string ever reaches ``xl`` (``xen_xl`` builds every argv).

Actions: start = ``xl create DIR/NAME.cfg uuid="..."``; shutdown = ``xl shutdown -F``; reboot =
``xl reboot -F``; poweroff = ``xl destroy``; reset = ``xl trigger ID reset`` for HVM guests, and
for PV/PVH guests (which Xen cannot reset) ``xl destroy`` then ``xl create`` of NAME.cfg with
the same UUID; sysrq = ``xl sysrq``. State comes from ``xl list -v`` (flags and libxl's shutdown
reason code) and ``xl list -l`` (vcpus, memory, type), uptime from ``/vm/UUID/start_time``.

``@introduceDomain``/``@releaseDomain`` watches (``xen_store``) make the backend rescan; the
``xen_events`` tracker turns scans into lifecycle events, emitted on the asyncio loop. Consoles
are the ptys xenconsoled publishes (``xen_console``). xl's own messages go to the helper's log;
tenants get a short one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from vpsshell.backends.base import (
    ACTIVE_STATES,
    Backend,
    ConsoleStream,
    DomainInfo,
    DomainState,
    LifecycleEvent,
)
from vpsshell.backends.xen_config import XenConfig, parse_xen_config
from vpsshell.backends.xen_console import (
    XenConsoleStream,
    open_pty,
    release_console_lock,
    take_console_lock,
)
from vpsshell.backends.xen_events import (
    Change,
    EventTracker,
    current_rows,
    migrating_uuids,
    migration_base_name,
)
from vpsshell.backends.xen_store import XenStore, XenStoreUnavailable
from vpsshell.backends.xen_xl import (
    DomainConfigFile,
    DomainFacts,
    ResolvedDomain,
    VerboseRow,
    XlCommands,
    XlError,
    XlParseError,
    XlResult,
    config_file_uuid,
    domain_state,
    parse_dry_run,
    parse_list_long,
    parse_list_verbose,
    run_xl,
    usable_name,
)
from vpsshell.checks import helper_trusted_uids, is_sysrq_key, is_uuid, trusted_file_problem
from vpsshell.errors import ActionFailed, TemporaryFailure, VpsError, not_found_or_denied

logger = logging.getLogger("vpsshell.xen")

# A config file without a uuid gets uuid5(this, NAME): stable across restarts and helpers.
XEN_UUID_NAMESPACE = uuidlib.UUID("0e7d0a3c-5b1f-5c55-9a43-78656e766d73")

INFO_MAX_AGE = 2.0  # status/list: reuse a scan this young unless a watch said "changed"
CONSOLE_MAX_AGE = 10.0  # the console hub's reopen attempts, every 2 s per domain
UNWATCHED_MAX_AGE = 1.0  # without live watches nothing says "changed": rescan sooner
PERIODIC_SCAN_SECONDS = 60.0  # safety net for anything a watch did not report
CONSOLE_TTY_WAIT_SECONDS = 10.0  # xenconsoled publishes the pty shortly after the domain
POWEROFF_SETTLE_SECONDS = 5.0  # xl destroy returns; the domain may be listed dying a moment
CONFIG_FILE_MAX_BYTES = 1 << 20
LIST_TRIES = 3  # xl list -v that fails fast is tried again (see _list_verbose)
LIST_RETRY_SECONDS = 0.3
LONG_LIST_TRIES = 3  # a domain missing from xl list -l (shutting down) is not asked for forever


@dataclass(frozen=True)
class _ConfigEntry:
    """One usable ``NAME.cfg``."""

    file: DomainConfigFile
    uuid: str
    uuid_in_file: bool
    facts: DomainFacts
    key: tuple[int, ...]  # (dev, ino, mtime_ns, size): the file is read again when it changes

    @property
    def name(self) -> str:
        return self.file.name


@dataclass(frozen=True)
class _Entry:
    """One domain of the namespace, as of one scan."""

    name: str
    uuid: str
    row: VerboseRow | None
    config: _ConfigEntry | None


@dataclass(frozen=True)
class _Snapshot:
    taken: float  # loop time when the scan began
    generation: int  # watch generation when the scan began
    by_uuid: dict[str, _Entry]
    by_name: dict[str, _Entry]


def derived_uuid(name: str) -> str:
    return str(uuidlib.uuid5(XEN_UUID_NAMESPACE, name))


class XenBackend(Backend):
    """Xen domains by UUID: ``xl`` for actions and state, XenStore for watches and consoles."""

    kind = "xen"

    def __init__(self, config: XenConfig, state_dir: str) -> None:
        super().__init__()
        self.config = config
        self.state_dir = state_dir  # unused: Xen itself keeps every state this backend needs
        self.xl = XlCommands(config.xl)
        self.tracker = EventTracker()
        self.store = XenStore(config.xenstore_socket, self._on_watch)
        self._snap: _Snapshot | None = None
        self._generation = 0
        self._scan_lock = asyncio.Lock()
        self._configs: dict[str, _ConfigEntry] = {}
        self._bad_configs: dict[str, tuple[int, ...]] = {}  # name -> key of a refused file
        self._long: dict[int, DomainFacts] = {}  # domid -> facts from xl list -l
        self._long_tries: dict[int, int] = {}
        self._start_times: dict[int, float] = {}  # domid -> /vm/UUID/start_time
        self._streams: dict[XenConsoleStream, str] = {}  # open console -> uuid
        self._pump: asyncio.Task[None] | None = None
        self._long_task: asyncio.Task[None] | None = None
        self._pump_again = False
        self._ticker: asyncio.Task[None] | None = None
        self._deadline_call: asyncio.TimerHandle | None = None
        self._reported: set[str] = set()

    @classmethod
    def from_config(cls, table: dict[str, Any], state_dir: str) -> XenBackend:
        """Build from the daemon config's ``[backend]`` table; runs nothing."""
        return cls(parse_xen_config(table), state_dir)

    # -- Backend interface ------------------------------------------------------------------

    async def open(self) -> None:
        self.store.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        try:
            await self._snapshot(0)  # the baseline: events are changes from here on
        except VpsError as exc:
            logger.warning("first scan of Xen domains failed (retrying in the background): %s", exc)

    async def close(self) -> None:
        for task in (self._ticker, self._pump, self._long_task):
            if task is not None:
                task.cancel()
        if self._deadline_call is not None:
            self._deadline_call.cancel()
        for stream in list(self._streams):
            await stream.close()
        self._streams.clear()
        await self.store.close()

    async def list_domains(self) -> list[DomainInfo]:
        snap = await self._snapshot(INFO_MAX_AGE)
        return [self._info(snap.by_name[name]) for name in sorted(snap.by_name)]

    async def lookup(self, name: str) -> DomainInfo | None:
        if not usable_name(name):
            return None  # never a numeric id, never Domain-0, never a name the helper refuses
        entry = (await self._snapshot(INFO_MAX_AGE)).by_name.get(name)
        return self._info(entry) if entry is not None else None

    async def info(self, uuid: str) -> DomainInfo:
        if not is_uuid(uuid):
            raise not_found_or_denied(uuid)
        entry = (await self._snapshot(INFO_MAX_AGE)).by_uuid.get(uuid)
        if entry is None:
            raise not_found_or_denied(uuid)
        return self._info(entry)

    async def start(self, uuid: str) -> None:
        entry = await self._target(uuid)
        state = self._state(entry)
        if state in (DomainState.RUNNING, DomainState.STARTING):
            raise ActionFailed(f"{entry.name} is already {state.value}")
        if state is not DomainState.SHUTOFF:
            raise ActionFailed(f"{entry.name} is not shut off ({state.value})")
        config = entry.config
        if config is None:  # only running domains have no file; this one is not running
            raise not_found_or_denied(entry.name)
        self.tracker.intend(uuid, "start", time.monotonic())
        try:
            await self._create(config.file, config.uuid, entry.name, "start")
        except VpsError:
            self.tracker.forget_intent(uuid)
            raise
        finally:
            self._changed()

    async def shutdown(self, uuid: str) -> None:
        entry = await self._target(uuid)
        domain = await self._running(entry)
        self.tracker.intend(uuid, "shutdown", time.monotonic())
        await self._act(self.xl.shutdown(domain), entry, "shutdown")

    async def reboot(self, uuid: str) -> None:
        entry = await self._target(uuid)
        domain = await self._running(entry)
        self.tracker.intend(uuid, "reboot", time.monotonic())
        await self._act(self.xl.reboot(domain), entry, "reboot")

    async def poweroff(self, uuid: str) -> None:
        entry = await self._target(uuid)
        if entry.row is None:
            if uuid in self.tracker.restarting:
                raise TemporaryFailure(f"{entry.name} is restarting; try again in a moment")
            raise ActionFailed(f"{entry.name} is already shut off")
        domain = await self._resolve(entry)
        self.tracker.intend(uuid, "poweroff", time.monotonic())
        await self._act(self.xl.destroy(domain), entry, "poweroff")
        await self._settle(uuid, domain.domid)

    async def reset(self, uuid: str) -> None:
        entry = await self._target(uuid)
        if entry.row is None:
            if uuid in self.tracker.restarting:
                raise TemporaryFailure(f"{entry.name} is restarting; try again in a moment")
            raise ActionFailed(f"{entry.name} is not running ({self._state(entry).value})")
        domain = await self._resolve(entry)
        facts = self._long.get(domain.domid) or (entry.config.facts if entry.config else None)
        if facts is not None and facts.type == "hvm":
            await self._trigger_reset(entry, domain)
            return
        config = self._configs.get(entry.name)
        if config is None:
            raise ActionFailed(
                f"{entry.name}: a reset starts it again from {self.config.domain_config_dir}/"
                f"{entry.name}.cfg, which does not exist"
            )
        # Xen cannot reset a PV guest: power-cycle it, keeping its UUID (and so its console).
        self.tracker.expect_restart(uuid, "reset", time.monotonic())
        try:
            await self._run(self.xl.destroy(domain), entry.name, "reset")
            await self._create(config.file, uuid, entry.name, "reset")
        except VpsError:
            change = self.tracker.cancel_restart(uuid, "destroyed")
            if change is not None:
                self._emit_change(change)
            raise
        finally:
            self._changed()

    async def sysrq(self, uuid: str, key: str) -> None:
        if not is_sysrq_key(key):
            raise ActionFailed(f"{key!r} is not a SysRq key (one of 0-9 or a-z)")
        entry = await self._target(uuid)
        domain = await self._running(entry)
        self.tracker.intend(uuid, "sysrq", time.monotonic())
        await self._act(self.xl.sysrq(domain, key), entry, "sysrq")

    async def open_console(self, uuid: str) -> ConsoleStream:
        if not is_uuid(uuid):
            raise not_found_or_denied(uuid)
        entry = (await self._snapshot(CONSOLE_MAX_AGE)).by_uuid.get(uuid)
        if entry is None:
            raise not_found_or_denied(uuid)
        state = self._state(entry)
        if entry.row is None or state is DomainState.CRASHED:
            raise ActionFailed(f"{entry.name} is not running ({state.value})")
        domain = await self._resolve(entry)
        tty = await self._console_tty(domain)
        lock_fd = take_console_lock(domain.domid, entry.name)
        try:
            fd = open_pty(tty, entry.name)
        except BaseException:
            release_console_lock(domain.domid, lock_fd)
            raise
        stream = XenConsoleStream(fd, lock_fd, domain.domid, entry.name)
        self._streams = {s: u for s, u in self._streams.items() if not s.closed}
        self._streams[stream] = uuid
        logger.info("console of %s opened (domain %d, %s)", entry.name, domain.domid, tty)
        return stream

    # -- acting -----------------------------------------------------------------------------

    async def _target(self, uuid: str) -> _Entry:
        """The domain with this UUID, from a scan begun after the request."""
        if not is_uuid(uuid):
            raise not_found_or_denied(uuid)
        entry = (await self._snapshot(0)).by_uuid.get(uuid)
        if entry is None:
            raise not_found_or_denied(uuid)
        return entry

    async def _running(self, entry: _Entry) -> ResolvedDomain:
        """The domain's current id, for actions that need the guest up. Judged on Xen's own
        state: a shutdown that was asked for but ignored does not block a reboot."""
        state = domain_state(entry.row) if entry.row is not None else self._state(entry)
        if state is not DomainState.RUNNING:
            raise ActionFailed(f"{entry.name} is not running ({state.value})")
        return await self._resolve(entry)

    async def _resolve(self, entry: _Entry) -> ResolvedDomain:
        """The numeric id of the domain with this UUID, checked in XenStore just before use."""
        row = entry.row
        if row is None:
            raise ActionFailed(f"{entry.name} is not running ({self._state(entry).value})")
        try:
            vm = await self.store.read(f"/local/domain/{row.domid}/vm")
        except XenStoreUnavailable as exc:
            logger.warning("XenStore: %s", exc)
            raise TemporaryFailure("XenStore is not answering; try again later") from None
        if vm is None or vm.rsplit("/", 1)[-1] != entry.uuid:
            self._changed()
            raise TemporaryFailure(f"{entry.name} is changing (restarting?); try again shortly")
        return ResolvedDomain(row.domid, entry.uuid, entry.name)

    async def _act(self, argv: list[str], entry: _Entry, verb: str) -> None:
        try:
            await self._run(argv, entry.name, verb)
        except VpsError:
            self.tracker.forget_intent(entry.uuid)
            raise
        finally:
            self._changed()

    async def _run(self, argv: list[str], name: str, verb: str) -> str:
        try:
            result = await run_xl(argv, self.config.timeout_seconds)
        except XlError as exc:
            if exc.timed_out:
                logger.warning("xl %s of %s: %s", verb, name, exc)
                raise TemporaryFailure(
                    f"{name}: {verb} timed out (xl did not answer within "
                    f"{self.config.timeout_seconds:g} s)"
                ) from None
            logger.warning("xl %s of %s failed: %s: %s", verb, name, exc, _tail(exc.stderr))
            raise ActionFailed(f"{name}: {verb} failed (details in the helper's log)") from None
        if result.stderr.strip():
            logger.info("xl %s of %s: %s", verb, name, _tail(result.stderr))
        return result.stderr

    async def _create(self, file: DomainConfigFile, uuid: str, name: str, verb: str) -> None:
        """xl create, tried twice. Seen under load: xl's monitor child dies while daemonizing
        (xl exits 3, the domain may be left without its monitor, which handles on_reboot and
        on_poweroff): such a domain is destroyed and the create tried once more."""
        try:
            await self._run(self.xl.create(file, uuid), name, verb)
            return
        except ActionFailed:
            entry = (await self._snapshot(0)).by_uuid.get(uuid)
            if entry is not None and entry.row is not None:
                logger.warning(
                    "xl create of %s left domain %d without its monitor: destroying it",
                    name,
                    entry.row.domid,
                )
                await self._run(self.xl.destroy(await self._resolve(entry)), name, verb)
        logger.warning("xl create of %s failed; trying once more", name)
        await self._run(self.xl.create(file, uuid), name, verb)

    async def _trigger_reset(self, entry: _Entry, domain: ResolvedDomain) -> None:
        # xl trigger exits 0 even when libxl refused; its message says so
        stderr = await self._run(self.xl.trigger_reset(domain), entry.name, "reset")
        if "fail" in stderr.lower() or "error" in stderr.lower():
            logger.warning("xl trigger reset of %s: %s", entry.name, _tail(stderr))
            raise ActionFailed(f"{entry.name}: reset failed (details in the helper's log)")
        self._emit_change(Change("rebooted", entry.uuid, entry.name, "reset"))

    async def _settle(self, uuid: str, domid: int) -> None:
        """After xl destroy: wait a moment until the domain is no longer listed (dying)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + POWEROFF_SETTLE_SECONDS
        while loop.time() < deadline:
            entry = (await self._snapshot(0)).by_uuid.get(uuid)
            if entry is None or entry.row is None or entry.row.domid != domid:
                return
            await asyncio.sleep(0.2)

    async def _console_tty(self, domain: ResolvedDomain) -> str:
        """The console pty xenconsoled published for this domain id (waits for it a little:
        it appears shortly after the domain does)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONSOLE_TTY_WAIT_SECONDS
        node = f"/local/domain/{domain.domid}/console/tty"
        try:
            while True:
                tty = await self.store.read(node)
                if tty:
                    break
                vm = await self.store.read(f"/local/domain/{domain.domid}/vm")
                if vm is None or vm.rsplit("/", 1)[-1] != domain.uuid:
                    raise TemporaryFailure(f"{domain.name} went away while its console opened")
                if loop.time() > deadline:
                    raise TemporaryFailure(f"{domain.name}: its console is not available yet")
                await asyncio.sleep(0.25)
            owner = await self.store.owner(node)
        except XenStoreUnavailable as exc:
            logger.warning("XenStore: %s", exc)
            raise TemporaryFailure("XenStore is not answering; try again later") from None
        if owner != 0:  # written by anyone but dom0 (xenconsoled): not to be believed
            self._report_once(
                f"tty-owner:{domain.domid}",
                "console of %s: %s is owned by domain %s, not dom0; not opened",
                domain.name,
                node,
                owner,
            )
            raise ActionFailed(f"{domain.name}: its console cannot be opened")
        return tty

    # -- scanning ---------------------------------------------------------------------------

    async def _snapshot(self, max_age: float) -> _Snapshot:
        """A scan no older than ``max_age`` seconds and not outdated by a watch; 0: a scan
        begun after this call."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        async with self._scan_lock:
            snap = self._snap
            if snap is not None:
                if snap.taken >= asked:
                    return snap
                limit = max_age if self.store.watching else min(max_age, UNWATCHED_MAX_AGE)
                if snap.generation == self._generation and asked - snap.taken < limit:
                    return snap
            return await self._scan()

    async def _scan(self) -> _Snapshot:
        loop = asyncio.get_running_loop()
        taken, generation = loop.time(), self._generation
        verbose = await self._list_verbose()
        parsed, bad = parse_list_verbose(verbose.stdout)
        for line in bad:
            self._report_once(f"bad:{line}", "cannot read this line of xl list -v: %r", line)
        rows = current_rows(parsed)
        await self._learn_domains(rows)
        files = await asyncio.to_thread(self._config_files)
        configs = await self._check_configs(files)
        now = time.monotonic()
        changes = self.tracker.observe(
            rows,
            now,
            {entry.uuid: entry.name for entry in configs.values()},
            migrating_uuids(parsed),
        )
        snap = self._namespace(taken, generation, rows, configs)
        self._snap = snap
        for stream, uuid in list(self._streams.items()):
            row = rows.get(uuid)
            if stream.closed:
                del self._streams[stream]
            elif row is None or row.domid != stream.domid:
                stream.end("the domain went away")
        for change in changes:
            self._emit_change(change)
        self._arm_deadline()
        return snap

    async def _list_verbose(self) -> XlResult:
        """``xl list -v``, tried again a moment later when it fails fast (in the lab, xl
        itself crashed now and then while domains came and went; see tests/xen/labkit.py):
        one failed xl run should not fail a tenant's request."""
        error = XlError("xl list -v was not run")
        for attempt in range(1, LIST_TRIES + 1):
            try:
                result = await run_xl(self.xl.list_verbose(), self.config.timeout_seconds)
            except XlError as exc:
                error = exc
                if exc.timed_out:
                    break
                logger.info("xl list -v failed (%s: %s)", exc, _tail(exc.stderr))
                if attempt < LIST_TRIES:
                    await asyncio.sleep(LIST_RETRY_SECONDS * attempt)
            else:
                self._reported.discard("list")
                return result
        self._report_once("list", "xl list -v failed: %s: %s", error, _tail(error.stderr))
        raise TemporaryFailure("the Xen toolstack (xl) is not answering; try again")

    async def _learn_domains(self, rows: dict[str, VerboseRow]) -> None:
        """Facts (``xl list -l``) and start times (XenStore) of domain ids not seen before."""
        present = {row.domid for row in rows.values()}
        for table in (self._long, self._long_tries, self._start_times):
            for domid in [d for d in table if d not in present]:
                del table[domid]
        tries = self._long_tries
        missing = [d for d in present if d not in self._long and tries.get(d, 0) < LONG_LIST_TRIES]
        if missing and (self._long_task is None or self._long_task.done()):
            for domid in missing:
                tries[domid] = tries.get(domid, 0) + 1
            # in the background: libxl makes it wait for a domain's lock while xl builds or
            # tears that domain down, and nothing else should wait with it
            self._long_task = asyncio.get_running_loop().create_task(self._learn_facts(present))
        for row in rows.values():
            if row.domid in self._start_times:
                continue
            try:
                vm = await self.store.read(f"/local/domain/{row.domid}/vm")
                if vm is None or vm.rsplit("/", 1)[-1] != row.uuid:
                    continue
                started = await self.store.read(f"{vm}/start_time")
            except XenStoreUnavailable:
                return
            try:
                self._start_times[row.domid] = float(started or "")
            except ValueError:
                continue

    async def _learn_facts(self, present: set[int]) -> None:
        try:
            result = await run_xl(self.xl.list_long(), self.config.timeout_seconds)
            facts = parse_list_long(result.stdout)
        except (XlError, XlParseError) as exc:
            logger.debug("xl list -l failed: %s %s", exc, _tail(getattr(exc, "stderr", "")))
            return
        self._long.update({domid: f for domid, f in facts.items() if domid in present})

    def _config_files(self) -> dict[str, tuple[DomainConfigFile, tuple[int, ...], str]]:
        """``DIR/NAME.cfg`` files that may be used: (file, stat key, text) by name. On a
        worker thread (directory scan and small reads)."""
        directory = self.config.domain_config_dir
        trusted_uids = helper_trusted_uids()
        try:
            dir_stat = os.stat(directory)  # named by root's config: may be reached by a link
        except OSError as exc:
            self._report_once("dir", "domain_config_dir %s: %s", directory, exc.strerror)
            return {}
        problem = trusted_file_problem(dir_stat, trusted_uids, directory=True)
        if problem:
            self._report_once(
                "dir-mode",
                "domain_config_dir %s is %s: no domain is started from it",
                directory,
                problem,
            )
            return {}
        found: dict[str, tuple[DomainConfigFile, tuple[int, ...], str]] = {}
        with os.scandir(directory) as entries:
            for item in entries:
                if not item.name.endswith(".cfg") or item.name.startswith("."):
                    continue
                name = item.name[: -len(".cfg")]
                if not usable_name(name):
                    self._report_once(
                        f"name:{name}",
                        "%s is not offered: %r is not a usable domain name (letters, digits, "
                        "_.:- ; not all digits)",
                        item.path,
                        name,
                    )
                    continue
                try:
                    st = os.lstat(item.path)  # a link could lead anywhere: never followed
                except OSError:
                    continue
                problem = trusted_file_problem(st, trusted_uids)
                if problem:
                    self._report_once(
                        f"mode:{name}", "%s is not offered: it is %s", item.path, problem
                    )
                    continue
                key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
                cached = self._configs.get(name)
                if (cached is not None and cached.key == key) or self._bad_configs.get(name) == key:
                    found[name] = (
                        cached.file if cached else DomainConfigFile(directory, name),
                        key,
                        "",
                    )
                    continue
                try:
                    with open(item.path, "rb", opener=_open_no_link) as handle:
                        text = handle.read(CONFIG_FILE_MAX_BYTES).decode("utf-8", "replace")
                except OSError:
                    continue
                found[name] = (DomainConfigFile(directory, name), key, text)
        return found

    async def _check_configs(
        self, files: dict[str, tuple[DomainConfigFile, tuple[int, ...], str]]
    ) -> dict[str, _ConfigEntry]:
        """Usable config entries: new or changed files are dry-run through xl once."""
        entries: dict[str, _ConfigEntry] = {}
        for name, (file, key, text) in sorted(files.items()):
            cached = self._configs.get(name)
            if cached is not None and cached.key == key:
                entries[name] = cached
                continue
            if self._bad_configs.get(name) == key:
                continue
            entry = await self._read_config(file, key, text)
            if entry is None:
                self._bad_configs[name] = key
            else:
                self._bad_configs.pop(name, None)
                entries[name] = entry
        owners: dict[str, list[str]] = {}
        for name, entry in entries.items():
            owners.setdefault(entry.uuid, []).append(name)
        for domain_uuid, names in owners.items():
            if len(names) > 1:
                self._report_once(
                    f"dup:{domain_uuid}:{','.join(names)}",
                    "config files %s all set uuid %s: none of them is offered until the uuids "
                    "are unique",
                    ", ".join(f"{n}.cfg" for n in names),
                    domain_uuid,
                )
                for name in names:
                    del entries[name]
        self._configs = entries
        return entries

    async def _read_config(
        self, file: DomainConfigFile, key: tuple[int, ...], text: str
    ) -> _ConfigEntry | None:
        try:
            in_file = config_file_uuid(text)
        except ValueError as exc:
            logger.error("%s is not offered: %s", file.path, exc)
            return None
        try:
            facts = parse_dry_run((await run_xl(self.xl.dry_run(file), 30.0)).stdout)
        except (XlError, XlParseError) as exc:
            stderr = exc.stderr if isinstance(exc, XlError) else ""
            logger.error(
                "%s is not offered: xl cannot read it: %s %s", file.path, exc, _tail(stderr)
            )
            return None
        if facts.name != file.name:
            logger.error(
                "%s is not offered: it names the domain %r; the file must be NAME.cfg",
                file.path,
                facts.name,
            )
            return None
        return _ConfigEntry(
            file=file,
            uuid=in_file or derived_uuid(file.name),
            uuid_in_file=in_file is not None,
            facts=facts,
            key=key,
        )

    def _namespace(
        self,
        taken: float,
        generation: int,
        rows: dict[str, VerboseRow],
        configs: dict[str, _ConfigEntry],
    ) -> _Snapshot:
        by_config_uuid = {entry.uuid: entry for entry in configs.values()}
        by_uuid: dict[str, _Entry] = {}
        for uuid, row in rows.items():
            own = migration_base_name(row.name)  # NAME--incoming is NAME
            name = own if usable_name(own) else self.tracker.names.get(uuid)
            if name is None or not usable_name(name):
                if row.name != "(null)":
                    self._report_once(
                        f"unusable:{row.name}",
                        "domain %r (%s) is not offered: its name is all digits or not a "
                        "usable domain name",
                        row.name,
                        uuid,
                    )
                continue
            config = by_config_uuid.get(uuid)
            by_uuid[uuid] = _Entry(
                name, uuid, row, config if config and config.name == name else None
            )
        for uuid in self.tracker.restarting:
            if uuid not in by_uuid:
                config = by_config_uuid.get(uuid)
                name = self.tracker.names.get(uuid) or (config.name if config else None)
                if name is not None:
                    by_uuid[uuid] = _Entry(name, uuid, None, config)
        by_name: dict[str, _Entry] = {entry.name: entry for entry in by_uuid.values()}
        for config in configs.values():
            if config.uuid in by_uuid:
                continue
            taken_by = by_name.get(config.name)
            if taken_by is not None:
                self._report_once(
                    f"shadow:{config.name}:{taken_by.uuid}",
                    "%s runs with uuid %s, not the uuid %s that %s gives it (it was started "
                    "by other means): it is tracked by %s until it stops; setting "
                    'uuid = "%s" in the file avoids this',
                    config.name,
                    taken_by.uuid,
                    config.uuid,
                    config.file.path,
                    taken_by.uuid,
                    config.uuid,
                    level=logging.WARNING,
                )
                continue
            entry = _Entry(config.name, config.uuid, None, config)
            by_uuid[config.uuid] = by_name[config.name] = entry
        return _Snapshot(taken, generation, by_uuid, by_name)

    # -- what tenants see -------------------------------------------------------------------

    def _state(self, entry: _Entry) -> DomainState:
        state = self.tracker.state(entry.uuid, entry.row, time.monotonic())
        return DomainState.SHUTOFF if state is None else state

    def _info(self, entry: _Entry) -> DomainInfo:
        state = self._state(entry)
        row = entry.row
        facts = self._long.get(row.domid) if row is not None else None
        if facts is None and entry.config is not None:
            facts = entry.config.facts
        if facts is not None:
            vcpus, memory = facts.vcpus, facts.memory_mib
        elif row is not None:
            vcpus, memory = row.vcpus, row.mem_mib
        else:
            vcpus, memory = 0, 0
        uptime: int | None = None
        if row is not None and state in ACTIVE_STATES:
            started = self._start_times.get(row.domid)
            if started is not None:
                uptime = int(max(0.0, time.time() - started))
        return DomainInfo(
            name=entry.name,
            uuid=entry.uuid,
            state=state,
            vcpus=vcpus,
            memory_mib=memory,
            uptime_seconds=uptime,
            host=self.config.host,
        )

    # -- events -----------------------------------------------------------------------------

    def emit(self, event: LifecycleEvent) -> None:
        """Log the event with its host, then deliver it like every backend does."""
        logger.info(
            "event: %s/%s %s%s",
            self.config.host,
            event.name,
            event.kind,
            f" ({event.detail})" if event.detail else "",
        )
        super().emit(event)

    def _emit_change(self, change: Change) -> None:
        self.emit(LifecycleEvent(change.kind, change.uuid, change.name, change.detail))

    def _on_watch(self, what: str) -> None:
        """A XenStore watch fired (on the loop thread): something changed, rescan."""
        logger.debug("XenStore watch: %s", what)
        self._changed()

    def _changed(self) -> None:
        self._generation += 1
        if self._pump is not None and not self._pump.done():
            self._pump_again = True
            return
        self._pump = asyncio.get_running_loop().create_task(self._pump_scans())

    async def _pump_scans(self) -> None:
        while True:
            self._pump_again = False
            try:
                await self._snapshot(0)
            except VpsError as exc:
                logger.debug("background scan failed: %s", exc.message)
            except Exception:
                logger.exception("background scan of Xen domains failed")
            if not self._pump_again:
                return

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(PERIODIC_SCAN_SECONDS)
            self._changed()

    def _arm_deadline(self) -> None:
        deadline = self.tracker.next_deadline()
        if self._deadline_call is not None:
            self._deadline_call.cancel()
            self._deadline_call = None
        if deadline is not None:
            delay = max(0.0, deadline - time.monotonic()) + 0.1
            self._deadline_call = asyncio.get_running_loop().call_later(delay, self._changed)

    def _report_once(self, key: str, message: str, *args: Any, level: int = logging.ERROR) -> None:
        if key not in self._reported:
            self._reported.add(key)
            logger.log(level, message, *args)


def _open_no_link(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[:500]
