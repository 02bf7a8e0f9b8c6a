"""The command lines as an operator runs them: `--check`, SIGHUP reload, the admin client, the
demo token refused outside the demo, and SIGTERM's drain, against real `python -m gateway` and
`python -m origin` processes on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

import gateway.__main__ as entry
from gateway.__main__ import CUT_GRACE, drain
from gateway.client_protocol import NativeServer
from gateway.config import DEMO_ADMIN_TOKEN, demo_token_refusal, load_config
from gateway.listener import ClientLimits
from gateway.supervisor import DRAIN_TIMEOUT, Slot, Supervisor
from tests.processes import ROOT, fetch, free_port, run_module, serving

TOKEN = "process-test-token"
BUNDLE = "/api/v1/loader/code/published?projectId=p1&platform=react"

GATEWAY_YAML = """\
listen: 127.0.0.1:{port}
admin:
  listen: 127.0.0.1:{admin_port}
  tokens: [{{name: ops, token: "${{TEST_ADMIN_TOKEN}}", tenants: ["*"]}}]
cache: {{name: {name}}}
origins:
  loader: {{url: "http://127.0.0.1:{origin_port}"}}
routes:
  - name: loader-code
    match: {{path_prefix: /api/v1/loader/}}
    origin: loader
    tenant: {{query: projectId}}
"""


@dataclass
class Running:
    config: Path
    ports: dict[str, int]
    pid: int
    log: Path  # what the gateway process writes (its log lines)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['port']}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin_port']}"

    def write(self, name: str = "edge", extra: str = "") -> None:
        self.config.write_text(GATEWAY_YAML.format(name=name, **self.ports) + extra)

    def cli(self, *args: str, token: str = TOKEN) -> tuple[int, str]:
        env = {**os.environ, "GATEWAY_ADMIN_TOKEN": token, "GATEWAY_ADMIN_URL": self.admin}
        done = run_module("gateway", *args, env=env)
        return done.returncode, done.stdout + done.stderr

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def cache_status(self) -> str:
        status, headers, _ = fetch(self.gateway + BUNDLE)
        assert status == 200
        return headers["Cache-Status"]


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    monkeypatch.setenv("TEST_ADMIN_TOKEN", TOKEN)
    ports = {"port": free_port(), "admin_port": free_port(), "origin_port": free_port()}
    run = Running(tmp_path / "gateway.yaml", ports, 0, tmp_path / "gateway.log")
    run.write()
    origin = ["origin", "--host", "127.0.0.1", "--port", str(ports["origin_port"]),
              "--projects", "3", "--codegen-seconds", "0.05"]
    with (
        serving(origin, f"http://127.0.0.1:{ports['origin_port']}/healthz"),
        serving(
            ["gateway", "--config", str(run.config)], f"{run.admin}/healthz", log=run.log
        ) as gateway,
    ):
        run.pid = gateway.pid
        yield run


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll a condition that a signal makes true asynchronously; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_check_accepts_the_demo_config_and_rejects_a_broken_file_naming_the_line(
    tmp_path: Path,
) -> None:
    ok = run_module("gateway", "--config", "config/gateway.yaml", "--check")
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: 127.0.0.1:8080\norigins:\n  o: {url: 'http://127.0.0.1:1'}\n"
                      "routes:\n  - {name: r, origin: o, surprise: 1}\n")
    bad = run_module("gateway", "--config", str(broken), "--check")
    assert bad.returncode == 2
    assert f"{broken}:5: routes[0].surprise: unknown field 'surprise'" in bad.stderr


def test_sighup_keeps_the_running_config_on_a_broken_file_and_applies_a_good_one(
    running: Running,
) -> None:
    assert running.cache_status().startswith("edge;")
    running.config.write_text(running.config.read_text() + "nonsense: [\n")
    os.kill(running.pid, signal.SIGHUP)
    # The signal has been handled, and the file refused, before the config in force is looked
    # at: otherwise "still the old config" could only mean "not handled yet".
    assert wait_for(lambda: "SIGHUP: config not reloaded" in running.logged()), running.logged()
    assert f"{running.config}:" in running.logged()  # it says where the file is broken
    assert "config reloaded" not in running.logged()
    assert running.cache_status().startswith("edge;")  # still up, old config
    running.write(name="edge2")
    os.kill(running.pid, signal.SIGHUP)
    assert wait_for(lambda: f"config reloaded from {running.config}" in running.logged())
    assert running.cache_status().startswith("edge2;")


def test_admin_client_purges_busts_shows_stats_and_reports_refusals(running: Running) -> None:
    fetch(running.gateway + BUNDLE)
    assert "hit" in running.cache_status()

    code, out = running.cli("purge", "--tenant", "p1", "--url", BUNDLE)
    assert (code, out.strip()) == (0, "tenant p1: 1 entries removed")
    assert "fwd=uri-miss" in running.cache_status()

    code, out = running.cli("bust", "--tenant", "*", "--soft")
    assert code == 0 and out.startswith(
        "tenant *: soft bust done; hard busts so far: 0, soft busts: 1 (latest at 20"
    )
    assert "UPDATING" in fetch(running.gateway + BUNDLE)[1]["X-Cache"]

    code, out = running.cli("stats")
    assert code == 0
    assert any(line.split()[:1] == ["p1"] for line in out.splitlines()), out

    code, out = running.cli("purge", "--tenant", "p1", token="wrong")
    assert (code, out.strip()) == (1, "HTTP 401: missing or invalid bearer token")

    running.write(extra="bogus: 1\n")
    code, out = running.cli("reload")
    assert code == 1
    assert f"{running.config}:13: bogus: unknown field 'bogus'" in out
    running.write(name="edge3")
    code, out = running.cli("reload")
    assert (code, out.strip()) == (0, f"reloaded {running.config}: 1 routes")
    assert running.cache_status().startswith("edge3;")


def test_version_and_help_name_the_gateway_and_its_admin_commands() -> None:
    shown = run_module("gateway", "--version")
    assert shown.returncode == 0 and shown.stdout.startswith("gateway ")
    helped = run_module("gateway", "--help")
    assert helped.returncode == 0
    assert all(command in helped.stdout for command in ("purge", "bust", "stats", "reload"))


@pytest.mark.parametrize("server", ["aiohttp", "native"])
def test_a_busy_port_is_one_line_and_a_non_zero_exit(server: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gw.yaml"
        config.write_text(f"listen: 127.0.0.1:{port}\norigins:\n  o: {{url: 'http://127.0.0.1:1'}}\n"
                          f"routes:\n  - {{name: r, origin: o}}\nserver: {server}\n")
        done = run_module("gateway", "--config", str(config))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    said = done.stderr.strip()
    assert said == f"{config}: cannot listen on 127.0.0.1:{port}: Address already in use"



# ---------------------------------------------------------------- the demo admin token


def demo_file(tmp_path: Path) -> Path:
    """config/gateway.yaml (what scripts/demo.sh serves) as it is, but on free ports."""
    text = (ROOT / "config" / "gateway.yaml").read_text()
    for fixed in ("127.0.0.1:8080", "127.0.0.1:8081"):
        assert text.count(fixed) == 1, f"the demo file no longer listens on {fixed}"
        text = text.replace(fixed, f"127.0.0.1:{free_port()}")
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    return path


def environment(token: str | None) -> dict[str, str]:
    """This process's environment with GATEWAY_ADMIN_TOKEN set to `token`, or unset."""
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_ADMIN_TOKEN"}
    return env if token is None else {**env, "GATEWAY_ADMIN_TOKEN": token}


