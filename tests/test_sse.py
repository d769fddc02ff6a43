from __future__ import annotations

import orjson
import pytest
from conftest import FIXTURES

from llm_proxy.core.sse import SSEDecoder, SSEEvent, encode_event


def decode(*chunks: bytes) -> list[SSEEvent]:
    dec = SSEDecoder()
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    out.extend(dec.flush())
    return out


def decode_bytewise(raw: bytes) -> list[SSEEvent]:
    return decode(*(raw[i : i + 1] for i in range(len(raw))))


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    raw = eol.join([b"data: one", b"", b"event: e", b"data: two", b"", b""])
    assert decode(raw) == [SSEEvent(None, b"one"), SSEEvent("e", b"two")]
    assert decode_bytewise(raw) == decode(raw)


def test_mixed_line_endings() -> None:
    raw = b"data: a\r\ndata: b\rdata: c\n\r\n"
    assert decode(raw) == [SSEEvent(data=b"a\nb\nc")]


def test_events_are_dispatched_as_soon_as_complete() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: x\n") == []
    assert dec.feed(b"\n") == [SSEEvent(data=b"x")]
    assert dec.flush() == []


def test_multiline_data_joined_with_lf() -> None:
    assert decode(b"data: a\ndata:\ndata: c\n\n") == [SSEEvent(data=b"a\n\nc")]


def test_comments_are_skipped() -> None:
    raw = b": keep-alive\n\n: keep-alive\ndata: {}\n:\n\n"
    assert decode(raw) == [SSEEvent(data=b"{}")]


def test_event_name_anthropic_style_and_reset() -> None:
    raw = b"event: ping\ndata: {}\n\ndata: plain\n\n"
    assert decode(raw) == [SSEEvent("ping", b"{}"), SSEEvent(None, b"plain")]


def test_event_without_data_is_not_dispatched_and_type_is_reset() -> None:
    raw = b"event: lonely\n\ndata: x\n\n"
    assert decode(raw) == [SSEEvent(None, b"x")]


def test_id_persists_and_retry() -> None:
    raw = b"id: 1\nretry: 1500\ndata: a\n\ndata: b\n\nid\ndata: c\n\n"
    assert decode(raw) == [
        SSEEvent(None, b"a", "1", 1500),
        SSEEvent(None, b"b", "1", None),
        SSEEvent(None, b"c", "", None),
    ]


def test_id_with_nul_and_bad_retry_are_ignored() -> None:
    raw = b"id: 7\ndata: a\n\nid: x\x00y\nretry: 12a\nretry: -1\nretry:\ndata: b\n\n"
    assert decode(raw) == [SSEEvent(None, b"a", "7"), SSEEvent(None, b"b", "7", None)]


def test_field_without_colon_has_empty_value() -> None:
    assert decode(b"data\ndata\n\n") == [SSEEvent(data=b"\n")]
    assert decode(b"event\ndata: x\n\n") == [SSEEvent(None, b"x")]


def test_only_one_leading_space_is_stripped() -> None:
    raw = b"data:no-space\ndata:  two-spaces\ndata:\tTab\ndata: trailing \n\n"
    assert decode(raw) == [SSEEvent(data=b"no-space\n two-spaces\n\tTab\ntrailing ")]
    assert decode(b"event:  x\ndata:  y\n\n") == [SSEEvent(" x", b" y")]


def test_unknown_fields_ignored() -> None:
    assert decode(b"foo: bar\ndata: x\nDATA: y\n\n") == [SSEEvent(data=b"x")]


def test_missing_final_blank_line_is_flushed() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\n\nevent: end\ndata: b\n") == [SSEEvent(data=b"a")]
    assert dec.flush() == [SSEEvent("end", b"b")]
    # no terminator at all on the last line
    assert decode(b"data: a\n\ndata: [DONE]") == [SSEEvent(data=b"a"), SSEEvent(data=b"[DONE]")]
    assert decode(b"data: a\n\n: trailing comment") == [SSEEvent(data=b"a")]


def test_flush_without_pending_returns_nothing() -> None:
    assert decode(b"") == []
    assert decode(b"data: a\n\n") == [SSEEvent(data=b"a")]
    assert decode(b"event: x\n") == []


STREAM = (
    b"\xef\xbb\xbf: comment\r\n"
    b"event: message_start\r\n"
    b'data: {"t": "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80"}\r\n'
    b"\r\n"
    b"id: 42\n"
    b"retry: 3000\n"
    b"data:first\n"
    b"data:  second\n"
    b"\n"
    b"data: cr-only\r"
    b"data\r"
    b"\r"
    b": keep-alive\n"
    b"\n"
    b"event: ev\r\n"
    b"data: data: nested\r\n"
    b"\r\n"
    b"data: [DONE]\n"
    b"\n"
)
STREAM_EVENTS = [
    SSEEvent("message_start", '{"t": "héllo € 😀"}'.encode()),
    SSEEvent(None, b"first\n second", "42", 3000),
    SSEEvent(None, b"cr-only\n", "42"),
    SSEEvent("ev", b"data: nested", "42"),
    SSEEvent(None, b"[DONE]", "42"),
]


