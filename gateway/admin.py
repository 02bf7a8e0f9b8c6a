"""The admin listener: purge, bust, reload, stats and cache inspection behind scoped bearer
tokens.

Every request is authenticated (401), validated (400, nothing changes) and authorised against
the token's tenants (403) before it acts; every action it takes is one JSON audit log line.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Self, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.canonical import BadRequest, parse_target
from gateway.config import AdminToken, ConfigError, describe_error, valid_name
from gateway.generations import GLOBAL
from gateway.inspection import DEFAULT_LIMIT, MAX_LIMIT, Inspector
from gateway.metrics import CONTENT_TYPE
from gateway.router import DEFAULT_TENANT
from gateway.server import GATEWAY_KEY, Gateway, JsonError, errors_as_json, json_response

log = logging.getLogger("gateway.admin")
audit_log = logging.getLogger("gateway.audit")

MAX_BODY = 1 << 20  # an admin request is a few hundred bytes; refuse anything near a MiB
MAX_ITEMS = 10_000  # URLs or tags in one purge


def _tenant_name(tenant: str, *, allow_global: bool) -> str:
    if tenant == GLOBAL and allow_global:
        return tenant
    if tenant == DEFAULT_TENANT or valid_name(tenant):
        return tenant
    also = " or '*' (every tenant)" if allow_global else ""
    raise ValueError(
        f"invalid tenant {tenant!r}: 1-64 letters, digits, '.', '_' or '-', starting with a"
        f" letter or digit; '_' for the default namespace{also}"
    )


def _check_url(url: str, field: str) -> None:
    """A path or an http(s) URL that parses as a request target: it is keyed later exactly as
    a request for it would be."""
    if not (url.startswith("/") or url.startswith(("http://", "https://"))):
        raise ValueError(f"{field}: a path ('/...') or an http(s) URL, not {url!r}")
    try:
        parse_target(url, "purge", "http")
    except BadRequest as exc:
        raise ValueError(f"invalid URL {url!r}: {exc.reason}") from None


def _check_prefix(prefix: str | None) -> None:
    if prefix is not None and not prefix.startswith(("/", "http://", "https://")):
        raise ValueError(f"prefix must start with '/' or be an http(s) URL: {prefix!r}")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PurgeBody(_Body):
    """`{"tenant": T}` plus at most one of urls / prefix / tags; nothing = the whole namespace."""

    tenant: str
    urls: list[str] | None = Field(default=None, min_length=1, max_length=MAX_ITEMS)
    prefix: str | None = Field(default=None, min_length=1)
    tags: list[str] | None = Field(default=None, min_length=1, max_length=MAX_ITEMS)
    soft: bool = False

    @model_validator(mode="after")
    def _check(self) -> Self:
        _tenant_name(self.tenant, allow_global=False)
        chosen = [n for n in ("urls", "prefix", "tags") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give at most one of urls, prefix, tags (got {', '.join(chosen)})")
        for url in self.urls or ():
            _check_url(url, "urls")
        _check_prefix(self.prefix)
        if any(not tag.strip() for tag in self.tags or ()):
            raise ValueError("tags must be non-empty strings")
        return self

    @property
    def scope(self) -> str:
        if self.urls is not None:
            return "urls"
        if self.prefix is not None:
            return "prefix"
        return "tags" if self.tags is not None else "namespace"


class BustBody(_Body):
    """`{"tenant": T | "*", "soft": bool}`: bump a tenant's generation, or the global one."""

    tenant: str
    soft: bool = False

    @model_validator(mode="after")
    def _check(self) -> Self:
        _tenant_name(self.tenant, allow_global=True)
        return self


