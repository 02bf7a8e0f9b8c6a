"""Where a request lands in the cache: its key URL, tenant, keys, and what a fill for it sends.

Normalising a URL costs more than the rest of a hit, so `Locator` remembers where recent
(route, target) pairs land; it is cleared when the routes change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.canonical import Target, fill_fields, keyed_url, query_values
from gateway.exchange import Incoming
from gateway.gcwatch import untracked
from gateway.generations import Generations
from gateway.key import primary_key, secondary_key
from gateway.router import DEFAULT_TENANT, Route, tenant_of

URL_MEMORY = 4096  # (route, target) -> normalised URL and tenant, remembered for hits
URL_MEMORY_TARGET = 1024  # longer request targets are normalised each time, not remembered


@dataclass(frozen=True, slots=True)
class Located:
    """Where a target lands on a route: the key's URL, what a fill sends as path and query, and
    the tenant (None when it comes from a header, which the target does not determine)."""

    url: str
    path_qs: str
    tenant: str | None


@dataclass(slots=True)
class Lookup:
    """One request's place in the cache, and the canonical request a fill for it sends.

    `names` are what the key varies on (the route's forward_headers and the stored Vary);
    `fields` are the client-derived fields a fill sends, all of them in the key. `alone`: the
    request carries credentials, so it never shares a fill (RFC 9111 3.5).
    """

    req: Incoming
    route: Route
    tenant: str
    url: str
    path_qs: str
    primary: str
    tenant_field: tuple[str, str] | None = None
    names: tuple[str, ...] = ()
    key: str = ""
    alone: bool = False
    _fields: dict[str, str] | None = None

    def vary_on(self, names: Iterable[str]) -> str:
        """Set the key for a key varying on `names` (plus the route's forward_headers);
        returns the key. The fill's fields are worked out only when they are needed: a hit on
        a key that varies on nothing never needs them."""
        self.names = self.key_names(names)
        self._fields = None
        self.key = self.key_for(self.names, self.fields) if self.names else self.primary
        return self.key

    @property
    def fields(self) -> dict[str, str]:
        """The client-derived fields a fill for this key sends, all of them in the key."""
        if self._fields is None:
            self._fields = self.fields_for(self.names)
        return self._fields

    def fields_for(self, names: tuple[str, ...]) -> dict[str, str]:
        """What a fill for a key varying on `names` sends; with `forward_unkeyed`, every other
        end-to-end field of the client's too (so a Vary the origin reveals is keyed on what
        it was actually sent)."""
        if self.route.cfg.cache.forward_unkeyed:
            names = (*names, *(name.lower() for name, _ in self.req.headers.items()))
        return fill_fields(self.req.headers, names, self.tenant_field)

    def key_for(self, names: tuple[str, ...], fields: dict[str, str]) -> str:
        return self.primary + "#" + secondary_key(names, fields) if names else self.primary

    def key_names(self, vary: Iterable[str]) -> tuple[str, ...]:
        """What a key on this route varies on: its forward_headers and a response's Vary."""
        return tuple(sorted({*self.route.forward_headers, *vary}))

    def answered_by(self, key: str, vary: tuple[str, ...]) -> bool:
        """Does an entry stored under `key`, varying on `vary`, answer this request? Not when
        it varies on a field this request has and the fill did not send."""
        names = self.key_names(vary)
        if names == self.names:
            return key == self.key
        return key == self.key_for(names, self.fields_for(names))


class Locator:
    def __init__(self, generations: Generations) -> None:
        self.generations = generations
        self.memory: dict[tuple[str, Target], Located] = {}

    def forget(self) -> None:
        """Routes changed: a route name may now stand for other rules."""
        self.memory.clear()

    def locate(self, req: Incoming, route: Route) -> Lookup:
        """The request's key URL, tenant and primary key on this route, from its target."""
        target = req.target
        memo_key = (route.name, target)
        known = self.memory.get(memo_key)
        if known is None:
            known = located(target, route)
            if len(target.path) + len(target.query or "") <= URL_MEMORY_TARGET:
                if len(self.memory) >= URL_MEMORY:
                    del self.memory[next(iter(self.memory))]  # the oldest goes
                # Records of strings, which no collection need walk (one holding a record
                # the collector cannot tell apart from one that may form a cycle).
                untracked(target)
                self.memory[untracked(memo_key)] = untracked(known)
        tenant, tenant_field = known.tenant, None
        if tenant is None:  # from a header: the validated value is sent, nothing else
            source = route.cfg.tenant
            assert source is not None and source.header is not None
            tenant = tenant_of(source, host="", path="", query={}, headers=req.headers)
            tenant_field = (source.header, tenant) if tenant != DEFAULT_TENANT else None
        generation = self.generations.key_part(tenant)
        return Lookup(
            req,
            route,
            tenant,
            known.url,
            known.path_qs,
            primary_key(tenant, generation, "GET", known.url),
            tenant_field=tenant_field,
            alone="authorization" in req.headers,
        )


def located(target: Target, route: Route) -> Located:
    """Where a target lands on a route (see `Locator`, which remembers it)."""
    url, path_qs = keyed_url(target, route.cfg.cache.ignore_query)
    query = path_qs.partition("?")[2]
    source = route.cfg.tenant
    if source is not None and source.header is not None:
        return Located(url, path_qs, None)
    tenant = tenant_of(
        source, host=target.hostname, path=target.path, query=query_values(query), headers={}
    )
    return Located(url, path_qs, tenant)
