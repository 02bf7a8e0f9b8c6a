"""The loader origin: aiohttp handlers, counting/fault middleware and the app factory.

It behaves like a real page-builder backend (DB-resolved versions, slow first codegen,
validators, surrogate keys) so the gateway can be demoed and benchmarked against it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from origin.bundle import Codegen
from origin.conditional import http_date, not_modified
from origin.db import Database, ProjectNotFound, VersionInfo, VersionNotFound
from origin.notify import notify_gateway
from origin.settings import OriginSettings
from origin.stats import FaultError, Faults, Stats

log = logging.getLogger("origin")

IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"
NO_STORE = "private, no-store"
_PLATFORM_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class OriginState:
    """Everything the handlers share, stored under one typed app key."""

    settings: OriginSettings
    db: Database
    stats: Stats
    codegen: Codegen
    faults: Faults = field(default_factory=Faults)
    rng: random.Random = field(default_factory=random.Random)
    sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


STATE = web.AppKey("origin_state", OriginState)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Errors are always JSON so clients (and the gateway) never parse HTML tracebacks."""
    base = {"Cache-Control": "no-store"}
    base.update(headers or {})
    return web.json_response({"error": message, "status": status}, status=status, headers=base)


def _counted(path: str) -> bool:
    """Control endpoints must not disturb the numbers they report."""
    return not (path.startswith("/__") or path == "/healthz")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON response instead of aiohttp's text/HTML pages."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        extra = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_error(exc.status, exc.reason, extra)
    except Exception:
        log.exception("unhandled error for %s %s", request.method, request.raw_path)
        return json_error(500, "internal server error")


class _DroppedResponse(web.Response):
    """Placeholder after a fault closed the socket; aiohttp's write then fails silently."""


async def _injected_failure(request: web.Request, state: OriginState) -> web.Response | None:
    """Delay, then maybe fail or drop; None means: proceed to the real handler."""
    faults = state.faults
    if faults.delay_seconds > 0:
        await asyncio.sleep(faults.delay_seconds)
    if not faults.should_fail(state.rng):
        return None
    state.stats.faults_injected += 1
    if faults.drop:
        if request.transport is not None:
            request.transport.close()
        return _DroppedResponse(status=499)
    return json_error(faults.failure_status, "injected fault")


@web.middleware
async def stats_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request first (so faulted requests are visible), then apply faults."""
    if not _counted(request.path):
        return await handler(request)
    state = request.app[STATE]
    state.stats.request_started(request.method, request.raw_path)
    status: int | None = 500
    try:
        response = await _injected_failure(request, state) or await handler(request)
        status = None if isinstance(response, _DroppedResponse) else response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        state.stats.request_finished(status)


def _platform(request: web.Request) -> str | None:
    platform = request.query.get("platform", "react")
    return platform if _PLATFORM_RE.match(platform) else None


async def _bundle_response(
    request: web.Request, info: VersionInfo, platform: str, cache_control: str
) -> web.Response:
    """Build (or reuse) the bundle and answer 200 or 304 with full validators."""
    state = request.app[STATE]
    bundle = await state.codegen.bundle_for(info, platform)
    headers = {
        "Cache-Control": cache_control,
        "ETag": bundle.etag,
        "Last-Modified": http_date(info.published_at),
        "Surrogate-Key": f"project:{info.project_id} project:{info.project_id}:v{info.n}",
        "Date": http_date(time.time()),
    }
    if not_modified(request.headers, bundle.etag, info.published_at):
        state.stats.not_modified += 1
        return web.Response(status=304, headers=headers)
    return web.Response(body=bundle.body, headers=headers, content_type="application/javascript")


async def published_bundle(request: web.Request) -> web.Response:
    """Latest published bundle: shared-cacheable for s-maxage, then serve-stale."""
    state = request.app[STATE]
    project_id = request.query.get("projectId")
    if not project_id:
        return json_error(400, "projectId query parameter is required")
    platform = _platform(request)
    if platform is None:
        return json_error(400, "invalid platform")
    try:
        info = await state.db.latest_published(project_id)
    except (ProjectNotFound, VersionNotFound) as exc:
        return json_error(404, str(exc))
    return await _bundle_response(
        request, info, platform, state.settings.published_cache_control()
    )


async def versioned_bundle(request: web.Request) -> web.Response:
    """A specific version never changes, so it is immutable for a year."""
    state = request.app[STATE]
    project_id = request.query.get("projectId")
    raw_version = request.query.get("version", "")
    if not project_id:
        return json_error(400, "projectId query parameter is required")
    if not raw_version.isdigit() or int(raw_version) < 1:
        return json_error(400, "version must be a positive integer")
    platform = _platform(request)
    if platform is None:
        return json_error(400, "invalid platform")
    try:
        info = await state.db.version(project_id, int(raw_version))
    except (ProjectNotFound, VersionNotFound) as exc:
        return json_error(404, str(exc))
    return await _bundle_response(request, info, platform, IMMUTABLE_CACHE_CONTROL)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    """Optional JSON object body: {} when empty, None when malformed."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


