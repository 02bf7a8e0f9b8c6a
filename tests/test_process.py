"""The command lines as an operator runs them: `--check`, SIGHUP reload, and the admin client,
against real `python -m gateway` and `python -m origin` processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import fetch, free_port, run_module, serving

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


def test_a_busy_port_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gw.yaml"
        config.write_text(f"listen: 127.0.0.1:{port}\norigins:\n  o: {{url: 'http://127.0.0.1:1'}}\n"
                          "routes:\n  - {name: r, origin: o}\n")
        done = run_module("gateway", "--config", str(config))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{config}: cannot listen on 127.0.0.1:{port}" in done.stderr
