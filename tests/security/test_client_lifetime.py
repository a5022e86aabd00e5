"""A console (or ``events --follow``) client ends with its tenant, and always detaches cleanly.

Issue 12, "found by a new user": ``ssh host console web1`` without ``-t`` never ended when the
ssh client went away; the remote ``vpsshell`` stayed (parent PID 1) holding the console's writer
slot, and the next attach got 75. And a ``vpsshell`` started with SIGINT ignored (a background
job, ``nohup``) could not be stopped with Ctrl-C.

Everything here is real: a real helper, real tenants (``runuser``/``Popen(user=)``), the
installed ``vpsshell``; the headline cases go through OpenSSH's sshd without a pty
(``tests/e2e/sshsite.py``). "Cleanly" is read from the helper: its ``sessions`` list is empty the
moment the client has exited, and its audit log says ``detached`` (a client that vanished
without a word is ``disconnected``).
"""

from __future__ import annotations

import io
import os
import pwd
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from harness import BIN, Helper, run, start_and_wait, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from sshclient import SshConnection  # noqa: E402
from sshsite import ALICE, SshSite, site_for_module, site_helper  # noqa: E402

from vpsshell.shell.outcome import INTERRUPTED  # noqa: E402

TENANT = "vpst-alice"
GUEST_PROMPT = "root@web1:~$ "


# -- helpers ----------------------------------------------------------------------------------


STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def no_client_outlives_its_test() -> Iterator[None]:
    """A client that never ends (the bug) must not hold anything into the next test."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


def tenant_process(
    helper: Helper,
    line: str | None,
    *,
    ignoring: tuple[str, ...] = (),
    stdin: Any = subprocess.PIPE,
    stdout: Any = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """``vpsshell -c LINE`` (None: ``vpsshell``, interactive) as the tenant, with no terminal
    (as sshd runs it without ``-t``). ``ignoring``: signals the shell inherits as ignored
    (``trap '' ...; exec``: the same pid)."""
    account = pwd.getpwnam(TENANT)
    argv = [str(BIN / "vpsshell")] + (["-c", line] if line is not None else [])
    if ignoring:
        argv = ["/bin/sh", "-c", f'trap \'\' {" ".join(ignoring)}; exec "$0" "$@"', *argv]
    process = subprocess.Popen(
        argv,
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=os.getgrouplist(account.pw_name, account.pw_gid),
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "VPSSHELL_SOCKET": str(helper.socket)},
        cwd="/",
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    STARTED.append(process)
    return process


def attached(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Wait for the client's banner: from then on it is in its session (the helper's record
    of the session comes earlier, before the client has its reply)."""
    assert process.stderr is not None
    fd = process.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while b"Press Ctrl-] to detach" not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 1) if ready else b""
        assert chunk, f"no console banner; the client said {seen!r}"
        seen += chunk


def session_of(helper: Helper, mode: str = "write") -> dict[str, Any]:
    """The helper's record of the one console session in ``mode`` (waits for it)."""

    def found() -> list[dict[str, Any]]:
        return [s for s in helper.admin("sessions") if s["mode"] == mode]

    sessions: list[dict[str, Any]] = wait_until(found, 15, f"a {mode} console session")
    assert len(sessions) == 1, sessions
    return sessions[0]


def detaches(helper: Helper) -> list[str]:
    """Why each console session ended, in order, as the helper audited it."""
    return [e["result"] for e in helper.audit() if e["action"] == "console-detach"]


def ended(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, str]:
    """Wait for the client to end by itself; its status and its stderr."""
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"the client did not end within {timeout} s") from None
    err = process.stderr.read().decode(errors="replace") if process.stderr else ""
    assert "Traceback" not in err, err
    return code, err


def next_attach_succeeds(helper: Helper) -> None:
    """The tenant's next ``console web1`` gets the writer slot (not 75); its stdin is
    /dev/null (``ssh -n``), so it detaches by itself once the console is quiet."""
    again = run(TENANT, helper, "console web1 --no-replay")
    assert again.code == 0, again
    assert "end of input; detached" in again.err, again


