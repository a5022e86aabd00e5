"""The sim backend: state machine, events, persistence, config validation and the guest console.

Real asyncio timers with tiny boot/shutdown times; a fake wall clock only where a test needs
time to pass across a helper restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from vpsshell.backends.base import BackendConfigError, DomainState, LifecycleEvent
from vpsshell.backends.sim import SIM_UUID_NAMESPACE, SimBackend, SimConsoleStream
from vpsshell.errors import ActionFailed

BOOT = 0.1
SHUTDOWN = 0.05


def domain(name: str = "web1", **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "vcpus": 1,
        "memory_mib": 512,
        "boot_seconds": BOOT,
        "shutdown_seconds": SHUTDOWN,
    }
    entry.update(overrides)
    return entry


def table(*domains: dict[str, Any]) -> dict[str, Any]:
    return {"type": "sim", "host": "node1", "domains": list(domains or [domain()])}


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=8))


async def wait_until(
    predicate: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout: float = 2.0,
    message: str = "condition",
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.005)


class FakeClock:
    """Wall clock for persistence tests; asyncio timers still run on real time."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sim:
    """An opened backend plus the events it emitted."""

    def __init__(self, backend: SimBackend) -> None:
        self.backend = backend
        self.events: list[LifecycleEvent] = []
        backend.subscribe(self.events.append)

    @classmethod
    async def open(
        cls, state_dir: Path, config: dict[str, Any] | None = None, **kwargs: Any
    ) -> Sim:
        sim = cls(SimBackend.from_config(config or table(), str(state_dir), **kwargs))
        await sim.backend.open()
        return sim

    async def uuid(self, name: str = "web1") -> str:
        info = await self.backend.lookup(name)
        assert info is not None
        return info.uuid

    async def state(self, name: str = "web1") -> DomainState:
        return (await self.backend.info(await self.uuid(name))).state

    async def wait_state(self, state: DomainState, name: str = "web1") -> None:
        async def reached() -> bool:
            return await self.state(name) is state

        await wait_until(reached, message=f"{name} to be {state.value}")

    def kinds(self) -> list[tuple[str, str]]:
        return [(e.kind, e.detail) for e in self.events]


