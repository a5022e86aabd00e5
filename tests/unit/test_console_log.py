"""The per-domain console log: one per UUID, bounded size, count and write rate, rotation,
tail across files, expiry of logs of domains long gone; and the hubs that write them."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from vpsshell.backends.base import DomainInfo, DomainState, LifecycleEvent
from vpsshell.backends.sim import SimBackend
from vpsshell.daemon.config import Limits
from vpsshell.daemon.console_log import ConsoleLog, expire_logs
from vpsshell.daemon.consoles import ConsoleManager

WEB1 = "11111111-1111-4111-8111-111111111111"
WEB1_AGAIN = "22222222-2222-4222-8222-222222222222"  # web1 re-created, or started by hand
DB1 = "33333333-3333-4333-8333-333333333333"


def info(name: str, uuid: str) -> DomainInfo:
    return DomainInfo(name, uuid, DomainState.SHUTOFF, 1, 128, None, "h")


def manager(backend: SimBackend, directory: Path, **limits: int) -> ConsoleManager:
    return ConsoleManager(
        backend,
        str(directory),
        Limits(**{"console_ring_bytes": 4096, "console_client_queue_bytes": 4096, **limits}),
        on_detach=lambda attachment, reason: None,
    )


def test_rotation_keeps_size_and_count_bounded(tmp_path: Path) -> None:
    log = ConsoleLog(str(tmp_path), WEB1, max_bytes=100, files=3, bytes_per_hour=None)
    for index in range(20):
        log.append(f"line {index:02d} ".encode() + b"x" * 40 + b"\r\n")
    log.close()
    names = sorted(os.listdir(tmp_path))
    logs = [f"{WEB1}.log", f"{WEB1}.log.1", f"{WEB1}.log.2"]
    assert names == sorted(logs + [f"{name}.times" for name in logs])
    assert all((tmp_path / name).stat().st_size <= 100 for name in names)
    tail = log.tail(4)
    assert [line[:7] for line in tail] == ["line 16", "line 17", "line 18", "line 19"]
    assert all("\r" not in line for line in tail)


def test_tail_reads_across_rotated_files(tmp_path: Path) -> None:
    log = ConsoleLog(str(tmp_path), DB1, max_bytes=64, files=4, bytes_per_hour=None)
    for index in range(6):
        log.append(f"boot message {index}\n".encode())
    log.close()
    assert log.tail(6) == [f"boot message {index}" for index in range(6)]
    assert log.tail(1) == ["boot message 5"]


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    (tmp_path / f"{WEB1}.log").symlink_to(target)
    log = ConsoleLog(str(tmp_path), WEB1, max_bytes=1000, files=2, bytes_per_hour=None)
    log.append(b"guest output\n")  # refused and logged, never written through the link
    log.close()
    assert target.read_text() == "keep me\n"


def test_only_a_uuid_becomes_a_file_name(tmp_path: Path) -> None:
    log = ConsoleLog(str(tmp_path / "console"), "../escaped", 1000, 2, bytes_per_hour=None)
    log.append(b"guest output\n")
    log.close()
    assert list(tmp_path.iterdir()) == [] and log.tail(10) == []


def test_a_flood_of_output_cannot_push_the_history_out(tmp_path: Path) -> None:
    """One file's worth at once, then bytes_per_hour: the older files survive a flood, the
    log says how much it left out, and output after the flood is logged again."""
    now = [1000.0]
    log = ConsoleLog(
        str(tmp_path), WEB1, max_bytes=1000, files=3, bytes_per_hour=3600, clock=lambda: now[0]
    )
    log.append(b"history: the kernel panicked here\r\n")
    for _ in range(200):  # 20 KB of flood, 1 B/s of budget
        log.append(b"f" * 99 + b"\n")
        now[0] += 0.01
    now[0] += 300  # the budget comes back slowly
    log.append(b"after the flood\r\n")
    log.close()
    lines = log.tail(100)
    assert lines[0] == "history: the kernel panicked here"
    assert lines[-2:] == [
        f"[vpsshell: {20000 - 900} bytes of console output not logged: more than this log "
        "takes per hour]",
        "after the flood",
    ]
    assert sum(os.path.getsize(tmp_path / name) for name in os.listdir(tmp_path)) < 1300


def test_a_gap_still_open_is_noted_when_the_log_closes(tmp_path: Path) -> None:
    now = [0.0]
    log = ConsoleLog(str(tmp_path), WEB1, 100, 2, bytes_per_hour=1, clock=lambda: now[0])
    log.append(b"x" * 150)
    log.close()
    assert log.tail(1) == [
        "[vpsshell: 50 bytes of console output not logged: more than this log takes per hour]"
    ]


def test_two_hubs_of_one_name_keep_a_log_each(tmp_path: Path) -> None:
    """A Xen domain started by hand runs with a UUID of its own while the helper may already
    have a hub for the UUID its config file gives it: each writes its own file, and neither
    shows the other's output."""

    async def scenario() -> tuple[list[str], list[str]]:
        backend = SimBackend.from_config({"domains": []}, str(tmp_path / "state"))
        consoles = manager(backend, tmp_path)
        derived = consoles.hub_for(info("web1", WEB1))
        by_hand = consoles.hub_for(info("web1", WEB1_AGAIN))
        for index in range(24):
            (derived if index % 2 else by_hand)._output(f"boot {index:02d}\r\n".encode())
        await consoles.stop()
        return derived.log.tail(24), by_hand.log.tail(24)

    derived, by_hand = asyncio.run(scenario())
    assert derived == [f"boot {index:02d}" for index in range(1, 24, 2)]
    assert by_hand == [f"boot {index:02d}" for index in range(0, 24, 2)]


