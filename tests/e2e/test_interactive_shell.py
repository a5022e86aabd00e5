"""The interactive shell on a real terminal (tmux), as a real tenant, against a real helper.

What reaches the helper is read back from its audit log. The toolbar follows events and asks
for ``list`` in the background, so the audit checks of commands look at every other request:
each test knows exactly which commands it meant to send. The toolbar's own requests are
checked by the tests at the end.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Helper, run, start_and_wait, state_of, wait_until
from tmux_terminal import TmuxShell, process_state

ALICE = "vpst-alice"
OTHER_TENANTS_DOMAINS = ("db1", "web3", "web4")

Terminal = Callable[..., TmuxShell]


@pytest.fixture
def terminal(helper: Helper) -> Iterator[Terminal]:
    """Opens ``vpsshell`` in tmux as a tenant (alice unless told) and waits for the prompt."""
    shells: list[TmuxShell] = []

    def open_shell(user: str = ALICE, **kwargs: object) -> TmuxShell:
        shell = TmuxShell(user, helper, **kwargs)  # type: ignore[arg-type]
        shells.append(shell)
        shell.wait_for(f"{user}@vpsshell> ")
        return shell

    yield open_shell
    for shell in shells:
        shell.close()


def is_toolbars(entry: dict[str, object]) -> bool:
    """A request the toolbar makes by itself: ``list``, or its ``events`` stream."""
    action = entry.get("action")
    return action == "list" or (action == "events" and entry.get("follow") is True)


def commands_sent(helper: Helper, user: str = ALICE) -> list[tuple[str, str | None]]:
    """(action, domain) of every request by ``user`` except the toolbar's own."""
    return [
        (entry["action"], entry.get("domain"))
        for entry in helper.audit()
        if entry.get("user") == user and not is_toolbars(entry)
    ]


def private_home(user: str, root: Path) -> Path:
    home = root / f"home-{user}"
    home.mkdir(mode=0o700)
    entry = pwd.getpwnam(user)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    return home


def test_completion_offers_only_the_callers_domains(helper: Helper, terminal: Terminal) -> None:
    shell = terminal()
    shell.type("start ")
    shell.keys("Tab")
    screen = shell.wait_for("stubborn")
    assert "web1" in screen and "web2" in screen
    for name in OTHER_TENANTS_DOMAINS:
        assert name not in screen, f"{name} offered to alice:\n{screen}"
    shell.keys("C-c")  # nothing was sent
    wait_until(lambda: shell.screen().count("@vpsshell>") == 2, 10, "a fresh prompt after C-c")
    shell.type("sh")
    shell.keys("Tab")
    shell.wait_for("@vpsshell> shutdown")
    shell.type(" web2 --f")
    shell.keys("Tab")
    shell.wait_for("shutdown web2 --force")
    assert commands_sent(helper) == []


def test_use_then_start_acts_on_that_domain_and_the_toolbar_follows(
    helper: Helper, terminal: Terminal
) -> None:
    shell = terminal()
    shell.wait_for_toolbar("3 domains")
    shell.run("use web1", "vpst-alice@vpsshell:web1> ")
    shell.wait_for_toolbar("web1  shutoff")
    shell.run("start", "web1: starting")
    # no key is pressed from here on: the toolbar refreshes by itself
    shell.wait_for_toolbar("web1  running")
    assert commands_sent(helper) == [("status", "web1"), ("start", "web1")]
    helper.admin("crash", domain="web1")
    shell.wait_for_toolbar("web1  crashed")


def test_hostile_keys_smuggle_nothing(helper: Helper, terminal: Terminal, open_dir: Path) -> None:
    marker = open_dir / "marker"
    editor = open_dir / "editor.sh"
    editor.write_text(f"#!/bin/sh\ntouch {marker}\n")
    editor.chmod(0o755)
    shell = terminal(env={"EDITOR": str(editor), "VISUAL": str(editor), "SHELL": "/bin/sh"})
    title = shell.title()

    # Ctrl-Z (suspend, or a literal ^Z), Ctrl-Q / Ctrl-V + key (quoted insert): nothing lands
    shell.type("status web1")
    shell.raw(b"\x1a\x11\x1a\x16\x1a\x11\x1b")
    shell.keys("Enter")
    shell.wait_for("uuid")
    assert commands_sent(helper) == [("status", "web1")]

    # a quoted line break ends the line like Enter; it never gets inside a request
    shell.type("status web2")
    shell.raw(b"\x11\x0a")
    wait_until(lambda: len(commands_sent(helper)) == 2, 10, "status web2 ran")
    assert commands_sent(helper)[1] == ("status", "web2")

    # Ctrl-X Ctrl-E (editor) and Meta-! (system prompt) start nothing
    shell.raw(b"\x18\x05")
    shell.raw(b"\x1b!")
    shell.type(f"touch {marker}")
    shell.keys("Enter")
    shell.wait_for("unknown command 'touch'")
    assert not marker.exists(), "an editor or a shell ran"

    # pastes: two lines at once, an escape sequence, a bidi override
    shell.paste("list\nstart web2\n")
    shell.wait_for("paste refused: rejected character U+000A")
    shell.paste("status \x1b]0;pwned\x07web1")
    shell.wait_for("paste refused: rejected character U+001B")
    shell.paste("status web1\u202e")
    shell.wait_for("paste refused: rejected character U+202E")
    shell.keys("Enter")  # the line is still empty: nothing to send
    shell.paste("whoami\n")  # one line with its line break is fine, and waits for Enter
    shell.wait_for("@vpsshell> whoami")
    shell.keys("Enter")
    shell.wait_for("groups:")

    assert commands_sent(helper) == [("status", "web1"), ("status", "web2"), ("whoami", None)]
    assert shell.title() == title and "pwned" not in shell.title()
    assert process_state(shell.shell_pid()) in ("S", "R")  # alive, not stopped