async def execute_source(request: web.Request) -> web.Response:
    """Per-user data query: different on every call and never cacheable."""
    state = request.app[STATE]
    params = await _json_object(request)
    if params is None:
        return json_error(400, "body must be a JSON object")
    limit = params.get("limit", 5)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        return json_error(400, "limit must be an integer 1..100")
    rows = await state.db.project_rows(limit)
    payload = {
        "sourceId": request.match_info["source_id"],
        "requestId": uuid.uuid4().hex,
        "sequence": next(state.sequence),
        "executedAt": time.time(),
        "params": params,
        "rows": rows,
    }
    return web.json_response(payload, headers={"Cache-Control": NO_STORE})


async def publish(request: web.Request) -> web.Response:
    """Create version N+1 and, if configured, ask the gateway to soft-purge the project."""
    state = request.app[STATE]
    project_id = request.match_info["project"]
    try:
        info = await state.db.publish(project_id)
    except ProjectNotFound as exc:
        return json_error(404, str(exc))
    notified: bool | None = None
    settings = state.settings
    if settings.gateway_admin:
        notified = await notify_gateway(
            settings.gateway_admin,
            settings.gateway_token,
            project_id,
            settings.gateway_timeout_seconds,
        )
        state.stats.gateway_notifications += 1
    payload = {
        "projectId": project_id,
        "version": info.n,
        "publishedAt": info.published_at,
        "gateway_notified": notified,
    }
    return web.json_response(payload, headers={"Cache-Control": "no-store"})


async def get_stats(request: web.Request) -> web.Response:
    """Counters for tests and benchmarks."""
    state = request.app[STATE]
    return web.json_response(state.stats.snapshot(state.db.pool.counters))


async def reset_stats(request: web.Request) -> web.Response:
    """Zero all counters (including maxima) between benchmark phases."""
    state = request.app[STATE]
    state.stats.reset()
    state.db.pool.reset_counters()
    return web.json_response(state.stats.snapshot(state.db.pool.counters))


async def get_faults(request: web.Request) -> web.Response:
    """Current fault configuration."""
    return web.json_response(request.app[STATE].faults.as_dict())


async def set_faults(request: web.Request) -> web.Response:
    """Partially update (or reset) fault injection."""
    state = request.app[STATE]
    try:
        payload = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return json_error(400, "body must be valid JSON")
    try:
        state.faults.update(payload)
    except FaultError as exc:
        return json_error(400, str(exc))
    log.info("faults now %s", state.faults.as_dict())
    return web.json_response(state.faults.as_dict())


async def healthz(request: web.Request) -> web.Response:
    """Liveness for scripts waiting on startup."""
    return web.json_response({"status": "ok"})


def create_app(settings: OriginSettings | None = None) -> web.Application:
    """Build the origin app; the DB is created and seeded when the app starts."""
    settings = settings or OriginSettings()
    stats = Stats()
    state = OriginState(
        settings=settings,
        db=Database(settings.db, settings.pool_size, settings.db_latency_seconds),
        stats=stats,
        codegen=Codegen(settings.codegen_seconds, stats.codegen_ran),
    )
    app = web.Application(middlewares=[error_middleware, stats_middleware])
    app[STATE] = state

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await state.db.open(settings.projects)
        yield
        await state.codegen.close()
        await state.db.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/api/v1/loader/code/published", published_bundle)
    app.router.add_get("/api/v1/loader/code/versioned", versioned_bundle)
    app.router.add_post("/api/v1/server-data/sources/{source_id}/execute", execute_source)
    app.router.add_post("/api/v1/projects/{project}/publish", publish)
    app.router.add_get("/__stats", get_stats)
    app.router.add_post("/__stats/reset", reset_stats)
    app.router.add_get("/__faults", get_faults)
    app.router.add_post("/__faults", set_faults)
    app.router.add_get("/healthz", healthz)
    return app
