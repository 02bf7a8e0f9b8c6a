"""`workers: N`: a real `python -m gateway` supervisor and its worker processes on one port, a
real `redis-server`, and an echo origin in the test's process. What an operator sees: both
workers answer, `/admin/stats` counts for the machine, signals reach every worker, a dead worker
comes back, a busy port is refused. And the supervisor's start and restart rules, with stand-in
worker commands."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

import gateway.supervisor as supervision
from gateway.config import load_config
from tests.echo_origin import COUNTS, create_echo_app
from tests.processes import ROOT, free_port, run_module
from tests.redis_fixtures import redis_server  # noqa: F401
from tests.redis_servers import RedisServer
from tests.test_gateway_http import spec

TOKEN = "workers-test-token"
CACHED = "Cache-Control:max-age=60"
ANSWERS = ("hit", "miss", "collapsed", "stale_while_revalidate", "stale_if_error", "pass",
           "only_if_cached_miss", "bypass")  # the counters of how a request was answered

MACHINE_YAML = """\
listen: 127.0.0.1:{port}
workers: 2
admin:
  listen: 127.0.0.1:{admin_port}
  tokens: [{{name: ops, token: "{token}", tenants: ["*"]}}]
cache: {{name: {name}}}
redis: {{url: "{redis}", timeout: 300ms, block: 200ms}}
origins:
  o: {{url: "{origin}"}}
routes:
  - name: all
    match: {{path_prefix: /}}
    origin: o
"""


@dataclass
class Machine:
    """The supervisor process, its output (every process of the machine logs there)."""

    proc: asyncio.subprocess.Process
    config: Path
    port: int
    admin_port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logged(self) -> str:
        return "\n".join(self.lines)

    async def wait_logged(self, pattern: str, count: int = 1, within: float = 10.0) -> None:
        """Until `pattern` (a regex) matches `count` log lines; fails naming it otherwise."""
        deadline = asyncio.get_running_loop().time() + within
        while sum(1 for line in self.lines if re.search(pattern, line)) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not logged within {within} s: {pattern!r}\n"
                                     + self.logged())
            await asyncio.sleep(0.02)

    def worker_pids(self) -> dict[int, int]:
        """The latest pid of each worker, as the supervisor logged it."""
        pids = {}
        for line in self.lines:
            found = re.search(r"\[supervisor\] worker (\d+) started, pid (\d+)", line)
            if found:
                pids[int(found[1])] = int(found[2])
        return pids

    async def stats(self) -> dict[str, Any]:
        """`/admin/stats`, on a connection of its own (so from whichever worker the kernel
        picks)."""
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
            http.get(f"http://127.0.0.1:{self.admin_port}/admin/stats",
                     headers={"Authorization": f"Bearer {TOKEN}"}) as resp,
        ):
            assert resp.status == 200
            payload: dict[str, Any] = await resp.json()
            return payload


async def collect(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode(errors="replace").rstrip())


@contextlib.asynccontextmanager
async def machine(
    tmp_path: Path, redis: RedisServer, origin: TestServer
) -> AsyncIterator[Machine]:
    config = tmp_path / "gateway.yaml"
    port, admin_port = free_port(), free_port()
    config.write_text(MACHINE_YAML.format(
        port=port, admin_port=admin_port, token=TOKEN, name="edge", redis=redis.url,
        origin=str(origin.make_url("")).rstrip("/"),
    ))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    running = Machine(proc, config, port, admin_port)
    reader = asyncio.get_running_loop().create_task(collect(proc.stdout, running.lines))
    try:
        await running.wait_logged(r"\[supervisor\] 2 workers listening", within=20.0)
        yield running
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)
        print(running.logged())  # shown if the test failed


async def get(url: str) -> tuple[int, bytes]:
    """A request on a connection of its own: the kernel picks the worker for each."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.get(url) as resp,
    ):
        return resp.status, await resp.read()


def answered(cache: dict[str, int]) -> int:
    return sum(cache.get(name, 0) for name in ANSWERS)


