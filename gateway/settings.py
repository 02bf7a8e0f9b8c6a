"""The cache-wide settings from the config, one object shared by the cache's parts.

A reload updates it in place, so the filler, the reply builders and the driver all see the new
values for the next request without being rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import CacheConfig


@dataclass(slots=True)
class CacheSettings:
    name: str = "edge"  # in Cache-Status and Via
    max_object_bytes: int = 16 << 20  # the largest body stored; also what one fill may hold
    bust_grace: float = 300.0  # seconds a soft-busted entry may still be served stale
    collapse_timeout: float = 15.0  # seconds a joiner waits for a fill's answer
    pass_ttl: float = 10.0  # seconds a key whose answer could not be shared skips coalescing
    via: str = "1.1 edge"  # what the gateway adds to Via, from `name`

    def update(self, cfg: CacheConfig) -> None:
        self.name = cfg.name
        self.via = f"1.1 {cfg.name}"
        self.max_object_bytes = cfg.memory.max_object_bytes
        self.bust_grace = cfg.bust_grace
        self.collapse_timeout = cfg.collapse_timeout
        self.pass_ttl = cfg.pass_ttl

    @classmethod
    def of(cls, cfg: CacheConfig) -> CacheSettings:
        settings = cls()
        settings.update(cfg)
        return settings