class Reader:
    """Collects a console stream's output in the background."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.data = b""
        self.ended = False
        self.task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        while chunk := await self.stream.read():
            self.data += chunk
        self.ended = True

    async def expect(self, needle: bytes, after: int = 0) -> int:
        """Wait until ``needle`` appears at or after offset ``after``; return the offset
        just past it."""
        await wait_until(lambda: needle in self.data[after:], message=repr(needle))
        return self.data.index(needle, after) + len(needle)

    async def type(self, text: bytes, until: bytes) -> bytes:
        """Type ``text`` and return the output it caused up to and including ``until``."""
        start = len(self.data)
        await self.stream.write(text)
        end = await self.expect(until, start)
        return self.data[start:end]


async def boot_and_login(sim: Sim, user: bytes = b"alice") -> Reader:
    uuid = await sim.uuid()
    reader = Reader(await sim.backend.open_console(uuid))
    await sim.backend.start(uuid)
    await reader.expect(b"web1 login: ")
    await reader.type(user + b"\r", b"Password: ")
    await reader.type(b"secret\r", user + b"@web1:~$ ")
    return reader


# -- configuration ------------------------------------------------------------------------


def test_config_defaults_are_stable_and_complete(tmp_path: Path) -> None:
    async def main() -> None:
        config = {"domains": [{"name": "web1", "vcpus": 2, "memory_mib": 1024, "boot_seconds": 0}]}
        first = SimBackend.from_config(config, str(tmp_path))
        second = SimBackend.from_config(config, str(tmp_path / "other"))
        [info] = await first.list_domains()
        assert info.uuid == str(uuidlib.uuid5(SIM_UUID_NAMESPACE, "web1"))
        assert [d.uuid for d in await second.list_domains()] == [info.uuid]
        assert info.host == os.uname().nodename
        assert (info.state, info.vcpus, info.memory_mib, info.uptime_seconds) == (
            DomainState.SHUTOFF,
            2,
            1024,
            None,
        )
        assert not os.path.exists(tmp_path / "sim-state.json")  # from_config touches no file

    run(main())


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"hosts": []}, "unknown key(s) hosts"),
        ({"type": "xen"}, "backend.type"),
        ({"host": "bad host"}, "backend.host"),
        ({"domains": {"name": "web1"}}, "array of tables"),
        ({"domains": [domain(colour="red")]}, "unknown key(s) colour"),
        ({"domains": [{"name": "web1"}]}, "missing vcpus, memory_mib, boot_seconds"),
        ({"domains": [domain("-web")]}, "domains[0].name"),
        ({"domains": [domain("a" * 65)]}, "at most 64"),
        ({"domains": [domain("web/1")]}, "domains[0].name"),
        ({"domains": [domain("42")]}, "numeric domain id"),
        ({"domains": [domain(vcpus=0)]}, "vcpus: must be an integer from 1 to 512"),
        ({"domains": [domain(vcpus=513)]}, "vcpus"),
        ({"domains": [domain(vcpus=True)]}, "vcpus"),
        ({"domains": [domain(memory_mib=4 * 1024 * 1024 + 1)]}, "memory_mib"),
        ({"domains": [domain(memory_mib="512")]}, "memory_mib"),
        ({"domains": [domain(boot_seconds=-1)]}, "boot_seconds: must be a number"),
        ({"domains": [domain(boot_seconds=601)]}, "boot_seconds"),
        ({"domains": [domain(boot_seconds=float("nan"))]}, "boot_seconds"),
        ({"domains": [domain(shutdown_seconds="1")]}, "shutdown_seconds"),
        ({"domains": [domain(uuid="not-a-uuid")]}, "uuid"),
        ({"domains": [domain(), domain()]}, "domains[1].name: 'web1' is already the name"),
        (
            {
                "domains": [
                    domain("a", uuid="11111111-2222-3333-4444-555555555555"),
                    domain("b", uuid="11111111-2222-3333-4444-555555555555"),
                ]
            },
            "domains[1].uuid",
        ),
        (
            {
                "domains": [
                    domain("a", uuid="11111111-2222-3333-4444-555555555555"),
                    domain("11111111-2222-3333-4444-555555555555"),
                ]
            },
            "is the UUID of backend.domains[0]",
        ),
    ],
)
def test_config_is_validated_strictly(
    tmp_path: Path, config: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(BackendConfigError) as caught:
        SimBackend.from_config(config, str(tmp_path))
    assert fragment in str(caught.value)


def test_lookup_by_exact_name_never_by_uuid_or_number(tmp_path: Path) -> None:
    async def main() -> None:
        explicit = "0e5f3a7c-1111-4222-8333-944445555666"
        config = table(domain("web1"), domain("db1", uuid=explicit.upper()))
        sim = await Sim.open(tmp_path, config)
        web1 = await sim.backend.lookup("web1")
        assert web1 is not None and web1.name == "web1"
        db1 = await sim.backend.lookup("db1")
        assert db1 is not None and (db1.name, db1.uuid) == ("db1", explicit)
        assert (await sim.backend.info(explicit)).name == "db1"
        for miss in ("0", "1", "2", "WEB1", "web", explicit, explicit.upper(), web1.uuid, ""):
            assert await sim.backend.lookup(miss) is None, miss
        assert [d.name for d in await sim.backend.list_domains()] == ["web1", "db1"]
        await sim.backend.close()

    run(main())


# -- lifecycle ----------------------------------------------------------------------------


def test_start_and_graceful_shutdown(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        await sim.backend.start(uuid)
        info = await sim.backend.info(uuid)
        assert info.state is DomainState.STARTING and info.uptime_seconds == 0
        assert sim.events == []
        await sim.wait_state(DomainState.RUNNING)
        assert sim.events == [LifecycleEvent("started", uuid, "web1", "")]
        assert (await sim.backend.info(uuid)).uptime_seconds == 0

        await sim.backend.shutdown(uuid)
        assert await sim.state() is DomainState.SHUTTING_DOWN
        assert sim.kinds()[-1] == ("shutdown", "")
        await sim.wait_state(DomainState.SHUTOFF)
        assert sim.kinds() == [("started", ""), ("shutdown", ""), ("stopped", "shutdown")]
        assert (await sim.backend.info(uuid)).uptime_seconds is None
        await sim.backend.close()

    run(main())


def test_actions_in_the_wrong_state_fail_with_a_readable_message(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        b = sim.backend
        cases: list[tuple[Callable[[], Awaitable[None]], str]] = [
            (lambda: b.shutdown(uuid), "web1 is not running (shutoff)"),
            (lambda: b.reboot(uuid), "web1 is not running (shutoff)"),
            (lambda: b.poweroff(uuid), "web1 is already shut off"),
            (lambda: b.reset(uuid), "web1 is not running (shutoff)"),
            (lambda: b.sysrq(uuid, "m"), "web1 is not running (shutoff)"),
            (lambda: b.inject_crash(uuid), "web1 is not running (shutoff)"),
        ]
        for action, message in cases:
            with pytest.raises(ActionFailed, match=f"^{re.escape(message)}$"):
                await action()
        await b.start(uuid)
        with pytest.raises(ActionFailed, match="^web1 is already starting$"):
            await b.start(uuid)
        with pytest.raises(ActionFailed, match=r"^web1 is not running \(starting\)$"):
            await b.shutdown(uuid)
        await sim.wait_state(DomainState.RUNNING)
        with pytest.raises(ActionFailed, match="^web1 is already running$"):
            await b.start(uuid)
        for key in ("", "mm", "M", "!", "é"):
            with pytest.raises(ActionFailed, match="not a SysRq key"):
                await b.sysrq(uuid, key)
        await b.shutdown(uuid)
        with pytest.raises(ActionFailed, match="^web1 is already shutting down$"):
            await b.shutdown(uuid)
        with pytest.raises(ActionFailed, match=r"^web1 is not running \(shutting-down\)$"):
            await b.reset(uuid)
        await sim.wait_state(DomainState.SHUTOFF)
        assert sim.kinds() == [("started", ""), ("shutdown", ""), ("stopped", "shutdown")]
        await b.close()

    run(main())


def test_poweroff_during_boot_cancels_the_boot(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path, table(domain("web1"), domain("web2")))
        web1, web2 = await sim.uuid("web1"), await sim.uuid("web2")
        await sim.backend.start(web1)
        await sim.backend.poweroff(web1)
        assert await sim.state("web1") is DomainState.SHUTOFF
        assert sim.kinds() == [("stopped", "destroyed")]
        # web2 boots for as long as web1 would have: once it is up, web1's timer is long due.
        await sim.backend.start(web2)
        await sim.wait_state(DomainState.RUNNING, "web2")
        assert await sim.state("web1") is DomainState.SHUTOFF
        assert [(e.kind, e.name) for e in sim.events] == [("stopped", "web1"), ("started", "web2")]
        await sim.backend.close()

    run(main())


def test_reboot_keeps_the_domain_and_emits_rebooted(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        await sim.backend.start(uuid)
        await sim.wait_state(DomainState.RUNNING)
        states: list[DomainState] = []

        async def watch() -> bool:
            state = await sim.state()
            if not states or states[-1] is not state:
                states.append(state)
            return len(sim.events) == 2 and state is DomainState.RUNNING

        await sim.backend.reboot(uuid)
        await wait_until(watch, message="the reboot to finish")
        assert states == [DomainState.SHUTTING_DOWN, DomainState.STARTING, DomainState.RUNNING]
        assert sim.kinds() == [("started", ""), ("rebooted", "reboot")]
        await sim.backend.close()

    run(main())


def test_reset_from_running_starting_and_crashed(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        await sim.backend.start(uuid)
        await sim.backend.reset(uuid)  # while starting
        assert await sim.state() is DomainState.STARTING
        await sim.wait_state(DomainState.RUNNING)
        assert sim.kinds() == [("rebooted", "reset")]
        await sim.backend.reset(uuid)
        assert await sim.state() is DomainState.STARTING
        await sim.wait_state(DomainState.RUNNING)
        await sim.backend.inject_crash(uuid)
        await sim.backend.reset(uuid)
        await sim.wait_state(DomainState.RUNNING)
        assert sim.kinds() == [
            ("rebooted", "reset"),
            ("rebooted", "reset"),
            ("crashed", "injected"),
            ("rebooted", "reset"),
        ]
        await sim.backend.close()

    run(main())


def test_injected_crash(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        reader = Reader(await sim.backend.open_console(uuid))
        await sim.backend.start(uuid)
        await sim.wait_state(DomainState.RUNNING)
        await sim.backend.inject_crash(uuid)
        info = await sim.backend.info(uuid)
        assert (info.state, info.uptime_seconds) == (DomainState.CRASHED, None)
        assert sim.kinds()[-1] == ("crashed", "injected")
        await reader.expect(b"Kernel panic - not syncing: Fatal exception\r\n")
        await reader.expect(b"---[ end Kernel panic - not syncing: Fatal exception ]---\r\n")
        with pytest.raises(ActionFailed, match=r"^web1 is not shut off \(crashed\)$"):
            await sim.backend.start(uuid)
        with pytest.raises(ActionFailed, match=r"^web1 is not running \(crashed\)$"):
            await sim.backend.inject_crash(uuid)
        await sim.backend.poweroff(uuid)
        assert await sim.state() is DomainState.SHUTOFF
        assert sim.kinds()[-1] == ("stopped", "destroyed")
        await sim.backend.close()

    run(main())


def test_event_sink_errors_do_not_break_transitions(tmp_path: Path) -> None:
    async def main() -> None:
        def broken(event: LifecycleEvent) -> None:
            raise RuntimeError("hook exploded")

        backend = SimBackend.from_config(table(), str(tmp_path))
        backend.subscribe(broken)  # first in line: the sinks after it still get every event
        sim = Sim(backend)
        await backend.open()
        uuid = await sim.uuid()
        await sim.backend.start(uuid)
        await sim.wait_state(DomainState.RUNNING)
        await sim.backend.poweroff(uuid)
        assert sim.kinds() == [("started", ""), ("stopped", "destroyed")]
        await sim.backend.close()

    run(main())


# -- persistence --------------------------------------------------------------------------


def test_running_domain_survives_a_helper_restart_with_its_uptime(tmp_path: Path) -> None:
    async def main() -> None:
        state_dir = tmp_path / "state"
        clock = FakeClock()
        first = await Sim.open(state_dir, clock=clock)
        uuid = await first.uuid()
        await first.backend.start(uuid)
        await first.wait_state(DomainState.RUNNING)
        clock.now += 50
        assert (await first.backend.info(uuid)).uptime_seconds == 50
        await first.backend.close()

        assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(state_dir / "sim-state.json").st_mode) == 0o600
        assert [p.name for p in state_dir.iterdir()] == ["sim-state.json"]  # no temp files

        clock.now += 50
        second = await Sim.open(state_dir, clock=clock)
        info = await second.backend.info(uuid)
        assert (info.state, info.uptime_seconds) == (DomainState.RUNNING, 100)
        assert second.events == []
        await second.backend.shutdown(uuid)  # a restored domain is fully operational
        await second.wait_state(DomainState.SHUTOFF)
        await second.backend.close()

    run(main())


def test_starting_domain_settles_or_continues_after_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = table(domain("web1", boot_seconds=5), domain("web2", boot_seconds=BOOT))
        first = await Sim.open(tmp_path, config, clock=clock)
        web1, web2 = await first.uuid("web1"), await first.uuid("web2")
        await first.backend.start(web1)
        await first.backend.start(web2)
        await first.backend.close()  # both still starting: web2's real boot timer never fired
        assert first.events == []

        clock.now += 6  # web1's boot time has passed while the helper was down; web2's too
        second = await Sim.open(tmp_path, config, clock=clock)
        assert await second.state("web1") is DomainState.RUNNING
        assert (await second.backend.info(web1)).uptime_seconds == 6
        assert sorted(second.kinds()) == [("started", ""), ("started", "")]
        await second.backend.reset(web2)
        await second.backend.close()

        clock.now += 0.05  # web2's reset boot is only half done
        third = await Sim.open(tmp_path, config, clock=clock)
        assert await third.state("web2") is DomainState.STARTING
        await third.wait_state(DomainState.RUNNING, "web2")
        assert third.kinds() == [("rebooted", "reset")]
        await third.backend.close()

    run(main())


def test_shutting_down_domains_settle_after_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        config = table(
            domain("web1", shutdown_seconds=5), domain("web2", shutdown_seconds=5, boot_seconds=5)
        )
        booting = await Sim.open(tmp_path, config, clock=clock)
        web1, web2 = await booting.uuid("web1"), await booting.uuid("web2")
        await booting.backend.start(web1)
        await booting.backend.start(web2)
        await booting.backend.close()
        clock.now += 5  # both boots complete while the helper is down
        first = await Sim.open(tmp_path, config, clock=clock)
        assert await first.state("web2") is DomainState.RUNNING
        await first.backend.shutdown(web1)
        await first.backend.reboot(web2)
        await first.backend.close()

        clock.now += 20
        second = await Sim.open(tmp_path, config, clock=clock)
        assert await second.state("web1") is DomainState.SHUTOFF
        web2_info = await second.backend.info(web2)
        # web2 restarted 5 s after the reboot request and booted 5 s: up for 15 s now.
        assert (web2_info.state, web2_info.uptime_seconds) == (DomainState.RUNNING, 15)
        assert sorted(second.kinds()) == [("rebooted", "reboot"), ("stopped", "shutdown")]
        await second.backend.close()

    run(main())


def test_corrupt_state_file_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        first = await Sim.open(tmp_path)
        await first.backend.start(await first.uuid())
        await first.wait_state(DomainState.RUNNING)
        await first.backend.close()
        path = tmp_path / "sim-state.json"
        good = json.loads(path.read_text())
        records = good["domains"]

        def with_field(key: str, value: Any) -> str:
            damaged = {uuid: {**record, key: value} for uuid, record in records.items()}
            return json.dumps({"version": 1, "domains": damaged})

        bad_documents = [
            "{not json",
            "[]",
            json.dumps({**good, "version": 99}),
            json.dumps({"version": 1, "domains": []}),
            with_field("state", "paused"),
            with_field("since", "yesterday"),
            with_field("since", None),
            with_field("rebooting", "no"),
        ]
        for document in bad_documents:
            path.write_text(document)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="vpsshell.sim"):
                sim = await Sim.open(tmp_path)
            assert await sim.state() is DomainState.SHUTOFF, document
            assert any("ignoring sim state file" in r.getMessage() for r in caplog.records)
            await sim.backend.close()

        path.write_bytes(b"\xff\xfe binary")
        sim = await Sim.open(tmp_path)
        assert await sim.state() is DomainState.SHUTOFF
        await sim.backend.close()

    run(main())


def test_state_follows_the_config(tmp_path: Path) -> None:
    async def main() -> None:
        first = await Sim.open(tmp_path, table(domain("old"), domain("web1")))
        for name in ("old", "web1"):
            await first.backend.start(await first.uuid(name))
        await first.wait_state(DomainState.RUNNING, "old")
        await first.wait_state(DomainState.RUNNING, "web1")
        await first.backend.close()

        second = await Sim.open(tmp_path, table(domain("web1"), domain("new")))
        assert await second.state("web1") is DomainState.RUNNING
        assert await second.state("new") is DomainState.SHUTOFF
        await second.backend.close()
        saved = json.loads((tmp_path / "sim-state.json").read_text())
        assert sorted(r["name"] for r in saved["domains"].values()) == ["new", "web1"]

    run(main())


# -- console ------------------------------------------------------------------------------


def test_boot_log_then_login_prompt(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        reader = Reader(await sim.backend.open_console(uuid))
        await reader.stream.write(b"ignored while off\r")
        await sim.backend.start(uuid)
        end = await reader.expect(b"web1 login: ")
        log = reader.data[:end].decode()
        assert log.startswith("[    0.000000] Linux version 6.1.0-sim ")
        assert "Allowing 1 CPUs" in log and "Memory: 524288K available" in log
        assert log.endswith("\r\nDebian GNU/Linux 12 web1 ttyS0\r\n\r\nweb1 login: ")
        assert "ignored while off" not in log
        assert "\n" not in log.replace("\r\n", "")  # serial line endings throughout
        assert await sim.state() is DomainState.RUNNING
        await sim.backend.close()

    run(main())


def test_login_and_shell_commands(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        reader = Reader(await sim.backend.open_console(uuid))
        await sim.backend.start(uuid)
        await reader.expect(b"web1 login: ")
        assert await reader.type(b"alice\r", b"Password: ") == b"alice\r\nPassword: "
        out = await reader.type(b"hunter2\r", b"alice@web1:~$ ")
        assert b"hunter2" not in out and out.startswith(b"\r\n")

        prompt = b"alice@web1:~$ "
        assert await reader.type(b"echo hello   'big world'\r", prompt) == (
            b"echo hello   'big world'\r\nhello big world\r\n" + prompt
        )
        assert await reader.type(b"hostname\n", prompt) == b"hostname\r\nweb1\r\n" + prompt
        assert await reader.type(b"whoami\r\n", prompt) == b"whoami\r\nalice\r\n" + prompt
        out = await reader.type(b"uname -a\r", prompt)
        assert out.startswith(b"uname -a\r\nLinux web1 6.1.0-sim #1 SMP")
        assert out.endswith(b" x86_64 GNU/Linux\r\n" + prompt)
        out = await reader.type(b"uptime\r", prompt)
        assert b" up 0 min,  1 user,  load average: 0.00, 0.00, 0.00\r\n" in out
        assert await reader.type(b"\r", prompt) == b"\r\n" + prompt
        assert await reader.type(b"rm -rf /\r", prompt) == (
            b"rm -rf /\r\n-sh: rm: not found\r\n" + prompt
        )
        # Backspace erases on screen and in the line.
        assert await reader.type(b"hostnamx\x7fe\r", prompt) == (
            b"hostnamx\b \be\r\nweb1\r\n" + prompt
        )
        out = await reader.type(b"exit\r", b"web1 login: ")
        assert out == b"exit\r\n\r\nDebian GNU/Linux 12 web1 ttyS0\r\n\r\nweb1 login: "
        await reader.type(b"bob\r", b"Password: ")
        await reader.type(b"x\r", b"bob@web1:~$ ")
        assert await reader.type(b"logout\r", b"web1 login: ")
        await sim.backend.close()

    run(main())


def test_two_streams_see_the_same_bytes(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        first = Reader(await sim.backend.open_console(uuid))
        second = Reader(await sim.backend.open_console(uuid))
        await sim.backend.start(uuid)
        await first.expect(b"login: ")
        await second.stream.write(b"carol\r")  # either stream may type; both see the echo
        await first.expect(b"Password: ")
        await second.expect(b"Password: ")
        assert first.data == second.data
        await first.stream.close()
        assert await first.stream.read() == b""
        await second.type(b"x\r", b"carol@web1:~$ ")  # closing one leaves the other working
        await sim.backend.close()
        await wait_until(lambda: second.ended, message="the backend to end open streams")

    run(main())


def test_a_stalled_stream_drops_its_oldest_output_and_blocks_nobody(tmp_path: Path) -> None:
    async def main() -> None:
        limit = 4096
        sim = await Sim.open(tmp_path, console_buffer_bytes=limit)
        uuid = await sim.uuid()
        stalled = await sim.backend.open_console(uuid)
        assert isinstance(stalled, SimConsoleStream)
        reader = await boot_and_login(sim)
        for i in range(60):
            await reader.type(b"echo line %03d %s\r" % (i, b"x" * 80), b"alice@web1:~$ ")
        assert len(reader.data) > 3 * limit
        assert stalled.pending_bytes <= limit and stalled.dropped_bytes > 0
        backlog = await stalled.read()
        assert len(backlog) <= limit
        assert reader.data.endswith(backlog)  # the newest output, in order
        assert b"line 059" in backlog and b"line 000" not in backlog
        await sim.backend.close()

    run(main())


def test_read_after_close_and_close_wakes_a_waiting_reader(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        stream = await sim.backend.open_console(await sim.uuid())
        pending = asyncio.get_running_loop().create_task(stream.read())
        await asyncio.sleep(0)
        await stream.close()
        await stream.close()  # idempotent
        assert await asyncio.wait_for(pending, 1) == b""
        assert await stream.read() == b""
        with pytest.raises(ActionFailed):
            await stream.write(b"x")
        await sim.backend.close()

    run(main())


def test_sysrq_messages(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        reader = await boot_and_login(sim)
        mark = len(reader.data)
        await sim.backend.sysrq(uuid, "m")
        mark = await reader.expect(b"] sysrq: Show Memory\r\n", mark)
        await reader.expect(b"131072 pages RAM\r\n", mark)
        await sim.backend.sysrq(uuid, "x")
        mark = await reader.expect(b"] sysrq: HELP : loglevel(0-9) reboot(b) crash(c)", mark)
        await sim.backend.sysrq(uuid, "7")
        await reader.expect(b"sysrq: Loglevel set to 7\r\n", mark)
        # SAK kills the session: getty prints a fresh login prompt.
        await sim.backend.sysrq(uuid, "k")
        await reader.expect(b"sysrq: SAK\r\n", mark)
        await reader.expect(b"web1 login: ", mark)
        assert await sim.state() is DomainState.RUNNING
        assert sim.kinds() == [("started", "")]
        await sim.backend.close()

    run(main())


def test_sysrq_power_keys(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        reader = await boot_and_login(sim)

        mark = len(reader.data)
        await sim.backend.sysrq(uuid, "b")
        assert await sim.state() is DomainState.STARTING
        assert sim.kinds()[-1] == ("rebooted", "sysrq")
        mark = await reader.expect(b"sysrq: Resetting\r\n", mark)
        mark = await reader.expect(b"[    0.000000] Linux version", mark)
        await reader.expect(b"web1 login: ", mark)
        await sim.wait_state(DomainState.RUNNING)

        await sim.backend.sysrq(uuid, "c")
        assert await sim.state() is DomainState.CRASHED
        assert sim.kinds()[-1] == ("crashed", "sysrq")
        mark = await reader.expect(b"sysrq: Trigger a crash\r\n", mark)
        mark = await reader.expect(b"Kernel panic - not syncing: sysrq triggered crash", mark)

        await sim.backend.reset(uuid)
        await sim.wait_state(DomainState.RUNNING)
        await sim.backend.sysrq(uuid, "o")
        assert await sim.state() is DomainState.SHUTOFF
        assert sim.kinds()[-1] == ("stopped", "shutdown")
        mark = await reader.expect(b"sysrq: Power Off\r\n", mark)
        await reader.expect(b"reboot: Power down\r\n", mark)
        await sim.backend.close()

    run(main())


def test_reboot_and_shutdown_on_the_console(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim.open(tmp_path)
        uuid = await sim.uuid()
        reader = await boot_and_login(sim)
        mark = len(reader.data)
        await sim.backend.reboot(uuid)
        await reader.stream.write(b"whoami\r")  # the session is gone: nothing answers
        mark = await reader.expect(b"reboot: Restarting system\r\n", mark)
        mark = await reader.expect(b"[    0.000000] Linux version 6.1.0-sim", mark)
        mark = await reader.expect(b"\r\nweb1 login: ", mark)
        assert b"alice" not in reader.data[-200:]
        await sim.wait_state(DomainState.RUNNING)

        await sim.backend.shutdown(uuid)
        await reader.expect(b"reboot: Power down\r\n", mark)
        await sim.wait_state(DomainState.SHUTOFF)
        await sim.backend.close()

    run(main())