@pytest.fixture
def running(helper: Helper) -> Iterator[Helper]:
    start_and_wait(helper, TENANT, "web1")
    yield helper


# -- the drain after the end of piped input, against a scripted helper (no root) ----------------


class ScriptedHelper(threading.Thread):
    """The helper's end of a console session: console output every ``every`` seconds (for
    ``chatter`` seconds), and a ``closed`` reply to a ``detach``."""

    def __init__(self, sock: socket.socket, every: float, chatter: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.every, self.chatter = sock, every, chatter
        self.received: list[tuple[int, bytes]] = []
        self.detached_at: float | None = None

    def run(self) -> None:
        from vpsshell import protocol

        reader = protocol.FrameReader()
        started = time.monotonic()
        while self.detached_at is None:
            if time.monotonic() - started < self.chatter:
                data = protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, b"tick\r\n")
                self.sock.sendall(data)
            ready, _, _ = select.select([self.sock], [], [], self.every)
            if not ready:
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            for frame in reader.feed(chunk):
                self.received.append(frame)
                if frame[0] == protocol.FRAME_MESSAGE and b'"detach"' in frame[1]:
                    self.detached_at = time.monotonic()
        closed = {"v": 1, "event": "closed", "reason": "detached", "text": "detached"}
        self.sock.sendall(protocol.encode_message(closed))
        self.sock.close()


def console_over_pipes(
    monkeypatch: pytest.MonkeyPatch, typed: bytes, every: float, chatter: float
) -> tuple[int, float, ScriptedHelper, bytes]:
    """``run_console`` with piped input ``typed`` (then its end) and piped output; returns its
    exit code, how long it ran after the end of the input, the helper, and the output."""
    from vpsshell.shell import console
    from vpsshell.shell.environment import Environment

    monkeypatch.setattr(console, "QUIET_SECONDS", 0.5)
    monkeypatch.setattr(console, "LINGER_SECONDS", 2.0)
    ours, theirs = socket.socketpair()
    helper = ScriptedHelper(theirs, every, chatter)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    os.write(stdin_w, typed)
    os.close(stdin_w)
    output = bytearray()
    drained = threading.Thread(target=lambda: output.extend(read_all(stdout_r)), daemon=True)
    drained.start()
    with os.fdopen(stdin_r, "r") as stdin, os.fdopen(stdout_w, "w") as stdout:
        env = Environment(stdin, stdout, io.StringIO(), False, False, False, False)
        helper.start()
        started = time.monotonic()
        code = console.run_console(lambda: ({"domain": "web1"}, ours), env, "write")
        elapsed = time.monotonic() - started
    drained.join(5)
    helper.join(5)
    return code, elapsed, helper, bytes(output)


def read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as stream:
        return stream.read()


def test_after_the_end_of_input_a_quiet_console_detaches_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, elapsed, helper, output = console_over_pipes(
        monkeypatch, b"uname -a\n", every=0.1, chatter=0.6
    )
    assert code == 0
    assert b"tick" in output  # what the console said after the input ended was shown
    assert helper.received[0] == (2, b"uname -a\n")  # the keystrokes, then the detach
    assert helper.detached_at is not None
    assert 0.9 < elapsed < 1.8, elapsed  # 0.6 s of output, then 0.5 s of quiet


def test_a_console_that_never_goes_quiet_still_detaches_at_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, elapsed, helper, _ = console_over_pipes(monkeypatch, b"", every=0.1, chatter=60)
    assert code == 0 and helper.detached_at is not None
    assert 1.9 < elapsed < 3.0, elapsed  # LINGER_SECONDS, though the output never stopped


# -- end of input, a reader that has gone, signals, kill -9 ------------------------------------


