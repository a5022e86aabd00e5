"""An ``events --follow`` session whose other end is silent ends within a bound, on either side.

A follower that is there but says nothing (a process stopped or stuck, a tenant's machine gone
without closing the connection) must not stay registered until the session's week is over: the
helper pings it as it pings a console and drops it after ``session_ping_misses`` unanswered
intervals, with a line in its log. A helper that stops answering must not leave the tenant
waiting for events that will never come: ``events --follow`` says so and exits 69 within the
same bound. A follower that answers is never dropped, however quiet its domains are: the
follow command's, and the interactive shell's toolbar's (its ``DomainWatch`` keeps a stream).

Real helper (a ping a second, two misses), real tenant, the installed ``vpsshell``; the raw
followers are ``python_as`` scripts speaking the real framing.
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
from harness import BIN, Helper, exit_while_frozen, python_as, start_and_wait, wait_until

TENANT = "vpst-alice"
PING_SECONDS, PING_MISSES = 1, 2
BOUND = PING_SECONDS * PING_MISSES
STARTED: list[subprocess.Popen[bytes]] = []  # killed at the end of each test

# Follows the events of web1 and prints one line per session message it reads ("ping 1 2",
# "record started", "closed REASON"), then "end" at the end of the connection. It answers the
# pings only when its first argument says so; it never sends anything else.
RAW_FOLLOWER = r"""
import socket, sys
from vpsshell import protocol
answer = sys.argv[2] == "answer"
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
args = {"domain": "web1", "follow": True, "lines": 0}
sock.sendall(protocol.encode_message(protocol.request(1, "events", args)))
reader = protocol.FrameReader()
replied = False
while chunk := sock.recv(65536):
    for _, payload in reader.feed(chunk):
        message = protocol.decode_message(payload)
        if not replied:
            replied = True
            print("replied" if message.get("ok") else message, flush=True)
            continue
        event = message.get("event")
        if event == "ping":
            print(f"ping {message['seconds']:g} {message['misses']}", flush=True)
            if answer:
                sock.sendall(protocol.encode_message(protocol.pong()))
        elif event == "record":
            print("record", message["record"]["kind"], flush=True)
        else:
            print(event, message.get("reason"), flush=True)
print("end", flush=True)
"""

# The interactive shell's background watch (toolbar and completion), running until its input
# ends; then it says whether its event stream is still up.
TOOLBAR_WATCH = r"""
import asyncio, sys
from vpsshell.shell.watch import DomainWatch
async def main():
    watch = DomainWatch(sys.argv[1], refresh_seconds=3600)
    running = asyncio.create_task(watch.run(lambda: None))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    print("following" if watch.following else "not following", flush=True)
    running.cancel()
    watch.close()
asyncio.run(main())
"""


@pytest.fixture
def pinging(open_dir: Path, tenants: None) -> Iterator[Helper]:
    """A helper that pings every second and gives up after two silent ones."""
    helper = Helper(
        open_dir / "helper",
        extra_limits=f"session_ping_seconds = {PING_SECONDS}\nsession_ping_misses = {PING_MISSES}",
    ).start()
    try:
        yield helper
    finally:
        if helper.process is not None:
            helper.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
        while STARTED:
            process = STARTED.pop()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        helper.stop()


def spawned(argv: list[str], stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """``argv`` (a ``runuser`` line) in a process group of its own, output piped; killed at
    the end of the test."""
    process = subprocess.Popen(
        argv,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    STARTED.append(process)
    return process


def raw_follower(helper: Helper, answer: bool) -> subprocess.Popen[bytes]:
    follower = spawned(
        python_as(TENANT, RAW_FOLLOWER, str(helper.socket), "answer" if answer else "silent")
    )
    assert read_line(follower) == "replied"
    return follower


def real_follower(helper: Helper) -> subprocess.Popen[bytes]:
    """The real ``vpsshell -c 'events web1 --follow'`` without a terminal (as ``ssh host``
    runs it), once its request has been answered."""
    socket_setting = f"VPSSHELL_SOCKET={helper.socket}"
    vpsshell = [str(BIN / "vpsshell"), "-c", "events web1 --follow --lines=0"]
    follower = spawned(["runuser", "-u", TENANT, "--", "env", "-i", socket_setting, *vpsshell])
    wait_until(lambda: follow_requests(helper) >= 1, 15, "the follow request answered")
    return follower


def follow_requests(helper: Helper) -> int:
    return sum(1 for e in helper.audit() if e["action"] == "events" and e.get("follow"))


def read_line(process: subprocess.Popen[bytes], timeout: float = 15) -> str:
    """The next line of ``process``'s output, or an assertion error after ``timeout``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 1) if ready else b""
        assert chunk, f"no whole line from the follower; got {line!r}"
        line += chunk
    return line.decode().rstrip("\n")


