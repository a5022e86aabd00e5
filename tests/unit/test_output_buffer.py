"""The bounded per-reader console buffer every backend uses."""

from __future__ import annotations

import asyncio

from vpsshell.backends.output_buffer import OutputBuffer


def test_oldest_output_is_dropped_beyond_the_limit() -> None:
    async def scenario() -> None:
        buffer = OutputBuffer(limit=10)
        for chunk in (b"aaaa", b"bbbb", b"cccc"):
            buffer.put(chunk)
        assert buffer.pending_bytes == 8 and buffer.dropped_bytes == 4
        assert await buffer.get() == b"bbbbcccc"
        buffer.put(b"x" * 25)  # one chunk over the limit keeps its newest bytes
        assert await buffer.get() == b"x" * 10 and buffer.dropped_bytes == 19

    asyncio.run(scenario())


def test_end_drains_then_reports_the_end_and_discard_drops() -> None:
    async def scenario() -> None:
        drained = OutputBuffer(limit=100)
        drained.put(b"last words")
        drained.end()
        drained.put(b"ignored")
        assert await drained.get() == b"last words"
        assert await drained.get() == b""
        discarded = OutputBuffer(limit=100)
        discarded.put(b"never read")
        discarded.end(discard=True)
        assert await discarded.get() == b""

    asyncio.run(scenario())


def test_a_waiting_reader_wakes_on_output() -> None:
    async def scenario() -> None:
        buffer = OutputBuffer(limit=100)
        reader = asyncio.create_task(buffer.get())
        await asyncio.sleep(0)  # let the reader start waiting
        assert not reader.done()
        buffer.put(b"boot")
        assert await asyncio.wait_for(reader, 1) == b"boot"

    asyncio.run(scenario())
