"""Per-domain console logs on disk: bounded in size, count, write rate and age; read by ``log``.

A domain's log is ``UUID.log`` (newest) and ``UUID.log.1`` ... ``UUID.log.N`` (older) in the
console log directory. It is keyed by the domain's UUID, never by its name: a name the admin
gives to a new domain (a new UUID) starts with an empty log, whoever held the name before, and
across helper restarts too. Files named after domain names (``NAME.log``, written by earlier
versions) are never read, written or removed here. Only a string that is a UUID ever becomes
part of a path, and files are opened with ``O_NOFOLLOW``: a symlink planted in the directory is
refused, never followed.

A flood of output (keystrokes echoed as fast as a session may type, or a guest that prints
without end) must not push a domain's history out of its log: the log takes at most one file's
worth at once and ``bytes_per_hour`` after that. What does not fit is left out of the log (never
out of the live console or the scrollback) and a line in the log says how much. ``expire_logs``
removes the logs of domains the helper has not seen for a long time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable

from vpsshell.checks import UUID_PATTERN, is_uuid

log = logging.getLogger("vpsshell.console")

MAX_READ_BYTES = 4 * 1024 * 1024
_UUID_LOG_FILE_RE = re.compile(rf"({UUID_PATTERN})\.log(?:\.[0-9]+)?\Z")
_ANY_LOG_FILE_RE = re.compile(r"[^.].*\.log(?:\.[0-9]+)?\Z")
# After output was left out, the log takes output again once this much budget has come back:
# during a long flood that is a sample every few seconds, not a note between every two bytes.
RESUME_BYTES = 4096


class ConsoleLog:
    """The log of one domain UUID. ``bytes_per_hour`` None: no write budget (tests)."""

    def __init__(
        self,
        directory: str,
        uuid: str,
        max_bytes: int,
        files: int,
        bytes_per_hour: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.path: str | None = os.path.join(directory, f"{uuid}.log")
        if not is_uuid(uuid):  # backends give lowercase UUIDs; anything else is not a path
            log.error("console of domain UUID %r is not logged: not a UUID", uuid[:80])
            self.path = None
        self.max_bytes = max_bytes
        self.files = files
        self._fd: int | None = None
        self._size = 0
        self._failed = False
        self._rate = bytes_per_hour / 3600.0 if bytes_per_hour else None
        self._clock = clock
        self._budget = float(max_bytes)
        self._budget_at = clock()
        self.left_out = 0  # bytes not logged since the log last took output

    def _open(self) -> int:
        assert self.path is not None
        if self._fd is None:
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
            self._fd = os.open(
                self.path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o640,
            )
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _rotate(self) -> None:
        assert self.path is not None
        self._close_fd()
        # Drop the oldest first so every rename below goes to a free name: renaming over an
        # existing file makes ext4 flush the renamed file's data (auto_da_alloc), which stalls
        # the helper's event loop for milliseconds on each rotation.
        oldest = f"{self.path}.{self.files - 1}"
        if self.files > 1 and os.path.lexists(oldest):
            os.unlink(oldest)
        for index in range(self.files - 1, 0, -1):
            older = f"{self.path}.{index}"
            newer = self.path if index == 1 else f"{self.path}.{index - 1}"
            if os.path.lexists(newer):
                os.replace(newer, older)
        if self.files <= 1 and os.path.lexists(self.path):
            os.unlink(self.path)

    def _left_out_note(self) -> bytes:
        return (
            f"\r\n[vpsshell: {self.left_out} bytes of console output not logged: more than "
            "this log takes per hour]\r\n"
        ).encode()

    def _admit(self, data: bytes) -> bytes:
        """What of ``data`` the write budget lets into the log (with a note of any gap)."""
        if self._rate is None:
            return data
        now = self._clock()
        self._budget = min(self.max_bytes, self._budget + (now - self._budget_at) * self._rate)
        self._budget_at = now
        note = self._left_out_note() if self.left_out else b""
        # after a gap: the note and a whole small chunk (a prompt, a line typed after the
        # flood), or the note and RESUME_BYTES of a big one; the note is paid for too
        if self._budget < min(self.max_bytes, len(note) + min(len(data), RESUME_BYTES)):
            self.left_out += len(data)
            return b""
        self._budget = max(0.0, self._budget - len(note))
        keep = min(len(data), int(self._budget))
        self._budget -= keep
        self.left_out = len(data) - keep
        return note + data[:keep]

    def append(self, data: bytes) -> None:
        """Append guest output; failures are logged once and never stop the console."""
        if self.path is None:
            return
        data = self._admit(data)
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate()
            fd = self._open()
            os.write(fd, data[-self.max_bytes :])
            self._size += min(len(data), self.max_bytes)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.error("cannot write console log %s: %s", self.path, exc)
            self._failed = True
            self._close_fd()

    def close(self) -> None:
        """Close the file; a gap still open is noted first, so the log says where it is."""
        if self.path is not None and self.left_out:
            self._write(self._left_out_note())
            self.left_out = 0
        self._close_fd()

    def mark_seen(self) -> None:
        """The helper knows this domain now: its log's age (see ``expire_logs``) starts anew."""
        if self.path is None:
            return
        for path in (self.path, f"{self.path}.1"):
            try:
                os.utime(path, follow_symlinks=False)
                return
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.debug("cannot touch console log %s: %s", path, exc)
                return

    def tail(self, lines: int) -> list[str]:
        """The last ``lines`` lines (current file, then rotated ones as needed), as text."""
        if self.path is None:
            return []
        chunks: list[bytes] = []
        total = 0
        for index in range(self.files):
            path = self.path if index == 0 else f"{self.path}.{index}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                break
            try:
                size = os.fstat(fd).st_size
                want = min(size, MAX_READ_BYTES - total)
                os.lseek(fd, size - want, os.SEEK_SET)
                data = b""
                while len(data) < want:
                    piece = os.read(fd, want - len(data))
                    if not piece:
                        break
                    data += piece
            finally:
                os.close(fd)
            chunks.insert(0, data)
            total += len(data)
            if b"".join(chunks).count(b"\n") > lines or total >= MAX_READ_BYTES:
                break
        text = b"".join(chunks).decode("utf-8", errors="replace").replace("\r", "")
        result = text.split("\n")
        if result and result[-1] == "":
            result.pop()
        return result[-lines:] if lines else []


