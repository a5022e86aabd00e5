"""Output rendering: outside strings are inert, tables and JSON are what scripts expect."""

from __future__ import annotations

import io
import json

from vpsshell.shell.commands import Output
from vpsshell.shell.environment import Environment
from vpsshell.shell.render import format_uptime, inert, show

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
