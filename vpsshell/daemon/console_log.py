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

Each log file has a sidecar ``FILE.times`` (``UUID.log.times``, ``UUID.log.1.times`` ...),
rotated with it: text lines ``OFFSET EPOCH`` say when the output at byte OFFSET of the file
arrived (at most one line a second: a chunk in the same second as the last record adds none),
and ``OFFSET EPOCH EVENT USER MODE`` mark attach, detach and takeover. A log file grown too big
rotates, and so does one whose index passed a quarter of the file limit (at least 4 KiB: a
trickle of output over many seconds), so the index is bounded with the log. A log without an
index (written before indexes existed) reads as before, with no times.
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
from vpsshell.since import format_utc

log = logging.getLogger("vpsshell.console")

MAX_READ_BYTES = 4 * 1024 * 1024
_UUID_LOG_FILE_RE = re.compile(rf"({UUID_PATTERN})\.log(?:\.[0-9]+)?(?:\.times)?\Z")
_ANY_LOG_FILE_RE = re.compile(r"[^.].*\.log(?:\.[0-9]+)?\Z")
# After output was left out, the log takes output again once this much budget has come back:
# during a long flood that is a sample every few seconds, not a note between every two bytes.
RESUME_BYTES = 4096
TIMES_SUFFIX = ".times"
MIN_TIMES_BYTES = 4096  # an index may always grow this big: a tiny log still rotates by size
MARKER_COST = 64  # bytes of write budget a marker takes (about its size in the index)
MARKER_EVENTS = ("attached", "detached", "took-over")
Record = tuple[int, str, list[str]]  # an index record: offset, UTC time, marker words (or none)
_MARKER_WORD_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")


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
        wall_clock: Callable[[], float] = time.time,
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
        self._wall_clock = wall_clock
        self._times_fd: int | None = None
        self._times_size = 0
        self._stamped_second: int | None = None  # of the last output record in this file
        self._closed = False

    def _open(self) -> int:
        assert self.path is not None
        if self._fd is None:
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            times_fd = os.open(self.path + TIMES_SUFFIX, flags, 0o640)
            try:
                fd = os.open(self.path, flags, 0o640)
            except OSError:
                os.close(times_fd)
                raise
            self._fd, self._times_fd = fd, times_fd
            self._size = os.fstat(fd).st_size
            self._times_size = os.fstat(times_fd).st_size
        return self._fd

    def _record(self, fields: str) -> None:
        """Append one index record for the byte the log file's next write goes to."""
        self._open()
        assert self._times_fd is not None
        line = f"{self._size} {fields}\n".encode()
        os.write(self._times_fd, line)
        self._times_size += len(line)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._times_fd is not None:
            os.close(self._times_fd)
            self._times_fd = None
        self._stamped_second = None

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
            # an index goes with its file; a file without one (older versions) has none after
            if os.path.lexists(older + TIMES_SUFFIX):
                os.unlink(older + TIMES_SUFFIX)
            if os.path.lexists(newer + TIMES_SUFFIX):
                os.replace(newer + TIMES_SUFFIX, older + TIMES_SUFFIX)
        if self.files <= 1:
            for path in (self.path, self.path + TIMES_SUFFIX):
                if os.path.lexists(path):
                    os.unlink(path)

    def _left_out_note(self) -> bytes:
        return (
            f"\r\n[vpsshell: {self.left_out} bytes of console output not logged: more than "
            "this log takes per hour]\r\n"
        ).encode()

    def _refill(self) -> None:
        assert self._rate is not None
        now = self._clock()
        self._budget = min(self.max_bytes, self._budget + (now - self._budget_at) * self._rate)
        self._budget_at = now

    def _admit(self, data: bytes) -> bytes:
        """What of ``data`` the write budget lets into the log (with a note of any gap)."""
        if self._rate is None:
            return data
        self._refill()
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

    def mark(self, event: str, user: str, mode: str) -> None:
        """Note in the index that ``user`` attached, detached or took over (``mode``: write or
        watch) here; failures are logged once and never stop the console."""
        if self.path is None or self._closed or event not in MARKER_EVENTS:
            return
        words = [w if _MARKER_WORD_RE.match(w) else "?" for w in (user, mode)]
        if self._rate is not None:  # paid from the write budget: attaching cannot flood it
            self._refill()
            if self._budget < MARKER_COST:
                return
            self._budget -= MARKER_COST
        try:
            self._rotate_if_full(0)
            self._record(f"{self._wall_clock():.3f} {event} {words[0]} {words[1]}")
        except OSError as exc:
            self._failed_write(exc)

    def _rotate_if_full(self, adding: int) -> None:
        self._open()
        too_big = self._size + adding > self.max_bytes and self._size > 0
        if too_big or self._times_size > max(self.max_bytes // 4, MIN_TIMES_BYTES):
            self._rotate()

    def _failed_write(self, exc: OSError) -> None:
        if not self._failed:
            log.error("cannot write console log %s: %s", self.path, exc)
        self._failed = True
        self._close_fd()

    def _write(self, data: bytes) -> None:
        try:
            self._rotate_if_full(len(data))
            now = self._wall_clock()
            if self._stamped_second != int(now):
                self._record(f"{now:.3f}")
                self._stamped_second = int(now)
            fd = self._open()
            os.write(fd, data[-self.max_bytes :])
            self._size += min(len(data), self.max_bytes)
            self._failed = False
        except OSError as exc:
            self._failed_write(exc)

    def close(self) -> None:
        """Close the file; a gap still open is noted first, so the log says where it is. Markers
        after this (sessions ending after their hub stopped) are not logged: no file reopens."""
        self._closed = True
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

    def _paths(self) -> list[str]:
        """This log's files, newest first."""
        assert self.path is not None
        return [self.path if i == 0 else f"{self.path}.{i}" for i in range(self.files)]

    def tail(self, lines: int) -> list[str]:
        """The last ``lines`` lines (current file, then rotated ones as needed), as text."""
        if self.path is None:
            return []
        chunks: list[bytes] = []
        total = 0
        for path in self._paths():
            end = _read_end(path, MAX_READ_BYTES - total)
            if end is None:
                break
            chunks.insert(0, end[0])
            total += len(end[0])
            if b"".join(chunks).count(b"\n") > lines or total >= MAX_READ_BYTES:
                break
        text = b"".join(chunks).decode("utf-8", errors="replace").replace("\r", "")
        result = text.split("\n")
        if result and result[-1] == "":
            result.pop()
        return result[-lines:] if lines else []

    def entries(
        self, lines: int, since: str = "", *, markers: bool = True
    ) -> list[dict[str, str | None]]:
        """The last ``lines`` entries, oldest first: ``{time, text}`` for a line of output (time
        None in a log written before indexes) and, with ``markers``, ``{time, event, user,
        mode}`` for an attach, detach or takeover. With ``since`` (UTC, as ``parse_since``
        gives it) only those timed at or after it."""
        if self.path is None or not lines:
            return []
        files: list[tuple[bytes, int, list[Record]]] = []
        total = newlines = 0
        for path in self._paths():
            end = _read_end(path, MAX_READ_BYTES - total)
            if end is None:
                break
            records = _read_index(path + TIMES_SUFFIX)
            files.insert(0, (*end, records))
            total += len(end[0])
            newlines += end[0].count(b"\n")
            if total >= MAX_READ_BYTES or (newlines > lines and not since):
                break
            if since and records and records[0][1] < since:
                break  # older files hold older times only
        result = _timed_entries(files)
        if not markers:
            result = [entry for entry in result if "text" in entry]
        if since:
            result = [e for e in result if e["time"] is not None and e["time"] >= since]
        return result[-lines:]


def _read_end(path: str, want: int) -> tuple[bytes, int] | None:
    """The last ``want`` bytes of a log file and the offset they start at; None: no file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        want = min(size, want)
        os.lseek(fd, size - want, os.SEEK_SET)
        data = b""
        while len(data) < want:
            piece = os.read(fd, want - len(data))
            if not piece:
                break
            data += piece
    finally:
        os.close(fd)
    return data, size - want


def _read_index(path: str) -> list[Record]:
    """The records of an index, in file order, as (offset, UTC time, marker words); none for
    a missing index. Malformed records (and a last one still being written) are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        with os.fdopen(fd, "rb", closefd=False) as index:
            raw = index.read(MAX_READ_BYTES)
    finally:
        os.close(fd)
    records: list[Record] = []
    for line in raw.split(b"\n")[:-1]:
        words = line.decode("ascii", errors="replace").split(" ")
        try:
            offset, epoch = int(words[0]), float(words[1])
        except (ValueError, IndexError):
            continue
        marker = words[2:]
        if marker and (len(marker) != 3 or marker[0] not in MARKER_EVENTS):
            continue
        records.append((offset, format_utc(epoch), marker))
    return records


def _timed_entries(files: list[tuple[bytes, int, list[Record]]]) -> list[dict[str, str | None]]:
    """The lines of log files (oldest first: bytes from an offset, index records), each with
    the time its first byte arrived, and the markers; a marker inside a line comes before
    that line. A line goes on across a rotation, as in ``tail``."""
    found: list[dict[str, str | None]] = []
    line = bytearray()
    line_time: str | None = None
    now: str | None = None

    def feed(piece: bytes) -> None:
        nonlocal line_time
        for part in re.split(b"(\n)", piece):
            if part == b"\n":
                text = bytes(line).decode("utf-8", errors="replace").replace("\r", "")
                found.append({"time": line_time, "text": text})
                line.clear()
                line_time = None
            elif part:
                if not line:
                    line_time = now
                line.extend(part)

    for data, start, records in files:
        now = None  # a file without an index has no times
        position = start
        for offset, when, marker in sorted(records, key=lambda record: record[0]):
            if offset > position:
                feed(data[position - start : offset - start])
                position = offset
            if not marker:
                now = when
            elif offset >= start:
                event, user, mode = marker
                # a log entry (a reply's content), not a protocol message of its own
                found.append(dict(time=when, event=event, user=user, mode=mode))
        feed(data[position - start :])
    if line:
        feed(b"\n")
    return found


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
