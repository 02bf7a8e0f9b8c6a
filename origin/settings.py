"""Configuration for the demo loader origin.

One dataclass shared by the CLI and by tests that build the app in-process, so both
paths exercise exactly the same knobs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OriginSettings:
    """Knobs of the origin; defaults mirror the CLI defaults."""

    host: str = "127.0.0.1"
    port: int = 9000
    # None means: a fresh SQLite file in a private temp directory, removed on shutdown.
    db: str | None = None
    projects: int = 100
    codegen_seconds: float = 2.0
    s_maxage: int = 30
    swr: int = 60
    pool_size: int = 15
    # Simulated per-query round-trip to a networked database, paid in the worker thread.
    db_latency_seconds: float = 0.002
    # Gateway admin API to soft-bust after a publish; the CLI falls back to env vars.
    gateway_admin: str | None = None
    gateway_token: str | None = None
    gateway_timeout_seconds: float = 2.0

    def __post_init__(self) -> None:
        """Reject values that would make the origin misbehave silently."""
        if self.projects < 0:
            raise ValueError("projects must be >= 0")
        if self.pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        if self.codegen_seconds < 0 or self.db_latency_seconds < 0:
            raise ValueError("codegen_seconds and db_latency_seconds must be >= 0")
        if self.s_maxage < 0 or self.swr < 0:
            raise ValueError("s_maxage and swr must be >= 0")

    def published_cache_control(self) -> str:
        """Cache-Control for the mutable 'published' bundle; swr=0 drops the directive."""
        value = f"public, s-maxage={self.s_maxage}"
        if self.swr > 0:
            value += f", stale-while-revalidate={self.swr}"
        return value
