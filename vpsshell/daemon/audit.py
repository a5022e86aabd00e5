"""The audit log: one JSON line per request, allowed or denied, written before the reply.

Lines are appended with ``write`` on an ``O_APPEND`` descriptor, so concurrent writers never
interleave within a line. Values are JSON-escaped, so nothing a tenant sends can forge a line
break or a second record. A write that fails part-way leaves a truncated record behind; the
next record then starts on a line of its own, so two records can never merge into one.

A failed write is logged loudly and never takes the helper down, but the log remembers it:
``writable()`` is False after a failure (until a write succeeds again) and while the file
system has less than ``MIN_FREE_BYTES`` left, and the tenant API then refuses actions that
change a domain (fail closed) unless the admin chose ``audit_fail_open``.

Floods are folded: records that a tenant can provoke at will and that say the same thing
(refused connections, requests over the rate limit) are written once per ``FOLD_SECONDS`` and
key, followed by one record with ``"repeated": N`` for the rest of that window.

Rotation: ``reopen()`` (SIGUSR1 or SIGHUP, sent by logrotate's postrotate) opens the path
afresh. It runs on the event loop between two records, and each record is one ``write``, so
every record goes whole either to the file logrotate moved away or to the new one.

With ``audit_syslog`` every record is also sent to syslog (``SyslogCopy``: facility authpriv,
identifier ``vpsshell-audit``), without ever waiting: a record the syslog socket cannot take
at once is dropped from the copy, counted and logged. The file stays the record that counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import syslog
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vpsshell.audit")

MAX_FIELD_CHARS = 512
MIN_FREE_BYTES = 1024 * 1024  # below this, actions that change a domain are refused
FOLD_SECONDS = 10.0
MAX_FOLDS = 10_000  # distinct keys being folded at once; past that, records are written as is
ERROR_LOG_EVERY_SECONDS = 60.0


# built once (``json.dumps`` with options builds one per call); ASCII-only output, so nothing
# a tenant sends can become a line break or a byte the log's readers choke on
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + "..."
    return value


@dataclass
class _Fold:
    until: float
    repeated: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    first_time: str = ""


class SyslogCopy:
    """Audit records sent to syslog as well, as datagrams on /dev/log (where the journal
    listens on systemd hosts). Never blocks the helper: the socket is non-blocking, and what
    it cannot take now is dropped from the copy (the audit file has it) and counted."""

    ADDRESS = "/dev/log"
    IDENTIFIER = "vpsshell-audit"

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self.dropped = 0
        self._dropped_reported = 0
        self._last_error_logged = 0.0

    def send(self, line: str, decision: object) -> None:
        # refusals at notice, so a syslog filter can pick them out without parsing the JSON
        severity = syslog.LOG_NOTICE if decision in ("deny", "invalid") else syslog.LOG_INFO
        message = f"<{syslog.LOG_AUTHPRIV | severity}>{self.IDENTIFIER}[{os.getpid()}]: {line}"
        try:
            if self._sock is None:
                self._sock = self._connect()
            self._sock.send(message.encode("ascii"))
        except OSError as exc:
            if not isinstance(exc, BlockingIOError) and self._sock is not None:
                self._sock.close()  # syslog restarted or gone: connect again next time
                self._sock = None
            self.dropped += 1
            self._report(exc)

    def _connect(self) -> socket.socket:
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            sock.connect(self.ADDRESS)
        except OSError:
            sock.close()
            raise
        return sock

    def _report(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._last_error_logged < ERROR_LOG_EVERY_SECONDS:
            return
        self._last_error_logged = now
        log.warning(
            "audit records not copied to syslog (%s): %d since the last report; the audit "
            "log has them",
            exc.strerror or exc,
            self.dropped - self._dropped_reported,
        )
        self._dropped_reported = self.dropped

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class AuditLog:
    def __init__(self, path: str, *, to_syslog: bool = False) -> None:
        self.path = path
        self.syslog_copy = SyslogCopy() if to_syslog else None
        self._fd: int | None = None
        self._broken_line = False  # the file may end in a partial record
        self._failed = False
        self._last_error_logged = 0.0
        self._folds: dict[Hashable, _Fold] = {}

    def open(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o750, exist_ok=True)
        self._fd = os.open(
            self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640
        )
        size = os.fstat(self._fd).st_size
        if size:  # a helper killed in mid-write (or a full disk) may have left half a line
            self._broken_line = os.pread(self._fd, 1, size - 1) != b"\n"

    def reopen(self) -> None:
        """Write to a file at ``path`` from the next record on (logrotate moved the old one
        away). If it cannot be opened, records go on to the old file, and the failure is
        logged."""
        old = self._fd
        self._fd = None
        try:
            self.open()
        except OSError as exc:
            self._fd = old
            log.error(
                "cannot reopen the audit log %s: %s; still writing to the old file", self.path, exc
            )
            return
        if old is not None:
            os.close(old)
        log.info("reopened the audit log %s", self.path)

    def close(self) -> None:
        self.flush_folds()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.syslog_copy is not None:
            self.syslog_copy.close()

    def writable(self) -> bool:
        """Whether records can be written now: the last write worked and there is room."""
        if self._failed:
            return False
        try:
            if self._fd is None:
                self.open()
            assert self._fd is not None
            fs = os.fstatvfs(self._fd)
        except OSError:
            return False
        free_blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
        return free_blocks * fs.f_frsize >= MIN_FREE_BYTES

    def write(self, **fields: Any) -> bool:
        """Append one record; False if it could not be written (the failure is logged)."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        record.update({key: _clip(value) for key, value in fields.items()})
        line = _ENCODER.encode(record) + "\n"
        if self.syslog_copy is not None:  # whether or not the file takes it
            self.syslog_copy.send(line.rstrip("\n"), record.get("decision"))
        data = line.encode("ascii")
        if self._broken_line:
            data = b"\n" + data
        try:
            if self._fd is None:
                self.open()
            assert self._fd is not None
            written = os.write(self._fd, data)
            if written != len(data):  # a full file system can take part of a record
                self._broken_line = True
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:
            self._broken_line = True  # whatever reached the file, start the next record afresh
            self._failed = True
            now = time.monotonic()
            if now - self._last_error_logged >= ERROR_LOG_EVERY_SECONDS:
                self._last_error_logged = now
                log.error(
                    "cannot write the audit log %s: %s; actions that change domains are refused "
                    "until it can be written (audit_fail_open); record was: %s",
                    self.path,
                    exc,
                    line.rstrip(),
                )
            return False
        self._broken_line = False
        if self._failed:
            log.warning("the audit log %s can be written again", self.path)
            self._failed = False
        return True

    def write_folded(self, key: Hashable, **fields: Any) -> None:
        """Write a record that a tenant can provoke at will: the first of a window is written
        now, the rest of the window become one record with ``"repeated": N`` at its end."""
        now = time.monotonic()
        fold = self._folds.get(key)
        if fold is not None and now < fold.until:
            fold.repeated += 1
            fold.fields = fields
            return
        if fold is not None:
            self._end_fold(key)
        self.write(**fields)
        if len(self._folds) >= MAX_FOLDS:
            return
        self._folds[key] = _Fold(until=now + FOLD_SECONDS)
        try:
            asyncio.get_running_loop().call_later(FOLD_SECONDS, self._end_fold, key)
        except RuntimeError:  # no event loop (tests, tools): the next record or close() ends it
            pass

    def _end_fold(self, key: Hashable) -> None:
        fold = self._folds.pop(key, None)
        if fold is not None and fold.repeated:
            self.write(**fold.fields, repeated=fold.repeated, folded_seconds=FOLD_SECONDS)

    def flush_folds(self) -> None:
        for key in list(self._folds):
            self._end_fold(key)
