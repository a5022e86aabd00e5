"""Console session recordings in asciicast v2, the format ``asciinema play`` plays unchanged.

Every console session is recorded, the writer's and each watcher's, from its attach to its
detach, as its viewer saw it: the output (the replayed scrollback first), what the writer typed
(unless ``console_record_input`` is off), the tenant's window size and its changes, and markers
for what happened to the session (a takeover, a notice, the detach and why). Watchers' views
are the same stream: a recording per session says who saw what, and when.

A recording is ``ID.cast`` in the recordings directory, ``ID`` being its start (UTC) and a
random tag: ``20261205-101500-3fa2c1``. Only a string of that shape ever becomes part of a path,
and files are created with ``O_EXCL | O_NOFOLLOW``. Its first line is the asciicast header
(``version`` 2, ``width``, ``height``, ``timestamp``, ``title``) with a ``vpsshell`` object
naming the domain, its UUID, the user and the mode; then one ``[seconds, code, data]`` line per
event: ``o`` output, ``i`` input, ``r`` a resize (``COLSxROWS``), ``m`` a marker. The JSON is
ASCII (``\\u`` escapes for the rest), so a recording printed on a terminal shows as text and
never acts on it.

Recording must not slow a console down (``bench/console.py`` measures it): a chunk of output is
decoded and escaped once for all the sessions of a hub that record it (only the time at the
head of each line differs), and lines are written in batches (``FLUSH_BYTES``, at most
``FLUSH_SECONDS`` late), so a helper that dies loses that much of the end of its recordings.

Bounds: a recording stops growing at ``console_recording_bytes`` (a marker says so); the
recordings of one domain UUID at ``console_recordings_bytes_per_domain`` and all of them at
``console_recordings_bytes``, by removing the oldest finished ones (a tenant who floods their
own console pushes out their own domain's recordings first); none is kept longer than
``console_recordings_keep_days``. The store keeps an index in memory (read from the headers
at start), so listing a domain's recordings reads no file.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from vpsshell import protocol
from vpsshell.daemon.config import Limits
from vpsshell.since import format_utc

log = logging.getLogger("vpsshell.console")

SUFFIX = ".cast"
ID_RE = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}\Z")
HEADER_MAX_BYTES = 4096  # a header longer than this is not one of ours
DEFAULT_SIZE = (24, 80)  # rows, cols: a session without a terminal (ssh without -t)
MAX_DIMENSION = 10000
SEND_CHUNK_BYTES = 32 * 1024
EVENT_END = b"]\n"
FLUSH_BYTES = 64 * 1024  # a recording writes its lines once this much is pending,
FLUSH_SECONDS = 0.05  # or this long after the first of them
FLUSH_PARTS = 512  # or at this many parts (os.writev takes at most IOV_MAX, 1024 on Linux)
SEND_SECONDS = 600.0  # a download slower than this is cut off: a connection is not kept forever


def is_recording_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.match(value) is not None


@dataclass
class RecordingInfo:
    """What the index knows of one recording."""

    id: str
    domain: str
    uuid: str
    user: str
    mode: str
    started: float  # epoch
    size: int
    ended: float | None = None  # epoch; None while the session goes on

    def to_json(self, now: float) -> dict[str, Any]:
        end = self.ended if self.ended is not None else now
        return {
            "id": self.id,
            "domain": self.domain,
            "user": self.user,
            "mode": self.mode,
            "started": format_utc(self.started),
            "seconds": round(max(0.0, end - self.started), 1),
            "bytes": self.size,
            "active": self.ended is None,
        }


class Recording:
    """One session's recording, written as the session goes; failures end the recording and
    never the session."""

    def __init__(
        self,
        store: RecordingStore,
        info: RecordingInfo,
        fd: int,
        *,
        max_bytes: int,
        record_input: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.info = info
        self._fd: int | None = fd
        self._max_bytes = max_bytes
        self._record_input = record_input
        self._clock = clock
        self._start = clock()
        self._output = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._input = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[bytes] = []  # lines not written yet, in parts
        self._pending_bytes = 0
        self._flush_timer: asyncio.TimerHandle | None = None

    def _event(self, code: str, text: str) -> None:
        if self._fd is not None and text:
            self._append(code, _json_string(text))

    def _append(self, code: str, string: bytes) -> None:
        """One event line, ``json.dumps([seconds, code, text])`` byte for byte, written as its
        head (the time and the code), ``string`` (``_json_string(text)``) and its end."""
        elapsed = round(self._clock() - self._start, 6)
        head = f'[{elapsed!r}, "{code}", '.encode()
        size = len(head) + len(string) + len(EVENT_END)
        if self.info.size + self._pending_bytes + size > self._max_bytes:
            note = json.dumps([elapsed, "m", "recording stopped: size limit reached"]) + "\n"
            self._queue(note.encode())
            self._finish()
            return
        self._queue(head, string, EVENT_END)

    def _queue(self, *parts: bytes) -> None:
        """Lines are written ``FLUSH_BYTES`` at a time, or ``FLUSH_SECONDS`` after the first
        of them at the latest: a write per event would cost a console with many watchers a
        system call per watcher for each chunk of output."""
        self._pending.extend(parts)
        self._pending_bytes += sum(len(part) for part in parts)
        if self._pending_bytes >= FLUSH_BYTES or len(self._pending) >= FLUSH_PARTS:
            self._flush()
        elif self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not in the helper's loop: nothing would flush it later
                self._flush()
                return
            self._flush_timer = loop.call_later(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        parts, size = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        if self._fd is None or not parts:
            return
        try:
            written = os.writev(self._fd, parts)
            if written != size:  # the disk is full: the rest would be a broken line
                raise OSError(f"wrote {written} of {size} bytes")
        except OSError as exc:
            log.error("cannot write console recording %s: %s", self.info.id, exc)
            self._finish()
            return
        self.info.size += written
        self.store.grew(self.info, written)

    def write_header(self, header: dict[str, Any]) -> None:
        self._queue((json.dumps(header) + "\n").encode())
        self._flush()  # a recording on disk starts with its header, for those who list them

    def output(self, data: bytes) -> None:
        if self._fd is not None:
            string = self.store.output_string(self._output, data)
            if string is not None:
                self._append("o", string)

    def input(self, data: bytes) -> None:
        if self._record_input:
            self._event("i", self._input.decode(data))

    def resize(self, rows: int, cols: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def marker(self, text: str) -> None:
        self._event("m", text)

    def _finish(self) -> None:
        self._flush()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            self.store.finished(self.info)

    def close(self, reason: str) -> None:
        """The session ended (``reason``: detached, takeover, ...): the last marker, then the
        file is complete."""
        self._event("o", self._output.decode(b"", final=True))
        self.marker(f"session ended: {reason}")
        self._finish()


def _json_string(text: str) -> bytes:
    """``text`` as an ASCII JSON string, as ``json.dumps`` escapes it (with this very
    function)."""
    return encode_basestring_ascii(text).encode("ascii")


def _size(rows: int | None, cols: int | None) -> tuple[int, int]:
    if rows is None or cols is None:
        return DEFAULT_SIZE
    return max(1, min(rows, MAX_DIMENSION)), max(1, min(cols, MAX_DIMENSION))


class RecordingStore:
    """The recordings directory: new recordings, the index, and the bounds."""

    def __init__(
        self,
        directory: str,
        limits: Limits,
        *,
        enabled: bool = True,
        record_input: bool = True,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.limits = limits
        self.enabled = enabled
        self.record_input = record_input
        self._wall_clock = wall_clock
        self._index: dict[str, RecordingInfo] = {}
        self._total = 0
        self._per_uuid: dict[str, int] = {}
        self._failed = False
        # The last output chunk: (chunk, decoder state before, state after, its JSON string)
        self._last_output: tuple[bytes, tuple[bytes, int], tuple[bytes, int], bytes | None] = (
            b"",
            (b"", 0),
            (b"", 0),
            None,
        )

    def output_string(self, decoder: codecs.IncrementalDecoder, data: bytes) -> bytes | None:
        """``_json_string`` of what ``decoder`` makes of ``data`` (None if nothing), decoded and
        escaped once for every recording of a hub: the hub hands the same chunk to each of its
        sessions' recordings in turn. What a UTF-8 decoder returns depends only on the chunk and
        the decoder's state (the incomplete character it holds), so a recording whose decoder
        is in the state of the previous one takes the same text and the same state after."""
        state = decoder.getstate()
        chunk, before, after, string = self._last_output
        if chunk is data and before == state:
            decoder.setstate(after)
            return string
        text = decoder.decode(data)
        string = _json_string(text) if text else None
        self._last_output = (data, state, decoder.getstate(), string)
        return string

    # the index

    def adopt(self, found: list[RecordingInfo]) -> None:
        """Take the recordings found on disk at start (``list_directory``, read in a thread)
        into the index; those begun meanwhile stay as they are. Then the bounds apply."""
        for info in found:
            if info.id not in self._index:
                self._index[info.id] = info
                self._total += info.size
                self._per_uuid[info.uuid] = self._per_uuid.get(info.uuid, 0) + info.size
        self.enforce()

    def for_domain(self, uuid: str) -> list[RecordingInfo]:
        """The recordings of one domain UUID, oldest first."""
        return sorted(
            (info for info in self._index.values() if info.uuid == uuid),
            key=lambda info: (info.started, info.id),
        )

    def get(self, rec_id: str) -> RecordingInfo | None:
        return self._index.get(rec_id) if is_recording_id(rec_id) else None

    def path_of(self, rec_id: str) -> str:
        assert is_recording_id(rec_id)
        return os.path.join(self.directory, rec_id + SUFFIX)

    # recording

    def begin(
        self,
        *,
        domain: str,
        uuid: str,
        user: str,
        mode: str,
        rows: int | None = None,
        cols: int | None = None,
    ) -> Recording | None:
        """A new recording for a session that has just attached; None when recordings are off
        or the file cannot be made (logged once; the session goes on unrecorded)."""
        if not self.enabled:
            return None
        rows, cols = _size(rows, cols)
        started = self._wall_clock()
        try:
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
            rec_id, fd = self._create(started)
        except OSError as exc:
            if not self._failed:
                log.error("cannot record console sessions in %s: %s", self.directory, exc)
            self._failed = True
            return None
        self._failed = False
        header = {
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": int(started),
            "title": f"{domain} console, {user} ({mode})",
            "env": {"TERM": "xterm-256color"},
            "vpsshell": {
                "domain": domain,
                "uuid": uuid,
                "user": user,
                "mode": mode,
                "started": round(started, 6),
            },
        }
        info = RecordingInfo(rec_id, domain, uuid, user, mode, started, 0)
        self._index[rec_id] = info
        recording = Recording(
            self,
            info,
            fd,
            max_bytes=self.limits.console_recording_bytes,
            record_input=self.record_input and mode == "write",
        )
        recording.write_header(header)
        return recording

    def _create(self, started: float) -> tuple[str, int]:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_APPEND
        for _ in range(8):
            rec_id = f"{stamp}-{secrets.token_hex(3)}"
            try:
                return rec_id, os.open(self.path_of(rec_id), flags, 0o640)
            except FileExistsError:
                continue
        raise FileExistsError(f"no free recording name for {stamp}")

    def grew(self, info: RecordingInfo, added: int) -> None:
        self._total += added
        per_uuid = self._per_uuid.get(info.uuid, 0) + added
        self._per_uuid[info.uuid] = per_uuid
        limits = self.limits
        if (
            per_uuid > limits.console_recordings_bytes_per_domain
            or self._total > limits.console_recordings_bytes
        ):
            self.enforce()

    def finished(self, info: RecordingInfo) -> None:
        info.ended = self._wall_clock()

    # the bounds

    def _remove(self, info: RecordingInfo) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_of(info.id))
        del self._index[info.id]
        self._total -= info.size
        self._per_uuid[info.uuid] = self._per_uuid.get(info.uuid, 0) - info.size
        if self._per_uuid[info.uuid] <= 0:
            del self._per_uuid[info.uuid]

    def enforce(self) -> list[str]:
        """Remove finished recordings past their age, then the oldest finished ones of a domain
        over its share, then the oldest of all while the total is over; returns their IDs.
        A recording still being written is never removed (its own size is bounded)."""
        limits = self.limits
        removed: list[str] = []
        finished = sorted(
            (info for info in self._index.values() if info.ended is not None),
            key=lambda info: (info.started, info.id),
        )
        oldest_kept = self._wall_clock() - limits.console_recordings_keep_days * 86400.0
        for info in finished:
            if info.started < oldest_kept:
                self._remove(info)
                removed.append(info.id)
        for info in finished:
            if info.id in self._index and (
                self._per_uuid.get(info.uuid, 0) > limits.console_recordings_bytes_per_domain
            ):
                self._remove(info)
                removed.append(info.id)
        for info in finished:
            if self._total <= limits.console_recordings_bytes:
                break
            if info.id in self._index:
                self._remove(info)
                removed.append(info.id)
        if removed:
            log.info("removed %d console recording(s) beyond the kept age or size", len(removed))
        return removed


def read_info(path: str, rec_id: str) -> RecordingInfo | None:
    """The index entry of one recording file, from its header; None if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat = os.fstat(fd)
        first = os.read(fd, HEADER_MAX_BYTES).split(b"\n", 1)[0]
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        header = json.loads(first)
        meta = header["vpsshell"]
        info = RecordingInfo(
            rec_id,
            str(meta["domain"]),
            str(meta["uuid"]),
            str(meta["user"]),
            str(meta["mode"]),
            float(meta.get("started", header["timestamp"])),
            stat.st_size,
            stat.st_mtime,
        )
    except (ValueError, KeyError, TypeError):
        return None
    return info