def test_a_name_given_to_a_new_domain_starts_with_an_empty_log(tmp_path: Path) -> None:
    """Across a helper restart too: nothing of the old domain's log is found by its name."""
    (tmp_path / "web1.log").write_bytes(b"an earlier version's per-name log\r\n")

    async def scenario() -> tuple[list[str], list[str]]:
        backend = SimBackend.from_config({"domains": []}, str(tmp_path / "state"))
        first = manager(backend, tmp_path)
        first.hub_for(info("web1", WEB1))._output(b"the old owner's secret\r\n")
        await first.stop()
        again = manager(backend, tmp_path)  # after a restart; web1 is another domain now
        new_web1 = again.hub_for(info("web1", WEB1_AGAIN))
        fresh = new_web1.log.tail(100)
        new_web1._output(b"the new owner's boot\r\n")
        await again.stop()
        return fresh, new_web1.log.tail(100)

    assert asyncio.run(scenario()) == ([], ["the new owner's boot"])


def test_logs_of_domains_long_gone_expire(tmp_path: Path) -> None:
    day = 86400.0
    now = time.time()
    gone_long = "44444444-4444-4444-8444-444444444444"
    gone_lately = "55555555-5555-4555-8555-555555555555"
    for uuid, age in ((WEB1, 90), (gone_long, 40), (gone_lately, 3)):
        for name in (f"{uuid}.log", f"{uuid}.log.1"):
            (tmp_path / name).write_bytes(b"output\n")
            os.utime(tmp_path / name, (now - age * day, now - age * day))
    (tmp_path / "web1.log").write_bytes(b"per-name log of an earlier version\n")
    os.utime(tmp_path / "web1.log", (now - 400 * day, now - 400 * day))
    lock = threading.Lock()

    def expire(keep_domains: int) -> tuple[list[str], int]:
        return expire_logs(
            str(tmp_path),
            is_live=lambda uuid: uuid == WEB1,  # quiet for 90 days, but the domain exists
            keep_seconds=30 * day,
            keep_domains=keep_domains,
            lock=lock,
            now=now,
        )

    assert expire(keep_domains=10) == ([gone_long], 1)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"{WEB1}.log", f"{WEB1}.log.1", f"{gone_lately}.log", f"{gone_lately}.log.1", "web1.log"]
    )
    assert expire(keep_domains=0) == ([gone_lately], 1)  # over the count: the oldest go first
    assert sorted(os.listdir(tmp_path)) == [f"{WEB1}.log", f"{WEB1}.log.1", "web1.log"]


def test_a_hub_marks_its_log_seen_so_a_quiet_domain_keeps_its_log(tmp_path: Path) -> None:
    old = time.time() - 90 * 86400.0
    (tmp_path / f"{WEB1}.log").write_bytes(b"output from long ago\n")
    os.utime(tmp_path / f"{WEB1}.log", (old, old))

    async def scenario() -> list[str]:
        backend = SimBackend.from_config({"domains": []}, str(tmp_path / "state"))
        consoles = manager(backend, tmp_path, console_log_keep_days=30)
        consoles.hub_for(info("web1", WEB1))
        await consoles.stop()  # the domain was there until now: it was seen now
        return await manager(backend, tmp_path, console_log_keep_days=30).expire_logs_now()

    assert asyncio.run(scenario()) == []
    assert (tmp_path / f"{WEB1}.log").read_bytes() == b"output from long ago\n"


