"""SQLite storage behind a bounded async connection pool.

The pool is deliberately small and observable: a caching gateway in front of this origin
is supposed to keep it from being exhausted, and the benchmarks read the pool counters
(max checked out, waits, queries) to prove it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    project_id TEXT NOT NULL REFERENCES projects(id),
    n INTEGER NOT NULL,
    published_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (project_id, n)
);
"""


class ProjectNotFound(LookupError):
    """The project id does not exist."""


class VersionNotFound(LookupError):
    """The project exists but has no such published version."""


@dataclass(frozen=True)
class VersionInfo:
    """One published version of a project, as the bundle generator needs it."""

    project_id: str
    project_name: str
    n: int
    published_at: int
    source: str


@dataclass
class PoolCounters:
    """Observable pool behaviour; reset by /__stats/reset."""

    in_use: int = 0
    in_use_max: int = 0
    waits: int = 0
    queries: int = 0


class ConnectionPool:
    """A fixed set of sqlite3 connections handed out one task at a time.

    Work runs in a thread while the task holds its slot, so the number of concurrent DB
    users never exceeds ``size`` and excess callers queue. The pool owns an executor of
    exactly ``size`` threads so the (CPU-sized) default executor is never the bottleneck.
    """

    def __init__(self, size: int, latency_seconds: float) -> None:
        self.size = size
        self.latency_seconds = latency_seconds
        self.counters = PoolCounters()
        self._idle: asyncio.Queue[sqlite3.Connection] = asyncio.Queue()
        self._all: list[sqlite3.Connection] = []
        self._query_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def open(self, path: str) -> None:
        """Create the connections and worker threads (blocking; call from a thread)."""
        self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="origin-db")
        for _ in range(self.size):
            conn = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA foreign_keys = ON")
            self._all.append(conn)
            self._idle.put_nowait(conn)
        if self._all:
            self._all[0].execute("PRAGMA journal_mode = WAL")

    def close(self) -> None:
        """Stop the workers (letting queued work finish), then close every connection."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for conn in self._all:
            conn.close()
        self._all.clear()

    def reset_counters(self) -> None:
        """Zero the counters; the max restarts from what is checked out right now."""
        in_use = self.counters.in_use
        self.counters = PoolCounters(in_use=in_use, in_use_max=in_use)

    def query(
        self, conn: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()
    ) -> list[sqlite3.Row]:
        """Run one statement (in the worker thread), paying the simulated network latency."""
        with self._query_lock:
            self.counters.queries += 1
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        return list(conn.execute(sql, params).fetchall())

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Check out a connection, run ``work`` with it in a thread, and give it back."""
        if self._idle.empty():
            self.counters.waits += 1
        conn = await self._idle.get()
        self.counters.in_use += 1
        self.counters.in_use_max = max(self.counters.in_use_max, self.counters.in_use)
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(loop.run_in_executor(self._executor, work, conn))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                # The thread still owns the connection; hand it back only when it finishes.
                task.add_done_callback(lambda _t: self._release(conn))
            raise
        finally:
            if task.done():
                self._release(conn)

    def _release(self, conn: sqlite3.Connection) -> None:
        self.counters.in_use -= 1
        self._idle.put_nowait(conn)


def _new_source(project_id: str, n: int) -> str:
    """A small 'page definition' for a version; the bundle is generated from it."""
    return json.dumps(
        {
            "project": project_id,
            "version": n,
            "salt": secrets.token_hex(8),
            "components": 20 + secrets.randbelow(20),
        },
        sort_keys=True,
    )