async def test_two_workers_on_one_port_and_stats_for_the_whole_machine(
    tmp_path: Path, redis_server: RedisServer, aiohttp_server: Any  # noqa: F811
) -> None:
    origin = await aiohttp_server(create_echo_app())
    async with machine(tmp_path, redis_server, origin) as m:
        pids = m.worker_pids()
        assert sorted(pids) == [0, 1] and pids[0] != pids[1]

        # ~20 clients at once on a cold key: the fill is shared, not done per client.
        cold = spec("/cold", CACHED, delay="0.5")
        results = await asyncio.gather(*(get(m.url + cold) for _ in range(20)))
        assert {status for status, _ in results} == {200}
        assert len({body for _, body in results}) == 1
        # One fill for the machine: the workers share it through the fleet's lease.
        assert origin.app[COUNTS]["__total__"] == 1  # the origin's only requests so far

        # N requests, each on its own connection: the machine counts N, both workers served.
        n = 30
        paths = [spec(f"/k{i % 10}", CACHED) for i in range(n)]  # 10 misses then hits
        for path in paths:
            assert (await get(m.url + path))[0] == 200
        expected = n + 20

        async def machine_counts() -> dict[str, Any]:
            deadline = asyncio.get_running_loop().time() + 5.0
            while True:  # the other worker's snapshot is at most one interval old
                stats = await m.stats()
                if answered(stats["cache"]) == expected:
                    return stats
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"machine-wide answers != {expected}: {stats}")
                await asyncio.sleep(0.1)

        stats = await machine_counts()
        assert stats["workers"] == 2
        per_worker = stats["per_worker"]
        assert {int(w) for w in per_worker} == {0, 1}
        assert {w["pid"] for w in per_worker.values()} == set(pids.values())
        served = [answered(w["cache"]) for w in per_worker.values()]
        assert sum(served) == expected
        assert all(s > 0 for s in served), served  # the kernel gave both of them connections
        assert stats["cache"]["origin_fetches"] == origin.app[COUNTS]["__total__"]
        # Whichever worker takes the admin call answers the same machine-wide counts, once
        # the other's snapshot (at most one interval old) has caught up; never more.
        exact: set[int] = set()
        deadline = asyncio.get_running_loop().time() + 5.0
        while exact != {0, 1} and asyncio.get_running_loop().time() < deadline:
            again = await m.stats()
            assert answered(again["cache"]) <= expected, again
            if answered(again["cache"]) == expected:
                exact.add(again["worker"])
            await asyncio.sleep(0.05)
        assert exact == {0, 1}