def list_directory(directory: str) -> list[RecordingInfo]:
    """Every recording in ``directory``, oldest first (for ``vpsshell-admin``, which reads the
    files itself: the helper need not run). A recording still being written reads as ended
    at its last write."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        rec_id = name[: -len(SUFFIX)]
        if name.endswith(SUFFIX) and is_recording_id(rec_id):
            info = read_info(os.path.join(directory, name), rec_id)
            if info is not None:
                found.append(info)
    return sorted(found, key=lambda info: (info.started, info.id))


async def send_file(path: str, size: int, writer: asyncio.StreamWriter) -> None:
    """Send the first ``size`` bytes of a recording as ``CONSOLE_DATA`` frames (its size when
    asked for: a recording still being written is sent as it was then). The file is read a
    chunk at a time in a worker thread, and each chunk waits for the client to take the one
    before: a slow client holds one chunk of memory and is cut off after ``SEND_SECONDS``. A
    recording removed meanwhile ends early; the client sees fewer bytes than announced."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("cannot send console recording %s: %s", path, exc)
        return
    try:
        async with asyncio.timeout(SEND_SECONDS):
            sent = 0
            while sent < size:
                chunk = await asyncio.to_thread(
                    os.pread, fd, min(SEND_CHUNK_BYTES, size - sent), sent
                )
                if not chunk:
                    break
                writer.write(protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, chunk))
                await writer.drain()
                sent += len(chunk)
    except (TimeoutError, ConnectionError, OSError) as exc:
        log.info("console recording %s not sent in full: %s", path, exc)
    finally:
        os.close(fd)
