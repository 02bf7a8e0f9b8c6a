"""The memory tier's consistency, checked from the outside (tests, debugging): every index,
byte count and admission space against the entries themselves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.store import Entry, site_of

if TYPE_CHECKING:
    from gateway.store.memory import MemoryStore, _Tenant


def problems(store: MemoryStore) -> list[str]:
    """How the store's indexes, byte counts and spaces disagree with its entries."""
    found: list[str] = []
    tenants, lru = store._tenants, store._lru
    if store._bytes != sum(t.bytes for t in tenants.values()):
        found.append("total bytes != sum of the tenants' bytes")
    if store._bytes > store.max_bytes:
        found.append("total bytes over max_bytes")
    sizes: dict[str, int] = {}
    for name, t in tenants.items():
        found += _tenant_problems(name, t, lru)
        sizes.update(t.keys)
    if set(sizes) != set(lru):
        found.append("tenant key sets != entries")
    spaces = {id(t.space): t.space for t in tenants.values() if t.space is not None}
    spaces[id(store._shared)] = store._shared
    admitted: dict[str, int] = {}
    for space in spaces.values():
        found += space.check()
        held = {**space.window, **space.probation, **space.protected}
        if len(admitted) + len(held) != len(admitted | held):
            found.append("a key admitted to two spaces")
        admitted |= held
    if admitted != sizes:
        found.append("the spaces' keys and sizes != the entries' and their charges")
    if any(k not in store._space_holding(tenants[e.tenant], k) for k, e in lru.items()):
        found.append("an entry outside its tenant's space and the shared one")
    vary_keys = {k for held in store._vary_by_tenant.values() for k in held}
    if vary_keys != set(store._vary) or any(not s for s in store._vary_by_tenant.values()):
        found.append("vary tenant index != vary records")
    if store._vary_bytes != sum(store._vary_cost(k, v) for k, v in store._vary.items()):
        found.append("vary bytes mismatch")
    return found


def _tenant_problems(name: str, t: _Tenant, lru: Mapping[str, Entry]) -> list[str]:
    """How a tenant's indexes disagree with its entries."""
    problems = []
    entries = {k: lru[k] for k in t.keys if k in lru}
    if not t.keys:
        problems.append(f"tenant {name!r} kept without entries")
    if any(e.tenant != name for e in entries.values()):
        problems.append(f"tenant {name!r} indexes another tenant's key")
    if t.bytes != sum(t.keys.values()):
        problems.append(f"tenant {name!r} bytes mismatch")
    if Counter(site_of(e.url) for e in entries.values()) != t.sites:
        problems.append(f"tenant {name!r} sites != its entries' sites")
    by_url: dict[str, set[str]] = {}
    by_tag: dict[str, set[str]] = {}
    for key, e in entries.items():
        by_url.setdefault(e.url, set()).add(key)
        for tag in e.tags:
            by_tag.setdefault(tag, set()).add(key)
    if set(t.urls) != set(by_url) or len(t.urls) != len(by_url):
        problems.append(f"tenant {name!r} sorted urls != its entries' urls")
    if {url: set(t.url_keys(url)) for url in t.by_url} != by_url or any(
        not isinstance(held, str) and len(held) < 2 for held in t.by_url.values()
    ):
        problems.append(f"tenant {name!r} url index != its entries' urls")
    if {tag: set(keys) for tag, keys in t.by_tag.items()} != by_tag:
        problems.append(f"tenant {name!r} tag index != its entries' tags")
    return problems
