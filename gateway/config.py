"""The YAML routing file, validated into frozen pydantic models.

Every problem is reported at once as `FILE:LINE: FIELD: MESSAGE`: the file is
composed into a node tree first, so validation error locations can be walked
back to the YAML line they came from.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Self, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.canonical import NEVER_FROM_CLIENT
from gateway.units import parse_duration, parse_size

__all__ = [
    "AdminConfig",
    "AdminToken",
    "BreakerConfig",
    "CacheConfig",
    "ConfigError",
    "ConfigIssue",
    "Duration",
    "GatewayConfig",
    "GatewayLoader",
    "Listen",
    "ListenAddress",
    "MatchConfig",
    "MemoryConfig",
    "OriginConfig",
    "RedisConfig",
    "RouteCacheConfig",
    "RouteConfig",
    "Size",
    "TenantConfig",
    "TenantSource",
    "describe_error",
    "load_config",
    "valid_name",
]

Loc = tuple[str | int, ...]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_DEFER_CROSS_CHECKS = "gateway.config.defer_cross_checks"


def valid_name(value: str) -> bool:
    """Tenant and route names: safe in keys, logs and URLs, and bounded in length."""
    return _NAME.match(value) is not None


# ---------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file, located so an operator can jump to it."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if not self.field:
            return f"{where}: {self.message}"
        return f"{where}: {self.field}: {self.message}"


class ConfigError(Exception):
    """The config file could not be loaded; `issues` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


# ---------------------------------------------------------------- field types


