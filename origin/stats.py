"""Request counters and injectable faults.

Tests and benchmarks read these to prove what reached the origin (how many requests,
how many codegen runs, peak concurrency), and flip faults to exercise the gateway's
stale-if-error, retry and circuit-breaker paths.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from origin.db import PoolCounters


@dataclass
class Stats:
    """Counters for requests that reached the origin's real endpoints."""

    requests_total: int = 0
    requests_by_path: Counter[str] = field(default_factory=Counter)
    requests_by_method: Counter[str] = field(default_factory=Counter)
    responses_by_status: Counter[str] = field(default_factory=Counter)
    codegen_runs: int = 0
    not_modified: int = 0
    faults_injected: int = 0
    in_flight: int = 0
    in_flight_max: int = 0
    gateway_notifications: int = 0
    started_at: float = field(default_factory=time.time)

    def request_started(self, method: str, raw_path: str) -> None:
        """Count a request before any fault or handler work happens."""
        self.requests_total += 1
        self.requests_by_path[raw_path] += 1
        self.requests_by_method[method] += 1
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)

    def request_finished(self, status: int | None) -> None:
        """Close the in-flight window; status None means the connection was dropped."""
        self.in_flight -= 1
        self.responses_by_status["dropped" if status is None else str(status)] += 1

    def codegen_ran(self) -> None:
        """Called by the code generator on every cold (expensive) build."""
        self.codegen_runs += 1

    def reset(self) -> None:
        """Zero everything; in-flight is a gauge, so it and its max keep the live value."""
        in_flight = self.in_flight
        fresh = Stats(in_flight=in_flight, in_flight_max=in_flight)
        self.__dict__.update(fresh.__dict__)

    def snapshot(self, pool: PoolCounters) -> dict[str, Any]:
        """JSON-ready view merged with the DB pool counters."""
        return {
            "requests_total": self.requests_total,
            "requests_by_path": dict(self.requests_by_path),
            "requests_by_method": dict(self.requests_by_method),
            "responses_by_status": dict(self.responses_by_status),
            "codegen_runs": self.codegen_runs,
            "not_modified": self.not_modified,
            "faults_injected": self.faults_injected,
            "in_flight": self.in_flight,
            "in_flight_max": self.in_flight_max,
            "gateway_notifications": self.gateway_notifications,
            "db_queries": pool.queries,
            "db_pool_in_use": pool.in_use,
            "db_pool_in_use_max": pool.in_use_max,
            "db_pool_waits": pool.waits,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }


class FaultError(ValueError):
    """A /__faults payload that cannot be applied."""


MAX_DELAY_SECONDS = 300.0


def _number(key: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultError(f"{key} must be a number")
    if not low <= value <= high:
        raise FaultError(f"{key} must be between {low} and {high}")
    return float(value)


@dataclass
class Faults:
    """Current fault injection; all-default means a healthy origin."""

    delay_seconds: float = 0.0
    status: int | None = None
    fail_rate: float = 0.0
    drop: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)

    def update(self, payload: object) -> None:
        """Apply a partial update atomically; raises FaultError and changes nothing if bad."""
        if not isinstance(payload, dict):
            raise FaultError("body must be a JSON object")
        allowed = {"delay_seconds", "status", "fail_rate", "drop", "reset"}
        unknown = sorted(set(payload) - allowed)
        if unknown:
            raise FaultError(f"unknown keys: {', '.join(unknown)}")
        reset = payload.get("reset", False)
        if not isinstance(reset, bool):
            raise FaultError("reset must be a boolean")
        new = Faults() if reset else Faults(**self.as_dict())
        if "delay_seconds" in payload:
            new.delay_seconds = _number(
                "delay_seconds", payload["delay_seconds"], 0.0, MAX_DELAY_SECONDS
            )
        if "fail_rate" in payload:
            new.fail_rate = _number("fail_rate", payload["fail_rate"], 0.0, 1.0)
        if "status" in payload:
            status = payload["status"]
            if status is not None and (
                isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599
            ):
                raise FaultError("status must be null or an integer 400..599")
            new.status = status
        if "drop" in payload:
            if not isinstance(payload["drop"], bool):
                raise FaultError("drop must be a boolean")
            new.drop = payload["drop"]
        self.__dict__.update(new.__dict__)

    def should_fail(self, rng: random.Random) -> bool:
        """Decide whether this request fails: fail_rate > 0 samples, otherwise all fail."""
        if self.status is None and not self.drop and self.fail_rate == 0:
            return False
        if self.fail_rate > 0:
            return rng.random() < self.fail_rate
        return True

    @property
    def failure_status(self) -> int:
        """Status for injected failures (500 unless one was configured)."""
        return self.status if self.status is not None else 500