def expire_logs(
    directory: str,
    *,
    is_live: Callable[[str], bool],
    keep_seconds: float,
    keep_domains: int,
    lock: threading.Lock,
    now: float | None = None,
) -> tuple[list[str], int]:
    """Remove the logs of domains that are not live (``is_live(uuid)`` False): those not seen
    for ``keep_seconds`` and those beyond the ``keep_domains`` seen last. Seen means written,
    or touched by ``mark_seen``: the newest modification time among a domain's files.

    Runs in a worker thread: ``is_live`` is asked again under ``lock`` right before a domain's
    files go, and the event loop takes the same lock to make a domain live, so a domain that
    comes back during a run keeps its log. Returns the UUIDs whose logs were removed and how
    many other ``*.log`` files the directory holds (from earlier versions, left alone)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return [], 0
    seen: dict[str, float] = {}
    files: dict[str, list[str]] = {}
    others = 0
    for name in names:
        match = _UUID_LOG_FILE_RE.match(name)
        if match is None:
            others += _ANY_LOG_FILE_RE.match(name) is not None
            continue
        try:
            mtime = os.lstat(os.path.join(directory, name)).st_mtime
        except FileNotFoundError:
            continue
        uuid = match.group(1)
        files.setdefault(uuid, []).append(name)
        seen[uuid] = max(seen.get(uuid, mtime), mtime)
    now = time.time() if now is None else now
    gone = sorted((uuid for uuid in seen if not is_live(uuid)), key=seen.__getitem__, reverse=True)
    removed: list[str] = []
    for rank, uuid in enumerate(gone):
        if rank < keep_domains and now - seen[uuid] <= keep_seconds:
            continue
        with lock:
            if is_live(uuid):
                continue
            for name in files[uuid]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
        removed.append(uuid)
    return removed, others
