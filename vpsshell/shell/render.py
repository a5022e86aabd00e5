"""Turns handler output into text or JSON on the shell's streams; the only module that prints.

Every string that came from outside (domain names, hosts, helper messages) goes through
``inert()`` first, so nothing a backend or another tenant controls can reach the terminal as
an escape sequence, a bidi override or markup. JSON output escapes everything non-ASCII.

On a colour terminal (``env.colour``: a TTY, ``TERM`` not dumb, ``NO_COLOR`` unset) tables are
drawn with rich, states coloured; rich is imported only then, and is given ``Text`` objects
built from inert strings with markup, emoji codes and highlighting off, so no outside text is
ever interpreted. Everywhere else the output is plain text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading
    from types import TracebackType

    from rich.console import Console

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


def format_bytes(size: int) -> str:
    """``512 B``, ``14.2 KiB``, ``3.0 MiB``."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


DOMAIN_COLUMNS = ("NAME", "STATE", "VCPUS", "MEMORY", "UPTIME", "HOST")

# colour of each domain state on a colour terminal (rich names; the toolbar maps them too)
STATE_COLOURS = {
    "running": "green",
    "shutoff": "bright_black",
    "crashed": "red",
    "paused": "yellow",
    "starting": "cyan",
    "shutting-down": "cyan",
    "unknown": "magenta",  # its host cannot be reached
}


def needs_password(domain: dict[str, Any]) -> bool:
    """A domain ``list`` shows by name only: its ``status`` wants the tenant's password."""
    return domain.get("confirm") is not None


def domain_row(domain: dict[str, Any]) -> tuple[str, ...]:
    if needs_password(domain):
        return (inert(domain.get("name", "?")), "-", "-", "-", "-", "-")
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


def _password_note(domains: list[dict[str, Any]], env: Environment) -> None:
    """Say why a row is empty, and how to fill it."""
    names = [inert(d.get("name", "?")) for d in domains if needs_password(d)]
    if names:
        how = f"status {names[0]}" if len(names) == 1 else "status DOMAIN"
        env.stdout.write(f"{', '.join(names)}: details need your password ('{how}' asks)\n")


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
    if kind == "events":
        show_events(data, env, as_json=as_json)
        return
    if as_json:
        env.stdout.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True) + "\n")
        return
    if kind == "domains":
        if not data:
            env.stdout.write("no domains\n")
        elif env.colour:
            _rich_domains(env, data)
        else:
            _table(env, DOMAIN_COLUMNS, [domain_row(d) for d in data])
        _password_note(data, env)
    elif kind == "status":
        if env.colour:
            _rich_status(env, data)
            return
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
        for entry in data.get("entries", []):
            env.stdout.write(log_entry_line(entry) + "\n")
    elif kind == "recordings":
        rows = [recording_row(r) for r in data.get("recordings", [])]
        if rows:
            _table(env, RECORDING_COLUMNS, rows)
        else:
            env.stdout.write(f"no recordings of {inert(data.get('domain'))}\n")
    elif kind in ("keys", "totp", "totp-secret"):
        show_self_service(kind, data, env)
    elif kind == "help":
        width = min(max(len(verb["usage"]) for verb in data), HELP_USAGE_WIDTH)
        for verb in data:
            usage, summary = verb["usage"], _summary_with_aliases(verb)
            if len(usage) > width:  # its summary goes on a line of its own, in the column
                env.stdout.write(f"  {usage}\n")
                usage = ""
            env.stdout.write(f"  {usage.ljust(width)}  {summary}\n")
    elif kind == "verb-help":
        for line in verb_help_lines(data):
            env.stdout.write(line + "\n")
    elif kind == "clear":
        if env.stdout_isatty and not env.dumb_terminal:  # as Ctrl-L: home, erase the screen
            env.stdout.write(CLEAR_SCREEN)
    else:
        env.stdout.write(f"{inert(data)}\n")


KEY_COLUMNS = ("TYPE", "BITS", "FINGERPRINT", "COMMENT", "ADDED")


def show_self_service(kind: str, data: dict[str, Any], env: Environment) -> None:
    """``keys`` (a table), ``totp`` (enrolled or not) and a new TOTP secret with its QR code."""
    if kind == "keys":
        keys = data.get("keys", [])
        rows = [
            tuple(inert(key.get(name) or "-") for name in ("type", "bits", "fingerprint"))
            + (inert(key.get("comment") or key.get("note") or ""), inert(key.get("added") or "-"))
            for key in keys
        ]
        if rows:
            _table(env, KEY_COLUMNS, rows)
        else:
            env.stdout.write("no keys: add one with keys add < ~/.ssh/id_ed25519.pub\n")
        env.stdout.write(f"{len(keys)} of at most {inert(data.get('max', '?'))} keys\n")
    elif kind == "totp":
        state = "enrolled" if data.get("enrolled") else "not enrolled (totp enroll)"
        env.stdout.write(f"second factor (TOTP): {state}\n")
    else:
        for line in data.get("qr") or []:
            env.stdout.write(f"{inert(line)}\n")
        env.stdout.write(f"secret: {inert(data.get('secret'))}\n")
        env.stdout.write(f"uri:    {inert(data.get('uri'))}\n")
        env.stdout.write(f"{inert(data.get('message', ''))}\n")


