"""Real `python -m origin` / `python -m gateway` processes on free loopback ports, for tests that
prove what a user of the command lines sees (flags, exit codes, signals)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m ...` to completion (bounded), output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
        env=env, check=False,
    )


def fetch(url: str, *, method: str = "GET", body: Any = None, token: str | None = None,
          ) -> tuple[int, dict[str, str], bytes]:
    """A blocking request: status, headers and body, HTTP errors included."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@contextmanager
def serving(
    args: list[str], ready_url: str, timeout: float = 20.0, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `python -m <args>` until `ready_url` answers; always stopped (then killed) after.
    With `log`, its output (stdout and stderr) goes to that file, which a test may read while
    it runs (what the process logs is how it says it handled a signal)."""
    sink = subprocess.PIPE if log is None else log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # it answers: up
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    output = proc.stdout.read() if proc.stdout else b""
                    if log is not None:
                        output = log.read_bytes()
                    raise RuntimeError(
                        f"{args[0]} did not start: {output.decode(errors='replace')}"
                    ) from None
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if not isinstance(sink, int):
            sink.close()
