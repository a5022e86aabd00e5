"""The backend contract: the same tests for every backend, parametrized by backend.

The helper relies on these behaviours whatever the hypervisor: domains listed with their
facts and host label, exact name lookup that never matches a numeric id, the same wrong-state
messages, power actions that end in the expected state, lifecycle events delivered on the
asyncio loop thread. ``sim`` runs with tiny boot times; ``libvirt`` runs on two libvirt
test-driver hosts (``tests/fixtures/libvirt/node1.xml``, ``node2.xml``), which are in-process
and fast. Consoles of libvirt are covered by tests/e2e/test_qemu_guest.py (the test driver has
none).
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vpsshell.backends import create_backend
from vpsshell.backends.base import Backend, DomainState, LifecycleEvent
from vpsshell.errors import ActionFailed, Denied

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "libvirt"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

# name -> (vcpus, memory_mib, host label); the same three domains on every backend
DOMAINS = {"web1": (1, 512, "node1"), "web2": (2, 1024, "node1"), "db1": (2, 2048, "node2")}


def sim_table() -> dict[str, Any]:
    # the sim backend has one host label; db1's label differs only on multi-host backends
    return {
        "type": "sim",
        "host": "node1",
        "domains": [
            {
                "name": name,
                "vcpus": vcpus,
                "memory_mib": memory,
                "boot_seconds": 0.05,
                "shutdown_seconds": 0.05,
            }
            for name, (vcpus, memory, _host) in DOMAINS.items()
        ],
    }


def libvirt_table() -> dict[str, Any]:
    return {
        "type": "libvirt",
        "timeout_seconds": 5,
        "hosts": [
            {"name": "node1", "uri": f"test://{FIXTURES / 'node1.xml'}"},
            {"name": "node2", "uri": f"test://{FIXTURES / 'node2.xml'}"},
        ],
    }


@dataclass
class Subject:
    """An opened backend, what it emitted, and what the contract expects of it."""

    backend: Backend
    kind: str
    events: list[LifecycleEvent] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)

    def expected_host(self, name: str) -> str:
        return "node1" if self.kind == "sim" else DOMAINS[name][2]

    async def uuid(self, name: str) -> str:
        info = await self.backend.lookup(name)
        assert info is not None, name
        return info.uuid

    async def state(self, name: str) -> DomainState:
        return (await self.backend.info(await self.uuid(name))).state

    async def wait_state(self, name: str, state: DomainState, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (current := await self.state(name)) is not state:
            if loop.time() > deadline:
                raise AssertionError(f"{name} is {current.value}, never became {state.value}")
            await asyncio.sleep(0.01)

    async def wait_event(self, kind: str, name: str, detail: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not any(
            e.kind == kind and e.name == name and (detail is None or e.detail == detail)
            for e in self.events
        ):
            if loop.time() > deadline:
                raise AssertionError(f"no {kind}/{detail} event for {name}: {self.events}")
            await asyncio.sleep(0.01)

    async def running(self, name: str) -> str:
        uuid = await self.uuid(name)
        await self.backend.start(uuid)
        await self.wait_state(name, DomainState.RUNNING)
        return uuid


Scenario = Callable[[Subject], Coroutine[Any, Any, None]]


@pytest.fixture(params=["sim", "libvirt"])
def contract(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Scenario], None]:
    """Runs a scenario against a freshly opened backend of the parametrized kind."""
    kind = request.param
    if kind == "libvirt":
        pytest.importorskip("libvirt", reason="libvirt-python is not installed (vpsshell[libvirt])")
    table = sim_table() if kind == "sim" else libvirt_table()

    def run(scenario: Scenario) -> None:
        async def main() -> None:
            subject = Subject(create_backend(table, str(tmp_path / "state")), kind)

            def sink(event: LifecycleEvent) -> None:
                subject.events.append(event)
                subject.threads.add(threading.current_thread().name)

            subject.backend.subscribe(sink)
            await subject.backend.open()
            try:
                await scenario(subject)
            finally:
                await subject.backend.close()

        asyncio.run(asyncio.wait_for(main(), timeout=30))

    return run


def test_lists_every_domain_with_its_facts(contract: Callable[[Scenario], None]) -> None:
    async def scenario(s: Subject) -> None:
        listed = await s.backend.list_domains()
        assert sorted(d.name for d in listed) == sorted(DOMAINS)
        for info in listed:
            vcpus, memory, _ = DOMAINS[info.name]
            assert (info.vcpus, info.memory_mib) == (vcpus, memory)
            assert (info.state, info.uptime_seconds) == (DomainState.SHUTOFF, None)
            assert info.host == s.expected_host(info.name)
            assert UUID_RE.match(info.uuid)
            assert set(info.to_json()) == {
                "name",
                "uuid",
                "state",
                "vcpus",
                "memory_mib",
                "uptime_seconds",
                "host",
            }
        assert len({d.uuid for d in listed}) == len(listed)
        assert await s.backend.list_domains() == listed  # a stable order

    contract(scenario)


def test_lookup_is_exact_and_never_matches_a_numeric_id(
    contract: Callable[[Scenario], None],
) -> None:
    async def scenario(s: Subject) -> None:
        listed = {d.name: d for d in await s.backend.list_domains()}
        for name in DOMAINS:
            assert await s.backend.lookup(name) == listed[name]
        await s.running("web1")  # now it has a numeric id (1) on libvirt
        for miss in ("0", "1", "2", "-1", "WEB1", "web", "web1 ", "", "nosuch"):
            assert await s.backend.lookup(miss) is None, miss

    contract(scenario)


def test_start_runs_the_domain_and_emits_started_on_the_loop_thread(
    contract: Callable[[Scenario], None],
) -> None:
    async def scenario(s: Subject) -> None:
        uuid = await s.running("web1")
        await s.wait_event("started", "web1")
        [event] = [e for e in s.events if e.kind == "started"]
        assert (event.uuid, event.name) == (uuid, "web1")
        info = await s.backend.info(uuid)
        assert isinstance(info.uptime_seconds, int) and 0 <= info.uptime_seconds < 5
        assert info.host == s.expected_host("web1")
        assert s.threads == {threading.current_thread().name}
        assert await s.state("web2") is DomainState.SHUTOFF

    contract(scenario)


def test_actions_in_the_wrong_state_fail_with_the_same_messages(
    contract: Callable[[Scenario], None],
) -> None:
    async def scenario(s: Subject) -> None:
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
            with pytest.raises(ActionFailed, match=f"^{re.escape(message)}$"):
                await action()
        await s.running("web1")
        with pytest.raises(ActionFailed, match="^web1 is already running$"):
            await b.start(uuid)
        for key in ("", "mm", "M", "!", "é"):
            with pytest.raises(ActionFailed, match="not a SysRq key"):
                await b.sysrq(uuid, key)
        assert await s.state("web1") is DomainState.RUNNING

    contract(scenario)


def test_shutdown_ends_shut_off_with_a_stopped_event(
    contract: Callable[[Scenario], None],
) -> None:
    async def scenario(s: Subject) -> None:
        uuid = await s.running("web1")
        await s.backend.shutdown(uuid)
        await s.wait_state("web1", DomainState.SHUTOFF)
        await s.wait_event("stopped", "web1", "shutdown")
        assert (await s.backend.info(uuid)).uptime_seconds is None

    contract(scenario)


def test_poweroff_is_immediate_with_a_destroyed_event(
    contract: Callable[[Scenario], None],
) -> None:
    async def scenario(s: Subject) -> None:
        uuid = await s.running("web1")
        await s.backend.poweroff(uuid)
        assert await s.state("web1") is DomainState.SHUTOFF
        await s.wait_event("stopped", "web1", "destroyed")

    contract(scenario)


def test_reboot_reset_and_sysrq_leave_it_running(contract: Callable[[Scenario], None]) -> None:
    async def scenario(s: Subject) -> None:
        uuid = await s.running("web1")
        await s.backend.reboot(uuid)
        await s.wait_state("web1", DomainState.RUNNING)
        await s.backend.reset(uuid)
        await s.wait_state("web1", DomainState.RUNNING)
        await s.backend.sysrq(uuid, "m")
        assert await s.state("web1") is DomainState.RUNNING
        assert not [e for e in s.events if e.kind in ("stopped", "crashed")]

    contract(scenario)


def test_domains_on_other_hosts_are_independent(contract: Callable[[Scenario], None]) -> None:
    async def scenario(s: Subject) -> None:
        await s.running("web1")
        db1 = await s.running("db1")
        await s.backend.poweroff(db1)
        assert await s.state("db1") is DomainState.SHUTOFF
        assert await s.state("web1") is DomainState.RUNNING
        assert {(e.kind, e.name) for e in s.events} >= {
            ("started", "web1"),
            ("started", "db1"),
        }

    contract(scenario)


def test_unknown_uuids_are_denied_like_unknown_names(
    contract: Callable[[Scenario], None],
) -> None:
    async def scenario(s: Subject) -> None:
        stranger = str(uuidlib.uuid4())
        for action in (s.backend.info, s.backend.start, s.backend.poweroff):
            for uuid in (stranger, "not-a-uuid", "1"):
                with pytest.raises(Denied, match="no such domain or permission denied"):
                    await action(uuid)

    contract(scenario)


def test_console_of_a_running_domain_carries_bytes_both_ways(
    contract: Callable[[Scenario], None],
) -> None:
    async def scenario(s: Subject) -> None:
        if s.kind == "libvirt":
            pytest.skip("the libvirt test driver has no consoles: tests/e2e/test_qemu_guest.py")
        uuid = await s.uuid("web1")
        stream = await s.backend.open_console(uuid)
        await s.backend.start(uuid)
        seen = b""
        while b"login: " not in seen:
            seen += await asyncio.wait_for(stream.read(), 5)
        await stream.write(b"root\r")
        while b"Password: " not in seen:
            seen += await asyncio.wait_for(stream.read(), 5)
        await stream.close()
        assert await stream.read() == b""

    contract(scenario)