class Listen(NamedTuple):
    """A socket address to bind; an empty host means all interfaces, as servers do."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_listen(value: object) -> Listen:
    """Accept `host:port`, `[v6]:port`, `:port` or a bare port number."""
    if isinstance(value, Listen):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        host, port_text = "", str(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"expected '[ipv6]:port', got {value!r}")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"invalid IPv6 address {host!r}") from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError(f"expected 'host:port' or ':port', got {value!r}")
            if ":" in host:
                raise ValueError(f"IPv6 hosts need brackets, e.g. '[::1]:8080', got {value!r}")
    else:
        raise ValueError(f"expected 'host:port', got {type(value).__name__}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port_text!r}")
    return Listen(host or "0.0.0.0", int(port_text))


def _coerce_cache_option(value: object) -> object:
    """`cache: false` turns caching off for a route; `true` or nothing means the defaults."""
    if value is None or value is True:
        return {}
    if value is False:
        return {"enabled": False}
    if isinstance(value, Mapping | BaseModel):
        return value
    raise ValueError(f"expected true, false or a mapping of cache options, got {value!r}")


def _check_name(kind: str) -> AfterValidator:
    def check(value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"invalid {kind} name {value!r} ({_NAME_RULE})")
        return value

    return AfterValidator(check)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
ListenAddress = Annotated[Listen, BeforeValidator(_parse_listen)]
TenantName = Annotated[str, _check_name("tenant")]
RouteName = Annotated[str, _check_name("route")]
PositiveDuration = Annotated[Duration, Field(gt=0)]
NonEmpty = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- models


class AdminToken(_Model):
    """A bearer token for the admin API, limited to some tenants ("*" means all)."""

    name: NonEmpty
    token: NonEmpty = Field(repr=False)
    tenants: list[str] = Field(default_factory=lambda: ["*"])

    @field_validator("tenants")
    @classmethod
    def _tenants_valid(cls, tenants: list[str]) -> list[str]:
        for tenant in tenants:
            if tenant != "*" and not _NAME.match(tenant):
                raise ValueError(f"invalid tenant name {tenant!r} (use '*' or {_NAME_RULE})")
        return tenants


class AdminConfig(_Model):
    """The admin listener; it is off unless `listen` is set."""

    listen: ListenAddress | None = None
    tokens: list[AdminToken] = Field(default_factory=list)
    # Bearer token a Prometheus scrape of /metrics must bear; none: /metrics is open (like
    # /healthz), which is fine on a listener only the monitoring network reaches.
    metrics_token: NonEmpty | None = Field(default=None, repr=False)

    @field_validator("tokens")
    @classmethod
    def _tokens_unique(cls, tokens: list[AdminToken]) -> list[AdminToken]:
        names = [t.name for t in tokens]
        if len(set(names)) != len(names):
            raise ValueError(f"token names must be unique, got {names}")
        if len({t.token for t in tokens}) != len(tokens):
            raise ValueError("two tokens share the same secret")
        return tokens


class MemoryConfig(_Model):
    """The in-process LRU tier."""

    max_bytes: Size = 256 << 20
    max_object_bytes: Size = 16 << 20

    @field_validator("max_object_bytes")
    @classmethod
    def _fits(cls, value: int, info: ValidationInfo) -> int:
        total = info.data.get("max_bytes")
        if total is not None and value > total:
            raise ValueError(f"must not exceed max_bytes ({value} > {total})")
        return value


class CacheConfig(_Model):
    """Cache-wide behaviour shared by all routes."""

    name: str = "edge"
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    cache_bust: str = ""
    bust_grace: Duration = 300.0
    pass_ttl: Duration = 10.0
    collapse_timeout: PositiveDuration = 15.0

    @field_validator("name")
    @classmethod
    def _token(cls, name: str) -> str:
        """The name goes into Cache-Status, so it must be an HTTP token."""
        if not _TOKEN.match(name):
            allowed = "letters, digits, !#$%&'*+.^_`|~-"
            raise ValueError(f"must be an HTTP token ({allowed}), got {name!r}")
        return name

    @field_validator("cache_bust", mode="before")
    @classmethod
    def _bust_from_int(cls, value: object) -> object:
        """`cache_bust: 2` is as natural as `"2"`."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class RedisConfig(_Model):
    """The shared tier and the fleet's control plane; omitted, the gateway is in-memory only.

    Every data command has `timeout` (a slow Redis is a miss, never a slow answer); the
    purge stream's blocking reader waits `block` and has its own longer socket timeout."""

    url: NonEmpty
    cluster: bool = False
    timeout: PositiveDuration = 0.1
    max_connections: int = Field(default=64, ge=1)
    prefix: str = Field(default="gw", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    lease: PositiveDuration = 5.0  # a fleet fill lease; its holder renews it while it fills
    keep_stale: Duration = 60.0  # kept in Redis past the stale windows, for revalidation
    stream_max: int = Field(default=100_000, ge=100)  # purge events kept for late readers
    block: PositiveDuration = 2.0  # the purge stream reader's XREAD BLOCK

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {url!r}")
        return url


class BreakerConfig(_Model):
    """Open the circuit when, within `window`, at least `failures` requests failed and they
    were at least `ratio` of all; let one probe through after `reset`."""

    failures: int = Field(default=5, ge=1)
    ratio: float = Field(default=0.5, gt=0, le=1)
    window: PositiveDuration = 10.0
    reset: PositiveDuration = 10.0


class OriginConfig(_Model):
    """An upstream server; `url` may carry a base path that request paths are appended to."""

    url: str
    connect_timeout: PositiveDuration = 2.0
    read_timeout: PositiveDuration = 30.0  # between two reads
    # Total time waiting on the origin for one fetch, headers and body (0: none), and the
    # lowest average body rate once min_rate_grace has passed (bytes per second, 0: none).
    fetch_timeout: Annotated[Duration, Field(ge=0)] = 60.0
    min_transfer_rate: Annotated[Size, Field(ge=0)] = 1024
    min_rate_grace: Annotated[Duration, Field(ge=0)] = 5.0  # body wait before the rate applies
    # Idle origin connections are reused for at most this long: below the origin's own idle
    # timeout (Node closes after 5 s), or a request races the origin's close.
    idle_timeout: PositiveDuration = 4.0
    # Request bodies up to this size are read whole before they are sent, so that one can be
    # sent again when a kept-alive connection turns out closed; larger ones are streamed.
    replay_body_limit: Annotated[Size, Field(ge=0)] = 64 << 10
    max_connections: int = Field(default=100, ge=1)
    max_concurrency: int = Field(default=64, ge=1)
    max_queue: int = Field(default=1024, ge=0)
    queue_timeout: Duration = 10.0
    background_concurrency: int = Field(default=8, ge=1)
    retries: int = Field(default=1, ge=0, le=10)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    host_header: NonEmpty | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"origin URL must not carry a query, fragment or credentials: {url!r}")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid port in {url!r}: {exc}") from None
        return url