def read_until(process: subprocess.Popen[bytes], wanted: str) -> list[str]:
    """Lines of ``process``'s output up to and with the first that contains ``wanted``."""
    lines = [read_line(process)]
    while wanted not in lines[-1]:
        lines.append(read_line(process))
    return lines


def several_bounds_pass(answering: subprocess.Popen[bytes]) -> None:
    """Wait for three times the bound without an event, counted by the pings an answering
    raw follower reads."""
    pings = [read_line(answering) for _ in range(3 * PING_MISSES + 1)]
    assert pings == [f"ping {PING_SECONDS} {PING_MISSES}"] * len(pings)


def dropped(helper: Helper) -> list[str]:
    """The helper's log lines of followers it dropped for not answering."""
    return re.findall(r"events follower of .* dropped: no answer.*", helper.log.read_text())


def test_a_follower_that_reads_but_never_answers_is_dropped(pinging: Helper) -> None:
    silent = raw_follower(pinging, answer=False)
    # pinged at once, with the numbers that bound the silence; then dropped, told why
    assert read_line(silent) == f"ping {PING_SECONDS} {PING_MISSES}"
    seen = read_until(silent, "closed")
    assert seen[-1] == "closed no-answer"
    assert set(seen[:-1]) <= {f"ping {PING_SECONDS} {PING_MISSES}"}
    assert read_line(silent) == "end"
    assert silent.wait(15) == 0
    wait_until(lambda: dropped(pinging), 15, "the drop logged")
    assert re.fullmatch(
        rf"events follower of {TENANT} \(pid \d+\) dropped: no answer for {BOUND:g} s",
        dropped(pinging)[0],
    )


def test_a_stopped_follow_client_is_dropped(pinging: Helper) -> None:
    follower = real_follower(pinging)
    os.killpg(follower.pid, signal.SIGSTOP)
    wait_until(lambda: dropped(pinging), 6 * BOUND, "the stopped follower dropped")
    assert len(dropped(pinging)) == 1
    assert dropped(pinging)[0].startswith(f"events follower of {TENANT} (pid ")


def test_follow_exits_69_when_its_helper_stops_answering(pinging: Helper) -> None:
    follower = real_follower(pinging)
    # an event shown means its session has begun, and so the first ping has come before it
    start_and_wait(pinging, TENANT, "web1")
    assert "web1  started" in read_until(follower, "web1  started")[-1]
    code, err = exit_while_frozen(pinging, follower, 6 * BOUND + 10)
    assert code == 69, err
    assert f"the vpsshell helper stopped answering (nothing from it for {BOUND:g} s)" in err
    assert "Traceback" not in err


def test_a_follower_that_answers_stays_past_many_pings_and_still_gets_events(
    pinging: Helper,
) -> None:
    follower = real_follower(pinging)
    answering = raw_follower(pinging, answer=True)
    several_bounds_pass(answering)
    start_and_wait(pinging, TENANT, "web1")
    assert read_until(answering, "record")[-1] == "record started"
    assert "web1  started" in read_until(follower, "web1  started")[-1]
    assert follower.poll() is None
    assert dropped(pinging) == []


def test_the_interactive_shells_watch_answers_and_keeps_its_one_stream(pinging: Helper) -> None:
    watch = spawned(python_as(TENANT, TOOLBAR_WATCH, str(pinging.socket)), stdin=subprocess.PIPE)
    wait_until(lambda: follow_requests(pinging) == 1, 15, "the watch's stream open")
    answering = raw_follower(pinging, answer=True)
    several_bounds_pass(answering)
    assert watch.stdin is not None
    watch.stdin.close()
    assert read_line(watch) == "following"
    assert dropped(pinging) == []
    assert follow_requests(pinging) == 2  # the watch's one stream, and the raw follower's
