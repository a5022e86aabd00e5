"""XenStore through pyxs (xen_store) against a small XenStore server on a Unix socket.

The server speaks XenStore's wire protocol (xs_wire.h: a 16-byte header, then the payload) for
the few requests the backend makes, and can be told to stop answering or to drop connections:
the situations in which pyxs 0.4.1 by itself waits forever. Runs everywhere; needs pyxs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pyxs", reason="pyxs is not installed (vpsshell[xen])")

from vpsshell.backends.xen_store import XenStore, XenStoreUnavailable  # noqa: E402

HEADER = struct.Struct("IIII")  # type, req_id, tx_id, len
READ, GET_PERMS, WATCH, UNWATCH, WATCH_EVENT, ERROR = 2, 3, 4, 5, 15, 16


class FakeXenStored:
    """A XenStore server for READ, GET_PERMS and WATCH, with failure modes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.nodes: dict[str, str] = {}
        self.owners: dict[str, int] = {}
        self.answering = True
        self.watchers: list[tuple[socket.socket, bytes, bytes]] = []
        self.connections: list[socket.socket] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                header = _recv(conn, HEADER.size)
                op, rq_id, tx_id, size = HEADER.unpack(header)
                payload = _recv(conn, size) if size else b""
                self.requests += 1
                if not self.answering:
                    continue
                args = payload.split(b"\x00")
                if op == READ:
                    value = self.nodes.get(args[0].decode())
                    if value is None:
                        self._send(conn, ERROR, rq_id, b"ENOENT\x00")
                    else:
                        self._send(conn, READ, rq_id, value.encode())
                elif op == GET_PERMS:
                    owner = self.owners.get(args[0].decode(), 0)
                    self._send(conn, GET_PERMS, rq_id, f"n{owner}\x00".encode())
                elif op == WATCH:
                    with self._lock:
                        self.watchers.append((conn, args[0], args[1]))
                    self._send(conn, WATCH, rq_id, b"OK\x00")
                    self._event(conn, args[0], args[1])  # a watch fires once when set
                elif op == UNWATCH:
                    self._send(conn, UNWATCH, rq_id, b"OK\x00")
                else:
                    self._send(conn, ERROR, rq_id, b"EINVAL\x00")

    def _send(self, conn: socket.socket, op: int, rq_id: int, payload: bytes) -> None:
        conn.sendall(HEADER.pack(op, rq_id, 0, len(payload)) + payload)

    def _event(self, conn: socket.socket, path: bytes, token: bytes) -> None:
        self._send(conn, WATCH_EVENT, 0, path + b"\x00" + token + b"\x00")

    def fire(self, path: bytes) -> None:
        with self._lock:
            watchers = list(self.watchers)
        for conn, watched, token in watchers:
            if watched == path:
                with contextlib.suppress(OSError):
                    self._event(conn, path, token)

    def drop_connections(self) -> None:
        with self._lock:
            connections, self.connections, self.watchers = self.connections, [], []
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self._listener.close()
        self.drop_connections()


def _recv(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


@pytest.fixture
def xenstored(tmp_path: Path) -> Iterator[FakeXenStored]:
    server = FakeXenStored(tmp_path / "socket")
    yield server
    server.close()


async def _eventually(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_reads_values_owners_and_missing_nodes(xenstored: FakeXenStored) -> None:
    xenstored.nodes["/local/domain/3/vm"] = "/vm/abc"
    xenstored.owners["/local/domain/3/console/tty"] = 3

    async def main() -> None:
        store = XenStore(str(xenstored.path), lambda what: None, call_timeout=2)
        try:
            assert await store.read("/local/domain/3/vm") == "/vm/abc"
            assert await store.read("/local/domain/3/name") is None
            assert await store.owner("/local/domain/3/console/tty") == 3
            assert await store.owner("/local/domain/3/vm") == 0
        finally:
            await store.close()

    asyncio.run(main())


def test_a_call_that_gets_no_answer_fails_after_its_deadline_and_the_next_reconnects(
    xenstored: FakeXenStored,
) -> None:
    """pyxs 0.4.1 would wait for this answer forever."""
    xenstored.nodes["/a"] = "1"

    async def main() -> None:
        store = XenStore(str(xenstored.path), lambda what: None, call_timeout=0.5)
        try:
            assert await store.read("/a") == "1"
            xenstored.answering = False
            began = time.monotonic()
            with pytest.raises(XenStoreUnavailable, match="did not answer"):
                await asyncio.wait_for(store.read("/a"), 10)
            assert time.monotonic() - began < 5
            xenstored.answering = True
            assert await store.read("/a") == "1"
            assert len(xenstored.connections) >= 2  # a new connection
        finally:
            await store.close()

    asyncio.run(main())


def test_a_dropped_connection_fails_a_call_and_the_next_reconnects(
    xenstored: FakeXenStored,
) -> None:
    xenstored.nodes["/a"] = "1"

    async def main() -> None:
        store = XenStore(str(xenstored.path), lambda what: None, call_timeout=2)
        try:
            assert await store.read("/a") == "1"
            xenstored.drop_connections()
            await asyncio.sleep(0.2)
            for _ in range(2):  # the dead connection is noticed, then replaced
                with contextlib.suppress(XenStoreUnavailable):
                    if await asyncio.wait_for(store.read("/a"), 10) == "1":
                        break
            assert await asyncio.wait_for(store.read("/a"), 10) == "1"
        finally:
            await store.close()

    asyncio.run(main())


def test_no_xenstored_is_unavailable_not_a_hang(tmp_path: Path) -> None:
    async def main() -> None:
        store = XenStore(str(tmp_path / "nothing"), lambda what: None, call_timeout=1)
        try:
            with pytest.raises(XenStoreUnavailable, match="cannot connect"):
                await asyncio.wait_for(store.read("/a"), 10)
        finally:
            await store.close()

    asyncio.run(main())


def test_watches_reach_the_loop_thread_and_come_back_after_a_drop(
    xenstored: FakeXenStored,
) -> None:
    seen: list[tuple[str, str]] = []

    async def main() -> None:
        loop_thread = threading.current_thread().name
        store = XenStore(
            str(xenstored.path),
            lambda what: seen.append((what, threading.current_thread().name)),
            call_timeout=1,
        )
        store.start()
        try:
            # connected, and each watch fires once when it is set
            await _eventually(
                lambda: {"@introduceDomain", "@releaseDomain"} <= {w for w, _ in seen}
            )
            assert store.watching
            seen.clear()
            xenstored.fire(b"@releaseDomain")
            await _eventually(lambda: ("@releaseDomain", loop_thread) in seen)
            xenstored.drop_connections()
            await _eventually(lambda: any(w == "lost" for w, _ in seen))
            await _eventually(lambda: store.watching and len(xenstored.watchers) == 2)
            seen.clear()
            xenstored.fire(b"@introduceDomain")
            await _eventually(lambda: ("@introduceDomain", loop_thread) in seen)
            assert {thread for _, thread in seen} == {loop_thread}
        finally:
            await store.close()

    asyncio.run(main())