class TenantConfig(_Model):
    """A tenant the operator names: it gets series of its own in the stats (other tenants are
    counted as `other`), and optionally a quota of cached bytes."""

    max_bytes: Size | None = None


class MatchConfig(_Model):
    """Which requests a route takes: a host glob, a path prefix and optionally methods."""

    host: NonEmpty = "*"
    path_prefix: str = "/"
    methods: list[str] | None = None

    @field_validator("path_prefix")
    @classmethod
    def _absolute(cls, prefix: str) -> str:
        if not prefix.startswith("/"):
            raise ValueError(f"must start with '/', got {prefix!r}")
        return prefix

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str] | None) -> list[str] | None:
        if methods is None:
            return None
        if not methods:
            raise ValueError("must list at least one method (or be omitted for all)")
        for method in methods:
            if not _TOKEN.match(method):
                raise ValueError(f"invalid method {method!r}")
        return [m.upper() for m in methods]


_TENANT_SOURCES = ("query", "header", "host_label", "path_segment", "fixed")


class TenantSource(_Model):
    """Where a request's tenant comes from; exactly one source is set."""

    query: NonEmpty | None = None
    header: NonEmpty | None = None
    host_label: int | None = None
    path_segment: int | None = None
    fixed: TenantName | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [name for name in _TENANT_SOURCES if getattr(self, name) is not None]
        if len(chosen) != 1:
            got = ", ".join(chosen) or "none"
            raise ValueError(f"set exactly one of {', '.join(_TENANT_SOURCES)} (got: {got})")
        return self


