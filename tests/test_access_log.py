"""The access log: its two formats, its writer, its config, and the lines a real gateway writes."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from gateway.access_log import AccessRecord, LineWriter, combined_line, json_line, reply_fields
from gateway.config import ConfigError, load_config
from gateway.exchange import Reply
from gateway.server import Gateway
from tests.conftest import LAYERS, GatewayFactory, eventually
from tests.echo_origin import echo_state
from tests.test_gateway_http import get, spec


@pytest.fixture(params=LAYERS)
def layer(request: pytest.FixtureRequest) -> str:
    """The lines a real gateway writes, on both client-facing layers."""
    return str(request.param)

AT = 1_796_126_400.25  # 2026-12-01T12:00:00.250Z


def record(**changes: object) -> AccessRecord:
    fields: dict[str, object] = {
        "time": AT,
        "method": "GET",
        "host": "cdn.test",
        "path": "/a?projectId=p1",
        "status": 200,
        "bytes": 5,
        "duration": 0.0012345678,
        "cache": "HIT",
        "tenant": "p1",
        "route": "all",
        "origin_time": None,
        "collapsed": False,
        "client": "127.0.0.1",
        "user_agent": "curl/8",
    }
    fields.update(changes)
    return AccessRecord(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- formats


def test_json_line_has_every_field_with_its_type() -> None:
    line = json_line(record(origin_time=0.5, collapsed=True))
    assert "\n" not in line
    data = json.loads(line)
    assert data == {
        "time": "2026-12-01T12:00:00.250Z",
        "method": "GET",
        "host": "cdn.test",
        "path": "/a?projectId=p1",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 5,
        "duration": 0.001235,
        "cache": "HIT",
        "tenant": "p1",
        "route": "all",
        "origin_time": 0.5,
        "collapsed": True,
        "client": "127.0.0.1",
        "referer": None,
        "user_agent": "curl/8",
    }


def test_json_line_unknowns_are_null_and_client_values_cannot_break_the_line() -> None:
    hostile = '/x"\n{"status":200}\r\x00\u2028'
    line = json_line(record(path=hostile, bytes=None, cache=None, tenant=None, route=None,
                            user_agent="a\nb"))
    assert "\n" not in line and "\r" not in line and line.isascii()
    data = json.loads(line)
    assert data["path"] == hostile and data["user_agent"] == "a\nb"
    assert data["bytes"] is None and data["cache"] is None and data["route"] is None


def json_dumps_line(r: AccessRecord) -> str:
    """The reference json_line is held to: the generic encoder on the same fields."""
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.time))
    rounded = None if r.origin_time is None else round(r.origin_time, 6)
    return json.dumps(
        {
            "time": f"{iso}.{int((r.time % 1) * 1000):03d}Z", "method": r.method,
            "host": r.host, "path": r.path, "protocol": r.protocol, "status": r.status,
            "bytes": r.bytes, "duration": round(r.duration, 6), "cache": r.cache,
            "tenant": r.tenant, "route": r.route, "origin_time": rounded,
            "collapsed": r.collapsed, "client": r.client, "referer": r.referer,
            "user_agent": r.user_agent,
        },
        separators=(",", ":"),
    )


client_text = st.none() | st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    at=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    path=st.text(max_size=60),
    host=client_text, user_agent=client_text, referer=client_text, cache=client_text,
    sent=st.none() | st.integers(min_value=0, max_value=1 << 40),
    duration=seconds, origin_time=st.none() | seconds, collapsed=st.booleans(),
)
def test_json_line_is_exactly_what_the_json_encoder_makes(
    at: float, path: str, host: str | None, user_agent: str | None, referer: str | None,
    cache: str | None, sent: int | None, duration: float, origin_time: float | None,
    collapsed: bool,
) -> None:
    r = record(time=at, path=path, host=host, user_agent=user_agent, referer=referer,
               cache=cache, bytes=sent, duration=duration, origin_time=origin_time,
               collapsed=collapsed)
    assert json_line(r) == json_dumps_line(r)


def test_combined_line_is_nginx_combined_plus_the_cache_status() -> None:
    line = combined_line(record(referer="https://ref.test/"))
    assert line == (
        '127.0.0.1 - - [01/Dec/2026:12:00:00 +0000] "GET /a?projectId=p1 HTTP/1.1" 200 5 '
        '"https://ref.test/" "curl/8" HIT'
    )
    line = combined_line(record(bytes=None, cache=None, client=None, user_agent=None))
    assert line == (
        '- - - [01/Dec/2026:12:00:00 +0000] "GET /a?projectId=p1 HTTP/1.1" 200 - "-" "-" -'
    )


def test_combined_line_escapes_hostile_paths_and_user_agents() -> None:
    forged = '127.0.0.1 - - [01/Dec/2026:12:00:00 +0000] "GET /admin HTTP/1.1" 200 1 "-" "-" HIT'
    line = combined_line(record(
        path='/a" 200 1 "-" "-" HIT\n' + forged,
        user_agent='ua\\" \r\n' + forged + "\x1b[31m\x7f\u00e9\udcff",
    ))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and line.isascii()
    # Every quote a client sent is escaped: the line still has exactly six field quotes.
    assert len(re.findall(r'(?<!\\)"', line.replace("\\\\", ""))) == 6
    assert '\\"GET /admin' in line and "\\x0A" in line and "\\x0D\\x0A" in line
    assert "\\x1B[31m\\x7F\\xC3\\xA9\\xFF" in line  # control, DEL, UTF-8, an undecodable byte
    assert line.endswith(" HIT")


def test_reply_fields_read_x_cache_and_collapsed_from_the_reply() -> None:
    headers = [("Cache-Status", "edge; fwd=uri-miss; stored; collapsed"), ("X-Cache", "MISS"),
               ("Content-Range", "bytes 0-1/2")]
    assert reply_fields(Reply(200, headers)) == ("MISS", True)
    assert reply_fields(Reply(200, [("Cache-Status", "edge; hit; ttl=5"), ("X-Cache", "HIT")])) == (
        "HIT", False)
    assert reply_fields(Reply(200, [])) == (None, False)


# ---------------------------------------------------------------- writer


def test_line_writer_writes_lines_from_its_thread() -> None:
    out = io.StringIO()
    writer = LineWriter(lambda: out)
    writer.start()
    for i in range(3):
        writer.put(f"line {i}")
    assert writer.flush()
    writer.close()
    assert out.getvalue() == "line 0\nline 1\nline 2\n"


def test_line_writer_drops_lines_rather_than_wait_for_a_stuck_stdout() -> None:
    writer = LineWriter(lambda: io.StringIO(), max_lines=2)  # no thread: nothing drains it
    started = time.monotonic()
    for i in range(5):
        writer.put(f"line {i}")
    assert time.monotonic() - started < 0.5
    assert writer.dropped == 3
    assert not writer.flush(timeout=0.01)


def test_line_writer_counts_lines_a_closed_stdout_refused() -> None:
    out = io.StringIO()
    out.close()
    writer = LineWriter(lambda: out)
    writer.start()
    writer.put("lost")
    assert writer.flush()
    writer.close()
    assert writer.dropped == 1


# ---------------------------------------------------------------- config


def config_file(tmp_path: Path, top: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(f"{top}origins: {{o: {{url: 'http://127.0.0.1:9'}}}}\n"
                    "routes: [{name: any, origin: o}]\n")
    return path


@pytest.mark.parametrize(("top", "mode"), [
    ("", "json"), ("access_log: json\n", "json"), ("access_log: combined\n", "combined"),
    ("access_log: off\n", "off"), ("access_log: false\n", "off"),
])
def test_access_log_config_values(tmp_path: Path, top: str, mode: str) -> None:
    assert load_config(config_file(tmp_path, top), env={}).access_log == mode


def test_access_log_config_refuses_other_values_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config_file(tmp_path, "access_log: xml\n"), env={})
    (issue,) = info.value.issues
    assert issue.field == "access_log" and issue.line == 1
    assert "'json', 'combined' or 'off'" in str(issue) and "'xml'" in str(issue)


# ---------------------------------------------------------------- through a real gateway


def emitted(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert gateway.access_writer is not None
    assert gateway.access_writer.flush()
    return capsys.readouterr().out.splitlines()


async def test_a_miss_a_hit_a_bypass_and_an_error_are_logged_as_json(
    echo_origin: TestServer,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")), top_extra="access_log: json")
    path = spec("/a", "Cache-Control:max-age=60", projectId="p1", body="hello")
    miss, _ = await get(http, gw, path, headers={"User-Agent": "ua/1"})
    hit, _ = await get(http, gw, path)
    assert (miss.headers["X-Cache"], hit.headers["X-Cache"]) == ("MISS", "HIT")
    streamed = spec("/nocache/s", stream="100000")
    bypass, body = await get(http, gw, streamed)
    assert bypass.headers["X-Cache"] == "BYPASS" and len(body) == 100_000
    async with http.get(gw.make_url("/a?projectId=p1"), data=b"body") as refused:
        assert refused.status == 400  # a GET with a body on a cached route
    async with http.head(gw.make_url(path)) as head:
        assert head.status == 200

    lines = [json.loads(line) for line in emitted(gateway, capsys)]
    assert [(r["method"], r["status"], r["cache"]) for r in lines] == [
        ("GET", 200, "MISS"), ("GET", 200, "HIT"), ("GET", 200, "BYPASS"),
        ("GET", 400, None), ("HEAD", 200, "HIT"),
    ]
    miss_line, hit_line, bypass_line, error_line, head_line = lines
    assert miss_line["path"] == path and miss_line["host"] == f"{gw.host}:{gw.port}"
    assert miss_line["user_agent"] == "ua/1" and miss_line["client"] == "127.0.0.1"
    for line in (miss_line, hit_line):
        assert (line["route"], line["tenant"], line["bytes"]) == ("all", "p1", 5)
        assert line["collapsed"] is False
        assert isinstance(line["duration"], float) and 0 <= line["duration"] < 5
    assert 0 <= miss_line["origin_time"] <= miss_line["duration"]  # this request's fetch
    assert hit_line["origin_time"] is None
    assert (bypass_line["route"], bypass_line["tenant"]) == ("nocache", None)
    assert bypass_line["bytes"] == 100_000  # streamed without a Content-Length: counted
    assert isinstance(bypass_line["origin_time"], float) and bypass_line["origin_time"] >= 0
    assert error_line["route"] is None and error_line["bytes"] > 0
    assert head_line["bytes"] == 0


async def test_the_fill_leader_logs_the_origin_time_and_a_joiner_logs_collapsed(
    echo_origin: TestServer,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")), top_extra="access_log: json")
    slow = spec("/slow", "Cache-Control:max-age=60", delay="0.3")
    first = asyncio.ensure_future(get(http, gw, slow))
    await eventually(lambda: echo_state(echo_origin).in_flight == 1, "the fill at the origin")
    await get(http, gw, slow)
    await first
    lines = [json.loads(line) for line in emitted(gateway, capsys)]
    leader = next(r for r in lines if not r["collapsed"])
    joiner = next(r for r in lines if r["collapsed"])
    assert 0.3 <= leader["origin_time"] <= leader["duration"]
    assert joiner["origin_time"] is None  # it waited for another request's fetch


async def test_combined_lines_through_a_gateway(
    echo_origin: TestServer,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw, gateway = await make_gateway(
        str(echo_origin.make_url("/")), top_extra="access_log: combined"
    )
    path = spec("/c", "Cache-Control:max-age=60", body="abc")
    await get(http, gw, path, headers={"User-Agent": 'evil"\tagent', "Referer": "r"})
    await get(http, gw, path)
    lines = emitted(gateway, capsys)
    clf = r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
    request = r'"GET /c\?\S+ HTTP/1\.1" 200 3 '
    assert re.fullmatch(clf + request + r'"r" "evil\\"\\x09agent" MISS', lines[0])
    assert re.fullmatch(clf + request + r'"-" "[^"]+" HIT', lines[1])


async def test_access_log_off_writes_nothing(
    echo_origin: TestServer,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")), top_extra="access_log: off")
    assert gateway.access_format is None and gateway.access_writer is None
    resp, _ = await get(http, gw, spec("/off", "Cache-Control:max-age=60"))
    assert resp.status == 200
    assert capsys.readouterr().out == ""


async def test_a_reload_turns_the_access_log_on(
    echo_origin: TestServer,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw, gateway = await make_gateway(str(echo_origin.make_url("/")), top_extra="access_log: off")
    await get(http, gw, spec("/r1"))
    gateway.apply(gateway.config.model_copy(update={"access_log": "json"}))
    await get(http, gw, spec("/r2"))
    lines = [json.loads(line) for line in emitted(gateway, capsys)]
    assert [line["path"] for line in lines] == [spec("/r2")]
