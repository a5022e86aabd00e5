"""The libvirt backend in process, on real libvirt connections without a daemon: test-driver
hosts from tests/fixtures/libvirt, a "libvirtd" that accepts and never answers, and one whose
socket is gone. Covers what the shared contract cannot: config, clashing names, numeric names,
hung and dead hosts, the event mapping and the uptime book."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")

from vpsshell.backends import BackendConfigError, create_backend  # noqa: E402
from vpsshell.backends.base import DomainInfo, DomainState, LifecycleEvent  # noqa: E402
from vpsshell.backends.libvirt import LibvirtBackend  # noqa: E402
from vpsshell.backends.libvirt_host import RawEvent  # noqa: E402
from vpsshell.backends.libvirt_uptime import UptimeBook  # noqa: E402
from vpsshell.errors import ActionFailed, TemporaryFailure  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "libvirt"


def test_uri(name: str) -> str:
    return f"test://{FIXTURES / name}"


test_uri.__test__ = False  # type: ignore[attr-defined]


def table(*hosts: tuple[str, str], timeout: float = 5) -> dict[str, Any]:
    return {
        "type": "libvirt",
        "timeout_seconds": timeout,
        "hosts": [{"name": name, "uri": uri} for name, uri in hosts],
    }


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=30))


async def opened(config: dict[str, Any], state_dir: Path) -> LibvirtBackend:
    backend = create_backend(config, str(state_dir))
    assert isinstance(backend, LibvirtBackend)
    await backend.open()
    return backend


class SilentLibvirtd:
    """A Unix socket that accepts connections and never answers: a hung libvirtd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.clients.append(client)

    def release(self) -> None:
        """Hang up on everyone and go away (the daemon died)."""
        self.server.close()
        self.path.unlink(missing_ok=True)
        for client in self.clients:
            client.close()