CLEAR_SCREEN = "\x1b[H\x1b[2J"
HELP_USAGE_WIDTH = 46  # a wider usage puts its summary below, so most of help fits 80 columns


def _summary_with_aliases(verb: dict[str, Any]) -> str:
    aliases = verb["aliases"]
    summary = f"{verb['summary']}; also {', '.join(aliases)}" if aliases else verb["summary"]
    return summary if verb.get("here", True) else f"{summary} (interactive shell only)"


def verb_help_lines(verb: dict[str, Any]) -> list[str]:
    """``help VERB``: its usage, summary, aliases, options, and whether ``-c`` refuses it."""
    lines = [f"usage: {verb['usage']}", f"  {verb['summary']}"]
    if verb["aliases"]:
        lines.append(f"  also: {', '.join(verb['aliases'])}")
    lines.extend(f"  {name}: {text}" for name, text in verb["options"])
    if verb["interactive_only"]:
        lines.append("  interactive only (not with vpsshell -c)")
    return lines


RECORDING_COLUMNS = ("ID", "STARTED", "LENGTH", "SIZE", "USERS")


def recording_row(recording: Any) -> tuple[str, ...]:
    """One line of ``recordings``; a recording still going shows its length so far with +."""
    if not isinstance(recording, dict):
        return ("?",) * len(RECORDING_COLUMNS)
    seconds = recording.get("seconds")
    length = format_uptime(int(seconds)) if isinstance(seconds, int | float) else "?"
    size = recording.get("bytes")
    users = recording.get("users")
    return (
        inert(recording.get("id")),
        inert(recording.get("started")),
        length + ("+" if recording.get("active") else ""),
        format_bytes(size) if isinstance(size, int) else "?",
        ", ".join(inert(u) for u in users) if isinstance(users, list) else "?",
    )


def log_entry_line(entry: Any) -> str:
    """One entry of ``log --timestamps``: ``2026-12-05T10:00:01Z text`` for a line of output
    (``-`` for the time in a log kept before times were), or ``TIME -- USER attached (write) --``
    for a marker; all of it inert."""
    if not isinstance(entry, dict):
        return "?"
    when = inert(entry.get("time") or "-").ljust(20)
    if "event" in entry:
        event = inert(entry.get("event") or "?").replace("-", " ")
        who, mode = inert(entry.get("user") or "?"), inert(entry.get("mode") or "?")
        return f"{when} -- {who} {event} ({mode}) --"
    return f"{when} {inert(entry.get('text', ''))}"


# -- events ---------------------------------------------------------------------------------

EVENT_COLOURS = {
    "started": "green",
    "stopped": "bright_black",
    "crashed": "red",
    "rebooted": "cyan",
    "shutdown": "cyan",
    "migrated": "yellow",
}


