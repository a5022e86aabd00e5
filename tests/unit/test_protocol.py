"""Frame and message codecs, including the limits a hostile peer runs into."""

from __future__ import annotations

import struct

import pytest

from vpsshell import protocol


def test_round_trip() -> None:
    frame = protocol.encode_message(protocol.request(7, "start", {"domain": "web1"}))
    frame_type, length = protocol.parse_header(frame[: protocol.HEADER.size])
    assert frame_type == protocol.FRAME_MESSAGE and length == len(frame) - protocol.HEADER.size
    message = protocol.decode_message(frame[protocol.HEADER.size :])
    assert message == {"v": 1, "id": 7, "op": "start", "args": {"domain": "web1"}}


def test_oversized_frames_are_refused_both_ways() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_frame(protocol.FRAME_MESSAGE, b"x" * (protocol.MAX_FRAME_BYTES + 1))
    header = struct.pack(">BI", protocol.FRAME_MESSAGE, protocol.MAX_FRAME_BYTES + 1)
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.parse_header(header)


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"[1,2]", b"not json", b'"str"'])
def test_bad_messages(payload: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_message(payload)


def test_unknown_frame_type() -> None:
    with pytest.raises(protocol.ProtocolError, match="unknown frame type"):
        protocol.parse_header(struct.pack(">BI", 0x7F, 1))


def test_messages_are_ascii_so_nothing_raw_crosses() -> None:
    frame = protocol.encode_message(protocol.reply_error(1, "failed", "web1\x1b[2J\u202e"))
    assert frame[protocol.HEADER.size :].isascii()
    assert b"\x1b" not in frame