def test_the_demo_token_is_refused_outside_the_demo_in_one_line(tmp_path: Path) -> None:
    config = demo_file(tmp_path)
    done = run_module("gateway", "--config", str(config), env=environment(None))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{config}: admin token 'ops' is the demo token 'dev-admin-token'")
    assert "--demo" in lines[0] and "GATEWAY_ADMIN_TOKEN" in lines[0]
    # The value counts, wherever it comes from.
    done = run_module("gateway", "--config", str(config), env=environment(DEMO_ADMIN_TOKEN))
    assert done.returncode == 1 and "is the demo token" in done.stderr
    # The file itself is valid (`--check`): only how the gateway is started makes it the demo.
    checked = run_module("gateway", "--config", str(config), "--check", env=environment(None))
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("flags", "token"), [(["--demo"], None), ([], "a-secret-of-our-own")], ids=["demo", "secret"]
)
def test_the_demo_starts_with_demo_and_any_start_with_a_secret_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], token: str | None
) -> None:
    config = demo_file(tmp_path)
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
    if token is not None:
        monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", token)
    admin = load_config(config, env=environment(token)).admin.listen
    assert admin is not None
    admin_url = f"http://127.0.0.1:{admin.port}"
    with serving(["gateway", "--config", str(config), *flags], f"{admin_url}/healthz"):
        status, _, _ = fetch(f"{admin_url}/admin/stats", token=token or DEMO_ADMIN_TOKEN)
        assert status == 200


def test_demo_sh_says_it_is_the_demo_and_a_supervisor_tells_its_workers() -> None:
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    starts = [line for line in demo.splitlines() if "-m gateway" in line]
    assert starts and all("--demo" in line for line in starts), starts
    config = load_config(ROOT / "config" / "gateway.yaml", env={})
    assert "--demo" in Supervisor("f.yaml", config, "INFO", demo=True).command(Slot(0), 5)
    assert "--demo" not in Supervisor("f.yaml", config, "INFO").command(Slot(0), 5)