def test_ctrl_c_clears_the_line_sigtstp_is_ignored_ctrl_d_leaves(
    helper: Helper, terminal: Terminal
) -> None:
    shell = terminal()
    pid = shell.shell_pid()
    shell.type("start web1")
    shell.keys("C-c")
    shell.run("whoami", "groups:")
    os.kill(pid, signal.SIGTSTP)
    shell.run("status web2", "uuid")
    assert process_state(pid) in ("S", "R")  # alive, not stopped
    assert commands_sent(helper) == [("whoami", None), ("status", "web2")]
    shell.keys("C-d")
    assert shell.exit_status() == 0


def test_exit_leaves_with_status_zero(terminal: Terminal) -> None:
    shell = terminal()
    shell.type("exit")
    shell.keys("Enter")
    assert shell.exit_status() == 0


def test_shutdown_wait_shows_progress_and_ctrl_c_stops_waiting(
    helper: Helper, terminal: Terminal
) -> None:
    alice = ALICE
    assert run(alice, helper, "start stubborn").code == 0
    wait_until(
        lambda: run(alice, helper, "status stubborn --json").json()["state"] == "running",
        10,
        "stubborn running",
    )
    shell = terminal()
    shell.type("shutdown stubborn --wait=60")
    shell.keys("Enter")
    shell.wait_for("shutdown stubborn ...")  # the spinner, before the helper says more
    shell.wait_for("waiting for stubborn to shut down (", timeout=15)
    shell.keys("C-c")
    shell.wait_for("interrupted")
    shell.wait_for_toolbar("shutting-down")
    shell.run("whoami", "groups:")  # the shell is back at its prompt and works


def test_banner_motd_and_private_history(
    helper: Helper, terminal: Terminal, open_dir: Path
) -> None:
    config = open_dir / "vpsshell.toml"
    config.write_text('banner = "ACME hosting\\nSupport: help@example.com"\n')
    config.chmod(0o644)
    home = private_home(ALICE, open_dir)
    shell = terminal(env={"VPSSHELL_CONFIG": str(config), "HOME": str(home)})
    screen = shell.screen()
    assert "ACME hosting" in screen and "Support: help@example.com" in screen
    assert "Your domains: web1 shutoff, web2 shutoff, stubborn shutoff" in screen
    shell.run("status web1", "uuid")
    shell.type("frobnicate")
    shell.keys("Enter")
    shell.wait_for("unknown command")
    shell.keys("C-d")
    assert shell.exit_status() == 64  # like sh: end of input exits with the last command's code
    history = home / ".vpsshell_history"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert history.stat().st_uid == pwd.getpwnam(ALICE).pw_uid
    assert history.read_text() == "status web1\nfrobnicate\n"
    # the next session finds it: Up recalls the last line
    again = terminal(env={"VPSSHELL_CONFIG": str(config), "HOME": str(home)})
    again.keys("Up")
    again.wait_for("@vpsshell> frobnicate")


def test_history_can_be_switched_off(helper: Helper, terminal: Terminal, open_dir: Path) -> None:
    config = open_dir / "vpsshell.toml"
    config.write_text('history = false\nbanner = ""\nmotd = false\n')
    config.chmod(0o644)
    home = private_home(ALICE, open_dir)
    shell = terminal(env={"VPSSHELL_CONFIG": str(config), "HOME": str(home)})
    assert "Your domains" not in shell.screen() and "help" not in shell.screen()
    shell.run("status web1", "uuid")
    shell.keys("C-d")
    assert shell.exit_status() == 0
    assert list(home.iterdir()) == []


def table_rows(screen: str) -> list[str]:
    return [line for line in screen.split("\n") if "MiB" in line and "@vpsshell" not in line]


def test_colour_only_when_wanted(helper: Helper, terminal: Terminal) -> None:
    coloured = terminal()
    coloured.run("list", "256 MiB")
    rows = table_rows(coloured.coloured_screen())
    assert len(rows) == 3 and all("\x1b[" in row for row in rows), rows
    plain = terminal(env={"NO_COLOR": "1"})
    plain.run("list", "256 MiB")
    rows = table_rows(plain.coloured_screen())
    assert len(rows) == 3 and not any("\x1b[" in row for row in rows), rows


