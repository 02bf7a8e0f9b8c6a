"""Pytest fixtures for real Redis processes (see tests/redis_servers.py). Kept out of
conftest.py so only the modules that need Redis import them:

    from tests.redis_fixtures import redis_cluster, redis_server  # noqa: F401

Without `redis-server` (or `redis-cli`, for the cluster) on PATH the tests that use them are
skipped, saying what is missing, rather than failing on a machine without Redis."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.redis_servers import RedisCluster, RedisServer


def require_executables(*executables: str) -> None:
    """Skip the calling test unless every one of `executables` is on PATH."""
    missing = [name for name in executables if shutil.which(name) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} on PATH (install redis-server / redis-tools)")


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh, empty `redis-server` per test (starting one takes milliseconds), stopped after.
    The test may `kill()` / `restart()` it."""
    require_executables("redis-server")
    server = RedisServer(directory=tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A three-master Redis Cluster shared by the module's tests: creating one and waiting for
    `cluster_state:ok` takes about a second or more, too slow per test. Keys persist between
    tests; call `redis_cluster.flushall()` for a clean start, and do not kill its nodes."""
    require_executables("redis-server", "redis-cli")
    cluster = RedisCluster(directory=tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