def test_end_of_piped_input_is_sent_answered_shown_and_then_detached(running: Helper) -> None:
    """``printf 'root\\nsecret\\nuname -a\\n' | ssh host console web1``: the lines reach the
    guest, its answer is shown, then the client detaches by itself."""
    client = tenant_process(running, "console web1 --no-replay")
    attached(client)
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(b"\nroot\nsecret\nuname -a\n")
    client.stdin.close()
    code, err = ended(client, 15)
    out = client.stdout.read().decode(errors="replace")
    assert code == 0, err
    assert "Linux web1 6.1.0-sim" in out and out.rstrip().endswith("root@web1:~$"), out
    assert "end of input; detached" in err
    assert running.admin("sessions") == []  # free the moment the client is gone
    assert detaches(running) == ["detached"]
    next_attach_succeeds(running)


def test_a_watcher_with_no_input_detaches_once_the_console_is_quiet(running: Helper) -> None:
    """``ssh -n host console web1 --watch``: its replay, then it ends (it used to fail at once:
    /dev/null cannot be watched with epoll)."""
    started = time.monotonic()
    watcher = tenant_process(running, "console web1 --watch", stdin=subprocess.DEVNULL)
    code, err = ended(watcher, 15)
    assert code == 0 and "end of input; detached" in err, err
    assert time.monotonic() - started < 10
    assert watcher.stdout is not None and b"web1 login:" in watcher.stdout.read()  # the replay
    assert detaches(running) == ["detached"]


def test_a_console_ends_at_once_when_its_output_has_no_reader(running: Helper) -> None:
    """What sshd does when the ssh client goes away: the pipe to it closes. The client must
    see it (its input stays open here) and detach, without waiting for guest output."""
    read_end, write_end = os.pipe()
    client = tenant_process(running, "console web1 --no-replay", stdout=write_end)
    os.close(write_end)
    attached(client)
    os.close(read_end)
    code, _ = ended(client, 5)
    assert code == 0
    assert running.admin("sessions") == []
    assert detaches(running) == ["detached"]
    next_attach_succeeds(running)


@pytest.mark.parametrize("inherited", [(), ("HUP", "INT", "TERM", "QUIT")], ids=["", "ignored"])
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["HUP", "TERM"])
def test_hangup_and_term_detach_then_end_the_client(
    running: Helper, signum: int, inherited: tuple[str, ...]
) -> None:
    """SIGHUP (the terminal or sshd went away) and SIGTERM end the session cleanly, then the
    process ends as killed by that signal, even if it was started with the signal ignored
    (``nohup``): a shell sets its own dispositions."""
    client = tenant_process(running, "console web1 --no-replay", ignoring=inherited)
    attached(client)
    assert session_of(running)["pid"] == client.pid
    client.send_signal(signum)
    code, _ = ended(client, 5)
    assert code == -signum
    assert running.admin("sessions") == []
    assert detaches(running) == ["detached"]
    next_attach_succeeds(running)


def test_sigint_detaches_with_130_even_if_started_ignored(running: Helper) -> None:
    client = tenant_process(running, "console web1 --no-replay", ignoring=("INT",))
    attached(client)
    client.send_signal(signal.SIGINT)
    code, err = ended(client, 5)
    assert code == 130 and "interrupted; detached" in err, err
    assert running.admin("sessions") == []
    assert detaches(running) == ["detached"]


def test_kill_9_of_the_client_frees_the_writer_slot_for_the_next_attach(running: Helper) -> None:
    """A client that cannot say goodbye: the helper sees its connection close."""
    client = tenant_process(running, "console web1 --no-replay")
    attached(client)
    client.kill()
    client.wait()
    next_attach_succeeds(running)  # at once: no wait for the helper to notice
    assert detaches(running) == ["disconnected", "detached"]


# -- events --follow ------------------------------------------------------------------------


def follows(helper: Helper, count: int) -> None:
    wait_until(
        lambda: (
            len([e for e in helper.audit() if e["action"] == "events" and e.get("follow")]) >= count
        ),
        15,
        "the follow request answered",
    )