class Database:
    """Projects and versions, seeded on open, accessed only through the pool."""

    def __init__(self, path: str | None, pool_size: int, latency_seconds: float) -> None:
        self.path = path
        self._tmpdir: str | None = None
        self.pool = ConnectionPool(pool_size, latency_seconds)

    async def open(self, projects: int) -> None:
        """Create the pool, the schema and any missing seed projects p1..pN."""
        if self.path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="edge-origin-")
            self.path = str(Path(self._tmpdir) / "origin.db")
        await asyncio.to_thread(self.pool.open, self.path)
        await self.pool.run(lambda conn: self._seed(conn, projects))
        self.pool.reset_counters()

    async def close(self) -> None:
        """Close connections and remove the private temp DB, if we created one."""
        await asyncio.to_thread(self.pool.close)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self.path = None

    @staticmethod
    def _seed(conn: sqlite3.Connection, projects: int) -> None:
        conn.executescript(SCHEMA)
        now = int(time.time())
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i in range(1, projects + 1):
                pid = f"p{i}"
                conn.execute(
                    "INSERT OR IGNORE INTO projects (id, name, created_at) VALUES (?, ?, ?)",
                    (pid, f"Project {i}", now),
                )
                conn.execute(
                    "INSERT OR IGNORE INTO versions (project_id, n, published_at, source)"
                    " VALUES (?, 1, ?, ?)",
                    (pid, now, _new_source(pid, 1)),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _project_name(self, conn: sqlite3.Connection, project_id: str) -> str:
        rows = self.pool.query(conn, "SELECT name FROM projects WHERE id = ?", (project_id,))
        if not rows:
            raise ProjectNotFound(f"unknown project {project_id!r}")
        return str(rows[0][0])

    async def latest_published(self, project_id: str) -> VersionInfo:
        """Resolve the newest published version (project lookup + version query)."""

        def work(conn: sqlite3.Connection) -> VersionInfo:
            name = self._project_name(conn, project_id)
            rows = self.pool.query(
                conn,
                "SELECT n, published_at, source FROM versions WHERE project_id = ?"
                " ORDER BY n DESC LIMIT 1",
                (project_id,),
            )
            if not rows:
                raise VersionNotFound(f"project {project_id!r} has no published version")
            n, published_at, source = rows[0]
            return VersionInfo(project_id, name, int(n), int(published_at), str(source))

        return await self.pool.run(work)

    async def version(self, project_id: str, n: int) -> VersionInfo:
        """Fetch one specific published version."""

        def work(conn: sqlite3.Connection) -> VersionInfo:
            name = self._project_name(conn, project_id)
            rows = self.pool.query(
                conn,
                "SELECT published_at, source FROM versions WHERE project_id = ? AND n = ?",
                (project_id, n),
            )
            if not rows:
                raise VersionNotFound(f"project {project_id!r} has no version {n}")
            published_at, source = rows[0]
            return VersionInfo(project_id, name, n, int(published_at), str(source))

        return await self.pool.run(work)

    async def publish(self, project_id: str) -> VersionInfo:
        """Atomically create version N+1; its publish time is strictly after N's."""

        def work(conn: sqlite3.Connection) -> VersionInfo:
            conn.execute("BEGIN IMMEDIATE")
            try:
                name = self._project_name(conn, project_id)
                rows = self.pool.query(
                    conn,
                    "SELECT COALESCE(MAX(n), 0), COALESCE(MAX(published_at), 0)"
                    " FROM versions WHERE project_id = ?",
                    (project_id,),
                )
                last_n, last_at = int(rows[0][0]), int(rows[0][1])
                info = VersionInfo(
                    project_id,
                    name,
                    last_n + 1,
                    max(int(time.time()), last_at + 1),
                    _new_source(project_id, last_n + 1),
                )
                self.pool.query(
                    conn,
                    "INSERT INTO versions (project_id, n, published_at, source)"
                    " VALUES (?, ?, ?, ?)",
                    (info.project_id, info.n, info.published_at, info.source),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return info

        return await self.pool.run(work)

    async def project_rows(self, limit: int) -> list[dict[str, object]]:
        """Rows for the data-source endpoint: projects with their latest version."""

        def work(conn: sqlite3.Connection) -> list[dict[str, object]]:
            rows = self.pool.query(
                conn,
                "SELECT p.id, p.name, MAX(v.n), MAX(v.published_at) FROM projects p"
                " JOIN versions v ON v.project_id = p.id"
                " GROUP BY p.id ORDER BY p.rowid LIMIT ?",
                (limit,),
            )
            return [
                {"projectId": r[0], "name": r[1], "latestVersion": r[2], "publishedAt": r[3]}
                for r in rows
            ]

        return await self.pool.run(work)
