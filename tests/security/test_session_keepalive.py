"""A console session whose other end is silent ends within a bound, and frees what it held.

A console client that is there but says nothing (a process stopped or stuck, a tenant's machine
gone without closing the connection) must not hold the domain's writer slot for days: the
helper pings it and drops it after ``session_ping_misses`` unanswered intervals. A helper that
stops answering (stopped, stuck) must not leave the tenant staring at a dead console: the client
says so and exits 69 within the same bound. And the shipped sshd snippet drops dead tenant
connections itself (``ClientAlive*``).

Real helper (short ping interval), real tenants, the installed ``vpsshell``; the raw client is a
``python_as`` script that opens a console with the real framing and then never reads again.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import BIN, Helper, exit_while_frozen, python_as, run, start_and_wait, wait_until

TENANT = "vpst-alice"
PING_SECONDS, PING_MISSES = 1, 3
BOUND = PING_SECONDS * PING_MISSES
ROOT = Path(__file__).resolve().parents[2]
STARTED: list[subprocess.Popen[bytes]] = []  # killed at the end of each test

# Opens a write session on web1, says "attached" once the reply is in, then neither reads nor
# sends anything until its stdin closes.
SILENT_CONSOLE = r"""
import socket, sys
from vpsshell import protocol
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
sock.sendall(protocol.encode_message(protocol.request(1, "console", {"domain": "web1"})))
reader = protocol.FrameReader()
while not (frames := reader.feed(sock.recv(1))):
    pass
print("attached" if protocol.decode_message(frames[0][1]).get("ok") else frames, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def pinging(open_dir: Path, tenants: None) -> Iterator[Helper]:
    """A helper that pings every second and gives up after three silent ones, web1 running."""
    helper = Helper(
        open_dir / "helper",
        extra_limits=f"session_ping_seconds = {PING_SECONDS}\nsession_ping_misses = {PING_MISSES}",
    ).start()
    try:
        start_and_wait(helper, TENANT, "web1")
        yield helper
    finally:
        if helper.process is not None:
            helper.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
        while STARTED:
            process = STARTED.pop()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        helper.stop()


def spawned(argv: list[str]) -> subprocess.Popen[bytes]:
    """``argv`` (a ``runuser`` line) in a process group of its own, so that a signal reaches
    the tenant's process, with its three standard streams piped; killed at the end of the test."""
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    STARTED.append(process)
    return process


def console_client(helper: Helper) -> subprocess.Popen[bytes]:
    """The real ``vpsshell -c 'console web1'`` without a terminal, its input held open, once
    it is in its session and the helper has surely sent it the first ping (an admin request
    answered after the client's reply comes after the ping on the helper's loop)."""
    socket_setting = f"VPSSHELL_SOCKET={helper.socket}"
    vpsshell = [str(BIN / "vpsshell"), "-c", "console web1 --no-replay"]
    client = spawned(["runuser", "-u", TENANT, "--", "env", socket_setting, *vpsshell])
    assert client.stderr is not None
    read_until(client.stderr.fileno(), b"Press Ctrl-] to detach")
    assert [s["mode"] for s in helper.admin("sessions")] == ["write"]
    return client


def read_until(stream: int, wanted: bytes, timeout: float = 15) -> None:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(stream, 1) if ready else b""
        assert chunk, f"never saw {wanted!r}; got {seen!r}"
        seen += chunk


def console_detaches(helper: Helper) -> list[str]:
    return [e["result"] for e in helper.audit() if e["action"] == "console-detach"]


def writer_slot_is_free(helper: Helper) -> None:
    """No session left, and the tenant's next ``console web1`` gets the writer slot (not 75)."""
    wait_until(lambda: helper.admin("sessions") == [], 3 * BOUND, "the silent session to end")
    again = run(TENANT, helper, "console web1 --no-replay")
    assert again.code == 0, again


def test_a_client_that_never_reads_or_answers_is_dropped_and_frees_the_writer_slot(
    pinging: Helper,
) -> None:
    silent = spawned(python_as(TENANT, SILENT_CONSOLE, str(pinging.socket)))
    assert silent.stdout is not None
    assert silent.stdout.readline() == b"attached\n"
    wait_until(lambda: console_detaches(pinging), 3 * BOUND, "the silent client to be dropped")
    assert console_detaches(pinging) == ["no-answer"]
    writer_slot_is_free(pinging)


def test_a_stopped_console_client_is_dropped_and_frees_the_writer_slot(pinging: Helper) -> None:
    client = console_client(pinging)
    os.killpg(client.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: console_detaches(pinging), 3 * BOUND, "the stopped client dropped")
        assert console_detaches(pinging) == ["no-answer"]
        writer_slot_is_free(pinging)
    finally:
        os.killpg(client.pid, signal.SIGCONT)


def test_a_console_client_whose_helper_stops_answering_says_so_and_exits_69(
    pinging: Helper,
) -> None:
    client = console_client(pinging)
    code, err = exit_while_frozen(pinging, client, 3 * BOUND + 10)
    assert code == 69, err
    assert f"the vpsshell helper stopped answering (nothing from it for {BOUND:g} s)" in err
    assert "Traceback" not in err


def test_the_shipped_sshd_snippet_drops_dead_tenant_connections() -> None:
    text = (ROOT / "sshd" / "vpsshell.conf").read_text()
    match_block = text.split("\nMatch Group vpsshell\n", 1)[1]
    settings = dict(
        re.findall(r"^\s*(ClientAlive\w+)\s+(\S+)\s*$", match_block, flags=re.MULTILINE)
    )
    assert settings == {"ClientAliveInterval": "30", "ClientAliveCountMax": "3"}
