"""Console escapes through a real pty as real tenants against a real helper (sim backend):
``~.``, ``~?``, ``~~``, ``~B``, ``~R`` at the start of a line, a ``~`` in the middle of one,
another escape character, none, the admin's default, and a watcher's escapes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from harness import BIN, Helper, run, start_and_wait
from test_console import PROMPT, finish, login


def console(helper: Helper, *options: str, config: Path | None = None) -> pexpect.spawn:
    env = [f"VPSSHELL_SOCKET={helper.socket}", "TERM=xterm"]
    if config is not None:
        env.append(f"VPSSHELL_CONFIG={config}")
    command = " ".join(["console", "web1", *options])
    return pexpect.spawn(
        "runuser",
        ["-u", "vpst-alice", "--", "env", *env, str(BIN / "vpsshell"), "-c", command],
        timeout=15,
    )


def guest_log(helper: Helper) -> str:
    result = run("vpst-alice", helper, "log web1 --lines=10000")
    assert result.code == 0, result.err
    return result.out


@pytest.fixture
def running(helper: Helper) -> Iterator[Helper]:
    start_and_wait(helper, "vpst-alice", "web1")
    yield helper


def test_tilde_dot_detaches_and_a_tilde_mid_line_goes_to_the_guest(running: Helper) -> None:
    session = console(running)
    login(session)
    session.send("echo a~b~.c\r")  # ~ in the middle of a line: sent as typed, at once
    session.expect(r"\r\na~b~\.c\r\n")
    session.expect(PROMPT)
    session.send("~.")
    assert finish(session) == 0


def test_tilde_question_lists_the_escapes_and_sends_nothing(running: Helper) -> None:
    session = console(running)
    login(session)
    session.send("~?")
    session.expect_exact("~B  then a key")
    session.expect_exact("~~  send one ~")
    session.send("echo after-help\r")
    session.expect(r"\r\nafter-help\r\n")
    assert "~?" not in guest_log(running) and "not found" not in guest_log(running)
    session.send("\x1d")
    assert finish(session) == 0


def test_tilde_tilde_sends_one_tilde(running: Helper) -> None:
    session = console(running)
    login(session)
    session.send("~~ one-tilde\r")
    session.expect_exact("-sh: ~: not found")
    session.send("\x1d")
    assert finish(session) == 0


def test_tilde_b_sends_sysrq_when_the_policy_allows_it(running: Helper) -> None:
    session = console(running, "--no-replay")
    session.expect("Press Ctrl-] to detach")
    session.send("~B")
    session.expect_exact("SysRq key?")
    session.send("m")
    session.expect_exact("sent SysRq m to web1")  # shown once the helper answered...
    session.expect_exact("sysrq: Show Memory")  # ...before the output that follows
    session.send("\x1d")
    assert finish(session) == 0


def test_tilde_b_is_refused_locally_without_sysrq_and_the_session_goes_on(
    running: Helper,
) -> None:
    running.write_policy("10-tenants.policy", "allow user:vpst-alice @operator web1\n")
    session = console(running)
    login(session)
    session.send("~Bm")
    session.expect("sysrq refused: ")
    session.send("echo still-attached\r")
    session.expect(r"\r\nstill-attached\r\n")
    assert "Show Memory" not in guest_log(running)
    assert not [e for e in running.audit() if e["action"] == "sysrq" and e.get("result") == "ok"]
    session.send("\x1d")
    assert finish(session) == 0


def test_tilde_r_reboots_after_y_and_not_after_n(running: Helper) -> None:
    session = console(running)
    login(session)
    session.send("~R")
    session.expect_exact("reboot web1? (y/n)")
    session.send("n")
    session.expect_exact("not rebooted")
    session.send("echo not-rebooted\r")
    session.expect(r"\r\nnot-rebooted\r\n")
    assert "reboot" not in [entry["action"] for entry in running.audit()]
    session.expect(PROMPT)
    session.send("~Ry")
    session.expect_exact("rebooting web1")
    session.expect("Linux version", timeout=20)
    session.expect("login: ", timeout=20)
    assert "reboot" in [entry["action"] for entry in running.audit()]
    session.send("\x1d")
    assert finish(session) == 0


def test_another_escape_character_and_none(running: Helper) -> None:
    session = console(running, "--escape=^A")
    login(session)
    session.send("~.\r")  # not the escape of this session: for the guest
    session.expect_exact("-sh: ~.: not found")
    session.expect(PROMPT)
    session.send("\x01.")
    assert finish(session) == 0
    session = console(running, "--escape=none", "--no-replay")
    session.expect("Press Ctrl-] to detach")
    session.send("~.\r")
    session.expect_exact("-sh: ~.: not found")
    session.send("\x1d")  # still detaches
    assert finish(session) == 0


def test_the_admins_default_escape_character(running: Helper) -> None:
    config = running.root / "vpsshell.toml"  # where the tenant may read it
    config.write_text('console_escape = "^B"\n')
    session = console(running, "--no-replay", config=config)
    session.expect_exact("^B? lists the escapes")
    session.send("\x02.")
    assert finish(session) == 0


def test_a_watchers_escapes_work_and_its_keys_never_reach_the_guest(running: Helper) -> None:
    writer = console(running)
    login(writer)
    watcher = console(running, "--watch", "--no-replay")
    watcher.expect("Watching the console of web1")
    watcher.send("echo from-the-watcher\r~?")
    watcher.expect_exact("~.  detach")
    watcher.send("~B")
    watcher.expect_exact("is for the console's writer")
    watcher.send("m\r~.")  # m: an ordinary key (and a watcher's keys go nowhere)
    assert finish(watcher) == 0
    writer.send("echo writer-still-here\r")
    writer.expect(r"\r\nwriter-still-here\r\n")
    log = guest_log(running)
    assert "from-the-watcher" not in log and "Show Memory" not in log
    writer.send("\x1d")
    assert finish(writer) == 0
