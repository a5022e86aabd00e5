"""``vpsshell`` with no arguments and stdin not a terminal (``ssh -T host < script``), as a
real tenant: lines are read one by one and validated like ``-c``; nothing can split a line
into two commands or make the shell crash."""

from __future__ import annotations

import subprocess

from harness import BIN, Helper

ALICE = "vpst-alice"


def shell_with_input(helper: Helper, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["runuser", "-u", ALICE, "--", "env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
        + [f"VPSSHELL_SOCKET={helper.socket}", str(BIN / "vpsshell")],
        input=data,
        capture_output=True,
        timeout=60,
    )


def commands_sent(helper: Helper) -> list[tuple[str, str | None]]:
    return [(e["action"], e.get("domain")) for e in helper.audit() if e.get("user") == ALICE]


def test_an_over_long_line_is_refused_whole(helper: Helper) -> None:
    tail = b" start web1\nstatus web2\n"
    for length in (1100, 4095, 4096, 4097, 9000):
        result = shell_with_input(helper, b"A" * length + tail)
        assert b"command too long" in result.stderr, result
    assert commands_sent(helper) == [("status", "web2")] * 5
    assert b"no greeting" not in result.stdout and b"Your domains" not in result.stdout


def test_bytes_that_are_not_text_are_refused_not_fatal(helper: Helper) -> None:
    result = shell_with_input(helper, b"st\xffart web1\nlist\x00\nstart\rweb1\nwhoami\n")
    assert result.returncode == 0, result
    assert result.stderr.count(b"rejected character") == 3, result.stderr
    assert b"Traceback" not in result.stderr
    assert b"vpst-alice (uid" in result.stdout
    assert commands_sent(helper) == [("whoami", None)]


def test_end_of_input_exits_with_the_last_commands_code(helper: Helper) -> None:
    assert shell_with_input(helper, b"whoami\nstart nosuchdomain\n").returncode == 77
    assert shell_with_input(helper, b"start nosuchdomain\nwhoami\n").returncode == 0
    assert shell_with_input(helper, b"start nosuchdomain\nexit\nwhoami\n").returncode == 0
