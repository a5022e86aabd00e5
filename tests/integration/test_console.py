"""Consoles through a real pty as real tenants: attach, type, detach, watch, take over, replay,
reboot while attached, revoke, and a stalled watcher that must not slow the writer."""

from __future__ import annotations

import io
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from harness import BIN, Helper, python_as, run, start_and_wait, wait_until

PROMPT = r"root@web1:~\$ "


def console(helper: Helper, user: str, *options: str) -> pexpect.spawn:
    return pexpect.spawn(
        "runuser",
        [
            "-u",
            user,
            "--",
            "env",
            f"VPSSHELL_SOCKET={helper.socket}",
            "TERM=xterm",
            str(BIN / "vpsshell"),
            "-c",
            " ".join(["console", "web1", *options]),
        ],
        timeout=15,
    )


def login(session: pexpect.spawn) -> None:
    session.expect("Press Ctrl-] to detach")
    session.send("\r")
    session.expect("login: ")
    session.send("root\r")
    session.expect("Password: ")
    session.send("secret\r")
    session.expect(PROMPT)


def finish(session: pexpect.spawn) -> int:
    session.expect(pexpect.EOF)
    session.close()
    return int(session.exitstatus)


@pytest.fixture
def running(helper: Helper) -> Iterator[Helper]:
    start_and_wait(helper, "vpst-alice", "web1")
    yield helper


def test_type_into_the_guest_and_detach_leaves_the_terminal_sane(running: Helper) -> None:
    session = console(running, "vpst-alice")
    login(session)
    session.send("echo hello-from-the-tenant\r")
    session.expect("hello-from-the-tenant")
    session.expect(PROMPT)
    session.send("\x1d")
    assert finish(session) == 0
    # `stty -a` of one terminal before attaching and after detaching: unchanged
    probe = pexpect.spawn(
        "/bin/sh",
        [
            "-c",
            f"stty -a; runuser -u vpst-alice -- env VPSSHELL_SOCKET={running.socket} "
            f"{BIN / 'vpsshell'} -c 'console web1 --no-replay'; echo ===; stty -a",
        ],
        timeout=15,
    )
    transcript = io.BytesIO()
    probe.logfile_read = transcript
    probe.expect("Press Ctrl-] to detach")
    probe.send("\x1d")
    probe.expect(pexpect.EOF)
    settings = re.findall(r"speed .*?extproc", transcript.getvalue().decode(), re.S)
    assert len(settings) == 2 and "icanon" in settings[0]
    assert settings[0] == settings[1]


def test_two_watchers_and_a_writer_see_the_same_bytes(running: Helper) -> None:
    writer = console(running, "vpst-alice")
    watchers = [console(running, "vpst-alice", "--watch") for _ in range(2)]
    for watcher in watchers:
        watcher.expect("Watching the console of web1")
    login(writer)
    writer.send("echo shared-output-123\r")
    writer.expect("shared-output-123")
    for watcher in watchers:
        watcher.expect("shared-output-123")
        watcher.send("echo typed-by-a-watcher\r")  # goes nowhere
    writer.send("echo second\r")
    writer.expect("second")
    assert b"typed-by-a-watcher" not in writer.before
    for session in [writer, *watchers]:
        session.send("\x1d")
        assert finish(session) == 0


def test_second_writer_is_refused_unless_takeover(running: Helper) -> None:
    first = console(running, "vpst-alice")
    first.expect("Press Ctrl-]")
    refused = run("vpst-alice", running, "console web1")
    assert refused.code == 75 and "--takeover" in refused.err
    assert "vpst" not in refused.err  # names nobody
    second = console(running, "vpst-alice", "--takeover")
    second.expect("Press Ctrl-]")
    first.expect("taken over by vpst-alice")
    assert finish(first) == 75
    second.send("\x1d")
    assert finish(second) == 0
    reasons = [line.get("result") for line in running.audit() if line["action"] == "console-detach"]
    assert "takeover" in reasons and "detached" in reasons


def test_replay_shows_what_came_before(running: Helper) -> None:
    first = console(running, "vpst-alice")
    login(first)
    first.send("echo before-attach-marker\r")
    first.expect(PROMPT)
    first.send("\x1d")
    assert finish(first) == 0
    replayed = console(running, "vpst-alice", "--watch")
    replayed.expect("before-attach-marker")
    replayed.send("\x1d")
    finish(replayed)
    quiet = console(running, "vpst-alice", "--watch", "--no-replay")
    quiet.expect("Press Ctrl-]")
    quiet.send("\x1d")
    finish(quiet)
    assert b"before-attach-marker" not in quiet.before


def test_reboot_while_attached_keeps_the_session(running: Helper) -> None:
    session = console(running, "vpst-alice", "--no-replay")
    session.expect("Press Ctrl-]")
    assert run("vpst-alice", running, "reboot web1").code == 0
    session.expect("Linux version", timeout=20)
    session.expect("login: ", timeout=20)
    session.send("root\r")
    session.expect("Password: ")
    session.send("secret\r")
    session.expect(PROMPT)
    session.send("\x1d")
    assert finish(session) == 0


