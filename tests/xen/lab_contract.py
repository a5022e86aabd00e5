"""The backend contract (tests/unit/test_backend_contract.py), run inside the lab's dom0.

The shared contract suite cannot run against Xen as it is: it expects three domains of 512 to
2048 MiB (the lab has about 1 GiB for guests) and gives a domain 5 s to start (``xl create``
takes about 7 s under TCG). This script checks the same behaviours with the lab's sizes and
times, each check on a freshly opened ``XenBackend`` like the contract's fixture, and prints
one JSON line per check: ``{"check": NAME, "ok": bool, "error": TEXT, "seconds": S}``. The
host-side test (test_lab_1_backend.py) copies it into dom0, runs it with the dom0 venv's
Python, and turns each line into a test result.

Usage: python lab_contract.py CONFIG_DIR [CHECK...]
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
import time
import traceback
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from vpsshell.backends import create_backend
from vpsshell.backends.base import Backend, DomainState, LifecycleEvent
from vpsshell.backends.xen import derived_uuid
from vpsshell.errors import ActionFailed, Denied

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
DB1_UUID = "d0d0d0d0-1111-4222-8333-444455556666"  # set in db1.cfg; web1.cfg sets none
BOOT_SECONDS = 60.0
CHECK_SECONDS = 240.0


@dataclass
class Subject:
    backend: Backend
    events: list[LifecycleEvent] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)

    async def uuid(self, name: str) -> str:
        info = await self.backend.lookup(name)
        assert info is not None, name
        return info.uuid

    async def state(self, name: str) -> DomainState:
        return (await self.backend.info(await self.uuid(name))).state

    async def wait_state(self, name: str, state: DomainState, timeout: float = BOOT_SECONDS):
        deadline = time.monotonic() + timeout
        while (current := await self.state(name)) is not state:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} is {current.value}, never became {state.value}")
            await asyncio.sleep(0.2)

    async def wait_event(self, kind: str, name: str, detail: str | None = None) -> None:
        deadline = time.monotonic() + BOOT_SECONDS
        while not self.has_event(kind, name, detail):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind}/{detail} event for {name}: {self.events}")
            await asyncio.sleep(0.1)

    def has_event(self, kind: str, name: str, detail: str | None = None) -> bool:
        return any(
            e.kind == kind and e.name == name and (detail is None or e.detail == detail)
            for e in self.events
        )

    async def running(self, name: str) -> str:
        uuid = await self.uuid(name)
        if await self.state(name) is not DomainState.RUNNING:
            await self.backend.start(uuid)
        await self.wait_state(name, DomainState.RUNNING)
        return uuid

    async def ensure_off(self, *names: str) -> None:
        for name in names:
            state = await self.state(name)
            if state is not DomainState.SHUTOFF:
                await self.backend.poweroff(await self.uuid(name))
            await self.wait_state(name, DomainState.SHUTOFF)


Scenario = Callable[[Subject], Coroutine[Any, Any, None]]
CHECKS: dict[str, Scenario] = {}


def check(function: Scenario) -> Scenario:
    CHECKS[function.__name__] = function
    return function


@check
async def lists_every_domain_with_its_facts(s: Subject) -> None:
    listed = await s.backend.list_domains()
    assert sorted(d.name for d in listed) == ["db1", "web1"], listed  # not 1234, not loose
    for info in listed:
        assert (info.vcpus, info.memory_mib) == (1, 128), info
        assert (info.state, info.uptime_seconds) == (DomainState.SHUTOFF, None), info
        assert info.host == "xenlab", info
        assert UUID_RE.match(info.uuid), info
    by_name = {d.name: d for d in listed}
    assert by_name["web1"].uuid == derived_uuid("web1")  # the file sets no uuid
    assert by_name["db1"].uuid == DB1_UUID  # the file's own
    assert await s.backend.list_domains() == listed  # a stable order


@check
async def lookup_is_exact_and_never_matches_a_numeric_id(s: Subject) -> None:
    listed = {d.name: d for d in await s.backend.list_domains()}
    for name in ("web1", "db1"):
        assert await s.backend.lookup(name) == listed[name]
    await s.running("web1")
    domid = s.backend._snap.by_name["web1"].row.domid  # type: ignore[attr-defined]
    for miss in ("0", str(domid), "-1", "Domain-0", "WEB1", "web", "web1 ", "", "nosuch"):
        assert await s.backend.lookup(miss) is None, miss
    assert await s.backend.lookup(listed["web1"].uuid) is None  # names only


@check
async def start_runs_the_domain_and_emits_started_on_the_loop_thread(s: Subject) -> None:
    uuid = await s.running("web1")
    await s.wait_event("started", "web1")
    [event] = [e for e in s.events if e.kind == "started"]
    assert (event.uuid, event.name) == (uuid, "web1")
    info = await s.backend.info(uuid)
    assert isinstance(info.uptime_seconds, int) and 0 <= info.uptime_seconds < 60, info
    assert info.host == "xenlab"
    assert s.threads == {threading.current_thread().name}, s.threads
    assert await s.state("db1") is DomainState.SHUTOFF


@check
async def actions_in_the_wrong_state_fail_with_the_same_messages(s: Subject) -> None:
    uuid = await s.uuid("web1")
    b = s.backend
    cases: list[tuple[Callable[[], Awaitable[None]], str]] = [
        (lambda: b.shutdown(uuid), "web1 is not running (shutoff)"),
        (lambda: b.reboot(uuid), "web1 is not running (shutoff)"),
        (lambda: b.reset(uuid), "web1 is not running (shutoff)"),
        (lambda: b.sysrq(uuid, "m"), "web1 is not running (shutoff)"),
        (lambda: b.poweroff(uuid), "web1 is already shut off"),
    ]
    for action, message in cases:
        await expect_failure(action, f"^{re.escape(message)}$")
    await s.running("web1")
    await expect_failure(lambda: b.start(uuid), "^web1 is already running$")
    for key in ("", "mm", "M", "!", "é"):
        await expect_failure(lambda k=key: b.sysrq(uuid, k), "not a SysRq key")  # type: ignore[misc]
    assert await s.state("web1") is DomainState.RUNNING


@check
async def shutdown_ends_shut_off_with_a_stopped_event(s: Subject) -> None:
    uuid = await s.running("web1")
    await asyncio.sleep(15)  # let the guest boot far enough to act on the request
    await s.backend.shutdown(uuid)
    await s.wait_state("web1", DomainState.SHUTOFF)
    await s.wait_event("stopped", "web1", "shutdown")
    assert (await s.backend.info(uuid)).uptime_seconds is None


@check
async def poweroff_is_immediate_with_a_destroyed_event(s: Subject) -> None:
    uuid = await s.running("web1")
    await s.backend.poweroff(uuid)
    assert await s.state("web1") is DomainState.SHUTOFF
    await s.wait_event("stopped", "web1", "destroyed")


@check
async def reboot_reset_and_sysrq_leave_it_running(s: Subject) -> None:
    uuid = await s.running("web1")
    domids = [domid_of(s, "web1")]
    await asyncio.sleep(15)  # the guest must be up to act on a reboot request
    await s.backend.reboot(uuid)
    await s.wait_event("rebooted", "web1", "reboot")
    await s.wait_state("web1", DomainState.RUNNING)
    domids.append(domid_of(s, "web1"))
    await s.backend.reset(uuid)
    await s.wait_event("rebooted", "web1", "reset")
    await s.wait_state("web1", DomainState.RUNNING)
    domids.append(domid_of(s, "web1"))
    await s.backend.sysrq(uuid, "m")
    assert await s.state("web1") is DomainState.RUNNING
    assert len(set(domids)) == 3, domids  # a new domain each time, one UUID throughout
    assert await s.uuid("web1") == uuid
    assert not [e for e in s.events if e.kind in ("stopped", "crashed")], s.events


@check
async def domains_are_independent(s: Subject) -> None:
    await s.running("web1")
    db1 = await s.running("db1")
    assert db1 == DB1_UUID
    await s.backend.poweroff(db1)
    assert await s.state("db1") is DomainState.SHUTOFF
    assert await s.state("web1") is DomainState.RUNNING
    assert {(e.kind, e.name) for e in s.events} >= {("started", "web1"), ("started", "db1")}


@check
async def unknown_uuids_are_denied_like_unknown_names(s: Subject) -> None:
    stranger = str(uuidlib.uuid4())
    for action in (s.backend.info, s.backend.start, s.backend.poweroff):
        for uuid in (stranger, "not-a-uuid", "1", "00000000-0000-0000-0000-000000000000"):
            await expect_failure(lambda a=action, u=uuid: a(u), "no such domain", Denied)  # type: ignore[misc]


@check
async def console_carries_bytes_both_ways_and_ends_with_the_domain(s: Subject) -> None:
    uuid = await s.running("web1")
    stream = await s.backend.open_console(uuid)
    seen = b""
    deadline = time.monotonic() + BOOT_SECONDS
    while b"XENLAB-DOMU-READY" not in seen:
        assert time.monotonic() < deadline, seen[-500:]
        seen += await asyncio.wait_for(stream.read(), BOOT_SECONDS)
    await stream.write(b"\recho MARK-$((6*7))\r")
    while b"MARK-42" not in seen:
        assert time.monotonic() < deadline, seen[-500:]
        seen += await asyncio.wait_for(stream.read(), BOOT_SECONDS)
    await s.backend.poweroff(uuid)
    while await asyncio.wait_for(stream.read(), 10):
        pass  # the pty closes with the domain: the stream ends
    await stream.close()


async def expect_failure(
    action: Callable[[], Awaitable[None]], pattern: str, kind: type[Exception] = ActionFailed
) -> None:
    try:
        await action()
    except kind as exc:
        assert re.search(pattern, str(exc)), f"{exc!r} does not match {pattern!r}"
        return
    raise AssertionError(f"no {kind.__name__} matching {pattern!r}")


def domid_of(s: Subject, name: str) -> int:
    return int(s.backend._snap.by_name[name].row.domid)  # type: ignore[attr-defined]


async def run_check(name: str, config_dir: str) -> None:
    table = {"type": "xen", "domain_config_dir": config_dir, "host": "xenlab"}
    subject = Subject(create_backend(table, "/tmp/vpsshell-lab-state"))

    def sink(event: LifecycleEvent) -> None:
        subject.events.append(event)
        subject.threads.add(threading.current_thread().name)

    subject.backend.subscribe(sink)
    await subject.backend.open()
    try:
        await subject.ensure_off("web1", "db1")
        subject.events.clear()
        await asyncio.wait_for(CHECKS[name](subject), CHECK_SECONDS)
    finally:
        try:
            await subject.ensure_off("web1", "db1")
        finally:
            await subject.backend.close()


class RecentLog(logging.Handler):
    """The backend's log lines of the current check: a failure shows them with its traceback
    (what xl said is logged, not raised)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines = [*self.lines[-29:], f"{record.levelname} {record.getMessage()}"]


def main(argv: list[str]) -> int:
    config_dir, names = argv[0], argv[1:] or list(CHECKS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    recent = RecentLog()
    logging.getLogger("vpsshell").addHandler(recent)
    failed = 0
    for name in names:
        began = time.monotonic()
        error = ""
        recent.lines = []
        logging.info("== %s", name)
        try:
            asyncio.run(run_check(name, config_dir))
        except BaseException:
            error = traceback.format_exc()[-3000:]
            error += "\nbackend log of this check:\n" + "\n".join(recent.lines)
            failed += 1
        result = {"check": name, "ok": not error, "error": error}
        result["seconds"] = round(time.monotonic() - began, 1)
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
