"""The pure parts of the native layer (gateway/http1.py): head limits, requests, answer heads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http1 import (
    HTTP10,
    HTTP11,
    MAX_FIELD,
    MAX_FIELDS,
    MAX_HEAD,
    MAX_LINE,
    BodyStream,
    HeadBuilder,
    NativeRequest,
    Refused,
    render_head,
)


def head_of(*fields: tuple[bytes, bytes], url: bytes = b"/") -> HeadBuilder:
    head = HeadBuilder()
    head.add_url(url)
    for name, value in fields:
        head.add_field(name, value)
    return head


def request_of(*fields: tuple[bytes, bytes], version: str = "1.1") -> NativeRequest:
    return head_of(*fields).request(b"GET", version, True, "127.0.0.1")


@given(st.lists(st.integers(min_value=1, max_value=MAX_FIELD + 100), max_size=MAX_FIELDS + 5))
def test_a_head_is_refused_with_431_exactly_when_a_field_the_total_or_the_count_is_over(
    sizes: list[int],
) -> None:
    head = HeadBuilder()
    refused = None
    try:
        for i, size in enumerate(sizes):  # a field line of `size` bytes: "X-nnn: vvv\r\n"
            name = b"X-%03d" % i
            head.add_field(name, b"v" * max(0, size - len(name) - 4))
    except Refused as exc:
        refused = exc
    lines = [max(size, len(b"X-000") + 4) for size in sizes]
    running = [sum(lines[: i + 1]) for i in range(len(lines))]
    over = any(
        line > MAX_FIELD or total > MAX_HEAD or count > MAX_FIELDS
        for count, (line, total) in enumerate(zip(lines, running, strict=True), start=1)
    )
    assert (refused is not None) == over
    assert refused is None or refused.status == 431


def test_a_target_up_to_8_kib_is_taken_in_pieces_and_a_longer_one_is_a_414() -> None:
    head = HeadBuilder()
    head.add_url(b"/" + b"a" * (MAX_LINE // 2))
    head.add_url(b"a" * (MAX_LINE // 2 - 1))
    assert len(head.url) == MAX_LINE
    with pytest.raises(Refused) as refused:
        head.add_url(b"a")
    assert refused.value.status == 414


@pytest.mark.parametrize("version", ["2.0", "0.9", "3.0", "1.2"])
def test_a_version_other_than_1_0_or_1_1_is_a_505(version: str) -> None:
    with pytest.raises(Refused) as refused:
        request_of((b"Host", b"a"), version=version)
    assert refused.value.status == 505


def test_http_1_1_needs_a_host_and_http_1_0_does_not() -> None:
    with pytest.raises(Refused) as refused:
        request_of()
    assert refused.value.status == 400
    assert request_of(version="1.0").version is HTTP10


@pytest.mark.parametrize("name", [b"Host", b"host", b"Content-Type", b"Transfer-Encoding"])
def test_a_repeated_field_that_means_one_thing_is_a_400(name: bytes) -> None:
    with pytest.raises(Refused) as refused:
        request_of((b"Host", b"a"), (name, b"x"), (name, b"x"))
    assert refused.value.status == 400


def test_expect_100_continue_is_noted_another_is_a_417_and_http_1_0_ignores_both() -> None:
    assert request_of((b"Host", b"a"), (b"Expect", b"100-Continue")).continue_expected
    with pytest.raises(Refused) as refused:
        request_of((b"Host", b"a"), (b"Expect", b"teapot"))
    assert refused.value.status == 417
    assert not request_of((b"Expect", b"teapot"), version="1.0").continue_expected


def test_a_body_exists_when_chunked_or_of_a_positive_length() -> None:
    host = (b"Host", b"a")
    assert not request_of(host).body_exists
    assert not request_of(host, (b"Content-Length", b"0")).body_exists
    assert request_of(host, (b"Content-Length", b"3")).content_length == 3
    assert request_of(host, (b"Transfer-Encoding", b"chunked")).body_exists


def test_the_request_reads_as_the_gateway_needs_it() -> None:
    head = head_of((b"Host", b"a"), (b"X-Utf8", "é".encode()), url=b"/p?q=%41")
    request = head.request(b"POST", "1.1", False, "10.0.0.1")
    assert (request.method, request.raw_path, request.version) == ("POST", "/p?q=%41", HTTP11)
    assert request.headers["x-utf8"] == "é" and request.headers["HOST"] == "a"
    assert (request.remote, request.scheme, request.keep_alive) == ("10.0.0.1", "http", False)


def test_an_answer_head_has_its_length_a_date_and_the_connection_s_fate() -> None:
    head = render_head(200, [("X-A", "1")], HTTP11, length=5, chunked=False, close=False)
    assert head.startswith(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 5\r\nDate: ")
    assert head.endswith(b" GMT\r\n\r\n") and b"Connection" not in head
    kept = render_head(304, [("date", "x")], HTTP10, length=None, chunked=False, close=False)
    assert kept == b"HTTP/1.1 304 Not Modified\r\ndate: x\r\nConnection: keep-alive\r\n\r\n"
    update = render_head(200, [("X-Up", "a, update: 1")], HTTP11, length=0, chunked=False,
                         close=False)
    assert b"\r\nDate: " in update  # "date: " inside a value is not a Date field
    streamed = render_head(599, [("Date", "x")], HTTP11, length=None, chunked=True, close=True)
    assert streamed == (
        b"HTTP/1.1 599 Unknown\r\nDate: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\rb"])
def test_a_field_that_would_split_the_head_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        render_head(200, [("X", value)], HTTP11, length=0, chunked=False, close=False)


async def test_a_body_stream_gives_its_chunks_in_order_then_b_empty_and_tells_each_read() -> None:
    body = BodyStream()
    reads = []
    body.on_read = lambda: reads.append(body.buffered)
    body.feed(b"ab")
    body.feed(b"c")
    assert body.buffered == 3
    assert await body.readany() == b"ab"
    body.end()
    assert [await body.readany(), await body.readany(), await body.readany()] == [b"c", b"", b""]
    assert reads == [1, 0]  # called after each chunk taken, with what is left


async def test_a_body_stream_cut_short_raises_to_its_reader() -> None:
    body = BodyStream()
    body.fail(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError):
        await body.readany()
