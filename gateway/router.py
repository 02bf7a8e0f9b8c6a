"""Which route a request takes and which tenant it belongs to. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import unquote

from gateway.canonical import BadRequest
from gateway.config import GatewayConfig, RouteConfig, TenantSource, valid_name
from gateway.policy import RouteRules

DEFAULT_TENANT = "_"  # not a valid configured name, so no configured tenant can collide with it


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled route: its config plus the policy knobs derived from it."""

    cfg: RouteConfig
    rules: RouteRules
    host_pattern: str
    path_prefix: str
    methods: frozenset[str] | None
    host_is_glob: bool = True

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def cached(self) -> bool:
        return self.cfg.cache.enabled

    @property
    def forward_headers(self) -> list[str]:
        return self.cfg.cache.forward_headers

    def matches(self, host: str, path: str, method: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if not path.startswith(self.path_prefix):
            return False
        if not self.host_is_glob:
            return host == self.host_pattern
        return self.host_pattern == "*" or fnmatchcase(host, self.host_pattern)


def compile_route(cfg: RouteConfig) -> Route:
    c = cfg.cache
    rules = RouteRules(
        heuristic_fraction=c.heuristic_fraction if c.heuristic else None,
        default_swr=c.stale_while_revalidate,
        default_sie=c.stale_if_error,
        max_swr=c.max_stale_while_revalidate,
        max_sie=c.max_stale_if_error,
        stale_overrides_origin=c.stale_overrides_origin,
        default_ttl=c.default_ttl,
        override_ttl=c.override_ttl,
    )
    methods = frozenset(m.upper() for m in cfg.match.methods) if cfg.match.methods else None
    host = cfg.match.host.lower()
    is_glob = any(c in host for c in "*?[")
    return Route(cfg, rules, host, cfg.match.path_prefix, methods, is_glob)


class Router:
    def __init__(self, config: GatewayConfig) -> None:
        self.routes: tuple[Route, ...] = tuple(compile_route(r) for r in config.routes)

    def match(self, host: str, path: str, method: str) -> Route | None:
        """First route whose host glob, path prefix and methods match (host without port)."""
        bare = host_without_port(host).lower()
        for route in self.routes:
            if route.matches(bare, path, method):
                return route
        return None


def host_without_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def tenant_of(
    source: TenantSource | None,
    *,
    host: str,
    path: str,
    query: Any,
    headers: Any,
) -> str:
    """The tenant namespace of a request; an absent or invalid value falls in the default one,
    so a client cannot create namespaces with arbitrary bytes. `query` and `headers` are
    multidicts: a source given twice with different values is a BadRequest, since the origin
    might read the other one and the entry would land in the wrong namespace."""
    if source is None:
        return DEFAULT_TENANT
    value: str | None
    if source.fixed is not None:
        value = source.fixed
    elif source.query is not None:
        value = _one(query.getall(source.query, []), f"query parameter {source.query!r}")
    elif source.header is not None:
        value = _one(headers.getall(source.header, []), f"header {source.header!r}")
    elif source.host_label is not None:
        value = _nth(host_without_port(host).split("."), source.host_label)
    elif source.path_segment is not None:
        value = _nth([unquote(s) for s in path.split("/")[1:]], source.path_segment)
    else:
        value = None
    if value is None or not valid_name(value):
        return DEFAULT_TENANT
    return value


def _one(values: Sequence[str], what: str) -> str | None:
    if len(set(values)) > 1:
        raise BadRequest(f"ambiguous tenant: {what} given with different values")
    return values[0] if values else None


def _nth(parts: Sequence[str], index: int) -> str | None:
    return parts[index] if -len(parts) <= index < len(parts) else None
