"""The wire protocol between ``vpsshell`` (untrusted) and ``vpsshelld`` (root).

A connection carries frames: a 5-byte header (1 byte frame type, 4 bytes big-endian payload
length) and a payload of at most ``MAX_FRAME_BYTES``. Type ``MESSAGE`` carries one UTF-8 JSON
object; type ``CONSOLE_DATA`` is reserved for raw console bytes. Every request names the
protocol version, a client-chosen request id and an operation; the helper answers with
``progress`` messages (zero or more) and exactly one final reply carrying the same id. See
docs/protocol.md.

This module only encodes and decodes. It never decides anything about identity: the helper
learns who is calling from the socket's peer credentials, not from any field here.
"""

from __future__ import annotations

import json
import struct
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024
HEADER = struct.Struct(">BI")

FRAME_MESSAGE = 0x01
FRAME_CONSOLE_DATA = 0x02
FRAME_TYPES = frozenset({FRAME_MESSAGE, FRAME_CONSOLE_DATA})


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message; the connection ends."""


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return HEADER.pack(frame_type, len(payload)) + payload


def encode_message(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return encode_frame(FRAME_MESSAGE, payload)


def parse_header(header: bytes) -> tuple[int, int]:
    """Frame type and payload length from a 5-byte header; rejects what we will not read."""
    frame_type, length = HEADER.unpack(header)
    if frame_type not in FRAME_TYPES:
        raise ProtocolError(f"unknown frame type {frame_type:#04x}")
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return frame_type, length


def decode_message(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("message is not UTF-8 JSON") from exc
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    return message


class FrameReader:
    """Incremental frame decoder for a stream read in arbitrary chunks (console and events
    sessions). Raises ``ProtocolError`` for a frame it must not read."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= HEADER.size:
            frame_type, length = parse_header(bytes(self.buffer[: HEADER.size]))
            end = HEADER.size + length
            if len(self.buffer) < end:
                break
            frames.append((frame_type, bytes(self.buffer[HEADER.size : end])))
            del self.buffer[:end]
        return frames


def request(request_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "op": op, "args": args}


def reply_ok(request_id: int, result: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}


def reply_error(request_id: int | None, kind: str, message: str) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"kind": kind, "message": message},
    }


def progress(request_id: int, text: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "progress": text}