class _Query(BaseModel):
    """Query parameters of a GET: strings, so not strict (`limit=10` is the int 10)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str

    @model_validator(mode="after")
    def _check_tenant(self) -> Self:
        _tenant_name(self.tenant, allow_global=False)
        return self


class EntriesQuery(_Query):
    """`/admin/entries?tenant=T[&prefix=P][&limit=N][&after=CURSOR]`."""

    prefix: str | None = Field(default=None, min_length=1)
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    after: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        _check_prefix(self.prefix)
        return self


class EntryQuery(_Query):
    """`/admin/entry?tenant=T&url=U`: a path or an absolute http(s) URL."""

    url: str

    @model_validator(mode="after")
    def _check(self) -> Self:
        _check_url(self.url, "url")
        return self


Model = TypeVar("Model", bound=BaseModel)
Query = TypeVar("Query", bound=_Query)


def authenticate(request: web.Request, tokens: list[AdminToken]) -> AdminToken:
    """The token the request bears, compared in constant time against every token; 401 else."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() == "bearer" and presented.strip():
        given = presented.strip().encode()
        match = None
        for token in tokens:  # no early exit: the time taken does not say which token matched
            if hmac.compare_digest(given, token.token.encode()):
                match = token
        if match is not None:
            return match
    raise JsonError(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})


def authorize(token: AdminToken, tenant: str) -> None:
    """A token acts on its own tenants; only a '*' token acts on everything (tenant '*')."""
    if "*" in token.tenants or (tenant != GLOBAL and tenant in token.tenants):
        return
    raise JsonError(403, f"token {token.name!r} may not act on tenant {tenant!r}")


async def read_body(request: web.Request, model: type[Model]) -> Model:
    """The JSON body validated into `model`; 400 naming the field otherwise."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise JsonError(413, f"body larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise JsonError(413, f"body larger than {MAX_BODY} bytes")
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise JsonError(400, "body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise JsonError(400, "body must be a JSON object")
    return _validated(data, model)


def read_query(request: web.Request, model: type[Model]) -> Model:
    """The query parameters validated into `model`, each given at most once; 400 otherwise."""
    query = request.query
    repeated = sorted({name for name in query if len(query.getall(name)) > 1})
    if repeated:
        raise JsonError(400, f"give each parameter once (repeated: {', '.join(repeated)})")
    return _validated(dict(query), model)


def _validated(data: dict[str, Any], model: type[Model]) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [describe_error(e, model) for e in exc.errors()]
        raise JsonError(400, "; ".join(problems), problems=problems) from None


def audit(who: AdminToken, action: str, **fields: Any) -> None:
    """One structured line per admin action: who, what, on what, with what result."""
    audit_log.info(json.dumps({"event": "admin", "who": who.name, "action": action, **fields}))


def _gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY_KEY]


def _token(request: web.Request) -> AdminToken:
    return authenticate(request, list(_gateway(request).config.admin.tokens))


async def purge(request: web.Request) -> web.Response:
    who = _token(request)
    body = await read_body(request, PurgeBody)
    authorize(who, body.tenant)
    count = await _gateway(request).purge(
        body.tenant, urls=body.urls, prefix=body.prefix, tags=body.tags, soft=body.soft
    )
    audit(who, "purge", tenant=body.tenant, scope=body.scope, soft=body.soft, purged=count)
    return json_response(200, {"purged": count, "soft": body.soft, "tenant": body.tenant})


async def bust(request: web.Request) -> web.Response:
    who = _token(request)
    body = await read_body(request, BustBody)
    authorize(who, body.tenant)
    result = await _gateway(request).bust(body.tenant, soft=body.soft)
    audit(who, "bust", tenant=body.tenant, soft=body.soft, generation=result)
    return json_response(200, result)


async def reload(request: web.Request) -> web.Response:
    who = _token(request)
    authorize(who, GLOBAL)
    gateway = _gateway(request)
    try:
        fixed = gateway.reload()
    except ConfigError as exc:
        issues = [
            {"file": i.file, "line": i.line, "field": i.field, "message": i.message}
            for i in exc.issues
        ]
        audit(who, "reload", ok=False, issues=len(issues))
        return json_response(
            400, {"error": "config not reloaded; the running config is kept", "issues": issues}
        )
    config = gateway.config
    answer: dict[str, object] = {
        "reloaded": True, "source": config.source_path, "routes": len(config.routes)
    }
    if fixed:
        answer["restart_needed"] = fixed  # changed in the file, not in the running gateway
    if gateway.reload_all is not None:  # one of several workers: the others reload too
        gateway.reload_all()
        answer["workers"] = config.workers
    audit(who, "reload", ok=True, routes=len(config.routes))
    return json_response(200, answer)


async def machine_stats(gateway: Gateway) -> dict[str, Any]:
    """With a census (`workers: N` in a fleet), the sum over every worker of the machine (see
    gateway/fleet/census.py); without, this process's own stats."""
    own = gateway.stats()
    if gateway.census is None:
        return own
    merged: dict[str, Any] = await gateway.census.machine_stats(own)
    return merged


