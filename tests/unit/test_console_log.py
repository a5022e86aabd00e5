"""The per-domain console log: bounded size and count, rotation, tail across files."""

from __future__ import annotations

import os
from pathlib import Path

from vpsshell.daemon.console_log import ConsoleLog


def test_rotation_keeps_size_and_count_bounded(tmp_path: Path) -> None:
    log = ConsoleLog(str(tmp_path), "web1", max_bytes=100, files=3)
    for index in range(20):
        log.append(f"line {index:02d} ".encode() + b"x" * 40 + b"\r\n")
    log.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["web1.log", "web1.log.1", "web1.log.2"]
    assert all((tmp_path / name).stat().st_size <= 100 for name in names)
    tail = log.tail(4)
    assert [line[:7] for line in tail] == ["line 16", "line 17", "line 18", "line 19"]
    assert all("\r" not in line for line in tail)


def test_tail_reads_across_rotated_files(tmp_path: Path) -> None:
    log = ConsoleLog(str(tmp_path), "db1", max_bytes=64, files=4)
    for index in range(6):
        log.append(f"boot message {index}\n".encode())
    log.close()
    assert log.tail(6) == [f"boot message {index}" for index in range(6)]
    assert log.tail(1) == ["boot message 5"]


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    (tmp_path / "web1.log").symlink_to(target)
    log = ConsoleLog(str(tmp_path), "web1", max_bytes=1000, files=2)
    log.append(b"guest output\n")  # refused and logged, never written through the link
    log.close()
    assert target.read_text() == "keep me\n"


def test_two_hubs_of_one_name_write_one_log_in_order(tmp_path: Path) -> None:
    """A Xen domain started by hand runs with a UUID of its own while the helper may already
    have a hub for the UUID its config file gives it: both hubs carry the same name and must
    not write one file through two descriptors (each would overwrite the other's bytes)."""
    import asyncio

    from vpsshell.backends.base import DomainInfo, DomainState
    from vpsshell.backends.sim import SimBackend
    from vpsshell.daemon.consoles import ConsoleManager

    def info(uuid: str) -> DomainInfo:
        return DomainInfo("web1", uuid, DomainState.SHUTOFF, 1, 128, None, "h")

    async def scenario() -> list[str]:
        backend = SimBackend.from_config({"domains": []}, str(tmp_path / "state"))
        manager = ConsoleManager(
            backend,
            str(tmp_path),
            ring_bytes=4096,
            log_bytes=64,
            log_files=4,
            queue_bytes=4096,
            on_detach=lambda attachment, reason: None,
        )
        derived = manager.hub_for(info("11111111-1111-4111-8111-111111111111"))
        by_hand = manager.hub_for(info("22222222-2222-4222-8222-222222222222"))
        for index in range(24):  # the log rotates on the way
            (derived if index % 2 else by_hand)._output(f"boot {index:02d}\r\n".encode())
        await manager.stop()
        return by_hand.log.tail(24)

    assert asyncio.run(scenario()) == [f"boot {index:02d}" for index in range(24)]


def test_the_hub_of_a_uuid_gone_with_its_domain_is_closed(tmp_path: Path) -> None:
    """After a hand-started Xen domain (a UUID of its own) stops, its name stands for the
    config file's UUID again: the other hub would otherwise retry a console forever."""
    import asyncio

    from vpsshell.backends.base import DomainInfo, DomainState, LifecycleEvent
    from vpsshell.backends.sim import SimBackend
    from vpsshell.daemon.consoles import ConsoleManager

    async def scenario() -> tuple[bool, bool, bool]:
        web1 = {"name": "web1", "vcpus": 1, "memory_mib": 128, "boot_seconds": 0}
        backend = SimBackend.from_config({"domains": [web1]}, str(tmp_path / "state"))
        await backend.open()
        manager = ConsoleManager(
            backend,
            str(tmp_path),
            ring_bytes=4096,
            log_bytes=1 << 16,
            log_files=2,
            queue_bytes=4096,
            on_detach=lambda attachment, reason: None,
        )
        [info] = await backend.list_domains()
        kept = manager.hub_for(info)
        gone_uuid = "22222222-2222-4222-8222-222222222222"
        manager.hub_for(DomainInfo("web1", gone_uuid, DomainState.RUNNING, 1, 128, 5, "h"))
        backend.emit(LifecycleEvent("stopped", info.uuid, "web1", "destroyed"))
        backend.emit(LifecycleEvent("stopped", gone_uuid, "web1", "destroyed"))
        for _ in range(200):
            if gone_uuid not in manager.hubs:
                break
            await asyncio.sleep(0.01)
        closed = gone_uuid not in manager.hubs
        still = manager.hubs.get(info.uuid) is kept
        await manager.stop()
        await backend.close()
        return closed, still, kept.log is manager.logs["web1"]

    assert asyncio.run(scenario()) == (True, True, True)
