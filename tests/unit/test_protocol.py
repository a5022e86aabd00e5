"""Frame and message codecs, including the limits a hostile peer runs into."""

from __future__ import annotations

import json
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- what decode_message refuses: every case a ProtocolError, never anything else -------------

DEPTH = protocol.MAX_NESTING


def nested(depth: int) -> bytes:
    """A message object nesting ``depth`` deep in all (the object itself is the first)."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_nesting_up_to_the_limit_is_accepted() -> None:
    message = protocol.decode_message(nested(DEPTH))
    inner = message["a"]
    for _ in range(DEPTH - 2):
        inner = inner[0]
    assert inner == []


@pytest.mark.parametrize(
    "payload",
    [
        nested(DEPTH + 1),
        b"[" * protocol.MAX_FRAME_BYTES,  # raised RecursionError: no reply, no audit line
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' + b'{"a":' * 2000 + b"1" + b"}" * 2001,
        b'{"a":[' + b"[" * 40,  # never closed: the decoder would still descend
        b'{"a":' + b"[1,[2,{}," * 20 + b"]" * 40 + b"}",  # no two brackets side by side
    ],
    ids=["limit+1", "64KiB-of-[", "balanced-5000", "objects-2000", "unclosed", "interleaved"],
)
def test_deeper_nesting_is_refused_before_decoding(payload: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="nests deeper than 32"):
        protocol.decode_message(payload)


def test_brackets_inside_strings_do_not_count() -> None:
    line = "[" * 1000 + '\\"{' * 1000
    payload = json.dumps({"op": "refused", "args": {"line": line}}).encode()
    assert protocol.decode_message(payload)["args"]["line"] == line


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":[-Infinity]}',
        b'{"a":1e999}',
        b'{"a":-1E+400}',
        b'{"a":' + b"9" * 400 + b".0}",
        b'{"id":9007199254740992}',
        b'{"id":-9007199254740992}',
        b'{"id":' + b"1" * 60000 + b"}",
    ],
)
def test_numbers_outside_the_profile_are_refused(payload: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="number|integer"):
        protocol.decode_message(payload)


def test_the_integer_bound_does_not_depend_on_the_interpreters_digit_limit() -> None:
    """Python's int-from-string limit (4300 digits) can be switched off; ours cannot."""
    saved = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(protocol.ProtocolError, match="integer beyond"):
            protocol.decode_message(b'{"id":' + b"7" * 60000 + b"}")
    finally:
        sys.set_int_max_str_digits(saved)


def test_numbers_inside_the_profile_are_accepted() -> None:
    payload = b'{"a":9007199254740991,"b":-9007199254740991,"c":1.5e300,"d":1e-999,"e":0}'
    assert protocol.decode_message(payload) == {
        "a": 2**53 - 1,
        "b": -(2**53 - 1),
        "c": 1.5e300,
        "d": 0.0,
        "e": 0,
    }
    # digits in a string are text, whatever their number
    assert protocol.decode_message(b'{"a":"' + b"1" * 60000 + b'"}')["a"] == "1" * 60000


@pytest.mark.parametrize(
    "payload", [b'{"op":"list","op":"start"}', b'{"args":{"domain":"a","domain":"b"}}']
)
def test_a_member_name_given_twice_is_refused(payload: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="twice"):
        protocol.decode_message(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":"\\ud800"}',
        b'{"a":["x\\uDFFFy"]}',
        b'{"\\udbff":1}',
        b'{"a":"\\ude00\\ud83d"}',  # a pair in the wrong order is two unpaired halves
    ],
)
def test_unpaired_surrogates_are_refused(payload: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="surrogate"):
        protocol.decode_message(payload)


def test_paired_surrogates_and_escaped_backslashes_are_accepted() -> None:
    assert protocol.decode_message(b'{"a":"\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    assert protocol.decode_message(b'{"a":"\\\\ud800"}') == {"a": "\\ud800"}


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":"\xc0\xaf"}',  # overlong "/"
        b'{"a":"\xed\xa0\x80"}',  # a surrogate encoded in UTF-8
        b'{"a":"\xf4\x90\x80\x80"}',  # beyond U+10FFFF
        b'{"a":"\x80"}',
    ],
)
def test_invalid_utf8_is_refused(payload: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="not UTF-8"):
        protocol.decode_message(payload)


@pytest.mark.parametrize(
    "payload",
    [b"\xef\xbb\xbf{}", b"{} {}", b'{"a":1,}', b"{'a':1}", b'{"a":"\x01"}', b"", b"   "],
    ids=["bom", "two-objects", "trailing-comma", "single-quotes", "control-char", "empty", "blank"],
)
def test_text_that_is_not_one_json_object_is_refused(payload: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="not JSON"):
        protocol.decode_message(payload)


# -- properties ----------------------------------------------------------------------------

UNIT_SETTINGS = settings(max_examples=300, derandomize=True, database=None, deadline=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-protocol.MAX_INTEGER, protocol.MAX_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@UNIT_SETTINGS
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.booleans())
def test_every_message_in_the_profile_round_trips(message: dict[str, object], ascii: bool) -> None:
    payload = json.dumps(message, ensure_ascii=ascii).encode("utf-8")
    if depth_of(message) <= DEPTH:
        assert protocol.decode_message(payload) == message
    else:
        with pytest.raises(protocol.ProtocolError):
            protocol.decode_message(payload)


@UNIT_SETTINGS
@given(st.integers(1, 3 * DEPTH), st.lists(st.integers(0, 2)), st.text(alphabet='[]{}"\\ a'))
def test_nesting_check_matches_the_actual_depth(depth: int, shapes: list[int], noise: str) -> None:
    """Arrays and objects mixed, side by side or alone, strings full of brackets between."""
    value: object = noise
    for level in range(depth - 1):
        shape = shapes[level % len(shapes)] if shapes else 0
        value = [value] if shape == 0 else [noise, value, []] if shape == 1 else {noise: value}
    payload = json.dumps({"a": value}).encode()
    if depth_of({"a": value}) <= DEPTH:
        assert protocol.decode_message(payload) == {"a": value}
    else:
        with pytest.raises(protocol.ProtocolError, match="nests deeper"):
            protocol.decode_message(payload)


@UNIT_SETTINGS
@given(
    st.binary(max_size=2000)
    | st.text(alphabet='[]{}":,0123456789.eE+-\\u nNaItfrl').map(str.encode)
)
def test_any_bytes_give_a_message_or_a_protocol_error(payload: bytes) -> None:
    try:
        message = protocol.decode_message(payload)
    except protocol.ProtocolError:
        return
    assert isinstance(message, dict)
    assert depth_of(message) <= DEPTH