def test_follow_is_not_ended_by_its_input_but_by_its_reader_going(running: Helper) -> None:
    """``ssh -n host 'events --follow' | consumer``: like ``tail -f`` it keeps following with
    stdin at its end, and ends (0, quietly) the moment its reader goes."""
    read_end, write_end = os.pipe()
    follower = tenant_process(
        running, "events web1 --follow --lines=0", stdin=subprocess.DEVNULL, stdout=write_end
    )
    os.close(write_end)
    follows(running, 1)
    assert run(TENANT, running, "reboot web1").code == 0
    with os.fdopen(read_end, "rb") as reader:
        assert b"web1  rebooted" in reader.readline()
        assert follower.poll() is None
    code, err = ended(follower, 5)
    assert (code, err) == (0, "")


def test_follow_ends_on_hangup_even_if_started_with_it_ignored(running: Helper) -> None:
    follower = tenant_process(
        running, "events --follow --lines=0", ignoring=("HUP",), stdin=subprocess.DEVNULL
    )
    follows(running, 1)
    follower.send_signal(signal.SIGHUP)
    code, _ = ended(follower, 5)
    assert code == -signal.SIGHUP


# -- Ctrl-C with SIGINT ignored at start -------------------------------------------------------


def test_ctrl_c_stops_a_wait_although_sigint_was_ignored_at_start(helper: Helper) -> None:
    """``nohup``, a background job, ``trap '' INT``: Python installs no KeyboardInterrupt for a
    SIGINT it inherited as ignored; the shell must set its own."""
    start_and_wait(helper, TENANT, "stubborn")  # takes 600 s to shut down
    waiting = tenant_process(
        helper, "shutdown stubborn --wait=60", ignoring=("INT",), stdin=subprocess.DEVNULL
    )
    wait_until(
        lambda: run(TENANT, helper, "status stubborn --json").json()["state"] == "shutting-down",
        20,
        "the shutdown requested",
    )
    waiting.send_signal(signal.SIGINT)
    code, err = ended(waiting, 20)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == f"vpsshell: {INTERRUPTED}", err
    wait_until(lambda: [e for e in helper.audit() if e.get("result") == "cancelled"], 20, "audited")


def test_ctrl_c_ends_a_follow_on_a_terminal_although_sigint_was_ignored(helper: Helper) -> None:
    """``ssh -t host 'events --follow'`` and Ctrl-C, from a shell that ignored SIGINT."""
    session = pexpect.spawn(
        "runuser",
        ["-u", TENANT, "--", "env", "-i", "PATH=/usr/bin:/bin", f"VPSSHELL_SOCKET={helper.socket}"]
        + ["/bin/sh", "-c", f"trap '' INT; exec {BIN / 'vpsshell'} -c 'events --follow'"],
        timeout=15,
    )
    follows(helper, 1)
    session.sendcontrol("c")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0
    assert b"Traceback" not in (session.before or b"")


def test_the_interactive_shell_on_a_pipe_ignores_sigquit_and_ends_on_sighup(
    helper: Helper,
) -> None:
    """Interactive mode: SIGQUIT does nothing (like any interactive shell), SIGHUP ends it,
    whatever was inherited."""
    shell = tenant_process(helper, None, ignoring=("HUP",))
    assert shell.stdin is not None and shell.stdout is not None
    shell.stdin.write(b"whoami\n")
    shell.stdin.flush()
    assert TENANT.encode() in shell.stdout.readline()
    shell.send_signal(signal.SIGQUIT)
    shell.stdin.write(b"whoami\n")
    shell.stdin.flush()
    assert TENANT.encode() in shell.stdout.readline()  # still there
    shell.send_signal(signal.SIGHUP)
    code, _ = ended(shell, 5)
    assert code == -signal.SIGHUP


# -- over a real sshd, without -t -------------------------------------------------------------


@pytest.fixture(scope="module")
def ssh_site(tenants: None) -> Iterator[SshSite]:
    with site_for_module() as site:
        yield site


