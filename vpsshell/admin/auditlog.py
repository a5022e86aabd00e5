"""``vpsshell-admin audit``: the helper's audit log, filtered, pretty-printed or as JSON lines.

The log holds one JSON object per line (vpsshell/daemon/audit.py). Many of its values came from
tenants (domain names, messages) or from whoever could write the file, so every value is shown
inert: control, format (bidi) and separator characters become visible escapes, and JSON output
is re-encoded as ASCII. No byte of the log reaches the terminal as it is. ``--follow`` keeps
reading as the helper appends, and starts over when the log is rotated or truncated.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from vpsshell.admin.context import AdminContext, AdminError

FOLLOW_POLL_SECONDS = 0.3
MAX_LINE_BYTES = 1024 * 1024

#: Fields shown in their own column; every other field is appended as key=value.
_COLUMNS = ("time", "user", "uid", "action", "domain", "decision", "result")
_DETAILS = ("rule", "reason", "message", "confirm", "request_id", "pid", "socket", "duration_ms")


def inert(value: object) -> str:
    """Printable text only: control, format (bidi) and separator characters become escapes."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=True)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _show(value: object) -> str:
    return "-" if value is None else inert(value)


def matches(record: dict[str, Any], user: str | None, domain: str | None) -> bool:
    if user is not None and record.get("user") != user and str(record.get("uid")) != user:
        return False
    return domain is None or record.get("domain") == domain


def pretty(record: dict[str, Any]) -> str:
    """One aligned line per record; every value passed through ``inert``."""
    who = _show(record.get("user"))
    if record.get("uid") is not None:
        who += f"({_show(record.get('uid'))})"
    parts = [
        _show(record.get("time")).ljust(24),
        who.ljust(20),
        _show(record.get("action")).ljust(16),
        _show(record.get("domain")).ljust(12),
        _show(record.get("decision")).ljust(7),
        _show(record.get("result")).ljust(9),
    ]
    details = []
    for key in (*_DETAILS, *sorted(set(record) - set(_COLUMNS) - set(_DETAILS))):
        value = record.get(key)
        if value is None:
            continue
        shown = inert(value)
        if key == "duration_ms":
            details.append(f"{shown}ms")
        elif " " in shown:
            details.append(f"{inert(key)}={json.dumps(shown)}")
        else:
            details.append(f"{inert(key)}={shown}")
    return " ".join(parts + details).rstrip()


def as_json(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


class _Reader:
    """Complete lines from the log, from the start; notices rotation and truncation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh = open(path, "rb")  # noqa: SIM115 - kept open while following
        self.pending = b""
        self.number = 0

    def lines(self) -> Iterator[tuple[int, bytes]]:
        while True:
            chunk = self.fh.readline(MAX_LINE_BYTES)
            if not chunk:
                return
            if not chunk.endswith(b"\n") and len(chunk) < MAX_LINE_BYTES:
                self.pending += chunk  # the helper is still writing this line
                return
            line, self.pending = self.pending + chunk, b""
            self.number += 1
            yield self.number, line.rstrip(b"\n")

    def replaced(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return st.st_ino != os.fstat(self.fh.fileno()).st_ino or st.st_size < self.fh.tell()

    def reopen(self) -> None:
        self.fh.close()
        self.fh = open(self.path, "rb")  # noqa: SIM115
        self.pending = b""
        self.number = 0

    def close(self) -> None:
        self.fh.close()


def _emit(ctx: AdminContext, number: int, raw: bytes, json_output: bool) -> None:
    record = parse(raw)
    if record is None:
        shown = inert(raw.decode("utf-8", "replace"))[:200]
        ctx.note(f"{ctx.config.audit_log}:{number}: not a JSON record: {shown}")
    elif json_output:
        ctx.out(as_json(record))
    else:
        ctx.out(pretty(record))


def cmd_audit(
    ctx: AdminContext,
    follow: bool,
    user: str | None,
    domain: str | None,
    json_output: bool,
    last: int | None,
) -> int:
    path = ctx.config.audit_log
    while True:
        try:
            reader = _Reader(path)
            break
        except OSError as exc:
            if not follow or not isinstance(exc, FileNotFoundError):
                raise AdminError(f"cannot read the audit log {path}: {exc.strerror}") from None
            time.sleep(FOLLOW_POLL_SECONDS)
    try:
        backlog: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=last)
        for number, raw in reader.lines():
            record = parse(raw)
            if record is None:
                _emit(ctx, number, raw, json_output)  # a note on stderr, not a record
            elif matches(record, user, domain):
                backlog.append((number, raw))
        for number, raw in backlog:
            _emit(ctx, number, raw, json_output)
        while follow:
            time.sleep(FOLLOW_POLL_SECONDS)
            if reader.replaced():
                reader.reopen()
            for number, raw in reader.lines():
                record = parse(raw)
                if record is None or matches(record, user, domain):
                    _emit(ctx, number, raw, json_output)
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
    return 0