def event_cells(record: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """Time (UTC), domain, kind, user and detail of one event, inert."""
    when = inert(record.get("time") or "?").replace("T", " ").removesuffix("Z")
    detail = record.get("detail")
    return (
        when,
        inert(record.get("domain") or "-"),
        inert(record.get("kind") or "?"),
        inert(record.get("user") or ""),
        f"({inert(detail)})" if detail else "",
    )


def show_event(record: Any, env: Environment, *, as_json: bool = False) -> None:
    """One event as a line: ``2026-11-28 00:40:01  web1  started  (detail)``, or JSON."""
    if not isinstance(record, dict):
        return
    if as_json:
        env.stdout.write(json.dumps(record, sort_keys=True, ensure_ascii=True) + "\n")
        return
    cells = event_cells(record)
    if env.colour:
        from rich.text import Text

        line = Text(f"{cells[0]}  ")
        line.append(cells[1], style="bold")
        line.append("  ")
        line.append(cells[2], style=EVENT_COLOURS.get(cells[2], ""))
        for cell in cells[3:]:
            if cell:
                line.append(f"  {cell}")
        _console(env).print(line, soft_wrap=True)
        return
    env.stdout.write("  ".join(cell for cell in cells if cell) + "\n")


def show_events(data: Any, env: Environment, *, as_json: bool = False) -> None:
    """The reply of ``events``: its events oldest first, JSON lines with ``as_json``."""
    if not isinstance(data, dict):
        data = {}
    records = data.get("events")
    records = records if isinstance(records, list) else []
    if not records and not as_json and not data.get("follow"):
        env.stdout.write("no events\n")
    for record in records:
        show_event(record, env, as_json=as_json)
    if data.get("truncated"):
        show_error("older events left out (more than fit in one reply; try --lines=N)", env)
    withheld = data.get("withheld")
    if isinstance(withheld, list) and withheld:
        names = ", ".join(inert(name) for name in withheld)
        how = f"events {inert(withheld[0])}" if len(withheld) == 1 else "events DOMAIN"
        show_error(f"events of {names} left out: they need your password ('{how}' asks)", env)


def show_error(message: str, env: Environment) -> None:
    env.stderr.write(f"vpsshell: {inert(message)}\n")


def show_progress(message: str, env: Environment) -> None:
    if env.stderr_isatty:
        env.stderr.write(f"{inert(message)}\n")
        env.stderr.flush()


# -- colour terminal (rich) -----------------------------------------------------------------


def _console(env: Environment) -> Console:
    from rich.console import Console

    return Console(
        file=env.stdout,
        force_terminal=True,
        color_system="standard",
        markup=False,
        emoji=False,
        highlight=False,
    )


def _state_text(state: str) -> Any:
    from rich.text import Text

    return Text(state, style=f"bold {STATE_COLOURS[state]}" if state in STATE_COLOURS else "")


def _rich_domains(env: Environment, domains: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows = [domain_row(domain) for domain in domains]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for index, column in enumerate(DOMAIN_COLUMNS):
        if column in ("NAME", "HOST"):  # long names wrap; the short columns never shrink
            table.add_column(column, overflow="fold")
        else:
            width = max(len(row[index]) for row in [DOMAIN_COLUMNS, *rows])
            table.add_column(
                column,
                no_wrap=True,
                min_width=width,
                justify="right" if column == "MEMORY" else "left",
            )
    for cells in rows:
        table.add_row(Text(cells[0], style="bold"), _state_text(cells[1]), *map(Text, cells[2:]))
    _console(env).print(table)


def _rich_status(env: Environment, domain: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in _status_lines(domain):
        grid.add_row(Text(key), _state_text(value) if key == "state" else Text(value))
    _console(env).print(grid)


# -- login greeting -------------------------------------------------------------------------

MOTD_MAX_DOMAINS = 8


def show_banner(text: str, env: Environment) -> None:
    """The admin's banner, each line inert (the admin's file is not a terminal program)."""
    for line in text.splitlines():
        env.stdout.write(f"{inert(line)}\n")
    env.stdout.flush()


def _motd_state(domain: dict[str, Any]) -> str:
    return "(password)" if needs_password(domain) else inert(domain.get("state", "?"))


def show_motd(domains: list[dict[str, Any]], env: Environment) -> None:
    """One line: the caller's domains and their states."""
    if not domains:
        env.stdout.write("You have no domains here.\n")
        return
    shown = domains[:MOTD_MAX_DOMAINS]
    more = len(domains) - len(shown)
    if env.colour:
        from rich.text import Text

        line = Text("Your domains: ")
        for index, domain in enumerate(shown):
            if index:
                line.append(", ")
            line.append(inert(domain.get("name", "?")), style="bold")
            line.append(" ")
            line.append_text(_state_text(_motd_state(domain)))
        if more:
            line.append(f", and {more} more ('list' shows all)")
        _console(env).print(line)
        return
    parts = [f"{inert(d.get('name', '?'))} {_motd_state(d)}" for d in shown]
    if more:
        parts.append(f"and {more} more ('list' shows all)")
    env.stdout.write(f"Your domains: {', '.join(parts)}\n")


# -- a request under way ----------------------------------------------------------------------

SPINNER_DELAY_SECONDS = 0.3
SPINNER_FRAMES = "|/-\\"


class Progress:
    """Shows that a request is under way, and the helper's progress messages.

    With ``spinner`` (an interactive terminal) a spinner line appears on stderr once the
    request has taken ``SPINNER_DELAY_SECONDS``, shows the latest progress message, and is
    erased when the request ends. Without it each progress message is one line on stderr,
    when stderr is a terminal, as for ``vpsshell -c``.
    """

    def __init__(self, env: Environment, label: str, *, spinner: bool) -> None:
        self.env = env
        self.text = inert(label)
        self.spinner = spinner
        self._thread: threading.Thread | None = None
        self._drawn = False

    def update(self, message: str) -> None:
        self.text = inert(message)
        if not self.spinner:
            show_progress(message, self.env)

    def _spin(self) -> None:
        import shutil

        if self._stop.wait(SPINNER_DELAY_SECONDS):
            return
        frame = 0
        while True:
            width = shutil.get_terminal_size().columns
            line = f"{SPINNER_FRAMES[frame % len(SPINNER_FRAMES)]} {self.text}"[: width - 1]
            self.env.stderr.write(f"\r{line}\x1b[K")
            self.env.stderr.flush()
            self._drawn = True
            frame += 1
            if self._stop.wait(0.1):
                return

    def __enter__(self) -> Progress:
        if self.spinner:
            import threading  # not at module level: ``vpsshell -c`` never spins

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._spin, name="vpsshell-spinner", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            if self._drawn:
                self.env.stderr.write("\r\x1b[K")
                self.env.stderr.flush()
