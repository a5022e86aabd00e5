"""What a tenant sees when a command ends badly: one line and one exit code, the same for
``vpsshell -c`` and the interactive shell, and never a traceback.

The real ``vpsshell`` runs as a real tenant. A bug in the shell has one way in from outside
that a real helper never opens: a reply of the wrong shape. ``ScriptedHelper`` is a stand-in for
``vpsshelld`` on a socket in a temp dir that answers each operation with a reply written here;
it is used only for that fault, which nothing else can cause. Everything else is the real
helper: Ctrl-C during a command is 130 in both modes, and a command with a closed stdin runs.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socketserver
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import BIN, Helper, run, start_and_wait, vpsshell_as, wait_until

from vpsshell.shell.outcome import INTERRUPTED

TENANT = "vpst-alice"
HEADER = struct.Struct(">BI")  # docs/protocol.md: frame type, payload length
MESSAGE = 0x01


class ScriptedHelper:
    """Answers each request with ``replies[op]`` (the reply's fields but ``v`` and ``id``);
    an operation it has no reply for gets a well-formed ``denied``. Records the operations."""

    def __init__(self, directory: Path, replies: dict[str, dict[str, Any]]) -> None:
        self.socket = directory / "scripted.sock"
        self.operations: list[str] = []
        scripted = self

        class Conversation(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while header := self.rfile.read(HEADER.size):
                    _, length = HEADER.unpack(header)
                    request = json.loads(self.rfile.read(length))
                    scripted.operations.append(request["op"])
                    reply = replies.get(
                        request["op"],
                        {"ok": False, "error": {"kind": "denied", "message": "not scripted"}},
                    )
                    payload = json.dumps({"v": 1, "id": request["id"], **reply}).encode()
                    self.wfile.write(HEADER.pack(MESSAGE, len(payload)) + payload)

        self.server = socketserver.ThreadingUnixStreamServer(str(self.socket), Conversation)
        self.server.daemon_threads = True
        os.chmod(self.socket, 0o777)  # the tenant connects, as to the real socket's group
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted(open_dir: Path, tenants: None) -> Iterator[Any]:
    started: list[ScriptedHelper] = []

    def start(replies: dict[str, dict[str, Any]]) -> ScriptedHelper:
        started.append(ScriptedHelper(open_dir, replies))
        return started[-1]

    yield start
    for helper in started:
        helper.close()


def as_tenant(socket_path: Path, *argv: str, stdin: str | None = None) -> Any:
    return vpsshell_as(TENANT, None, *argv, env={"VPSSHELL_SOCKET": str(socket_path)}, stdin=stdin)


def one_internal_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vpsshell: internal error: "), err
    return lines[0]


# replies of the wrong shape, each for a command that reads it: the shell's bug, not the tenant's
WRONG_SHAPES = [
    ("status web1", {"status": {"ok": True, "result": "running"}}, "AttributeError"),
    ("version", {"version": {"ok": True, "result": "1.0"}}, "TypeError"),
    ("whoami", {"whoami": {"ok": True, "result": ["alice"]}}, "AttributeError"),
    ("start web1", {"start": {"ok": False, "error": "it broke"}}, "AttributeError"),
]


@pytest.mark.parametrize(("line", "replies", "bug"), WRONG_SHAPES, ids=[w[0] for w in WRONG_SHAPES])
def test_a_bug_in_a_command_is_one_line_and_exit_1(
    scripted: Any, line: str, replies: dict[str, dict[str, Any]], bug: str
) -> None:
    helper = scripted(replies)
    result = as_tenant(helper.socket, "-c", line)
    assert result.code == 1, result
    assert one_internal_error_line(result.err).startswith(f"vpsshell: internal error: {bug}")
    assert helper.operations == [line.split()[0]]  # the command's request, and no other


def test_the_interactive_shell_reports_a_bug_on_one_line_and_goes_on(scripted: Any) -> None:
    """``ssh -T host < script``: the same line as ``-c``, then the next command runs; the exit
    status is the last command's."""
    whoami = {"ok": True, "result": {"user": TENANT, "uid": 1, "groups": []}}
    helper = scripted({"status": {"ok": True, "result": "running"}, "whoami": whoami})
    oneshot = as_tenant(helper.socket, "-c", "status web1")

    going_on = as_tenant(helper.socket, stdin="status web1\nwhoami\n")
    assert going_on.code == 0, going_on
    assert going_on.err == oneshot.err
    assert f"{TENANT} (uid 1)" in going_on.out

    last_failed = as_tenant(helper.socket, stdin="whoami\nstatus web1\n")
    assert last_failed.code == 1, last_failed
    one_internal_error_line(last_failed.err)


def test_a_bug_at_login_is_one_line_and_the_login_goes_on(scripted: Any) -> None:
    """The greeting's ``list`` meets a reply of the wrong shape: one line, then the prompt (it
    used to be a traceback that ended the login)."""
    import pexpect

    helper = scripted({"list": {"ok": False, "error": "it broke"}})
    login = pexpect.spawn(
        "runuser",
        ["-u", TENANT, "--", "env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", "TERM=dumb"]
        + [f"VPSSHELL_SOCKET={helper.socket}", str(BIN / "vpsshell")],
        timeout=15,
        encoding="utf-8",
    )
    login.expect_exact(f"{TENANT}@vpsshell> ")
    greeting = login.before
    login.sendline("exit")
    login.expect(pexpect.EOF)
    login.close()
    assert login.exitstatus == 0, greeting
    assert "Traceback" not in greeting
    assert greeting.count("vpsshell: internal error: AttributeError") == 1, greeting


@pytest.mark.parametrize("mode", ["-c", "interactive"])
def test_output_nobody_reads_ends_the_command_quietly(helper: Helper, mode: str) -> None:
    """``ssh host whoami | true``, or a script piped into the shell: the reader has gone
    before the output is written. Status 1, not a word (the interactive shell used to print a
    traceback)."""
    account = pwd.getpwnam(TENANT)
    read_end, write_end = os.pipe()
    os.close(read_end)
    shell = subprocess.run(
        [str(BIN / "vpsshell"), *(["-c", "whoami"] if mode == "-c" else [])],
        user=account.pw_uid,
        group=account.pw_gid,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "VPSSHELL_SOCKET": str(helper.socket)},
        cwd="/",
        input="whoami\n",
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(write_end)
    assert (shell.returncode, shell.stderr) == (1, "")


def test_a_command_with_stdin_closed_runs(helper: Helper) -> None:
    """``vpsshell -c whoami <&-`` (a cron job, a careless wrapper): Python has no stdin object
    at all; it used to be an AttributeError traceback before the command ran."""
    closed = subprocess.run(
        ["runuser", "-u", TENANT, "--", "env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
        + [f"VPSSHELL_SOCKET={helper.socket}", "/bin/sh", "-c", 'exec "$0" -c whoami <&-']
        + [str(BIN / "vpsshell")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (closed.returncode, closed.stderr) == (0, ""), closed
    assert closed.stdout.startswith(f"{TENANT} (uid ")


def waiting_shell(helper: Helper, argv: list[str]) -> subprocess.Popen[str]:
    account = pwd.getpwnam(TENANT)
    return subprocess.Popen(
        [str(BIN / "vpsshell"), *argv],
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=os.getgrouplist(account.pw_name, account.pw_gid),
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "VPSSHELL_SOCKET": str(helper.socket)},
        cwd="/",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("mode", ["-c", "interactive"])
def test_ctrl_c_during_a_command_is_130_in_both_modes(helper: Helper, mode: str) -> None:
    """The interactive shell used to make it 75, with another line; now both say the same.
    The interactive shell goes on, and at the end of its input exits with that status."""
    start_and_wait(helper, TENANT, "stubborn")  # takes 600 s to shut down
    line = "shutdown stubborn --wait=60"
    shell = waiting_shell(helper, ["-c", line] if mode == "-c" else [])
    if mode == "interactive":
        assert shell.stdin is not None
        shell.stdin.write(line + "\n")
        shell.stdin.flush()
    wait_until(
        lambda: run(TENANT, helper, "status stubborn --json").json()["state"] == "shutting-down",
        20,
        "the shutdown requested",
    )
    shell.send_signal(signal.SIGINT)
    out, err = shell.communicate(timeout=20)  # the end of the interactive shell's input
    assert (shell.returncode, err) == (130, f"vpsshell: {INTERRUPTED}\n"), out
    wait_until(lambda: [e for e in helper.audit() if e.get("result") == "cancelled"], 20, "audited")
    assert run(TENANT, helper, "status stubborn --json").json()["state"] == "shutting-down"
    assert run(TENANT, helper, "poweroff stubborn").code == 0