def test_reference_stream_whole() -> None:
    assert decode(STREAM) == STREAM_EVENTS


def test_every_split_point() -> None:
    for i in range(len(STREAM) + 1):
        assert decode(STREAM[:i], STREAM[i:]) == STREAM_EVENTS, f"split at {i}"


def test_every_pair_of_split_points() -> None:
    n = len(STREAM)
    for i in range(0, n + 1, 3):
        for j in range(i, n + 1):
            assert decode(STREAM[:i], STREAM[i:j], STREAM[j:]) == STREAM_EVENTS, f"split at {i},{j}"


def test_byte_at_a_time() -> None:
    assert decode_bytewise(STREAM) == STREAM_EVENTS


def test_multibyte_utf8_split_between_chunks() -> None:
    euro = "€".encode()
    raw = b"event: caf\xc3\xa9\ndata: " + euro + b"\n\n"
    for cut in range(len(raw) + 1):
        assert decode(raw[:cut], raw[cut:]) == [SSEEvent("café", euro)]
    events = decode(b"data: \xe2", b"\x82", b"\xac\n\n")
    assert events[0].data.decode() == "€"


def test_chunk_ending_in_cr_then_lf_later() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\n") == []  # the LF completes "\r\n"; it is not a blank line
    assert dec.feed(b"data: b\r") == []
    assert dec.feed(b"\r") == [SSEEvent(data=b"a\nb")]  # lone CR then CR: blank line
    assert dec.feed(b"\ndata: c\r\n\r") == [SSEEvent(data=b"c")]
    assert dec.feed(b"\n") == []
    assert dec.feed(b"") == []
    assert dec.feed(b"\n") == []  # a second LF is a genuine (empty) blank line
    assert dec.flush() == []


def test_bom_only_stripped_at_start() -> None:
    assert decode(b"\xef\xbb\xbfdata: a\n\n") == [SSEEvent(data=b"a")]
    assert decode(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == [SSEEvent(data=b"a")]
    assert decode(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [SSEEvent(data=b"a")]


def test_encode_event_round_trips() -> None:
    assert encode_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_event(b"x", event="ping") == b"event: ping\ndata: x\n\n"
    assert encode_event(b"a\nb\r\nc") == b"data: a\ndata: b\ndata: c\n\n"
    for data, name in [(b"", None), (b" lead", "e"), (b"a\n\nb", None), (b"x\n", "y")]:
        assert decode(encode_event(data, name)) == [SSEEvent(name, data)]
    with pytest.raises(ValueError):
        encode_event(b"x", event="bad\nname")


def _fixture(rel: str) -> tuple[bytes, list[SSEEvent]]:
    raw = (FIXTURES / rel).read_bytes()
    events = decode(raw)
    assert decode_bytewise(raw) == events
    assert decode(*(raw[i : i + 7] for i in range(0, len(raw), 7))) == events
    return raw, events


def test_fixture_openai_chat_lf() -> None:
    raw, events = _fixture("openai_chat/stream_basic_with_usage.sse")
    assert b"\r" not in raw
    assert len(events) == 34
    assert events[-1] == SSEEvent(data=b"[DONE]")
    chunks = [orjson.loads(e.data) for e in events[:-1]]
    assert all(
        c["object"] == "chat.completion.chunk" and e.event is None
        for c, e in zip(chunks, events, strict=False)
    )
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 44


def test_fixture_gemini_crlf() -> None:
    raw, events = _fixture("gemini/stream_alt_sse_thoughts.response.sse")
    assert raw.count(b"\r\n") == raw.count(b"\n") > 0
    assert len(events) == 19
    parsed = [orjson.loads(e.data) for e in events]
    assert all(not e.data.endswith(b"\r") for e in events)
    assert parsed[0]["candidates"][0]["content"]["parts"][0]["thought"] is True
    assert parsed[-1]["usageMetadata"]["thoughtsTokenCount"] == 1234


def test_fixture_anthropic_event_lines() -> None:
    raw, events = _fixture("anthropic/stream_basic.sse")
    assert not raw.endswith(b"\n")  # fixture omits the final terminator: flush must deliver the last event
    assert [e.event for e in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    for e in events:
        assert orjson.loads(e.data)["type"] == e.event
    text = "".join(orjson.loads(e.data)["delta"]["text"] for e in events if e.event == "content_block_delta")
    assert text == "Hello there!"
