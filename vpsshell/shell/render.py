"""Turns handler output into text or JSON on the shell's streams; the only module that prints.

Every string that came from outside (domain names, hosts, helper messages) goes through
``inert()`` first, so nothing a backend or another tenant controls can reach the terminal as
an escape sequence, a bidi override or markup. JSON output escapes everything non-ASCII.
"""

from __future__ import annotations

import json
from typing import Any

from vpsshell.shell.commands import Output
from vpsshell.shell.environment import Environment


def inert(value: object) -> str:
    """Printable text only: control, format (bidi) and separator characters become escapes."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def format_uptime(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


DOMAIN_COLUMNS = ("NAME", "STATE", "VCPUS", "MEMORY", "UPTIME", "HOST")


def domain_row(domain: dict[str, Any]) -> tuple[str, ...]:
    return (
        inert(domain.get("name", "?")),
        inert(domain.get("state", "?")),
        inert(domain.get("vcpus", "?")),
        f"{inert(domain.get('memory_mib', '?'))} MiB",
        format_uptime(domain.get("uptime_seconds")),
        inert(domain.get("host", "")),
    )


def _table(env: Environment, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        env.stdout.write(line.rstrip() + "\n")


def _status_lines(domain: dict[str, Any]) -> list[tuple[str, str]]:
    row = domain_row(domain)
    return [
        ("name", row[0]),
        ("uuid", inert(domain.get("uuid", "?"))),
        ("state", row[1]),
        ("vcpus", row[2]),
        ("memory", row[3]),
        ("uptime", row[4]),
        ("host", row[5]),
    ]


def show(output: Output, env: Environment, *, as_json: bool = False) -> None:
    """Write ``output`` to ``env.stdout``."""
    kind, data = output
    if kind == "exit":
        return
    if as_json:
        env.stdout.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True) + "\n")
        return
    if kind == "domains":
        if not data:
            env.stdout.write("no domains\n")
            return
        _table(env, DOMAIN_COLUMNS, [domain_row(d) for d in data])
    elif kind == "status":
        for key, value in _status_lines(data):
            env.stdout.write(f"{key + ':':<8} {value}\n")
    elif kind == "action":
        env.stdout.write(f"{inert(data.get('message', 'done'))}\n")
    elif kind == "whoami":
        groups = ", ".join(inert(g) for g in data.get("groups", []))
        env.stdout.write(f"{inert(data.get('user'))} (uid {inert(data.get('uid'))})\n")
        env.stdout.write(f"groups: {groups or '-'}\n")
    elif kind == "version":
        env.stdout.write(
            f"vpsshell {inert(data.get('shell'))}, helper {inert(data.get('helper'))}"
            f" (protocol {inert(data.get('protocol'))}, backend {inert(data.get('backend'))})\n"
        )
    elif kind == "log":  # guest output: shown inert, line by line
        for line in data.get("lines", []):
            env.stdout.write(f"{inert(line)}\n")
    elif kind == "help":
        width = max(len(usage) for usage, _ in data)
        for usage, summary in data:
            env.stdout.write(f"  {usage.ljust(width)}  {summary}\n")
    else:
        env.stdout.write(f"{inert(data)}\n")


def show_error(message: str, env: Environment) -> None:
    env.stderr.write(f"vpsshell: {inert(message)}\n")


def show_progress(message: str, env: Environment) -> None:
    if env.stderr_isatty:
        env.stderr.write(f"{inert(message)}\n")
        env.stderr.flush()
