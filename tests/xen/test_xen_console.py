"""The xen console stream (xen_console) on a real pty pair standing in for xenconsoled's.

The test holds the master end, as xenconsoled does; the stream opens the slave by its path like
the backend opens ``/local/domain/ID/console/tty``. No Xen needed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpsshell.backends import xen_console
from vpsshell.backends.xen_console import (
    XenConsoleStream,
    open_pty,
    release_console_lock,
    take_console_lock,
)
from vpsshell.errors import ActionFailed, TemporaryFailure


@pytest.fixture(autouse=True)
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(xen_console, "XENCONSOLE_LOCK_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)
    yield master, path
    try:
        os.close(master)
    except OSError:
        pass


def read_master(master: int, want: bytes) -> bytes:
    seen = b""
    while want not in seen:
        seen += os.read(master, 4096)
    return seen


def test_bytes_pass_raw_both_ways_and_the_stream_ends_with_the_pty(
    pty_pair: tuple[int, str], lock_dir: Path
) -> None:
    master, path = pty_pair

    async def main() -> None:
        lock = take_console_lock(7, "web1")
        stream = XenConsoleStream(open_pty(path, "web1"), lock, 7, "web1")
        os.write(master, b"login: \r\n\x1b[6n")
        seen = b""
        while b"\x1b[6n" not in seen:
            seen += await asyncio.wait_for(stream.read(), 5)
        assert seen == b"login: \r\n\x1b[6n"  # nothing translated, nothing echoed
        await stream.write(b"root\r\x03")
        assert await asyncio.to_thread(read_master, master, b"\x03") == b"root\r\x03"
        os.close(master)  # xenconsoled closes the pty: the domain went away
        while await asyncio.wait_for(stream.read(), 5):
            pass
        assert stream.ended
        with pytest.raises(ActionFailed, match="closed"):
            await stream.write(b"x")
        await stream.close()
        await stream.close()  # idempotent
        assert not (lock_dir / "xenconsole.7").exists()

    asyncio.run(main())


def test_closing_the_stream_releases_xl_consoles_lock(pty_pair: tuple[int, str]) -> None:
    _, path = pty_pair

    async def main() -> None:
        lock = take_console_lock(7, "web1")
        with pytest.raises(TemporaryFailure, match="in use by an administrator"):
            take_console_lock(7, "web1")  # as xl console would find it
        stream = XenConsoleStream(open_pty(path, "web1"), lock, 7, "web1")
        await stream.close()
        assert await stream.read() == b""
        release_console_lock(7, take_console_lock(7, "web1"))

    asyncio.run(main())


@pytest.mark.parametrize("path", ["/dev/null", "/etc/passwd", "/dev/pts/../../etc/passwd", ""])
def test_anything_but_a_pty_is_refused(path: str) -> None:
    with pytest.raises(ActionFailed, match="not a pty"):
        open_pty(path, "web1")


def test_a_pty_path_that_is_not_a_pty_slave_is_refused(tmp_path: Path) -> None:
    with pytest.raises((ActionFailed, TemporaryFailure)):
        open_pty("/dev/pts/999999", "web1")
