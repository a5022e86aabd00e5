"""The wire protocol between ``vpsshell`` (untrusted) and ``vpsshelld`` (root).

A connection carries frames: a 5-byte header (1 byte frame type, 4 bytes big-endian payload
length) and a payload of at most ``MAX_FRAME_BYTES``. Type ``MESSAGE`` carries one UTF-8 JSON
object; type ``CONSOLE_DATA`` is reserved for raw console bytes. Every request names the
protocol version, a client-chosen request id and an operation; the helper answers with
``progress`` messages (zero or more) and exactly one final reply carrying the same id. See
docs/protocol.md.

After the reply that opens a console or an ``events --follow`` session, the connection carries
session messages: the helper's ``notice``, ``record`` and ``closed`` events, the client's
``detach`` and ``resize``. This module builds and reads every message of the conversation, and
``read_frame`` is the one place a frame is read from an asyncio stream.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # ``vpsshell -c`` imports this module; asyncio only when a frame is awaited
    import asyncio

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024
# once the first byte of a frame has come, the rest must follow within this (a peer that sends
# part of a frame and goes quiet holds a connection slot for no more than this)
FRAME_SECONDS = 30.0
HEADER = struct.Struct(">BI")

FRAME_MESSAGE = 0x01
FRAME_CONSOLE_DATA = 0x02
FRAME_TYPES = frozenset({FRAME_MESSAGE, FRAME_CONSOLE_DATA})


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message; the connection ends."""


class IncompleteFrame(ProtocolError):
    """The connection ended, or went quiet for ``FRAME_SECONDS``, in the middle of a frame."""


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return HEADER.pack(frame_type, len(payload)) + payload


# built once: ``json.dumps`` with any non-default option builds an encoder on every call
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def encode_message(message: dict[str, Any]) -> bytes:
    payload = _ENCODER.encode(message).encode("ascii")
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


async def read_frame(
    reader: asyncio.StreamReader, idle_timeout: float | None = None
) -> tuple[int, bytes] | None:
    """The next frame on ``reader``: its type and payload.

    None if the stream ends (end of file, a reset) before the first byte of a frame, or no byte
    comes for ``idle_timeout`` seconds (None: wait for ever). Once a byte has come the rest of
    the frame must follow within ``FRAME_SECONDS``, else ``IncompleteFrame``; a header it must
    not read raises ``ProtocolError`` before its payload is read.

    One deadline serves both waits, moved once the first byte is in: this is on the path of
    every request, and ``asyncio.wait_for`` would cost a task of its own and two more turns of
    the event loop per frame (and on 3.11 it can lose a cancellation, cpython gh-86296)."""
    import asyncio

    begun = False
    try:
        async with asyncio.timeout(idle_timeout) as deadline:
            try:
                first = await reader.readexactly(1)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            begun = True
            deadline.reschedule(asyncio.get_running_loop().time() + FRAME_SECONDS)
            try:
                rest = await reader.readexactly(HEADER.size - 1)
                frame_type, length = parse_header(first + rest)
                return frame_type, await reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                raise IncompleteFrame("connection closed in the middle of a frame") from None
    except TimeoutError:
        if not begun:
            return None
        raise IncompleteFrame(f"no complete frame within {FRAME_SECONDS:g} s") from None


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


# -- session messages: after the reply that opened a console or an events follower -----------
# the helper's (an "event"): guest output is CONSOLE_DATA frames, not messages
EVENT_NOTICE = "notice"  # console: a line for the tenant ("alice attached", ...)
EVENT_RECORD = "record"  # events --follow: one event record
EVENT_CLOSED = "closed"  # either session: the last message, with why it ended
EVENT_PING = "ping"  # console, events: "are you there?", at the start and every ``seconds``
SESSION_EVENTS = (EVENT_NOTICE, EVENT_RECORD, EVENT_CLOSED, EVENT_PING)
# the client's (an "op" without an id: never answered)
OP_DETACH = "detach"  # either session: end it
OP_RESIZE = "resize"  # console: the tenant's window size (serial consoles ignore it)
OP_PONG = "pong"  # console, events: the answer to a ping, sent at once
SESSION_OPS = (OP_DETACH, OP_RESIZE, OP_PONG)


def notice(text: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "event": EVENT_NOTICE, "text": text}


def record(event_record: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "event": EVENT_RECORD, "record": event_record}


def closed(reason: str, text: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "event": EVENT_CLOSED, "reason": reason, "text": text}


def ping(seconds: float, misses: int) -> dict[str, Any]:
    """A ping every ``seconds``; a side that hears nothing of the other for ``misses`` of them
    takes it for gone."""
    return {"v": PROTOCOL_VERSION, "event": EVENT_PING, "seconds": seconds, "misses": misses}


def pong() -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "op": OP_PONG}


def silence_bound(ping_message: dict[str, Any]) -> float | None:
    """How long the receiver of ``ping_message`` may hear nothing before it takes the helper
    for gone: ``seconds`` times ``misses``; None for a ping without sane numbers."""
    seconds, misses = ping_message.get("seconds"), ping_message.get("misses")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        return None
    if isinstance(misses, bool) or not isinstance(misses, int) or misses <= 0:
        return None
    return float(seconds) * misses


def detach() -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "op": OP_DETACH}


def resize(rows: int, cols: int) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "op": OP_RESIZE, "rows": rows, "cols": cols}


def session_event(message: dict[str, Any]) -> str | None:
    """Which helper session message ``message`` is (``EVENT_*``), or None."""
    event = message.get("event")
    return event if event in SESSION_EVENTS else None


def session_op(untrusted: dict[str, Any]) -> str | None:
    """Which client session message ``untrusted`` is (``OP_*``), or None (ignored)."""
    op = untrusted.get("op")
    return op if op in SESSION_OPS else None
