"""One thread that writes every console recording to disk, so the event loop never waits on it.

The event loop hands over the parts of a record (bytes objects, never copied) and goes on; the
thread writes them with ``writev``, gathering what is waiting for the same file into one call.
What is handed over and not yet written is bounded (``max_pending`` bytes, all recordings
together): beyond it ``write`` refuses, and the recording notes what it left out, so a disk that
falls behind costs recordings their completeness, never the helper its memory or a console its
speed. A file's close goes through the same queue, after its writes, and its ``done`` callback
runs on the event loop once the file is complete. Write errors are kept per file descriptor
for the recording to find (``failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("vpsshell.console")

GATHER_ITEMS = 64  # queue items taken at once
WRITEV_PARTS = 1024  # parts in one writev at most (IOV_MAX)
_FLUSH = -1  # a queue item's fd that asks for ``flushed`` to be set


class DiskWriter:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._queue: queue.SimpleQueue[tuple[int, list[bytes] | None, Callable[[], None] | None]]
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._failed: dict[int, OSError] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flushed = threading.Event()

    def _ensure_started(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._run, name="vpsshell-recordings", daemon=True
            )
            self._thread.start()

    def write(self, fd: int, parts: list[bytes], size: int) -> bool:
        """Queue ``parts`` (``size`` bytes in all) for ``fd``; False (nothing queued) while too
        much is pending."""
        with self._lock:
            if self._pending + size > self.max_pending:
                return False
            self._pending += size
        self._ensure_started()
        self._queue.put((fd, parts, None))
        return True

    def failed(self, fd: int) -> OSError | None:
        return self._failed.get(fd)

    def close(self, fd: int, done: Callable[[], None]) -> None:
        """Close ``fd`` after what is queued for it; then ``done()`` runs on the event loop."""
        self._ensure_started()
        self._queue.put((fd, None, done))

    def flush(self, timeout: float) -> bool:
        """Wait (blocking: from a thread, or at the helper's end) until everything queued so
        far is written; False if that took longer than ``timeout`` seconds."""
        if self._thread is None:
            return True
        self._flushed.clear()
        self._queue.put((_FLUSH, None, None))
        return self._flushed.wait(timeout)

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < GATHER_ITEMS:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            start = 0
            while start < len(items):
                fd, parts, done = items[start]
                if fd == _FLUSH:
                    self._flushed.set()
                    start += 1
                    continue
                if parts is None:
                    self._close(fd, done)
                    start += 1
                    continue
                # what follows for the same file goes in the same call
                end = start + 1
                gathered = list(parts)
                while end < len(items) and items[end][0] == fd and items[end][1] is not None:
                    gathered.extend(items[end][1] or [])
                    end += 1
                self._write(fd, gathered)
                start = end

    def _write(self, fd: int, parts: list[bytes]) -> None:
        size = sum(len(part) for part in parts)
        try:
            if fd not in self._failed:
                for start in range(0, len(parts), WRITEV_PARTS):
                    data: list[bytes] | list[memoryview] = parts[start : start + WRITEV_PARTS]
                    while data:
                        written = os.writev(fd, data)
                        data = _after(data, written)
        except OSError as exc:
            self._failed[fd] = exc
        finally:
            with self._lock:
                self._pending -= size

    def _close(self, fd: int, done: Callable[[], None] | None) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)
        self._failed.pop(fd, None)
        if done is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the helper is gone
                self._loop.call_soon_threadsafe(done)


def _after(parts: list[bytes] | list[memoryview], written: int) -> list[memoryview]:
    """What of ``parts`` is left after ``written`` bytes of them went out (a short write)."""
    left: list[memoryview] = []
    for part in parts:
        if written >= len(part):
            written -= len(part)
            continue
        left.append(memoryview(part)[written:])
        written = 0
    return left