def test_the_hub_of_a_uuid_gone_with_its_domain_is_closed(tmp_path: Path) -> None:
    """After a hand-started Xen domain (a UUID of its own) stops, its name stands for the
    config file's UUID again: the other hub would otherwise retry a console forever."""

    async def scenario() -> tuple[bool, bool]:
        web1 = {"name": "web1", "vcpus": 1, "memory_mib": 128, "boot_seconds": 0}
        backend = SimBackend.from_config({"domains": [web1]}, str(tmp_path / "state"))
        await backend.open()
        consoles = manager(backend, tmp_path, console_log_bytes=1 << 16, console_log_files=2)
        [web1_info] = await backend.list_domains()
        kept = consoles.hub_for(web1_info)
        consoles.hub_for(DomainInfo("web1", WEB1_AGAIN, DomainState.RUNNING, 1, 128, 5, "h"))
        backend.emit(LifecycleEvent("stopped", web1_info.uuid, "web1", "destroyed"))
        backend.emit(LifecycleEvent("stopped", WEB1_AGAIN, "web1", "destroyed"))
        for _ in range(200):
            if WEB1_AGAIN not in consoles.hubs:
                break
            await asyncio.sleep(0.01)
        closed = WEB1_AGAIN not in consoles.hubs
        still = consoles.hubs.get(web1_info.uuid) is kept
        await consoles.stop()
        await backend.close()
        return closed, still

    assert asyncio.run(scenario()) == (True, True)


def test_an_attachment_whose_session_never_starts_gives_its_slot_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever keeps a reply with its session from going out, the writer's slot comes back."""
    from vpsshell.daemon import consoles as consoles_module
    from vpsshell.daemon.peer import Caller

    monkeypatch.setattr(consoles_module, "SESSION_START_SECONDS", 0.05)
    reasons: list[str] = []

    async def scenario() -> bool:
        backend = SimBackend.from_config({"domains": []}, str(tmp_path / "state"))
        consoles = ConsoleManager(
            backend, str(tmp_path), Limits(), on_detach=lambda a, reason: reasons.append(reason)
        )
        hub = consoles.hub_for(info("web1", WEB1))
        caller = Caller(uid=1000, gid=1000, pid=1, user="alice", groups=())
        hub.attach(consoles.new_attachment(caller, "write"), takeover=False, replay=0)
        for _ in range(100):
            if hub.writer is None:
                break
            await asyncio.sleep(0.01)
        await consoles.stop()
        return hub.writer is None

    assert asyncio.run(scenario()) is True
    assert reasons == ["not-started"]


T0 = 1_764_928_800.0  # 2025-12-05T10:00:00Z


def timed_log(directory: Path, now: list[float], **bounds: int) -> ConsoleLog:
    sizes = {"max_bytes": 1 << 16, "files": 2, **bounds}
    return ConsoleLog(str(directory), WEB1, bytes_per_hour=None, wall_clock=lambda: now[0], **sizes)


def test_each_line_has_the_time_its_output_arrived_and_since_selects(tmp_path: Path) -> None:
    now = [T0]
    log = timed_log(tmp_path, now)
    log.append(b"first line\r\nsecond ")
    now[0] += 0.5  # the same second: no new index record
    log.append(b"half\r\n")
    now[0] += 90
    log.append(b"later line\r\n")
    log.close()
    assert log.entries(10) == [
        {"time": "2025-12-05T10:00:00Z", "text": "first line"},
        {"time": "2025-12-05T10:00:00Z", "text": "second half"},
        {"time": "2025-12-05T10:01:30Z", "text": "later line"},
    ]
    assert log.entries(10, since="2025-12-05T10:01:00Z") == [
        {"time": "2025-12-05T10:01:30Z", "text": "later line"}
    ]
    assert log.entries(1) == [{"time": "2025-12-05T10:01:30Z", "text": "later line"}]
    assert (tmp_path / f"{WEB1}.log.times").read_text().count("\n") == 2
    assert log.tail(10) == ["first line", "second half", "later line"]  # as before


def test_markers_name_who_attached_and_sit_before_the_line_they_interrupt(
    tmp_path: Path,
) -> None:
    now = [T0]
    log = timed_log(tmp_path, now)
    log.append(b"login: ")
    now[0] += 2
    log.mark("attached", "vpst-alice", "write")
    log.append(b"root\r\n")
    log.mark("detached", "vpst-alice", "write")
    log.mark("took-over", "bad user\n", "write")  # never a word that breaks the index
    log.close()
    assert log.entries(10) == [
        {
            "time": "2025-12-05T10:00:02Z",
            "event": "attached",
            "user": "vpst-alice",
            "mode": "write",
        },
        {"time": "2025-12-05T10:00:00Z", "text": "login: root"},
        {
            "time": "2025-12-05T10:00:02Z",
            "event": "detached",
            "user": "vpst-alice",
            "mode": "write",
        },
        {"time": "2025-12-05T10:00:02Z", "event": "took-over", "user": "?", "mode": "write"},
    ]
    assert [e["text"] for e in log.entries(10, markers=False)] == ["login: root"]


