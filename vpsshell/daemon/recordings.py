"""Console recordings: what a domain's console showed while anyone was attached, kept for
support and compliance, exported as asciicast v2 (``asciinema play``).

A recording begins when a session attaches to a console nobody is attached to, and ends when
the last one detaches. The writer and the watchers see the same stream, so one recording holds
it for all of them: the output (the first session's replay of the scrollback first), what the
writer typed (unless ``console_record_input`` is off), the writer's window size and its
changes, and markers of who attached and how, who took over from whom, who detached and why,
and the notices every session saw. Its file format and the export are in
``vpsshell.recording_format``: the output is kept raw, and written by a thread of its own
(``recording_writer``), so recording costs the event loop a few microseconds per chunk of
output and nothing per byte (``bench/console.py`` measures it against recording off).

Bounds: a recording stops growing at ``console_recording_bytes`` (a marker says so); when a
domain's recordings pass ``console_recordings_bytes_per_domain`` or
``console_recordings_per_domain``, or all of them ``console_recordings_bytes``, the oldest
finished ones are removed (a tenant who floods their own console pushes out their own domain's
recordings first); none is kept longer than ``console_recordings_keep_days``. The store keeps
an index in memory (read from the info files at start), so listing reads no file, and the
bounds are checked in constant time as recordings grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from vpsshell import protocol
from vpsshell.daemon.config import Limits
from vpsshell.daemon.recording_writer import DiskWriter
from vpsshell.recording_format import (
    DEFAULT_SIZE,
    INFO_SUFFIX,
    MAGIC,
    MAX_USERS_LISTED,
    RECORD,
    STREAM_SUFFIX,
    RecordingInfo,
    asciicast_lines,
    is_recording_id,
)

log = logging.getLogger("vpsshell.console")

MAX_DIMENSION = 10000
SEND_CHUNK_BYTES = 32 * 1024
SEND_SECONDS = 600.0  # a download slower than this is cut off: a connection is not kept forever
STOPPED = "recording stopped: it reached its size limit"
WRITER_PENDING_BYTES = 32 * 1024 * 1024  # handed to the disk writer and not yet written, at most
HAND_OVER_BYTES = 256 * 1024
HAND_OVER_SECONDS = 0.05


class Recording:
    """The recording of one console while anyone is attached; failures end the recording and
    never the console."""

    def __init__(
        self,
        store: RecordingStore,
        info: RecordingInfo,
        fd: int,
        *,
        record_input: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.info = info
        self._fd: int | None = fd
        self._record_input = record_input
        self._clock = clock
        self._start = clock()
        self._max_bytes = store.limits.console_recording_bytes
        self.size = len(MAGIC)  # of ID.rec: handed to the writer, and gathered here
        self._left_out = 0  # bytes of records not kept while the disk was behind
        # records gathered for one hand-over to the writer (at HAND_OVER_BYTES, or
        # HAND_OVER_SECONDS after the first): a console's small chunks cost a list append each
        self._parts: list[bytes] = []
        self._parts_size = 0
        self._hand_over: asyncio.TimerHandle | None = None

    def _record(self, code: bytes, payload: bytes) -> None:
        if self._fd is None:
            return
        size = RECORD.size + len(payload)
        if self.size + size > self._max_bytes - 128:  # with room for the note
            self._add(b"m", STOPPED.encode())
            self._end()
            return
        self._add(code, payload)
        if self._parts_size >= HAND_OVER_BYTES:
            self._hand_over_now()
        elif self._hand_over is None:
            self._hand_over = asyncio.get_running_loop().call_later(
                HAND_OVER_SECONDS, self._hand_over_now
            )

    def _add(self, code: bytes, payload: bytes) -> None:
        head = RECORD.pack(code, self._clock() - self._start, len(payload))
        self._parts += (head, payload)
        self._parts_size += len(head) + len(payload)
        self.size += len(head) + len(payload)

    def _hand_over_now(self) -> None:
        """Give the gathered records to the disk writer: all of them, or none while it is too
        far behind (then a marker says how much is missing, once it takes records again)."""
        if self._hand_over is not None:
            self._hand_over.cancel()
            self._hand_over = None
        if self._fd is None or not self._parts:
            return
        writer = self.store.writer
        error = writer.failed(self._fd)
        if error is not None:
            log.error("cannot write console recording %s: %s", self.info.id, error)
            self._parts, self._parts_size = [], 0
            self._end()
            return
        parts, size = self._parts, self._parts_size
        self._parts, self._parts_size = [], 0
        if not writer.write(self._fd, parts, size):
            self._left_out += size
            self.size -= size
            return
        self.store.grew(self.info, size)
        if self._left_out:
            note = f"{self._left_out} bytes of recording lost: the disk fell behind".encode()
            self._left_out = 0
            self._add(b"m", note)

    def output(self, data: bytes) -> None:
        self._record(b"o", data)

    def input(self, data: bytes) -> None:
        if self._record_input:
            self._record(b"i", data)

    def resize(self, rows: int, cols: int) -> None:
        self._record(b"r", f"{cols}x{rows}".encode())

    def marker(self, text: str) -> None:
        self._record(b"m", text.encode("utf-8", errors="replace"))

    def attached(self, user: str, mode: str, how: str) -> None:
        """A session attached (``how``: attached or took over); its user goes in the info."""
        self.marker(f"{user} {how} ({mode})")
        info = self.info
        if len(info.attached) < MAX_USERS_LISTED:
            info.attached.append({"user": user, "mode": mode, "at": round(time.time(), 3)})
        else:
            info.more_attached += 1
        self.store.write_info(info)

    def _end(self) -> None:
        """No more records: the file is closed after those handed over, and only then is the
        recording finished (an export from then on has all of it)."""
        if self._fd is not None:
            self._hand_over_now()
            if self._fd is None:  # the writer failed: already ended
                return
            info = self.info
            self.store.writer.close(self._fd, lambda: self.store.finished(info))
            self._fd = None

    def close(self, reason: str) -> None:
        """The last session detached (``reason``): the last marker, then the recording is
        complete."""
        self.marker(f"recording ended: {reason}")
        self._end()


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
        self._active: dict[str, RecordingInfo] = {}  # recordings being written
        # finished recordings, oldest first: all of them, and per domain UUID
        self._finished: OrderedDict[str, RecordingInfo] = OrderedDict()
        self._finished_of: dict[str, OrderedDict[str, RecordingInfo]] = {}
        self._total = 0
        self._bytes_of: dict[str, int] = {}
        self._failed = False
        self.writer = DiskWriter(WRITER_PENDING_BYTES)

    # the index

    def adopt(self, found: list[RecordingInfo]) -> None:
        """Take the recordings found on disk at start (``list_directory``, oldest first, read
        in a thread) into the index; those begun meanwhile stay as they are. One that a helper
        which died never ended counts as ended at its last write. Then the bounds apply."""
        for info in found:
            if info.id in self._index:
                continue
            if info.ended is None:
                info.ended = info.started
                with contextlib.suppress(OSError):
                    path = os.path.join(self.directory, info.id + STREAM_SUFFIX)
                    info.ended = os.lstat(path).st_mtime
            self._index[info.id] = info
            self._count(info, info.size)
            self._finish(info)
        self.enforce()

    def for_domain(self, uuid: str) -> list[RecordingInfo]:
        """The recordings of one domain UUID, oldest first (from the per-domain index: a
        tenant's request costs its own domain's recordings, not every domain's)."""
        mine = list(self._finished_of.get(uuid, {}).values())
        mine += [info for info in self._active.values() if info.uuid == uuid]
        return sorted(mine, key=lambda info: (info.started, info.id))

    def get(self, rec_id: str) -> RecordingInfo | None:
        return self._index.get(rec_id) if is_recording_id(rec_id) else None

    def _path(self, rec_id: str, suffix: str) -> str:
        assert is_recording_id(rec_id)
        return os.path.join(self.directory, rec_id + suffix)

    # recording

    def begin(
        self, *, domain: str, uuid: str, size: tuple[int, int] | None = None
    ) -> Recording | None:
        """A new recording of a console someone has just attached to; None when recordings
        are off or the files cannot be made (logged once; the console goes on unrecorded)."""
        if not self.enabled:
            return None
        rows, cols = size or DEFAULT_SIZE
        started = self._wall_clock()
        info = RecordingInfo("", domain, uuid, started, rows, cols)
        try:
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
            info.id, fd = self._create(started)
            try:
                os.write(fd, MAGIC)
                self.write_info(info, strict=True)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self._path(info.id, STREAM_SUFFIX))
                raise
        except OSError as exc:
            if not self._failed:
                log.error("cannot record consoles in %s: %s", self.directory, exc)
            self._failed = True
            return None
        self._failed = False
        info.size = len(MAGIC)
        self._index[info.id] = info
        self._active[info.id] = info
        self._count(info, info.size)
        return Recording(self, info, fd, record_input=self.record_input)

    def _create(self, started: float) -> tuple[str, int]:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_APPEND
        for _ in range(8):
            rec_id = f"{stamp}-{secrets.token_hex(3)}"
            try:
                return rec_id, os.open(self._path(rec_id, STREAM_SUFFIX), flags, 0o640)
            except FileExistsError:
                continue
        raise FileExistsError(f"no free recording name for {stamp}")

    def write_info(self, info: RecordingInfo, *, strict: bool = False) -> None:
        """Replace ``ID.json`` (written aside, then renamed: never half a file). A failure is
        logged (raised with ``strict``): the recording goes on, its info as last written."""
        path = self._path(info.id, INFO_SUFFIX)
        temporary = f"{path}.new"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o640)
            try:
                os.write(fd, json.dumps(info.to_file()).encode())
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except OSError as exc:
            if strict:
                raise
            log.error("cannot write console recording info %s: %s", path, exc)

    def _count(self, info: RecordingInfo, added: int) -> None:
        self._total += added
        self._bytes_of[info.uuid] = self._bytes_of.get(info.uuid, 0) + added

    def grew(self, info: RecordingInfo, added: int) -> None:
        info.size += added
        self._count(info, added)
        limits = self.limits
        over = (
            self._bytes_of[info.uuid] > limits.console_recordings_bytes_per_domain
            and info.uuid in self._finished_of
        ) or (self._total > limits.console_recordings_bytes and self._finished)
        if over:  # only when something can go: an active recording is bounded by itself
            self.enforce()

    def _finish(self, info: RecordingInfo) -> None:
        self._finished[info.id] = info
        self._finished_of.setdefault(info.uuid, OrderedDict())[info.id] = info

    def finished(self, info: RecordingInfo) -> None:
        self._active.pop(info.id, None)
        info.ended = self._wall_clock()
        self.write_info(info)
        self._finish(info)
        self.enforce()

    # the bounds

    def _remove(self, info: RecordingInfo) -> None:
        for suffix in (STREAM_SUFFIX, INFO_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(info.id, suffix))
        del self._index[info.id]
        del self._finished[info.id]
        mine = self._finished_of[info.uuid]
        del mine[info.id]
        if not mine:
            del self._finished_of[info.uuid]
        self._count(info, -info.size)
        if self._bytes_of[info.uuid] <= 0:
            del self._bytes_of[info.uuid]

    def enforce(self) -> list[str]:
        """Remove finished recordings past their age, then the oldest of a domain over its
        share (bytes or count), then the oldest of all while the total is over; returns their
        IDs. A recording still being written is never removed (its own size is bounded)."""
        limits = self.limits
        removed: list[str] = []
        oldest_kept = self._wall_clock() - limits.console_recordings_keep_days * 86400.0
        while self._finished:
            oldest = next(iter(self._finished.values()))
            if oldest.ended is None or oldest.ended >= oldest_kept:
                break
            self._remove(oldest)
            removed.append(oldest.id)
        for uuid in list(self._finished_of):
            while uuid in self._finished_of and (
                self._bytes_of.get(uuid, 0) > limits.console_recordings_bytes_per_domain
                or len(self._finished_of[uuid]) > limits.console_recordings_per_domain
            ):
                oldest = next(iter(self._finished_of[uuid].values()))
                self._remove(oldest)
                removed.append(oldest.id)
        while self._finished and self._total > limits.console_recordings_bytes:
            oldest = next(iter(self._finished.values()))
            self._remove(oldest)
            removed.append(oldest.id)
        if removed:
            log.info("removed %d console recording(s) beyond the kept age or size", len(removed))
        return removed