async def scrape_total(m: Machine) -> float:
    """gateway_requests_total summed over its series, from whichever worker takes the scrape."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.get(f"http://127.0.0.1:{m.admin_port}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gateway_requests_total"
    )


async def test_one_scrape_of_either_worker_counts_the_whole_machine_even_a_dead_worker(
    tmp_path: Path, redis_server: RedisServer, aiohttp_server: Any  # noqa: F811
) -> None:
    origin = await aiohttp_server(create_echo_app())
    async with machine(tmp_path, redis_server, origin) as m:
        n = 24
        for i in range(n):  # each on its own connection: the kernel spreads them
            assert (await get(m.url + spec(f"/m{i % 6}", CACHED)))[0] == 200
        served: dict[str, int] = {}
        deadline = asyncio.get_running_loop().time() + 5.0
        while sum(served.values()) != n:  # each worker's share, from the census
            assert asyncio.get_running_loop().time() < deadline, served
            per_worker = (await m.stats())["per_worker"]
            served = {w: answered(s["cache"]) for w, s in per_worker.items()}
        assert len(served) == 2 and all(served.values()), served  # both took requests
        totals: list[float] = []
        deadline = asyncio.get_running_loop().time() + 5.0
        while totals[-3:] != [n] * 3:  # a worker flushes its counts every second
            assert asyncio.get_running_loop().time() < deadline, (totals, served)
            totals.append(await scrape_total(m))
            assert totals[-1] <= n
            await asyncio.sleep(0.1)
        os.kill(m.worker_pids()[1], signal.SIGKILL)
        await m.wait_logged(r"\[supervisor\] worker 1 \(pid \d+\) listening", count=2)
        for _ in range(4):  # the dead worker's requests still count, whoever answers
            assert await scrape_total(m) == n


async def test_a_worker_is_not_restarted_on_a_broken_config_and_the_others_serve_on(
    tmp_path: Path, redis_server: RedisServer, aiohttp_server: Any  # noqa: F811
) -> None:
    origin = await aiohttp_server(create_echo_app())
    async with machine(tmp_path, redis_server, origin) as m:
        pids = m.worker_pids()
        good = m.config.read_text()
        m.config.write_text(good + "\nbogus_field: 1\n")
        os.kill(pids[1], signal.SIGKILL)
        await m.wait_logged(r"\[supervisor\] worker 1 not restarted, the config file is broken")
        assert "bogus_field" in m.logged()  # the file's problem is named
        for _ in range(4):  # worker 0 answers every connection meanwhile
            assert (await get(m.url + spec("/still", CACHED)))[0] == 200
        assert m.proc.returncode is None  # not taken for a crash loop
        m.config.write_text(good)
        await m.wait_logged(r"\[supervisor\] worker 1 \(pid \d+\) listening", count=2)


async def test_signals_reach_every_worker_and_a_dead_worker_comes_back(
    tmp_path: Path, redis_server: RedisServer, aiohttp_server: Any  # noqa: F811
) -> None:
    origin = await aiohttp_server(create_echo_app())
    async with machine(tmp_path, redis_server, origin) as m:
        first = m.worker_pids()
        m.config.write_text(m.config.read_text().replace("name: edge", "name: edge2"))
        m.proc.send_signal(signal.SIGHUP)
        await m.wait_logged(r"\[worker 0\] config reloaded from")
        await m.wait_logged(r"\[worker 1\] config reloaded from")
        # An admin reload lands on one worker, which has the supervisor reload them all.
        async with (
            aiohttp.ClientSession() as h,
            h.post(f"http://127.0.0.1:{m.admin_port}/admin/reload",
                   headers={"Authorization": f"Bearer {TOKEN}"}) as resp,
        ):
            assert resp.status == 200 and (await resp.json())["workers"] == 2
        await m.wait_logged(r"\[worker 0\] config reloaded from", count=2)
        await m.wait_logged(r"\[worker 1\] config reloaded from", count=2)
        for _ in range(6):  # every worker has the new config
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as h,
                h.get(m.url + spec("/r", CACHED)) as resp,
            ):
                assert resp.headers["Cache-Status"].startswith("edge2;")

        os.kill(first[1], signal.SIGKILL)
        await m.wait_logged(r"\[supervisor\] worker 1 \(pid \d+\) killed by SIGKILL: restarting")
        await m.wait_logged(r"\[supervisor\] worker 1 \(pid \d+\) listening", count=2)
        second = m.worker_pids()
        assert second[0] == first[0] and second[1] != first[1]
        stats: dict[str, Any] = {}
        for _ in range(50):  # the new worker 1 publishes its snapshot
            stats = await m.stats()
            if {w["pid"] for w in stats["per_worker"].values()} == set(second.values()):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"restarted worker not in the census: {stats}")

        started = asyncio.get_running_loop().time()
        m.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(m.proc.wait(), 15) == 0
        # Usually well under a second; the fleet's own bound on its tasks' stop is 5 s.
        assert asyncio.get_running_loop().time() - started < 8.0
        for pid in second.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        for port in (m.port, m.admin_port):  # free: a plain listener may bind it
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen()
        assert "[supervisor] SIGTERM: stopping 2 workers" in m.logged()


def test_a_port_in_use_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config.write_text(MACHINE_YAML.format(
            port=port, admin_port=free_port(), token=TOKEN, name="edge",
            redis="redis://127.0.0.1:1", origin="http://127.0.0.1:1",
        ))
        done = run_module("gateway", "--config", str(config))
    assert done.returncode == 1
    assert f"listen 127.0.0.1:{port}: cannot listen" in done.stderr
    assert "started" not in done.stderr


class StandIn(supervision.Supervisor):
    """A supervisor whose workers run `script` (with the ready pipe's fd as argv[1])."""

    def __init__(self, tmp_path: Path, script: str, workers: int = 2) -> None:
        config = tmp_path / "gateway.yaml"
        config.write_text(MACHINE_YAML.format(
            port=free_port(), admin_port=free_port(), token=TOKEN, name="edge",
            redis="redis://127.0.0.1:1", origin="http://127.0.0.1:1",
        ).replace("workers: 2", f"workers: {workers}"))
        super().__init__(str(config), load_config(config), "INFO")
        self.script = script

    def command(self, slot: supervision.Slot, ready_fd: int) -> list[str]:
        restarted = "1" if slot.restarts else "0"
        return [sys.executable, "-c", self.script, str(ready_fd), str(slot.index), restarted]


def test_workers_that_cannot_start_stop_the_supervisor_with_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # worker 0 becomes ready, worker 1 fails (as a worker whose port is taken would)
    script = ("import os, sys, time\n"
              "if sys.argv[2] == '1': sys.exit(3)\n"
              "os.write(int(sys.argv[1]), b'ready'); time.sleep(60)\n")
    supervisor = StandIn(tmp_path, script)
    assert supervisor.run() == 1
    assert "worker 1 did not start (exited with status 3)" in caplog.text
    assert all(s.proc is not None and s.proc.returncode is not None for s in supervisor.slots)


def test_a_crash_looping_worker_is_restarted_a_bounded_number_of_times(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervision, "RESTART_BACKOFF", 0.01)
    # Each worker says it is ready; worker 1 then dies, every time: at once when restarted,
    # a second later the first time (a worker dying during the start fails the start).
    script = ("import os, sys, time\n"
              "os.write(int(sys.argv[1]), b'ready')\n"
              "if sys.argv[2] == '1':\n"
              "    time.sleep(0.0 if sys.argv[3] == '1' else 1.0)\n"
              "    sys.exit(1)\n"
              "time.sleep(60)\n")
    supervisor = StandIn(tmp_path, script)
    assert supervisor.run() == 1
    restarts = [r for r in caplog.messages if r.startswith("worker 1 (pid") and "restarting" in r]
    assert len(restarts) == supervision.RESTARTS_PER_MINUTE
    assert "crash-looping, stopping the gateway" in caplog.text
    worker0 = supervisor.slots[0].proc
    assert worker0 is not None and worker0.returncode == -signal.SIGTERM  # stopped with it