@pytest.fixture
def silent(tmp_path: Path) -> Iterator[SilentLibvirtd]:
    daemon = SilentLibvirtd(tmp_path / "hung-libvirt-sock")
    yield daemon
    daemon.release()


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"type": "libvirt"}, "backend.hosts: at least one"),
        ({"type": "libvirt", "hosts": []}, "backend.hosts: at least one"),
        ({"type": "libvirt", "hosts": [{"name": "n"}]}, "hosts[0]: missing uri"),
        ({"type": "libvirt", "domains": []}, "unknown key(s) domains"),
        (table(("node 1", "qemu:///system")), "hosts[0].name: must be a host label"),
        (table(("node1", "qemu:///sys tem")), "hosts[0].uri: must be a libvirt URI"),
        (table(("node1", "/var/run/libvirt")), "hosts[0].uri"),
        (table(("node1", "test://relative.xml")), "absolute file"),
        (table(("a", "qemu:///system"), ("a", "xen:///system")), "hosts[1].name: 'a' is already"),
        (table(("a", "qemu:///system"), ("b", "qemu:///system")), "hosts[1].uri"),
        (table(("a", "qemu:///system"), timeout=0), "timeout_seconds"),
        (table(("a", "qemu:///system"), timeout=True), "timeout_seconds"),
        ({**table(("a", "qemu:///system")), "hosts": [{"name": "a", "uri": "x://", "x": 1}]}, "x"),
        ({**table(("a", "qemu:///system")), "keepalive_interval": 0}, "backend.keepalive_interval"),
        ({**table(("a", "qemu:///system")), "keepalive_count": 2.5}, "backend.keepalive_count"),
        ({**table(("a", "qemu:///system")), "refresh_seconds": 0}, "backend.refresh_seconds"),
        (
            {"type": "libvirt", "hosts": [{"name": "a", "uri": "x://", "keepalive_count": 0}]},
            "backend.hosts[0].keepalive_count",
        ),
    ],
)
def test_config_is_validated_strictly(
    tmp_path: Path, config: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(BackendConfigError) as caught:
        create_backend(config, str(tmp_path))
    assert fragment in str(caught.value)


def test_keepalive_is_set_for_the_table_and_overridden_per_host(tmp_path: Path) -> None:
    config = {
        "type": "libvirt",
        "keepalive_interval": 2,
        "keepalive_count": 4,
        "hosts": [
            {"name": "near", "uri": "qemu+tls://10.0.0.2/system"},
            {"name": "far", "uri": "qemu+tls://10.0.1.2/system", "keepalive_interval": 10},
        ],
    }
    backend = create_backend(config, str(tmp_path))
    assert [host.keepalive for host in backend.hosts] == [(2, 4), (10, 4)]  # type: ignore[attr-defined]


def test_every_kind_of_uri_is_accepted_and_nothing_connects(tmp_path: Path) -> None:
    backend = create_backend(
        table(
            ("n1", "qemu:///system"),
            ("n2", "xen:///system"),
            ("n3", "qemu+ssh://root@node3.example/system?keyfile=/etc/vpsshell/id"),
            ("n4", "test:///default"),
        ),
        str(tmp_path),
    )
    assert backend.kind == "libvirt"
    assert [host.name for host in backend.hosts] == ["n1", "n2", "n3", "n4"]  # type: ignore[attr-defined]
    assert not any(host.connected for host in backend.hosts)  # type: ignore[attr-defined]


def test_missing_libvirt_python_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in [m for m in sys.modules if m.startswith("vpsshell.backends.libvirt")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "libvirt", None)  # import libvirt -> ImportError
    with pytest.raises(BackendConfigError) as caught:
        create_backend(table(("node1", "qemu:///system")), str(tmp_path))
    assert "vpsshell[libvirt]" in str(caught.value)
    assert "libvirt-dev" in str(caught.value)


# -- one namespace over several hosts -----------------------------------------------------


def test_a_name_on_two_hosts_is_never_resolved_and_the_admin_is_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        backend = await opened(
            table(("node1", test_uri("node1.xml")), ("node3", test_uri("clash.xml"))), tmp_path
        )
        with caplog.at_level(logging.INFO, logger="vpsshell.libvirt"):
            listed = await backend.list_domains()
            await backend.list_domains()
            assert sorted((d.name, d.host) for d in listed) == [
                ("solo", "node3"),
                ("web2", "node1"),
            ]
            with pytest.raises(ActionFailed, match="defined on more than one host"):
                await backend.lookup("web1")
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1  # told once, not on every request
        assert "'web1'" in errors[0].getMessage() and "node1, node3" in errors[0].getMessage()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("'3'" in text and "all digits" in text for text in warnings)
        # "3" runs with numeric id 1 on node3; neither "3" nor "1" resolves to anything
        assert await backend.lookup("3") is None
        assert await backend.lookup("1") is None
        solo = await backend.lookup("solo")
        assert solo is not None and solo.host == "node3"
        await backend.close()

    run(main())


# -- hosts that are down or hung ----------------------------------------------------------


def test_a_hung_host_costs_one_timeout_and_never_blocks_the_others(
    tmp_path: Path, silent: SilentLibvirtd, caplog: pytest.LogCaptureFixture
) -> None:
    hung_uri = f"qemu+unix:///system?socket={silent.path}"

    async def main() -> None:
        backend = await opened(
            table(("node1", test_uri("node1.xml")), ("stuck", hung_uri), timeout=0.5), tmp_path
        )
        started = time.monotonic()
        listed = await backend.list_domains()
        assert 0.4 < time.monotonic() - started < 3
        assert sorted(d.name for d in listed) == ["web1", "web2"]
        # the stuck host has a call overdue: from now on it fails at once
        started = time.monotonic()
        web1 = await backend.lookup("web1")
        assert web1 is not None and web1.host == "node1"
        with pytest.raises(TemporaryFailure, match="host stuck is not answering"):
            await backend.lookup("elsewhere")  # it could be on the stuck host: no guess
        await backend.start(web1.uuid)
        assert (await backend.info(web1.uuid)).state is DomainState.RUNNING
        assert time.monotonic() - started < 0.5
        silent.release()  # the daemon dies: the stuck call ends, the host is just down

        async def down() -> bool:
            try:
                await backend.lookup("elsewhere")
            except TemporaryFailure as exc:
                return "cannot be reached" in exc.message
            return False

        deadline = time.monotonic() + 10
        while not await down():
            assert time.monotonic() < deadline, "the stuck call never ended"
            await asyncio.sleep(0.05)
        await backend.close()

    with caplog.at_level(logging.WARNING, logger="vpsshell.libvirt"):
        run(main())
    assert any("got no answer within 0.5 s" in r.getMessage() for r in caplog.records)


def test_a_dead_host_is_a_quick_temporary_failure_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = f"qemu+unix:///system?socket={tmp_path / 'no-such-socket'}"

    async def main() -> None:
        backend = await opened(table(("node1", test_uri("node1.xml")), ("gone", gone)), tmp_path)
        started = time.monotonic()
        assert sorted(d.name for d in await backend.list_domains()) == ["web1", "web2"]
        for _ in range(3):
            with pytest.raises(TemporaryFailure, match="host gone cannot be reached right now"):
                await backend.lookup("elsewhere")
        assert time.monotonic() - started < 2
        await backend.close()

    with caplog.at_level(logging.WARNING, logger="vpsshell.libvirt"):
        run(main())
    cannot = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(cannot) == 1 and "no-such-socket" in cannot[0].getMessage()


# -- events -------------------------------------------------------------------------------


async def watching_web1(tmp_path: Path) -> tuple[LibvirtBackend, list[LifecycleEvent], DomainInfo]:
    """A backend on node1.xml, the events it emits as a list, and its domain web1."""
    backend = await opened(table(("node1", test_uri("node1.xml"))), tmp_path)
    events: list[LifecycleEvent] = []
    backend.subscribe(events.append)
    web1 = await backend.lookup("web1")
    assert web1 is not None
    return backend, events, web1


def test_a_restart_under_a_new_id_is_a_reboot_and_the_old_runs_stop_is_dropped(
    tmp_path: Path,
) -> None:
    """libxl reboots a domain by creating a new one: "started" with a new id, then "stopped"
    of the old id, and no reboot event."""

    async def main() -> None:
        backend, events, web1 = await watching_web1(tmp_path)
        host = backend.hosts[0]

        def lifecycle(domain_id: int, event: int, detail: int) -> None:
            raw = RawEvent(host, web1.uuid, "web1", domain_id, "lifecycle", event, detail)
            backend._on_raw_event(raw)

        lv = libvirt
        lifecycle(7, lv.VIR_DOMAIN_EVENT_STARTED, lv.VIR_DOMAIN_EVENT_STARTED_BOOTED)
        lifecycle(8, lv.VIR_DOMAIN_EVENT_STARTED, lv.VIR_DOMAIN_EVENT_STARTED_BOOTED)
        lifecycle(7, lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
        lifecycle(8, lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
        assert [(e.kind, e.detail) for e in events] == [
            ("started", ""),
            ("rebooted", "guest"),
            ("stopped", "shutdown"),
        ]
        await backend.close()

    run(main())


def test_libvirt_events_become_lifecycle_events(tmp_path: Path) -> None:
    async def main() -> None:
        backend, events, web1 = await watching_web1(tmp_path)
        host = backend.hosts[0]

        def raw(kind: str, event: int = -1, detail: int = -1) -> None:
            backend._on_raw_event(RawEvent(host, web1.uuid.upper(), "web1", 7, kind, event, detail))

        lv = libvirt
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_STARTED, lv.VIR_DOMAIN_EVENT_STARTED_BOOTED)
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_SUSPENDED, 0)  # not a tenant event
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_RESUMED, 0)
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_SHUTDOWN, lv.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST)
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_SHUTDOWN, lv.VIR_DOMAIN_EVENT_SHUTDOWN_HOST)  # destroy
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_CRASHED)
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_CRASHED, lv.VIR_DOMAIN_EVENT_CRASHED_PANICKED)
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_MIGRATED)
        # a migration's destination: paused at the start, "migrated in" once it resumes
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_STARTED, lv.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_RESUMED, lv.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
        # a failed incoming migration is no event for the tenant
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_STARTED, lv.VIR_DOMAIN_EVENT_STARTED_MIGRATED)
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_FAILED)
        raw("lifecycle", lv.VIR_DOMAIN_EVENT_STARTED, 99)  # a detail newer than this code
        raw("reboot")
        raw("reboot")  # QEMU reports one reboot twice in a row
        assert [(e.kind, e.detail) for e in events] == [
            ("started", ""),
            ("shutdown", "guest"),
            ("stopped", "shutdown"),
            ("stopped", "destroyed"),
            ("stopped", "crashed"),
            ("crashed", "panicked"),
            ("migrated", "out"),
            ("migrated", "in"),
            ("started", ""),
            ("rebooted", "guest"),
        ]
        assert {(e.uuid, e.name) for e in events} == {(web1.uuid, "web1")}
        # a reboot event right after our own reset names it
        seen = len(events)
        backend._running_id.clear()  # the runs injected above never were
        await backend.start(web1.uuid)
        while len(events) == seen:  # the test driver's own "started", asynchronously
            await asyncio.sleep(0.01)
        await backend.reset(web1.uuid)
        backend._last_reboot.clear()
        raw("reboot")
        assert [(e.kind, e.detail) for e in events[seen:]] == [
            ("started", ""),
            ("rebooted", "reset"),
        ]
        await backend.close()

    run(main())


