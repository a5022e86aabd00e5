"""A domain's serial console as a non-blocking libvirt stream, bridged to asyncio.

All I/O on the libvirt stream happens on libvirt's event thread, in the stream's event
callback (as ``virsh console`` does): output is read there until the stream would block and
handed to the asyncio loop; keystrokes are queued by the loop and sent from there, waiting for
"writable" when the guest is slow. The asyncio side only queues and wakes. Output waiting for a
slow reader is bounded: the oldest is dropped first, so the guest never waits for the helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from typing import Any

import libvirt

from vpsshell.backends.base import ConsoleStream
from vpsshell.backends.libvirt_host import run_in_event_thread
from vpsshell.backends.output_buffer import OutputBuffer
from vpsshell.errors import ActionFailed

logger = logging.getLogger("vpsshell.libvirt")

OUTPUT_LIMIT_BYTES = 1 << 20  # guest output queued for a reader that does not keep up
INPUT_LIMIT_BYTES = 64 * 1024  # keystrokes queued for a guest that does not read them
READ_CHUNK_BYTES = 64 * 1024
READS_PER_WAKEUP = 16  # then let the event loop serve other streams

_READ_EVENTS = (
    libvirt.VIR_STREAM_EVENT_READABLE
    | libvirt.VIR_STREAM_EVENT_ERROR
    | libvirt.VIR_STREAM_EVENT_HANGUP
)


class LibvirtConsoleStream(ConsoleStream):
    """One open console. Created on the loop; ``attach`` (on a worker thread) binds the
    libvirt stream once ``openConsole`` succeeded."""

    def __init__(self, label: str, output_limit: int = OUTPUT_LIMIT_BYTES) -> None:
        self.label = label
        self.host = ""  # the label of the host it was opened on
        self._loop = asyncio.get_running_loop()
        self._output = OutputBuffer(output_limit)  # loop side
        # shared with the event thread, under _lock
        self._lock = threading.Lock()
        self._stream: Any = None
        self._closed = False
        self._outbox: deque[bytes] = deque()
        self._outbox_bytes = 0
        self._watching_writable = False

    # -- asyncio side -----------------------------------------------------------------------

    @property
    def dropped_bytes(self) -> int:
        return self._output.dropped_bytes

    @property
    def ended(self) -> bool:
        """No more output will come (the guest's console closed, or this stream did)."""
        return self._output.ended

    async def read(self) -> bytes:
        return await self._output.get()

    async def write(self, data: bytes) -> None:
        with self._lock:
            if self._closed or self._stream is None:
                raise ActionFailed(f"the console of {self.label} is closed")
            room = INPUT_LIMIT_BYTES - self._outbox_bytes
            if room <= 0:
                return  # the guest reads nothing: drop keystrokes rather than grow forever
            data = data[:room]
            self._outbox.append(data)
            self._outbox_bytes += len(data)
        run_in_event_thread(self._flush)

    async def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._output.end(discard=True)
        run_in_event_thread(self._teardown)

    def abandon(self) -> None:
        """Its host is lost: end the output now (the hub reopens the console when the host is
        back) and free the libvirt stream on a thread of its own, since a hung host's
        connection can block that for a while and libvirt's event thread must never wait."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._output.end()
        threading.Thread(target=self._teardown, name="libvirt-console-abandon", daemon=True).start()

    def _deliver(self, data: bytes) -> None:
        self._output.put(data)

    def _end(self) -> None:
        self._output.end()

    def _to_loop(self, work: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the helper is exiting
            self._loop.call_soon_threadsafe(work, *args)

    # -- worker thread ----------------------------------------------------------------------

    def attach(self, stream: Any) -> None:
        """Bind the opened libvirt stream (called on the thread that opened it)."""
        with self._lock:
            if self._closed:  # closed (or timed out) while it was being opened
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                return
            self._stream = stream
            stream.eventAddCallback(_READ_EVENTS, self._on_stream_event, None)

    # -- libvirt's event thread -------------------------------------------------------------

    def _on_stream_event(self, stream: Any, events: int, _opaque: object) -> None:
        if events & libvirt.VIR_STREAM_EVENT_WRITABLE:
            self._flush()
        if events & libvirt.VIR_STREAM_EVENT_READABLE and self._read_available(stream):
            return
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._read_available(stream)  # whatever is left, then the end
            self._finish("hangup")

    def _read_available(self, stream: Any) -> bool:
        """Read until the stream would block; True if it ended."""
        for _ in range(READS_PER_WAKEUP):
            try:
                data = stream.recv(READ_CHUNK_BYTES)
            except libvirt.libvirtError as exc:
                self._finish(f"read failed: {exc.get_error_message()}")
                return True
            if data == -2:  # would block
                return False
            if not data:
                self._finish("end of stream")
                return True
            self._to_loop(self._deliver, data)
        return False

    def _flush(self) -> None:
        with self._lock:
            stream = self._stream
            if stream is None or self._closed:
                return
            try:
                while self._outbox:
                    chunk = self._outbox[0]
                    sent = stream.send(chunk)
                    if sent == -2:  # the guest is not reading: wait until writable
                        break
                    self._outbox_bytes -= sent
                    if sent < len(chunk):
                        self._outbox[0] = chunk[sent:]
                    else:
                        self._outbox.popleft()
                want_writable = bool(self._outbox)
                if want_writable != self._watching_writable:
                    events = _READ_EVENTS
                    if want_writable:
                        events |= libvirt.VIR_STREAM_EVENT_WRITABLE
                    stream.eventUpdateCallback(events)
                    self._watching_writable = want_writable
            except libvirt.libvirtError as exc:
                failure = exc.get_error_message()
            else:
                return
        self._finish(f"write failed: {failure}")

    def _finish(self, why: str) -> None:
        """The stream ended from libvirt's side (the domain stopped, libvirtd went away)."""
        logger.debug("console of %s ended: %s", self.label, why)
        self._teardown()
        self._to_loop(self._end)

    def _teardown(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
            self._outbox.clear()
            self._outbox_bytes = 0
        if stream is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            stream.eventRemoveCallback()
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
