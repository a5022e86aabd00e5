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
