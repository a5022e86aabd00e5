"""The wire protocol between ``vpsshell`` (untrusted) and ``vpsshelld`` (root).

A connection carries frames: a 5-byte header (1 byte frame type, 4 bytes big-endian payload
length) and a payload of at most ``MAX_FRAME_BYTES``. Type ``MESSAGE`` carries one UTF-8 JSON
object; type ``CONSOLE_DATA`` is reserved for raw console bytes. Every request names the
protocol version, a client-chosen request id and an operation; the helper answers with
``progress`` messages (zero or more) and exactly one final reply carrying the same id. See
docs/protocol.md.

This module only encodes and decodes. It never decides anything about identity: the helper
learns who is calling from the socket's peer credentials, not from any field here. Whatever a
peer sends, decoding either returns a message or raises ``ProtocolError``; never anything else
(no ``RecursionError``, no interpreter limit): the server answers ``usage`` and audits it.
"""

from __future__ import annotations

import json
import math
import re
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


# A message is JSON (RFC 8259) in the interoperable profile of I-JSON (RFC 7493): strict UTF-8,
# no unpaired surrogates, unique member names, finite numbers, integers exact in a double. And
# it nests at most MAX_NESTING arrays and objects deep: the deepest real message (an events
# reply) nests 4, and Python's decoder would otherwise recurse once per bracket.
MAX_NESTING = 32
MAX_INTEGER = 2**53 - 1

# A JSON string, escapes and all; one that never ends runs to the end of the payload (so a
# match always succeeds where it starts: no backtracking, no rescanning).
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_BRACKETS_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
# The payload's shape for the number checks: every digit 0, every exponent e, every sign +.
_NUMBER_SHAPE = bytes.maketrans(b"123456789E-", b"000000000e+")
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _nests_too_deep(payload: bytes) -> bool:
    """True if arrays and objects in ``payload`` nest deeper than ``MAX_NESTING``, or if more
    brackets are left open than that: the depth the decoder would descend before finishing or
    failing. Linear, in C: each pass deletes the innermost ``()`` pairs of the brackets outside
    strings, so after ``MAX_NESTING`` passes a pair is left only in a group nested deeper."""
    if payload.count(b"[") + payload.count(b"{") <= MAX_NESTING:
        return False  # every ordinary request
    brackets = _JSON_STRING.sub(b"", payload).translate(_BRACKETS_TO_PARENS, _NOT_BRACKETS)
    for _ in range(MAX_NESTING):
        innermost_removed = brackets.replace(b"()", b"")
        if len(innermost_removed) == len(brackets):
            break
        brackets = innermost_removed
    return b"()" in brackets or brackets.count(b"(") > MAX_NESTING


def _may_have_big_numbers(payload: bytes) -> bool:
    """False if no number in ``payload`` can exceed ``MAX_INTEGER`` or overflow a double: no
    run of 16 digits (2**53 has 16), no exponent of 3 digits. Digits in strings count too:
    this only decides whether the exact check (a Python call per number) is worth it."""
    shape = payload.translate(_NUMBER_SHAPE)
    return b"0" * 16 in shape or b"e000" in shape or b"e+000" in shape


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"message has {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError("message has a number out of range")
    return value


def _exact_integer(text: str) -> int:
    # the length first: int() of a long digit string costs quadratic time (CVE-2020-10735)
    value = int(text) if len(text.lstrip("-")) <= len(str(MAX_INTEGER)) else None
    if value is None or abs(value) > MAX_INTEGER:
        raise ProtocolError(f"message has an integer beyond +-{MAX_INTEGER}")
    return value


def _object_with_unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    untrusted_object = dict(pairs)
    if len(untrusted_object) != len(pairs):
        raise ProtocolError("message has a member name twice")
    return untrusted_object


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_with_unique_names, parse_constant=_refuse_constant
)
_DECODER_CHECKING_NUMBERS = json.JSONDecoder(
    object_pairs_hook=_object_with_unique_names,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
    parse_int=_exact_integer,
)


def decode_message(payload: bytes) -> dict[str, Any]:
    """The JSON object in a ``MESSAGE`` payload; ``ProtocolError`` for anything else."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("message is not UTF-8") from None
    if _nests_too_deep(payload):
        raise ProtocolError(f"message nests deeper than {MAX_NESTING}")
    decoder = _DECODER_CHECKING_NUMBERS if _may_have_big_numbers(payload) else _DECODER
    try:
        message = decoder.decode(text)
    except (ValueError, RecursionError):  # RecursionError: never, after _nests_too_deep
        raise ProtocolError("message is not JSON") from None
    if _ESCAPED_SURROGATE.search(payload):
        try:
            json.dumps(message, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("message has an unpaired surrogate (\\uD800-\\uDFFF)") from None
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
