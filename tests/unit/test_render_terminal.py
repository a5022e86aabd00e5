"""Terminal output: rich tables on a colour terminal, plain text otherwise, always inert;
the greeting; the spinner while a request is under way."""

from __future__ import annotations

import io
import re
import threading

from harness import wait_until

from vpsshell.shell.commands import Output
from vpsshell.shell.environment import Environment
from vpsshell.shell.render import Progress, show, show_banner, show_motd

SGR = re.compile(r"\x1b\[[0-9;]*m")
HOSTILE = {
    "name": "\x1b]0;pwned\x07\u202e:smile:",
    "uuid": "u\x9b2J",
    "state": "crashed",
    "vcpus": 1,
    "memory_mib": 512,
    "uptime_seconds": None,
    "host": "[red]x[/]",
}
RUNNING = {**HOSTILE, "name": "web1", "state": "running", "host": "node1", "uptime_seconds": 5}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def terminal(colour: bool) -> tuple[Environment, io.StringIO, io.StringIO]:
    out, err = Tty(), Tty()
    return Environment(io.StringIO(), out, err, True, True, True, colour), out, err


def visible(text: str) -> str:
    """What is left once our own colour codes are gone: must hold no other escape."""
    return SGR.sub("", text)


def test_colour_table_colours_states_and_keeps_outside_text_inert() -> None:
    env, out, _ = terminal(colour=True)
    show(Output("domains", [HOSTILE, RUNNING]), env)
    text = out.getvalue()
    assert "\x1b[" in text  # coloured
    plain = visible(text)
    assert "\x1b" not in plain and "\x07" not in plain and "\u202e" not in plain
    assert "\x9b" not in plain
    assert "\\x1b]0;pwned" in plain and "\\u202e" in plain
    assert "[red]x[/]" in plain and ":smile:" in plain  # no markup, no emoji codes
    crashed_line = next(line for line in text.splitlines() if "crashed" in line)
    assert "\x1b[1;31mcrashed" in crashed_line  # crashed is bold red
    running_line = next(line for line in text.splitlines() if "running" in line)
    assert "\x1b[1;32mrunning" in running_line


def test_colour_status_is_inert() -> None:
    env, out, _ = terminal(colour=True)
    show(Output("status", HOSTILE), env)
    plain = visible(out.getvalue())
    assert "\x1b" not in plain and "\\x9b2J" in plain and "[red]x[/]" in plain


def test_no_colour_means_plain_text() -> None:
    env, out, _ = terminal(colour=False)
    show(Output("domains", [HOSTILE, RUNNING]), env)
    show(Output("status", RUNNING), env)
    text = out.getvalue()
    assert "\x1b" not in text
    assert text.splitlines()[0].split() == ["NAME", "STATE", "VCPUS", "MEMORY", "UPTIME", "HOST"]
    assert "state:   running" in text


def test_banner_and_motd() -> None:
    for colour in (False, True):
        env, out, _ = terminal(colour)
        show_banner("Welcome\n\x1b[31mSupport\x1b[0m: 555", env)
        show_motd([RUNNING, HOSTILE], env)
        plain = visible(out.getvalue())
        assert plain.splitlines()[0] == "Welcome"
        assert "\\x1b[31mSupport" in plain and "\x1b" not in plain
        assert plain.splitlines()[2].startswith("Your domains: web1 running, \\x1b]0;pwned")
    env, out, _ = terminal(False)
    show_motd([{**RUNNING, "name": f"d{i}"} for i in range(12)], env)
    assert "d7 running, and 4 more ('list' shows all)" in out.getvalue()
    env, out, _ = terminal(False)
    show_motd([], env)
    assert out.getvalue() == "You have no domains here.\n"


def test_spinner_shows_progress_and_erases_itself() -> None:
    env, _, err = terminal(colour=True)
    release = threading.Event()
    with Progress(env, "shutdown web1 ...", spinner=True) as progress:
        wait_until(lambda: "shutdown web1 ..." in err.getvalue(), 5, "spinner drawn")
        progress.update("waiting for web1 to shut down (55 s left)\x1b[2J")
        wait_until(lambda: "55 s left)\\x1b[2J" in err.getvalue(), 5, "progress shown, inert")
        release.set()
    assert err.getvalue().endswith("\r\x1b[K")


def test_without_a_spinner_progress_is_one_line_each() -> None:
    env, _, err = terminal(colour=False)
    with Progress(env, "shutdown web1 ...", spinner=False) as progress:
        progress.update("waiting for web1 (5 s left)")
    assert err.getvalue() == "waiting for web1 (5 s left)\n"
