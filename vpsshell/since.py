"""``--since=TIME``: an ISO 8601 time or a time relative to now, checked strictly.

The shell checks it before anything is sent (a bad value is a usage error, exit 64) and the
helper checks it again, as it checks every argument. Both turn it into the form the helper
stores times in (UTC, ``2026-12-05T10:00:00Z``), which compares correctly as text.

Accepted: ``-10m``, ``-2h``, ``-1d``, ``-30s`` (at most 9999 units), and ISO 8601 times such as
``2026-12-05T10:00:00Z``, ``2026-12-05T11:00:00+01:00``, ``2026-12-05T10:00`` or
``2026-12-05``; a time without an offset is UTC.
"""

from __future__ import annotations

import datetime
import re
import time

from vpsshell.errors import UsageError

MAX_CHARS = 40
_RELATIVE = re.compile(r"-([0-9]{1,4})([smhd])\Z")
_ISO_CHARS = re.compile(r"[0-9][0-9:TZ+.-]*\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def format_utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def parse_since(text: str, now: float | None = None) -> str:
    """The UTC time ``text`` stands for, as ``YYYY-MM-DDTHH:MM:SSZ``. Raises UsageError."""
    if now is None:
        now = time.time()
    shown = repr(text[:MAX_CHARS])
    relative = _RELATIVE.match(text)
    if relative:
        return format_utc(now - int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)])
    if len(text) > MAX_CHARS or not _ISO_CHARS.match(text):
        raise UsageError(
            f"--since: {shown} is not a time (ISO 8601 like 2026-12-05T10:00:00Z,"
            " or -30s, -10m, -2h, -1d)"
        )
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since: {shown} is not a valid ISO 8601 time (like 2026-12-05T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return format_utc(when.timestamp())