async def send_recording(directory: str, info: RecordingInfo, writer: asyncio.StreamWriter) -> None:
    """Send a recording as asciicast v2 in ``CONSOLE_DATA`` frames, then a ``closed`` message
    with reason ``complete`` (a client that does not get it knows the file is cut short). The
    file is read and converted a piece at a time in a worker thread, and each piece waits for
    the client to take the one before: a slow client holds one piece of memory and is cut off
    after ``SEND_SECONDS``. A recording still being written is sent as far as it is written."""
    lines = asciicast_lines(directory, info)

    def next_piece() -> bytes:
        piece = bytearray()
        for line in lines:
            piece += line
            if len(piece) >= SEND_CHUNK_BYTES:
                break
        return bytes(piece)

    try:
        async with asyncio.timeout(SEND_SECONDS):
            while piece := await asyncio.to_thread(next_piece):
                for start in range(0, len(piece), protocol.MAX_FRAME_BYTES):
                    frame = piece[start : start + protocol.MAX_FRAME_BYTES]
                    writer.write(protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, frame))
                await writer.drain()
            writer.write(protocol.encode_message(protocol.closed("complete", "end of recording")))
            await writer.drain()
    except (TimeoutError, ConnectionError, OSError) as exc:
        log.info("console recording %s not sent in full: %s", info.id, exc)
    finally:
        with contextlib.suppress(ValueError):  # still running in a thread after a cancel
            lines.close()