def test_revoking_console_access_ends_a_live_session(running: Helper) -> None:
    session = console(running, "vpst-alice")
    session.expect("Press Ctrl-]")
    running.write_policy(
        "10-tenants.policy",
        "allow user:vpst-alice @viewer web1\n",  # watch stays, console goes
    )
    session.expect("console ended|access to web1", timeout=10)
    assert finish(session) == 77
    watcher = console(running, "vpst-alice", "--watch")
    watcher.expect("Watching")
    watcher.send("\x1d")
    assert finish(watcher) == 0


def test_bob_cannot_attach_or_watch_or_read_the_log(running: Helper) -> None:
    for line in ("console web1", "console web1 --watch", "log web1", "sysrq web1 m"):
        result = run("vpst-bob", running, line)
        assert result.code == 77, (line, result)


def test_log_and_sysrq(running: Helper) -> None:
    assert run("vpst-alice", running, "sysrq web1 m").code == 0
    wait_until(
        lambda: "sysrq: Show Memory" in run("vpst-alice", running, "log web1").out,
        10,
        "sysrq line in the console log",
    )
    log = run("vpst-alice", running, "log web1 --lines=3 --json").json()
    assert log["domain"] == "web1" and len(log["lines"]) == 3
    assert run("vpst-alice", running, "sysrq web1 MM").code == 64
    assert run("vpst-alice", running, "log web1 --lines=0").code == 64


def test_a_stalled_watcher_does_not_slow_the_writer(open_dir: Path, tenants: None) -> None:
    helper = Helper(open_dir / "small-queue", extra_config="")
    helper.config.write_text(
        helper.config.read_text().replace(
            "[limits]\n",
            "[limits]\nconsole_client_queue_bytes = 16384\n"
            # the writer types ~750 KB here: no input rate limit in the way
            "console_input_bytes_per_second = 1073741824\n"
            "console_input_burst_bytes = 1073741824\n",
        )
    )
    helper.start()
    try:
        assert run("vpst-alice", helper, "start web1").code == 0
        wait_until(
            lambda: run("vpst-alice", helper, "status web1 --json").json()["state"] == "running",
            10,
            "web1 running",
        )
        stalled = subprocess.Popen(  # attaches as a watcher and never reads a byte
            python_as(
                "vpst-alice",
                "import socket, sys, time\n"
                "from vpsshell import protocol\n"
                "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                "request = protocol.request(1, 'watch', {'domain': 'web1'})\n"
                "s.sendall(protocol.encode_message(request))\n"
                "time.sleep(120)\n",
                str(helper.socket),
            )
        )
        wait_until(
            lambda: any(line.get("action") == "watch" for line in helper.audit()),
            10,
            "the stalled watcher attached",
        )
        writer = console(helper, "vpst-alice", "--no-replay")
        writer.delaybeforesend = None
        login(writer)
        started = time.monotonic()
        line = "x" * 3000
        for index in range(250):  # ~1.5 MB of output (echo + answer), far beyond the queue
            writer.send(f"echo {index}-{line}\r")
            writer.expect(f"{index}-x")
        elapsed = time.monotonic() - started
        writer.send("\x1d")
        assert finish(writer) == 0
        dropped = [
            entry
            for entry in helper.audit()
            if entry["action"] == "console-detach" and entry.get("result") == "too-slow"
        ]
        assert dropped, "the stalled watcher was never dropped"
        print(f"250 round trips with a stalled watcher: {elapsed:.2f} s")
        stalled.kill()
        stalled.wait()
    finally:
        helper.stop()


def test_admin_lists_and_kicks_console_sessions(running: Helper) -> None:
    session = console(running, "vpst-alice", "--watch")
    session.expect("Press Ctrl-] to detach")
    listed = running.admin("sessions")
    assert [(s["user"], s["domain"], s["mode"]) for s in listed] == [
        ("vpst-alice", "web1", "watch")
    ]
    assert running.admin("kick", user="vpst-alice") == {"kicked": 1}
    session.expect("administrator ended")
    assert finish(session) == 77
    assert running.admin("sessions") == []


def test_log_of_a_long_console_fits_one_reply(running: Helper) -> None:
    session = console(running, "vpst-alice", "--no-replay")
    login(session)
    session.delaybeforesend = None
    for index in range(40):  # ~120 KB of console output, more than one frame holds
        session.send(f"echo {index}-{'y' * 3000}\r")
        session.expect(f"{index}-y")
    session.send("\x1d")
    assert finish(session) == 0
    result = run("vpst-alice", running, "log web1 --lines=10000 --json")
    assert result.code == 0, result.err
    log = result.json()
    assert log["truncated"] is True
    assert log["lines"][-1].startswith("root@web1")  # the newest lines are the ones kept


def test_stopping_the_helper_tells_attached_consoles_why(running: Helper) -> None:
    session = console(running, "vpst-alice")
    session.expect("Press Ctrl-]")
    assert running.stop() == 0
    session.expect("the vpsshell helper is stopping")
    assert finish(session) == 69
