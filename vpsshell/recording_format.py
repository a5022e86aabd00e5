"""The on-disk form of a console recording, and its export as asciicast v2.

A recording is two files in the recordings directory, named by its ID (its start in UTC and a
random tag, ``20261205-101500-3fa2c1``; only a string of that shape ever becomes part of a
path, and files are opened with ``O_NOFOLLOW``):

- ``ID.rec``: ``MAGIC``, then one record per event, as the console went: a ``RECORD`` header
  (the event's code, the seconds since the recording began, the payload's length) and the
  payload. ``o``: output bytes, exactly as the guest sent them; ``i``: bytes the writer typed;
  ``r``: the writer's window, ``COLSxROWS``; ``m``: a marker (who attached, took over,
  detached; notices), UTF-8 text. Written raw, so recording costs a console one write per
  chunk of output and nothing per byte.
- ``ID.json``: what the recording is: domain, UUID, start, window, who attached and how, and
  once it is over its end. Listing recordings reads only these.

``asciicast_lines`` turns the two into asciicast v2, the format ``asciinema play`` plays: the
header line, then ``[seconds, code, text]`` per event, the output decoded as UTF-8 (a character
split across two chunks stays whole). The JSON is ASCII (``\\u`` escapes for everything
else), so an export printed on a terminal shows as text and never acts on it. A record cut
short at the end of a file (a recording still being written, a helper that died) ends the
export there.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import struct
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from vpsshell.since import format_utc

MAGIC = b"VPSSHELL-RECORDING 1\n"
RECORD = struct.Struct("<cdI")  # code, seconds since the start, payload length
ID_RE = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}\Z")
STREAM_SUFFIX = ".rec"
INFO_SUFFIX = ".json"
INFO_MAX_BYTES = 64 * 1024
MAX_USERS_LISTED = 64  # who attached, in a recording's info; more are counted
DEFAULT_SIZE = (24, 80)  # rows, cols: no terminal (ssh without -t)
READ_BYTES = 64 * 1024


def is_recording_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.match(value) is not None


@dataclass
class RecordingInfo:
    """What a recording's ``ID.json`` says, and the size of its ``ID.rec``."""

    id: str
    domain: str
    uuid: str
    started: float  # epoch
    rows: int
    cols: int
    attached: list[dict[str, Any]] = field(default_factory=list)  # {user, mode, at}
    more_attached: int = 0  # attaches beyond MAX_USERS_LISTED
    ended: float | None = None  # epoch; None while the recording goes on
    size: int = 0  # bytes of ID.rec

    def users(self) -> list[str]:
        """Who attached, each once, in the order they first did."""
        return list(dict.fromkeys(str(entry["user"]) for entry in self.attached))

    def to_file(self) -> dict[str, Any]:
        return {
            "version": 1,
            "id": self.id,
            "domain": self.domain,
            "uuid": self.uuid,
            "started": round(self.started, 6),
            "rows": self.rows,
            "cols": self.cols,
            "attached": self.attached,
            "more_attached": self.more_attached,
            "ended": None if self.ended is None else round(self.ended, 6),
        }

    def to_json(self, now: float) -> dict[str, Any]:
        """As ``recordings`` shows it."""
        end = self.ended if self.ended is not None else now
        return {
            "id": self.id,
            "domain": self.domain,
            "started": format_utc(self.started),
            "seconds": round(max(0.0, end - self.started), 1),
            "bytes": self.size,
            "users": self.users(),
            "active": self.ended is None,
        }


def _open_read(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None


def read_info(directory: str, rec_id: str) -> RecordingInfo | None:
    """The info of one recording; None if it has none that reads (not one of ours)."""
    if not is_recording_id(rec_id):
        return None
    fd = _open_read(os.path.join(directory, rec_id + INFO_SUFFIX))
    if fd is None:
        return None
    try:
        raw = os.read(fd, INFO_MAX_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
        attached = [
            {"user": str(entry["user"]), "mode": str(entry["mode"]), "at": float(entry["at"])}
            for entry in data.get("attached", [])[:MAX_USERS_LISTED]
        ]
        info = RecordingInfo(
            rec_id,
            str(data["domain"]),
            str(data["uuid"]),
            float(data["started"]),
            int(data["rows"]),
            int(data["cols"]),
            attached,
            int(data.get("more_attached", 0)),
            None if data.get("ended") is None else float(data["ended"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    try:
        info.size = os.lstat(os.path.join(directory, rec_id + STREAM_SUFFIX)).st_size
    except OSError:
        return None
    return info


def list_directory(directory: str) -> list[RecordingInfo]:
    """Every recording in ``directory``, oldest first (blocking: the helper runs it in a
    thread at start; ``vpsshell-admin`` reads the directory itself). One whose info says it is
    still going is as it was when the helper last wrote it (a helper that died never ended it)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        rec_id = name[: -len(INFO_SUFFIX)]
        if name.endswith(INFO_SUFFIX) and is_recording_id(rec_id):
            info = read_info(directory, rec_id)
            if info is not None:
                found.append(info)
    return sorted(found, key=lambda info: (info.started, info.id))


def records(fd: int, size: int) -> Iterator[tuple[bytes, float, bytes]]:
    """The records of an ``ID.rec`` open on ``fd``, in its first ``size`` bytes."""
    offset = len(MAGIC)
    if os.pread(fd, offset, 0) != MAGIC:
        return
    while offset + RECORD.size <= size:
        code, seconds, length = RECORD.unpack(os.pread(fd, RECORD.size, offset))
        offset += RECORD.size
        if offset + length > size:
            return  # cut short: the end of what was written
        payload = os.pread(fd, length, offset) if length else b""
        if len(payload) < length:
            return
        offset += length
        yield code, seconds, payload


def _line(seconds: float, code: str, text: str) -> bytes:
    return (json.dumps([round(seconds, 6), code, text]) + "\n").encode()


def asciicast_lines(directory: str, info: RecordingInfo) -> Generator[bytes, None, None]:
    """The recording as asciicast v2, a line at a time (blocking reads: run it in a thread).
    Output and input are decoded as UTF-8, each stream with its own decoder; a byte that is
    not UTF-8 becomes U+FFFD, as terminals show it."""
    users = ", ".join(info.users()) or "nobody"
    header = {
        "version": 2,
        "width": info.cols,
        "height": info.rows,
        "timestamp": int(info.started),
        "title": f"{info.domain} console ({users})",
        "env": {"TERM": "xterm-256color"},
    }
    yield (json.dumps(header) + "\n").encode()
    fd = _open_read(os.path.join(directory, info.id + STREAM_SUFFIX))
    if fd is None:
        return
    decoders = {
        code: codecs.getincrementaldecoder("utf-8")(errors="replace") for code in (b"o", b"i")
    }
    try:
        size = os.fstat(fd).st_size
        for code, seconds, payload in records(fd, size):
            decoder = decoders.get(code)
            if decoder is not None:
                text = decoder.decode(payload)
                if text:
                    yield _line(seconds, code.decode(), text)
            elif code in (b"r", b"m"):
                yield _line(seconds, code.decode(), payload.decode("utf-8", errors="replace"))
    finally:
        os.close(fd)
