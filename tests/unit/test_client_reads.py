"""How the tenant's client reads the helper: whole replies however the bytes arrive, a wait
that ends, and nothing of a console read before the console's own loop takes the socket.

The "helper" here is a few lines on a real Unix socket in ``tmp_path`` that answer from a
script, so that a test decides exactly how the bytes of a reply are cut into writes.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from vpsshell import protocol
from vpsshell.client import HelperClient
from vpsshell.errors import TemporaryFailure

Answer = Callable[[socket.socket, dict[str, Any]], None]


def _read_request(conn: socket.socket) -> dict[str, Any] | None:
    data = b""
    while (
        len(data) < protocol.HEADER.size
        or len(data)
        < protocol.HEADER.size + (protocol.parse_header(data[: protocol.HEADER.size])[1])
    ):
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return protocol.decode_message(data[protocol.HEADER.size :])


@contextmanager
def scripted_helper(path: Path, answer: Answer) -> Iterator[list[socket.socket]]:
    """A listener at ``path`` whose connections get ``answer(conn, request)`` for each request;
    yields the accepted connections (closed at the end)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    accepted: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with conn, suppress(OSError):  # OSError: closed at the end of the test
            while (request := _read_request(conn)) is not None:
                answer(conn, request)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield accepted
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for conn in accepted:
            conn.close()


def reply(request: dict[str, Any], result: Any) -> bytes:
    return protocol.encode_message(protocol.reply_ok(request["id"], result))


def test_a_reply_is_read_whole_in_one_write_or_one_byte_at_a_time(tmp_path: Path) -> None:
    def answer(conn: socket.socket, request: dict[str, Any]) -> None:
        progress = protocol.encode_message(protocol.progress(request["id"], "working"))
        whole = progress + reply(request, {"n": request["id"]})
        if request["op"] == "together":
            conn.sendall(whole)
        else:  # every byte a write of its own
            for index in range(len(whole)):
                conn.sendall(whole[index : index + 1])

    with scripted_helper(tmp_path / "h.sock", answer):
        client = HelperClient(str(tmp_path / "h.sock"))
        seen: list[str] = []
        assert client.call("together", on_progress=seen.append) == {"n": 1}
        assert client.call("dribbled", on_progress=seen.append) == {"n": 2}
        assert client.call("together") == {"n": 3}  # the same connection all along
        assert seen == ["working", "working"]
        client.close()


def test_a_reply_that_never_comes_ends_as_a_temporary_failure(tmp_path: Path) -> None:
    def answer(conn: socket.socket, request: dict[str, Any]) -> None:
        if request["op"] == "hang":
            return  # read, never answered
        conn.sendall(reply(request, "fine"))

    with scripted_helper(tmp_path / "h.sock", answer) as accepted:
        client = HelperClient(str(tmp_path / "h.sock"))
        with pytest.raises(TemporaryFailure, match="timed out waiting for the vpsshell helper"):
            client.call("hang", timeout=0.3)
        assert client.call("ping") == "fine"  # on a new connection: the old one was given up
        assert len(accepted) == 2
        client.close()


def test_what_follows_a_console_reply_is_left_on_the_socket(tmp_path: Path) -> None:
    """The helper sends the first console output right behind the reply, often in the same
    write: the console's loop must find it on the socket."""
    output = protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, b"login: ")

    def answer(conn: socket.socket, request: dict[str, Any]) -> None:
        conn.sendall(reply(request, {"attached": True}) + output)

    with scripted_helper(tmp_path / "h.sock", answer):
        client = HelperClient(str(tmp_path / "h.sock"))
        result, sock = client.open_console("console", {"domain": "web1"})
        with sock:
            assert result == {"attached": True}
            unbounded = struct.pack("@ll", 0, 0)
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):  # waits as long as it takes
                assert sock.getsockopt(socket.SOL_SOCKET, option, len(unbounded)) == unbounded
            sock.settimeout(10)  # a failure, not a hang, if the output was swallowed
            received = b""
            while len(received) < len(output):
                received += sock.recv(65536)
            assert received == output