def test_dumb_terminal_gets_plain_lines(helper: Helper, terminal: Terminal) -> None:
    shell = terminal(env={"TERM": "dumb"})
    shell.run("use web1", "vpst-alice@vpsshell:web1> ")
    shell.run("start", "web1: starting")
    shell.run("status", "uuid")
    assert "3 domains" not in shell.screen()  # no toolbar
    assert "\x1b[" not in shell.coloured_screen()
    assert commands_sent(helper) == [("status", "web1"), ("start", "web1"), ("status", "web1")]
    shell.keys("C-d")
    assert shell.exit_status() == 0


def test_console_from_the_prompt_and_back(helper: Helper, terminal: Terminal) -> None:
    shell = terminal()
    shell.run("use web1", "vpst-alice@vpsshell:web1> ")
    shell.run("start", "web1: starting")
    shell.wait_for_toolbar("web1  running")
    shell.run("console", "Press Ctrl-] to detach")
    shell.keys("Enter")
    shell.wait_for("web1 login:")
    shell.raw(b"\x1d")
    shell.wait_for("[vpsshell: detached]")
    shell.wait_for_toolbar("web1  running")  # the line editor is back, toolbar and all
    shell.run("whoami", "groups:")
    sent = commands_sent(helper)
    assert ("console", "web1") in sent and sent[-1] == ("whoami", None)


# -- what the toolbar asks the helper by itself --------------------------------------------------


def requests_of(helper: Helper, pid: int, action: str) -> int:
    """How many ``action`` requests the shell process ``pid`` made (its own and its toolbar's)."""
    return sum(1 for e in helper.audit() if e.get("pid") == pid and e.get("action") == action)


def shell_with_refresh(terminal: Terminal, open_dir: Path, seconds: float) -> TmuxShell:
    config = open_dir / "vpsshell.toml"
    config.write_text(f"refresh_seconds = {seconds}\n")
    config.chmod(0o644)
    shell = terminal(env={"VPSSHELL_CONFIG": str(config)})
    shell.wait_for_toolbar("3 domains: 3 shutoff")
    return shell


def following(helper: Helper, shell: TmuxShell, streams: int = 1) -> int:
    """Wait until the shell opened its ``streams``-th events stream and refreshed after it
    (the login's list, then one per stream); its pid."""
    pid = shell.shell_pid()
    wait_until(lambda: requests_of(helper, pid, "events") >= streams, 15, "the events stream")
    wait_until(lambda: requests_of(helper, pid, "list") >= 1 + streams, 10, "the list after it")
    return pid


def test_toolbar_shows_changes_made_elsewhere_as_they_happen(
    helper: Helper, terminal: Terminal, open_dir: Path
) -> None:
    shell = shell_with_refresh(terminal, open_dir, 300)  # no poll would come in time
    pid = following(helper, shell)
    lists = requests_of(helper, pid, "list")
    assert run(ALICE, helper, "start web1").code == 0  # another process, the same tenant
    shell.wait_for_toolbar("1 running", timeout=5)
    helper.admin("crash", domain="web1")  # the admin
    shell.wait_for_toolbar("1 crashed", timeout=5)
    # one list per event: started, crashed (starting is no event, and was not seen)
    assert 2 <= requests_of(helper, pid, "list") - lists <= 3
    stream = [e for e in helper.audit() if e.get("pid") == pid and e["action"] == "events"]
    assert [(e["follow"], e["events"], e["result"]) for e in stream] == [(True, 0, "ok")]


def test_an_idle_session_asks_nothing_while_others_work(
    helper: Helper, terminal: Terminal, open_dir: Path
) -> None:
    shell = shell_with_refresh(terminal, open_dir, 0.5)  # without events: twice a second
    pid = following(helper, shell)
    requests = len([e for e in helper.audit() if e.get("pid") == pid])
    # another tenant's domain comes and goes (seconds): none of it is alice's business
    start_and_wait(helper, "vpst-carol", "db1")
    assert run("vpst-carol", helper, "shutdown db1").code == 0
    wait_until(lambda: state_of(helper, "vpst-carol", "db1") == "shutoff", 10, "db1 shutoff")
    assert len([e for e in helper.audit() if e.get("pid") == pid]) == requests
    assert "3 domains: 3 shutoff" in shell.toolbar()


def test_toolbar_follows_again_after_a_helper_restart(
    helper: Helper, terminal: Terminal, open_dir: Path
) -> None:
    shell = shell_with_refresh(terminal, open_dir, 300)
    pid = following(helper, shell)
    helper.stop()
    helper.start()
    following(helper, shell, streams=2)  # opened again (after 2 s, or 4 if still stopping)
    assert run(ALICE, helper, "start web2").code == 0
    shell.wait_for_toolbar("1 running", timeout=5)
    assert requests_of(helper, pid, "events") == 2
