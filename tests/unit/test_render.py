"""Output rendering: outside strings are inert, tables and JSON are what scripts expect."""

from __future__ import annotations

import io
import json

from vpsshell.shell.commands import Output
from vpsshell.shell.environment import Environment
from vpsshell.shell.render import format_uptime, inert, show, show_motd

DOMAIN = {
    "name": "evil\x1b]0;pwned\x07\u202e",
    "uuid": "u",
    "state": "running",
    "vcpus": 1,
    "memory_mib": 512,
    "uptime_seconds": 3725,
    "host": "node1",
}


def env() -> tuple[Environment, io.StringIO]:
    out = io.StringIO()
    return Environment(io.StringIO(), out, io.StringIO(), False, False, False, False), out


def test_inert_escapes_control_and_bidi() -> None:
    text = inert("a\x1b[31mb\u202ec\x07")
    assert text.isprintable()
    assert "\\x1b" in text and "\\u202e" in text


def test_table_output_is_inert() -> None:
    environment, out = env()
    show(Output("domains", [DOMAIN]), environment)
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert "1h 2m" in text and "512 MiB" in text


def test_json_output_parses_back_and_is_ascii() -> None:
    environment, out = env()
    show(Output("domains", [DOMAIN]), environment, as_json=True)
    assert out.getvalue().isascii()
    assert json.loads(out.getvalue()) == [DOMAIN]


def test_uptime_format() -> None:
    assert format_uptime(None) == "-"
    assert format_uptime(59) == "59s"
    assert format_uptime(61) == "1m 1s"
    assert format_uptime(90061) == "1d 1h"


EVENTS = {
    "domain": None,
    "follow": False,
    "truncated": False,
    "events": [
        {
            "seq": 4,
            "time": "2026-11-28T00:40:01Z",
            "kind": "started",
            "domain": "web1",
            "uuid": "u",
            "detail": "",
            "user": None,
        },
        {
            "seq": 9,
            "time": "2026-11-28T00:41:17Z",
            "kind": "console-detached",
            "domain": "web1",
            "uuid": "u",
            "detail": "take\x1b[2Jover\u202e",
            "user": "alice",
        },
    ],
}


def test_events_are_lines_with_time_domain_kind_user_detail_and_inert() -> None:
    environment, out = env()
    show(Output("events", EVENTS), environment)
    assert out.getvalue().splitlines() == [
        "2026-11-28 00:40:01  web1  started",
        "2026-11-28 00:41:17  web1  console-detached  alice  (take\\x1b[2Jover\\u202e)",
    ]


def test_events_json_is_one_ascii_object_per_line() -> None:
    environment, out = env()
    show(Output("events", EVENTS), environment, as_json=True)
    assert out.getvalue().isascii()
    assert [json.loads(line) for line in out.getvalue().splitlines()] == EVENTS["events"]


def test_no_events_says_so_except_in_json_and_a_cut_history_is_reported() -> None:
    environment, out = env()
    show(Output("events", {"events": [], "follow": False}), environment)
    assert out.getvalue() == "no events\n"
    environment, out = env()
    show(Output("events", {"events": [], "follow": False}), environment, as_json=True)
    assert out.getvalue() == ""
    environment, out = env()
    show(Output("events", {**EVENTS, "truncated": True}), environment)
    assert "older events left out" in environment.stderr.getvalue()


LOCKED = {"name": "vault\x1b[31m", "confirm": "password"}  # list: status wants a password


def test_a_domain_listed_by_name_only_has_empty_cells_and_a_note() -> None:
    environment, out = env()
    show(Output("domains", [DOMAIN, LOCKED]), environment)
    lines = out.getvalue().splitlines()
    assert lines[2].split() == ["vault\\x1b[31m", "-", "-", "-", "-", "-"]
    assert lines[3] == "vault\\x1b[31m: details need your password ('status vault\\x1b[31m' asks)"
    assert "None" not in out.getvalue() and "? MiB" not in out.getvalue()
    environment, out = env()
    show(Output("domains", [LOCKED, {**LOCKED, "name": "safe"}]), environment)
    assert out.getvalue().splitlines()[-1] == (
        "vault\\x1b[31m, safe: details need your password ('status DOMAIN' asks)"
    )
    environment, out = env()
    show(Output("domains", [DOMAIN, LOCKED]), environment, as_json=True)
    assert json.loads(out.getvalue()) == [DOMAIN, LOCKED]


def test_events_left_out_for_a_password_are_named_on_stderr() -> None:
    environment, out = env()
    show(Output("events", {**EVENTS, "withheld": ["vault"]}), environment)
    assert len(out.getvalue().splitlines()) == 2
    assert environment.stderr.getvalue() == (
        "vpsshell: events of vault left out: they need your password ('events vault' asks)\n"
    )
    environment, out = env()
    show(Output("events", {**EVENTS, "withheld": []}), environment, as_json=True)
    assert environment.stderr.getvalue() == ""


def test_the_greeting_names_a_domain_listed_by_name_only() -> None:
    environment, out = env()
    show_motd([DOMAIN, {**LOCKED, "name": "vault"}], environment)
    assert out.getvalue().endswith(", vault (password)\n")
