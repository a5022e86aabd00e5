"""A console recording written by ``RecordingStore`` and read back as asciicast v2: characters
split across chunks stay whole, a file cut short ends its export cleanly, and records the disk
writer could not take are counted in a marker, not silently dropped."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from vpsshell.daemon.config import Limits
from vpsshell.daemon.recordings import RecordingStore
from vpsshell.recording_format import (
    RECORD,
    STREAM_SUFFIX,
    RecordingInfo,
    asciicast_lines,
    list_directory,
)

UUID = "88611d1b-c1ff-5174-be60-9187ca47c7bd"
OTHER_UUID = "0b7c4a52-7f0e-4d3a-9a41-2f5d8c6e1a90"


def exported(directory: Path) -> tuple[RecordingInfo, dict[str, Any], list[list[Any]]]:
    (info,) = list_directory(str(directory))
    lines = [json.loads(line) for line in asciicast_lines(str(directory), info)]
    return info, lines[0], lines[1:]


async def record(directory: Path, feed: Any, **limits: int) -> None:
    store = RecordingStore(str(directory), Limits(**limits))
    recording = store.begin(domain="web1", uuid=UUID, size=(30, 100))
    assert recording is not None
    recording.attached("alice", "write", "attached")
    await feed(store, recording)
    recording.close("detached")
    assert await asyncio.to_thread(store.writer.flush, 10)
    await asyncio.sleep(0)


def test_output_split_inside_a_character_exports_whole(tmp_path: Path) -> None:
    async def feed(store: Any, recording: Any) -> None:
        for number in range(300):
            recording.output(f"line {number} ".encode() + b"\xe2\x82")  # half a euro sign...
            recording.output(b"\xac\r\n")  # ...and the rest
            recording.input(b"k")
        recording.resize(40, 120)

    asyncio.run(record(tmp_path, feed))
    info, header, events = exported(tmp_path)
    assert (header["version"], header["width"], header["height"]) == (2, 100, 30)
    assert info.ended is not None and info.users() == ["alice"]
    output = "".join(e[2] for e in events if e[1] == "o")
    assert output.count("\u20ac") == 300 and "\ufffd" not in output
    assert "".join(e[2] for e in events if e[1] == "i") == "k" * 300
    assert ["r", "120x40"] in [e[1:] for e in events]
    assert [e[2] for e in events if e[1] == "m"] == [
        "alice attached (write)",
        "recording ended: detached",
    ]


def test_a_file_cut_short_exports_up_to_its_last_whole_record(tmp_path: Path) -> None:
    async def feed(store: Any, recording: Any) -> None:
        for number in range(10):
            recording.output(f"chunk-{number}\r\n".encode())

    asyncio.run(record(tmp_path, feed))
    (info,) = list_directory(str(tmp_path))
    stream = tmp_path / f"{info.id}{STREAM_SUFFIX}"
    os.truncate(stream, stream.stat().st_size - 5)  # a helper that died mid-record
    _, _, events = exported(tmp_path)
    output = "".join(e[2] for e in events if e[1] == "o")
    assert "chunk-9" in output  # the last marker was cut, not the output before it
    assert all(len(event) == 3 for event in events)


def test_records_the_disk_writer_refused_are_counted_in_a_marker(tmp_path: Path) -> None:
    async def feed(store: Any, recording: Any) -> None:
        recording.output(b"kept-before\r\n")
        await asyncio.sleep(0.1)  # handed over
        store.writer.max_pending = 0  # the disk has fallen far behind
        recording.output(b"x" * 1000)
        await asyncio.sleep(0.1)  # refused
        store.writer.max_pending = 1 << 20  # caught up again
        recording.output(b"kept-after\r\n")
        await asyncio.sleep(0.1)

    asyncio.run(record(tmp_path, feed))
    _, _, events = exported(tmp_path)
    output = "".join(e[2] for e in events if e[1] == "o")
    assert "kept-before" in output and "kept-after" in output and "x" not in output
    lost = [e[2] for e in events if e[1] == "m" and "lost" in e[2]]
    assert lost and lost[0].startswith(f"{1000 + RECORD.size} bytes of recording lost")


def test_a_tenant_attaching_in_a_loop_keeps_only_the_newest_recordings(tmp_path: Path) -> None:
    """Many short recordings of one domain: its count cap removes the oldest, not another
    domain's."""

    async def loop() -> list[str]:
        store = RecordingStore(str(tmp_path), Limits(console_recordings_per_domain=3))
        other = store.begin(domain="web2", uuid=OTHER_UUID)
        assert other is not None
        other.close("detached")
        ids = []
        for _ in range(8):
            recording = store.begin(domain="web1", uuid=UUID)
            assert recording is not None
            ids.append(recording.info.id)
            recording.close("detached")
            assert await asyncio.to_thread(store.writer.flush, 10)
            await asyncio.sleep(0)  # the writer's callback: the recording is finished
        assert [info.id for info in store.for_domain(UUID)] == ids[-3:]
        assert len(store.for_domain(OTHER_UUID)) == 1
        return ids

    ids = asyncio.run(loop())
    left = sorted(name.split(".")[0] for name in os.listdir(tmp_path) if name.endswith(".json"))
    assert len(left) == 4 and set(ids[-3:]) <= set(left)