def test_a_log_without_an_index_reads_as_before_with_no_times(tmp_path: Path) -> None:
    (tmp_path / f"{WEB1}.log.1").write_bytes(b"old one\r\n")
    (tmp_path / f"{WEB1}.log").write_bytes(b"old two\r\n")
    now = [T0]
    log = timed_log(tmp_path, now, files=3)
    log.append(b"new\r\n")
    log.close()
    assert log.tail(10) == ["old one", "old two", "new"]
    assert log.entries(10) == [
        {"time": None, "text": "old one"},
        {"time": None, "text": "old two"},
        {"time": "2025-12-05T10:00:00Z", "text": "new"},
    ]
    assert log.entries(10, since="2025-12-05T09:00:00Z") == [
        {"time": "2025-12-05T10:00:00Z", "text": "new"}
    ]


def test_indexes_rotate_with_their_files_and_stay_bounded(tmp_path: Path) -> None:
    (tmp_path / f"{WEB1}.log").write_bytes(b"from before indexes\n")
    now = [T0]
    log = timed_log(tmp_path, now, max_bytes=200, files=3)
    for index in range(2000):  # a byte a second: an index record per byte
        log.append(b"." if index % 50 else b"\n")
        now[0] += 1
    log.close()
    sizes = {name: os.path.getsize(tmp_path / name) for name in os.listdir(tmp_path)}
    assert sorted(sizes) == sorted(
        f"{WEB1}.log{suffix}{times}" for suffix in ("", ".1", ".2") for times in ("", ".times")
    )
    assert all(size <= 4096 + 64 for size in sizes.values())
    entries = log.entries(10000)
    assert all(entry["time"] is not None for entry in entries)  # no stale index got reused
    assert [entry["text"] for entry in entries] == log.tail(10000)
    assert entries[-1]["time"] == "2025-12-05T10:32:31Z"  # the last line began at 1951 s


def test_markers_are_paid_from_the_write_budget(tmp_path: Path) -> None:
    log = ConsoleLog(str(tmp_path), WEB1, max_bytes=1000, files=2, bytes_per_hour=3600)
    for _ in range(1000):
        log.mark("attached", "vpst-alice", "watch")
    log.close()
    assert len(log.entries(10000)) <= 1000 // 64 + 1


def test_hubs_mark_attach_takeover_and_detach_with_the_user(tmp_path: Path) -> None:
    from vpsshell.daemon.peer import Caller

    async def scenario() -> list[tuple[str | None, str | None, str | None]]:
        backend = SimBackend.from_config({"domains": []}, str(tmp_path / "state"))
        consoles = manager(backend, tmp_path)
        hub = consoles.hub_for(info("web1", WEB1))
        alice = Caller(uid=1000, gid=1000, pid=1, user="vpst-alice", groups=())
        bob = Caller(uid=1001, gid=1001, pid=2, user="vpst-bob", groups=())
        first = consoles.new_attachment(alice, "write")
        hub.attach(first, takeover=False, replay=0)
        second = consoles.new_attachment(bob, "write")
        hub.attach(second, takeover=True, replay=0)
        hub.detach(second, "detached", "bye")
        late = consoles.new_attachment(alice, "watch")
        hub.attach(late, takeover=False, replay=0)
        await consoles.stop()
        hub.detach(late, "detached", "after the hub stopped")  # no file opens again for it
        assert hub.log._fd is None
        return [(e.get("event"), e.get("user"), e.get("mode")) for e in hub.log.entries(10)]

    assert asyncio.run(scenario()) == [
        ("attached", "vpst-alice", "write"),
        ("detached", "vpst-alice", "write"),
        ("took-over", "vpst-bob", "write"),
        ("detached", "vpst-bob", "write"),
        ("attached", "vpst-alice", "watch"),
    ]


def test_expiry_removes_indexes_with_their_logs(tmp_path: Path) -> None:
    for name in (f"{DB1}.log", f"{DB1}.log.times", f"{DB1}.log.1.times"):
        (tmp_path / name).write_bytes(b"0 1.0\n")
    removed = expire_logs(
        str(tmp_path),
        is_live=lambda uuid: False,
        keep_seconds=0,
        keep_domains=0,
        lock=threading.Lock(),
        now=time.time() + 10,
    )
    assert removed == ([DB1], 0)
    assert os.listdir(tmp_path) == []