async def stats(request: web.Request) -> web.Response:
    """Everything for a '*' token; a scoped token sees only its own tenants. For the whole
    machine: all its worker processes, whichever one takes the call."""
    who = _token(request)
    full = await machine_stats(_gateway(request))
    if "*" not in who.tenants:
        tenants = full["tenants"]
        assert isinstance(tenants, dict)
        full = {"tenants": {t: tenants[t] for t in who.tenants if t in tenants}}
    audit(who, "stats")
    return json_response(200, full)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus' scrape: the whole machine's metrics, every worker's (gateway/metrics.py)."""
    gateway = _gateway(request)
    secret = gateway.config.admin.metrics_token
    if secret is not None:
        authenticate(request, [AdminToken(name="metrics", token=secret)])
    text = await gateway.exporter.render_async()
    return web.Response(
        body=text, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
    )


def _scoped_query(request: web.Request, model: type[Query]) -> tuple[AdminToken, Query]:
    """The token (401), the query (400) and the token's right to its tenant (403)."""
    who = _token(request)
    query = read_query(request, model)
    authorize(who, query.tenant)
    return who, query


def _inspector(gateway: Gateway) -> Inspector:
    """Reads this process's memory and, in a fleet, Redis, at the gateway's clock's now."""
    return Inspector(
        gateway.store,
        None if gateway.member is None else gateway.member.l2,
        gateway.cache.generations,
        gateway.now(),
        bust_grace=gateway.cache.settings.bust_grace,
        resolve=gateway.normalised,  # a purge URL's keying: the entry asked for is the one purged
    )


async def entries(request: web.Request) -> web.Response:
    """A page of the tenant's cached entries (both tiers in a fleet), with `next` as a cursor."""
    who, query = _scoped_query(request, EntriesQuery)
    answer = await _inspector(_gateway(request)).entries(
        query.tenant, prefix=query.prefix, after=query.after, limit=query.limit
    )
    audit(who, "entries", tenant=query.tenant, prefix=query.prefix, count=answer["count"])
    return json_response(200, answer)


async def entry(request: web.Request) -> web.Response:
    """Every variant stored for one URL; 404 when neither tier holds one."""
    who, query = _scoped_query(request, EntryQuery)
    answer = await _inspector(_gateway(request)).entry(query.tenant, query.url)
    found = bool(answer["variants"])
    audit(who, "entry", tenant=query.tenant, url=query.url, found=found)
    if not found:
        raise JsonError(404, f"nothing stored for {query.url!r} in tenant {query.tenant!r}",
                        urls=answer["urls"], redis=answer["redis"])
    return json_response(200, answer)


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "ok"})


def admin_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=MAX_BODY)
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/stats", stats)
    app.router.add_get("/admin/entries", entries)
    app.router.add_get("/admin/entry", entry)
    app.router.add_post("/admin/purge", purge)
    app.router.add_post("/admin/bust", bust)
    app.router.add_post("/admin/reload", reload)
    return app
