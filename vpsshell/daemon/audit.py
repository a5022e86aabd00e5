"""The audit log: one JSON line per request, allowed or denied, written before the reply.

Lines are appended with a single ``write`` on an ``O_APPEND`` descriptor, so concurrent writers
never interleave within a line. Values are JSON-escaped, so nothing a tenant sends can forge a
line break or a second record. A failed write is logged loudly; it never takes the helper down.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

log = logging.getLogger("vpsshell.audit")

MAX_FIELD_CHARS = 512


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + "..."
    return value


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o750, exist_ok=True)
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640
        )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, **fields: Any) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        record.update({key: _clip(value) for key, value in fields.items()})
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
        try:
            if self._fd is None:
                self.open()
            assert self._fd is not None
            os.write(self._fd, line.encode("ascii"))
        except OSError as exc:
            log.error("cannot write the audit log %s: %s; record was: %s", self.path, exc, line)
