"""Guest output waiting for one console reader: bounded, never blocking the producer.

Every backend's console stream keeps one of these. Output is appended as it arrives; when more
than ``limit`` bytes wait, the oldest chunks are dropped (and counted), so a reader that stalls
never slows the guest, the backend or other readers.
"""

from __future__ import annotations

import asyncio
from collections import deque


class OutputBuffer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self.pending_bytes = 0
        self.dropped_bytes = 0
        self.ended = False
        self._ready = asyncio.Event()

    def put(self, data: bytes) -> None:
        """Append output (called on the event loop); drops the oldest beyond the limit."""
        if self.ended or not data:
            return
        if len(data) > self.limit:
            self.dropped_bytes += len(data) - self.limit
            data = data[-self.limit :]
        self._chunks.append(data)
        self.pending_bytes += len(data)
        while self.pending_bytes > self.limit:
            oldest = self._chunks.popleft()
            self.pending_bytes -= len(oldest)
            self.dropped_bytes += len(oldest)
        self._ready.set()

    def end(self, *, discard: bool = False) -> None:
        """No more output will come; ``discard`` also drops what is still waiting."""
        self.ended = True
        if discard:
            self._chunks.clear()
            self.pending_bytes = 0
        self._ready.set()

    async def get(self) -> bytes:
        """Everything waiting, in one piece; ``b""`` once ended and drained."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self.pending_bytes = 0
                self._ready.clear()
                return data
            if self.ended:
                return b""
            self._ready.clear()
            await self._ready.wait()
