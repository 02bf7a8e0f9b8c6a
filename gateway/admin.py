"""The admin listener: health and stats now; purge, bust and reload build on the same auth."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from gateway.config import AdminToken
from gateway.server import GATEWAY_KEY, Gateway, errors_as_json, json_response

log = logging.getLogger("gateway.admin")


def authenticate(request: web.Request, tokens: list[AdminToken]) -> AdminToken:
    """The token the request bears, compared in constant time; 401 otherwise."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() == "bearer" and presented:
        given = presented.strip().encode()
        match = None
        for token in tokens:
            if hmac.compare_digest(given, token.token.encode()):
                match = token
        if match is not None:
            return match
    raise web.HTTPUnauthorized(
        reason="missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "ok"})


async def stats(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    who = authenticate(request, list(gateway.config.admin.tokens))
    log.info("admin action=stats who=%s", who.name)
    return json_response(200, gateway.stats())


def admin_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[errors_as_json])
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/admin/stats", stats)
    return app