@pytest.fixture
def ssh_helper(ssh_site: SshSite, open_dir: Path) -> Iterator[Helper]:
    """A fresh helper for the test, web1 running; the site's login shells find it."""
    with site_helper(ssh_site, open_dir / "helper") as helper:
        alice = connect(ssh_site)
        try:
            assert alice.run("start web1").code == 0
            wait_until(
                lambda: alice.run("status web1 --json").json()["state"] == "running",
                10,
                "web1 running",
            )
        finally:
            alice.close()
        yield helper


def connect(site: SshSite) -> SshConnection:
    return SshConnection.open(site.sshd, ALICE, site.tenants[ALICE].key)


def drop(connection: SshConnection) -> None:
    """The client is gone without a word, as when the network drops or ``ssh`` is killed:
    its TCP connection ends, and no channel is closed first."""
    transport = connection.transport
    transport.sock.shutdown(socket.SHUT_RDWR)
    transport.close()


def test_ssh_console_without_t_ends_when_the_ssh_client_goes(
    ssh_helper: Helper, ssh_site: SshSite
) -> None:
    """The headline: ``ssh host console web1`` (no pty), then the client is gone (its TCP
    connection drops). sshd closes the session's pipes and signals nothing; the remote
    ``vpsshell`` must notice, detach, and exit, so that the next attach gets the console."""
    dropped = connect(ssh_site)
    try:
        channel = dropped.session()
        channel.settimeout(15)
        channel.exec_command("console web1 --no-replay")
        banner = b""
        while b"Press Ctrl-] to detach" not in banner:
            banner += channel.recv_stderr(1)  # the channel's timeout bounds the wait
            assert not channel.exit_status_ready(), banner
        record = session_of(ssh_helper)
        assert record["user"] == ALICE
    finally:
        drop(dropped)
    wait_until(lambda: ssh_helper.admin("sessions") == [], 10, "the session detached")
    wait_until(lambda: not Path(f"/proc/{record['pid']}").exists(), 5, "the client exited")
    assert detaches(ssh_helper) == ["detached"]  # told the helper; did not just vanish
    alice = connect(ssh_site)
    try:
        again = alice.run("console web1 --no-replay")  # stdin at its end at once
        assert again.code == 0 and "end of input; detached" in again.err, again
    finally:
        alice.close()


def test_ssh_piped_lines_reach_the_guest_then_the_session_ends(
    ssh_helper: Helper, ssh_site: SshSite
) -> None:
    """``printf 'root\\nsecret\\nuname -a\\n' | ssh host console web1``: the ssh client
    returns with the guest's answer and status 0, and the console is free again at once."""
    alice = connect(ssh_site)
    try:
        started = time.monotonic()
        result = alice.run("console web1 --no-replay", stdin=b"\nroot\nsecret\nuname -a\n")
        elapsed = time.monotonic() - started
        assert result.code == 0, result
        assert "Linux web1 6.1.0-sim" in result.out, result
        assert "end of input; detached" in result.err and "Traceback" not in result.err
        assert elapsed < 10, elapsed
        assert ssh_helper.admin("sessions") == []
        taken = alice.terminal("console web1 --no-replay")
        taken.expect("Press Ctrl-] to detach")
        taken.send("\x1d")
        assert taken.exit_status() == 0
    finally:
        alice.close()
    assert detaches(ssh_helper) == ["detached", "detached"]


def test_ssh_t_console_detaches_when_the_connection_drops(
    ssh_helper: Helper, ssh_site: SshSite
) -> None:
    """With ``-t`` sshd hangs up the terminal instead: SIGHUP, the same clean detach."""
    dropped = connect(ssh_site)
    try:
        console = dropped.terminal("console web1 --no-replay")
        console.expect("Press Ctrl-] to detach")
        session_of(ssh_helper)
    finally:
        drop(dropped)
    wait_until(lambda: ssh_helper.admin("sessions") == [], 10, "the session detached")
    assert detaches(ssh_helper) == ["detached"]
