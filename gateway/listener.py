"""The client-facing connections: aiohttp's low-level server with the limits an edge needs.

aiohttp alone keeps an idle or half-sent connection for an hour and answers a malformed request
with a logged traceback. Here, as nginx does:

- the whole request head must arrive within `client_header_timeout` of its first byte (or of
  the connection being accepted): a client sending a byte at a time cannot hold a connection;
- an idle keep-alive connection is closed after `keepalive_timeout`;
- at most `max_connections` client connections are open: past that, the oldest idle keep-alive
  connection makes room, or the new connection gets a 503 and is closed, with a log line;
- a request the parser refuses gets a JSON 400 and the connection is closed; it is logged at
  debug level only, since anyone can send garbage.

The native layer (gateway/client_protocol.py) keeps the same limits with the same raw answers,
refusal log and parser-complaint cleaning, all defined here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("gateway.listener")

REFUSED_LOG_INTERVAL = 10.0  # seconds between two "max_connections reached" lines


def raw_response(status: str, reason: str, *extra: str) -> bytes:
    """A whole JSON error response, written straight to a transport that has no request."""
    body = json.dumps({"error": reason, "status": int(status.split()[0])}).encode()
    head = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/json",
        "Cache-Control: no-store",
        *extra,
        "Connection: close",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


REFUSED = raw_response("503 Service Unavailable", "too many client connections", "Retry-After: 1")
TIMED_OUT = raw_response("408 Request Timeout", "request head timed out")


@dataclass(frozen=True, slots=True)
class ClientLimits:
    header_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    max_connections: int = 4096


class ClientConnection(RequestHandler):
    """One client connection: aiohttp's handler plus the request-head deadline."""

    __slots__ = ("_head_bytes", "_head_timer", "_last_payload")

    def __init__(self, manager: PublicServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = False  # part of a head arrived and is not complete yet
        self._last_payload: Any = None  # the body of the latest request parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.transport is not None:  # not refused by the server's connection limit
            self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._request_count > parsed and self._messages:
            self._cancel_head_timer()  # a whole head is in
            self._last_payload = self._messages[-1][1]
            self._head_bytes = False
        elif data and (self._last_payload is None or self._last_payload.is_eof()):
            # Bytes that are not a body in progress: the start of the next head.
            self._head_bytes = True
            if self._head_timer is None:
                self._arm_head_timer()

    def idle(self) -> bool:
        """Between requests, with nothing of the next one received."""
        return (
            self._waiter is not None
            and not self._waiter.done()
            and not self._messages
            and not self._head_bytes
            and not self._request_in_progress
        )

    def _arm_head_timer(self) -> None:
        manager = self._manager
        assert isinstance(manager, PublicServer)
        self._head_timer = self._loop.call_later(
            manager.limits.header_timeout, self._head_timed_out
        )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._request_in_progress or self._messages or self.transport is None:
            return  # a request is being answered; keepalive_timeout covers what follows
        if self._head_bytes:
            self.transport.write(TIMED_OUT)
        log.debug("client %s: request head not complete in time, closing", self.peername)
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request the parser refused (or a failure aiohttp caught): JSON, connection closed,
        and no traceback in the logs for what any client can send."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        log.debug("malformed request from %s: %s", request.remote, exc)
        reason = parser_complaint(getattr(exc, "message", "") or type(exc).__name__)
        body = json.dumps({"error": f"malformed request: {reason}", "status": status})
        response = web.Response(
            status=status,
            text=body,
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
        response.force_close()
        return response


def parser_complaint(text: str) -> str:
    """The parser's complaint, first line only and printable: never the client's bytes."""
    text = str(text)
    first = text.strip().splitlines()[0] if text.strip() else "bad request"
    clean = "".join(c for c in first.split(":", 1)[0] if c.isprintable())
    return clean[:100] or "bad request"


class PublicServer(web.Server):
    """aiohttp's low-level server making `ClientConnection`s, with the connection limit."""

    def __init__(self, handler: Any, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self.limits = limits
        self.refusals = RefusalLog(limits.max_connections)

    def __call__(self) -> RequestHandler:
        return ClientConnection(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if len(self._connections) >= self.limits.max_connections and not self._reclaim_idle():
            self._refuse(handler, transport)
            return
        super().connection_made(handler, transport)

    def _reclaim_idle(self) -> bool:
        """Close the oldest idle keep-alive connection to make room, as nginx does."""
        for conn in self._connections:  # oldest first
            if isinstance(conn, ClientConnection) and conn.idle():
                conn.force_close()
                return True
        return False

    def _refuse(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.refusals.refused()
        transport.write(REFUSED)
        handler.force_close()


class RefusalLog:
    """Connections refused at `max_connections`: counted, and logged at most one line per
    REFUSED_LOG_INTERVAL (a flood of refusals must not become a flood of log lines)."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.count = 0
        self._logged_at = -REFUSED_LOG_INTERVAL
        self._since_log = 0

    def refused(self) -> None:
        self.count += 1
        self._since_log += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSED_LOG_INTERVAL:
            log.warning(
                "max_connections (%d) reached: %d client connection(s) refused with a 503",
                self.max_connections,
                self._since_log,
            )
            self._logged_at = now
            self._since_log = 0