def test_only_a_listening_admin_with_the_demo_token_is_refused() -> None:
    config = load_config(ROOT / "config" / "gateway.yaml", env={})
    assert demo_token_refusal(config, demo=False) is not None
    assert demo_token_refusal(config, demo=True) is None
    closed = config.model_copy(update={"admin": config.admin.model_copy(update={"listen": None})})
    assert demo_token_refusal(closed, demo=False) is None  # no listener: the token admits nobody
    secret = load_config(ROOT / "config" / "gateway.yaml", env={"GATEWAY_ADMIN_TOKEN": "s3cret"})
    assert demo_token_refusal(secret, demo=False) is None


# ---------------------------------------------------------------- SIGTERM drains


def refused(port: int) -> bool:
    """Does a new connection to `port` on loopback get refused?"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("server", ["aiohttp", "native"])
def test_sigterm_answers_the_request_in_flight_refuses_new_connections_and_exits_0(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `docker stop` (or a service manager, or the supervisor) does: a request that is at
    the origin (1.5 s of codegen) when SIGTERM comes is answered in full, a connection made
    meanwhile is refused, and the process exits 0 once that answer is out."""
    monkeypatch.setenv("TEST_ADMIN_TOKEN", TOKEN)
    ports = {"port": free_port(), "admin_port": free_port(), "origin_port": free_port()}
    config = tmp_path / "gateway.yaml"
    config.write_text(GATEWAY_YAML.format(name="edge", **ports) + f"server: {server}\n")
    origin_url = f"http://127.0.0.1:{ports['origin_port']}"
    origin = ["origin", "--host", "127.0.0.1", "--port", str(ports["origin_port"]),
              "--projects", "3", "--codegen-seconds", "1.5"]
    log = tmp_path / "gateway.log"

    def origin_in_flight() -> int:
        count: int = json.loads(fetch(f"{origin_url}/__stats")[2])["in_flight"]
        return count

    with (
        serving(origin, f"{origin_url}/healthz"),
        serving(
            ["gateway", "--config", str(config)],
            f"http://127.0.0.1:{ports['admin_port']}/healthz", log=log,
        ) as gateway,
        ThreadPoolExecutor(1) as pool,
    ):
        answer = pool.submit(fetch, f"http://127.0.0.1:{ports['port']}{BUNDLE}")
        assert wait_for(lambda: origin_in_flight() == 1)
        stopped_at = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        assert wait_for(lambda: refused(ports["port"]), timeout=1.0), "still accepting"
        assert refused(ports["admin_port"])
        assert gateway.poll() is None, "refused because it exited, not because it drains"
        status, headers, body = answer.result(timeout=DRAIN_TIMEOUT)
        assert gateway.wait(timeout=DRAIN_TIMEOUT) == 0
        assert time.monotonic() - stopped_at < DRAIN_TIMEOUT  # it did not wait for the bound
        assert status == 200 and headers["X-Cache"] == "MISS"
        assert len(body) == int(headers["Content-Length"]) > 0
        assert body == fetch(f"{origin_url}{BUNDLE}")[2]  # the whole bundle, as the origin has it
    assert "stopping: new connections refused" in log.read_text()


class Stuck:
    """A handler's body that never answers, noting when it starts and when it is cancelled."""

    def __init__(self) -> None:
        self.entered, self.cancelled = asyncio.Event(), asyncio.Event()

    async def wait(self) -> None:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def stuck_listener(server: str, stuck: Stuck) -> tuple[int, Callable[[], Awaitable[None]]]:
    """A public listener of `server`'s layer whose handler is stuck: its port, and its drain."""
    if server == "native":
        async def handler(request: object, send: object) -> None:
            await stuck.wait()

        native = NativeServer(handler, ClientLimits(), lingering_time=5.0)
        listener = await native.listen("127.0.0.1", 0)
        return listener.sockets[0].getsockname()[1], lambda: drain([], native)

    async def never_answers(request: web.BaseRequest) -> web.StreamResponse:
        await stuck.wait()
        raise AssertionError("unreachable")

    runner = web.ServerRunner(web.Server(never_answers, handler_cancellation=True),
                              shutdown_timeout=0.3)  # as the public listener's
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner.addresses[0][1], lambda: drain([runner])


@pytest.mark.parametrize("server", ["aiohttp", "native"])
async def test_a_request_still_running_at_the_drain_bound_is_cut_and_the_drain_ends(
    server: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request slower than DRAIN_TIMEOUT (made short here) does not hold the process past
    DRAIN_TIMEOUT + CUT_GRACE, which must fit in what `docker stop` waits before SIGKILL."""
    monkeypatch.setattr(entry, "DRAIN_TIMEOUT", 0.3)
    stuck = Stuck()
    port, stop = await stuck_listener(server, stuck)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
    await asyncio.wait_for(stuck.entered.wait(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(stop(), 5)
    assert loop.time() - started < 0.3 + CUT_GRACE
    await asyncio.wait_for(stuck.cancelled.wait(), 1)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, without an answer
    writer.close()
    assert DRAIN_TIMEOUT + CUT_GRACE < 10  # `docker stop`'s default wait, with room to exit