def test_uptime_counts_from_the_start_event(tmp_path: Path) -> None:
    now = [1_000_000.0]

    async def main() -> None:
        backend = LibvirtBackend.from_config(table(("node1", test_uri("node1.xml"))), str(tmp_path))
        backend._book.clock = lambda: now[0]
        await backend.open()
        web1 = await backend.lookup("web1")
        assert web1 is not None and web1.uptime_seconds is None
        events: list[LifecycleEvent] = []
        backend.subscribe(events.append)
        await backend.start(web1.uuid)
        assert (await backend.info(web1.uuid)).uptime_seconds == 0
        while not events:  # the started event, whenever it comes, keeps the time seen first
            await asyncio.sleep(0.01)
        now[0] += 3600
        assert (await backend.info(web1.uuid)).uptime_seconds == 3600
        await backend.poweroff(web1.uuid)
        assert (await backend.info(web1.uuid)).uptime_seconds is None
        await backend.close()

    run(main())


def test_the_uptime_book_survives_restarts_and_knows_a_new_boot(tmp_path: Path) -> None:
    now = [500.0]
    book = UptimeBook(str(tmp_path), lambda: now[0])
    book.booted("node1/u1", 7)
    now[0] = 600.0
    again = UptimeBook(str(tmp_path), lambda: now[0])
    again.load()
    assert again.seconds("node1/u1", 7) == 100
    assert again.seconds("node1/u1", 8) == 0  # a different libvirt id: it restarted meanwhile
    now[0] = 610.0
    assert again.seconds("node1/u1", 8) == 10
    again.started("node1/u1", 8)  # a late event of the run already seen changes nothing
    assert again.seconds("node1/u1", 8) == 10
    again.booted("node1/u1", 8)  # a reboot keeps the id and restarts the count
    assert again.seconds("node1/u1", 8) == 0
    again.stopped("node1/u1")
    assert json.loads((tmp_path / "libvirt-uptime.json").read_text())["domains"] == {}
    (tmp_path / "libvirt-uptime.json").write_text("{not json")
    damaged = UptimeBook(str(tmp_path), lambda: now[0])
    damaged.load()  # logged and ignored
    assert damaged.seconds("node1/u1", 8) == 0