class RouteCacheConfig(_Model):
    """Per-route caching knobs; `cache: false` in YAML means `enabled=False`."""

    enabled: bool = True
    ignore_query: list[NonEmpty] = Field(default_factory=list)
    # Client request fields a fill forwards; each becomes part of the key (like a Vary the
    # origin did not have to send). Nothing else the client sends reaches a shared fill.
    forward_headers: list[str] = Field(default_factory=list)
    # Also send the client's other end-to-end fields, outside the key (never the gateway's own
    # or the override fields): classic CDN behaviour, safe only with an origin whose Vary names
    # every request field it uses. Off: nothing unkeyed reaches a shared fill.
    forward_unkeyed: bool = False
    # What a client's `no-cache` / `max-age=0` / `Pragma: no-cache` does: `honor` revalidates
    # each time, `coalesce` at most once per key per second (concurrent ones share it),
    # `ignore` serves from the cache as if it were absent.
    client_no_cache: Literal["honor", "coalesce", "ignore"] = "coalesce"
    # Route stale windows apply even where s-maxage implies proxy-revalidate (CDN-style grace).
    stale_overrides_origin: bool = False
    heuristic: bool = False
    heuristic_fraction: float = Field(default=0.1, gt=0, le=1)
    stale_while_revalidate: Duration = 0.0
    stale_if_error: Duration = 0.0
    max_stale_while_revalidate: Duration | None = None
    max_stale_if_error: Duration | None = None
    keep_tags: bool = False
    # Lifetime for storable responses without explicit expiration (nginx proxy_cache_valid): the
    # operator's heuristic (RFC 9111 4.2.2); explicit s-maxage / max-age / Expires still win.
    default_ttl: Duration | None = None
    # Lifetime for every storable response, whatever the origin says (Varnish beresp.ttl): a
    # deliberate departure from RFC 9111 4.2.1. Never makes storable what RFC 9111 3 refuses.
    override_ttl: Duration | None = None

    @model_validator(mode="after")
    def _one_ttl(self) -> Self:
        if self.default_ttl is not None and self.override_ttl is not None:
            raise ValueError(
                "set default_ttl or override_ttl, not both: override_ttl sets every lifetime"
            )
        return self

    @field_validator("forward_headers")
    @classmethod
    def _forwardable(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _TOKEN.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in NEVER_FROM_CLIENT:
                raise ValueError(f"{name!r} is set by the gateway on a fill, not forwarded")
        return [n.lower() for n in names]


class RouteConfig(_Model):
    """One routing rule; the first route that matches a request wins."""

    name: RouteName
    match: MatchConfig = Field(default_factory=MatchConfig)
    origin: str
    tenant: TenantSource | None = None
    cache: RouteCacheConfig = Field(default_factory=RouteCacheConfig)
    preserve_host: bool = False

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_flag(cls, value: object) -> object:
        return _coerce_cache_option(value)


class GatewayConfig(_Model):
    """The whole gateway: listeners, the cache, origins, tenant quotas and routes."""

    listen: ListenAddress = Listen("127.0.0.1", 8080)
    listen_backlog: int = Field(default=1024, ge=1)
    client_body_timeout: PositiveDuration = 30.0
    # The whole request head must arrive within this of its first byte (or of the accept).
    client_header_timeout: PositiveDuration = 10.0
    keepalive_timeout: PositiveDuration = 60.0  # idle client connections
    max_connections: int = Field(default=4096, ge=1)  # client connections open at once
    # The client-facing HTTP/1.1 layer: aiohttp's server, or the native protocol on httptools
    # (llhttp) that costs a third of it per cache hit (docs/architecture.md, issue 12).
    server: Literal["aiohttp", "native"] = "native"
    admin: AdminConfig = Field(default_factory=AdminConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    redis: RedisConfig | None = None
    workers: int = Field(default=1, ge=1, le=256)  # processes sharing the listen ports
    # One line per public request on stdout: JSON, nginx's combined (+ cache status), or none.
    access_log: Literal["json", "combined", "off"] = "json"
    origins: dict[str, OriginConfig] = Field(default_factory=dict)
    tenants: dict[TenantName, TenantConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    source_path: str | None = None

    @field_validator("access_log", mode="before")
    @classmethod
    def _access_log_off(cls, value: object) -> object:
        return "off" if value is False else value  # `access_log: false` reads as off

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Self:
        if info.context and info.context.get(_DEFER_CROSS_CHECKS):
            return self
        problems = _cross_check(self.model_dump())
        if problems:
            raise ValueError("; ".join(f"{_field(loc)}: {msg}" for loc, msg in problems))
        return self

    def tenant_quota(self, tenant: str) -> int | None:
        """The byte quota for `tenant`, falling back to the `default` tenant's."""
        for name in (tenant, "default"):
            found = self.tenants.get(name)
            if found is not None and found.max_bytes is not None:
                return found.max_bytes
        return None


def _cross_check(data: object) -> list[tuple[Loc, str]]:
    """Checks that span sections; works on raw data too, so they run beside field errors."""
    if not isinstance(data, Mapping):
        return []
    problems: list[tuple[Loc, str]] = []
    workers = data.get("workers", 1)
    if isinstance(workers, int) and workers > 1 and data.get("redis") is None:
        problems.append((
            ("workers",),
            "workers above 1 needs `redis:`: without a shared tier every worker would fetch"
            " each cold key again and a purge would reach only the worker that took it",
        ))
    origins = data.get("origins", {})
    known = sorted(str(k) for k in origins) if isinstance(origins, Mapping) else None
    routes = data.get("routes", [])
    first_seen: dict[str, int] = {}
    for i, route in enumerate(routes if isinstance(routes, list) else []):
        if not isinstance(route, Mapping):
            continue
        name, origin = route.get("name"), route.get("origin")
        if isinstance(name, str):
            if name in first_seen:
                where = f"routes[{first_seen[name]}]"
                problems.append((("routes", i, "name"), f"duplicate route name {name!r} ({where})"))
            first_seen.setdefault(name, i)
        if known is not None and isinstance(origin, str) and origin not in known:
            listed = ", ".join(known) or "none"
            problems.append(
                (("routes", i, "origin"), f"unknown origin {origin!r} (known: {listed})")
            )
    return problems


# ---------------------------------------------------------------- YAML loading


class GatewayLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 surprises: duplicate keys are errors, `on/off/yes/no`
    stay strings (think `country: NO`), and `1:30` or `010` are not sexagesimal or octal."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        duplicates = _duplicate_keys(node)
        if duplicates:
            key_node = duplicates[0][0]
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


_RESOLVED = {f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float")}
GatewayLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _RESOLVED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
GatewayLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
GatewayLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[01_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
GatewayLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _duplicate_keys(node: MappingNode) -> list[tuple[ScalarNode, ScalarNode]]:
    """(duplicate, first) scalar key pairs of one mapping, ignoring `<<` merge keys."""
    seen: dict[tuple[str, str], ScalarNode] = {}
    found = []
    for key_node, _ in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            found.append((key_node, seen[ident]))
        seen.setdefault(ident, key_node)
    return found


# C0 controls but tab and newline (block scalars may hold several lines), DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ENV_REF = re.compile(r"\$(?:\$|\{([^}]*)\}|\{)")
_ENV_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _expand(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Shell-style `${VAR}` / `${VAR:-default}` (default when unset or empty); `$$` is `$`."""
    errors: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        ref = match.group(0)
        if ref == "$$":
            return "$"
        inner = match.group(1)
        parsed = _ENV_NAME.fullmatch(inner) if inner is not None else None
        if parsed is None:
            errors.append(f"invalid variable reference {ref!r} (use ${{VAR}} or ${{VAR:-default}})")
            return ref
        name, default = parsed.groups()
        value = env.get(name)
        if default is not None and not value:
            return default
        if value is None:
            errors.append(
                f"environment variable {name} is not set (use ${{{name}:-default}} for a default)"
            )
            return ref
        return value

    return _ENV_REF.sub(substitute, text), errors


def _prepare(node: Node, env: Mapping[str, str], file: str) -> list[ConfigIssue]:
    """Walk the node tree once: report duplicate keys and expand env refs in string values."""
    issues: list[ConfigIssue] = []
    visited: set[int] = set()

    def walk(node: Node, loc: Loc) -> None:
        if id(node) in visited:
            return
        visited.add(id(node))
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:str":
            node.value, errors = _expand(node.value, env)
            if _CONTROL.search(node.value):  # "\0" escapes, or an environment value
                errors.append("control characters are not allowed in a value")
            issues.extend(ConfigIssue(file, _line(node), _field(loc), e) for e in errors)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))
        elif isinstance(node, MappingNode):
            for dup, first in _duplicate_keys(node):
                message = f"duplicate key {dup.value!r} (first defined on line {_line(first)})"
                issues.append(ConfigIssue(file, _line(dup), _field((*loc, dup.value)), message))
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, ScalarNode) else "?"
                walk(value_node, (*loc, key))

    walk(node, ())
    return issues


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _line_at(root: Node | None, loc: Loc) -> int | None:
    """The YAML line for a validation error: as deep along `loc` as the document goes."""
    if root is None:
        return None
    node, line = root, _line(root)
    for part in loc:
        if isinstance(node, MappingNode):
            key = str(part)
            found = [(k, v) for k, v in node.value if isinstance(k, ScalarNode) and k.value == key]
            if not found:
                break
            key_node, node = found[-1]
            line = _line(key_node)
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = _line(node)
        else:
            break
    return line


def _field(loc: Loc) -> str:
    """`("routes", 0, "origin")` -> `routes[0].origin`."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _model_at(loc: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class at `loc` under `root`, to suggest field names for a typo."""
    tp: Any = root
    for part in (*loc, None):
        while get_origin(tp) in (Annotated, Union, types.UnionType):
            tp = next(a for a in get_args(tp) if a is not type(None))
        if part is None:
            break
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            tp = field.annotation if field else None
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def describe_error(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    """`field.path: message` for one pydantic error of a `root` model (the admin API's bodies
    share the config file's wording)."""
    message = _message(error, root)
    field = _field(tuple(error["loc"]))
    return f"{field}: {message}" if field else message


def _message(error: Mapping[str, Any], root: type[BaseModel] = GatewayConfig) -> str:
    """Pydantic's error text, reworded where it would otherwise say little."""
    kind, loc, given = error["type"], error["loc"], error.get("input")
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        name = str(loc[-1])
        model = _model_at(loc[:-1], root)
        close = difflib.get_close_matches(name, list(model.model_fields) if model else [], 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown field {name!r}{hint}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {type(given).__name__}"
    if kind == "list_type":
        return f"expected a list, got {type(given).__name__}"
    if kind in ("value_error", "assertion_error") and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    message = str(error["msg"])
    if isinstance(given, str | int | float | bool) or given is None:
        message += f" (got {given!r})"
    return message


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, expand and validate a gateway config file; raise ConfigError listing every issue."""
    file = str(path)
    environ = os.environ if env is None else env
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigIssue(file, None, "", f"cannot read config: {reason}")]) from None

    loader: GatewayLoader | None = None
    try:
        loader = GatewayLoader(text)  # rejects characters YAML does not allow, such as NUL
        root = loader.get_single_node()
        issues = _prepare(root, environ, file) if root is not None else []
        if any(i.message.startswith("duplicate key") for i in issues):
            raise ConfigError(issues)
        data = loader.construct_document(root) if root is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        context = exc.context or ""
        if context and exc.context_mark is not None and exc.context_mark.line + 1 != line:
            context += f" started on line {exc.context_mark.line + 1}"
        what = ": ".join(p for p in (context, exc.problem) if p)
        raise ConfigError([ConfigIssue(file, line, "", f"invalid YAML: {what}")]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        code = char if isinstance(char, int) else ord(char[:1] or "\0")
        message = f"invalid YAML: character U+{code:04X} is not allowed"
        raise ConfigError([ConfigIssue(file, line, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"invalid YAML: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()

    reported = {issue.field for issue in issues}
    found: list[tuple[Loc, str]] = []
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(data, context={_DEFER_CROSS_CHECKS: True})
    except ValidationError as exc:
        found += [(tuple(e["loc"]), _message(e)) for e in exc.errors()]
    found += _cross_check(data)
    if isinstance(data, Mapping) and not data.get("routes"):
        found.append((("routes",), "at least one route is needed, or every request is a 404"))
    for loc, message in found:
        if _field(loc) not in reported:
            issues.append(ConfigIssue(file, _line_at(root, loc), _field(loc), message))
    if issues or config is None:
        issues.sort(key=lambda i: (i.line or 0, i.field))
        raise ConfigError(issues)
    return config.model_copy(update={"source_path": file})


# The admin token of the demo routing files (config/gateway.yaml, config/fleet.yaml) when
# GATEWAY_ADMIN_TOKEN is unset. The README prints it, so it is no secret: an admin listener
# that accepts it is open to anyone who can reach it.
DEMO_ADMIN_TOKEN = "dev-admin-token"


def demo_token_refusal(config: GatewayConfig, *, demo: bool) -> str | None:
    """Why the admin listener must not start, or None: one of its tokens is the published demo
    token and this start did not say it is the demo (`--demo`, which scripts/demo.sh passes).

    Checked when the process starts its listeners, not when the file is parsed: the file is
    valid either way (the tests and `--check` read the demo file as it is), and only the way
    the gateway is started says whether it is the demo. A flag rather than an environment
    variable, so that it is seen on the command line (and in `ps`), and cannot be inherited
    by accident from a shell or an image. A reload that would bring the token in is refused
    the same way (`Gateway.reload`)."""
    if demo or config.admin.listen is None:  # without a listener, the tokens admit nobody
        return None
    for token in config.admin.tokens:
        if token.token.strip() == DEMO_ADMIN_TOKEN:
            return (
                f"admin token {token.name!r} is the demo token {DEMO_ADMIN_TOKEN!r}, which anyone"
                " can read in the README: refusing to start the admin listener with it; give it"
                " a secret of your own (the demo files read GATEWAY_ADMIN_TOKEN), or pass --demo"
                " to run the demo"
            )
    return None
