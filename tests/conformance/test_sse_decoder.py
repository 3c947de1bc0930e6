"""The engine-side SSE decoder: however the body is cut into reads, the same events come
out, in order (the one-event-per-read fast path and the general path agree)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker_adapters.sse import Oversized, SseDecoder

_data = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)
_event = st.tuples(_data, st.sampled_from([b"data: ", b"data:"]), st.booleans(), st.booleans())


@settings(max_examples=300)
@given(events=st.lists(_event, max_size=12), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_events_come_out_whole_and_in_order_however_the_body_is_cut(events, cuts):
    """OC-ADAPT-3002"""
    body = b""
    for data, field, crlf, ping in events:
        body += b": ping\n" if ping else b""  # comments carry nothing
        body += field + data + (b"\r\n\r\n" if crlf else b"\n\n")
    decoder = SseDecoder()
    got: list[bytes | Oversized] = []
    at = 0
    for cut in sorted({c for c in cuts if c < len(body)}):
        got += decoder.feed(body[at:cut])
        at = cut
    got += decoder.feed(body[at:]) + decoder.end()
    expected = [data[1:] if field == b"data:" and data.startswith(b" ") else data
                for data, field, _, _ in events]  # fmt: skip
    assert got == expected


@settings(max_examples=300)
@given(events=st.lists(_event, max_size=12), split=st.lists(st.booleans(), max_size=12))
def test_reads_of_whole_events_come_out_as_the_general_path_gives_them(events, split):
    """OC-ADAPT-3002: reads that hold whole events only (what an engine's socket mostly
    delivers; the decoder then takes them without a step per event) give the events the
    line scan does, whatever framing they mix."""
    frames = [
        (b": ping\n" if ping else b"") + field + data + (b"\r\n\r\n" if crlf else b"\n\n")
        for data, field, crlf, ping in events
    ]
    reads, read = [], b""
    for i, frame in enumerate(frames):
        read += frame
        if i >= len(split) or split[i]:
            reads.append(read)
            read = b""
    reads.append(read)
    whole, scanned = SseDecoder(), SseDecoder()
    got = [event for chunk in reads for event in whole.feed(chunk)] + whole.end()
    assert got == scanned._scan(b"".join(frames)) + scanned.end()


def test_an_event_over_the_bound_keeps_only_its_head_and_tail():
    """OC-ADAPT-3002"""
    decoder = SseDecoder(max_event_bytes=100, head_bytes=10, tail_bytes=5)
    out = decoder.feed(b"data: " + b"a" * 10 + b"b" * 200 + b"cdefg\n\n")
    out += decoder.feed(b"data: small\n\n")
    assert isinstance(out[0], Oversized) and (out[0].head, str(out[0])) == ("a" * 10, "cdefg")
    assert out[1] == b"small"
