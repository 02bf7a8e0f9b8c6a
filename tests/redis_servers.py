"""Real `redis-server` processes (one server, or a three-master cluster) on free loopback ports,
and a TCP proxy that can cut one client off from Redis, for tests that prove what the gateway
does against a real Redis: restarts, cluster slot routing, one instance losing its connection
while the others keep theirs. Fakes would only prove what the fake was written to do."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.processes import free_port

HOST = "127.0.0.1"
START_TIMEOUT = 5.0  # a local redis-server answers PING in milliseconds; 5 s means it is broken
STOP_TIMEOUT = 5.0
REBIND_TIMEOUT = 2.0  # after a kill, how long a restart keeps trying to get its port back
CLUSTER_TIMEOUT = 15.0
_BIND_FAILURE = "Could not create server TCP listening socket"


def _encode(*args: str) -> bytes:
    """A RESP array of bulk strings: what redis-cli sends, without spawning redis-cli (a
    process per poll would cost more than the poll itself)."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_reply(sock: socket.socket) -> str:
    """One RESP2 reply that is a simple string, error, integer or bulk string (all that the
    readiness and housekeeping commands here answer), as text; an error as `-ERR ...`."""
    buf = b""
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("redis closed the connection before replying")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n")
    kind, value = head[:1], head[1:]
    if kind in (b"+", b"-", b":"):
        return head.decode(errors="replace") if kind == b"-" else value.decode()
    if kind == b"$":
        size = int(value)
        if size < 0:
            return ""
        while len(rest) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection mid-reply")
            rest += chunk
        return rest[:size].decode(errors="replace")
    raise ValueError(f"unexpected RESP reply: {head!r}")


def command(port: int, *args: str, timeout: float = 1.0) -> str:
    """Send one command to the server on 127.0.0.1:`port` and return its reply as text (see
    `_read_reply`); raises OSError when nothing listens there. For fixtures' own readiness
    checks and housekeeping, not for the code under test (which uses redis-py)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(_encode(*args))
        return _read_reply(sock)


def _answers_ping(port: int) -> bool:
    try:
        return command(port, "PING", timeout=0.5) == "PONG"
    except (OSError, ValueError):
        return False


class RedisServer:
    """One `redis-server` on 127.0.0.1, no persistence (a restart loses the data, as a real
    cache's Redis may), in its own directory. `start()` returns only once it answers PING,
    so a test never races the server's startup. The methods block, for milliseconds (a
    restart takes ~10 ms, a stop ~100 ms): fine to call from an async test."""

    def __init__(
        self,
        *extra_args: str,
        directory: Path | None = None,
        port: int | None = None,
        executable: str = "redis-server",
    ) -> None:
        """`extra_args` are appended to the command line (`"--maxmemory-policy",
        "volatile-lru"`); without `directory` a temporary one is made and removed by `stop()`.
        Without `port` a free one is chosen at `start()`."""
        self.extra_args: tuple[str, ...] = extra_args
        self._owns_directory = directory is None
        self.directory = directory if directory is not None else Path(tempfile.mkdtemp("-redis"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fixed_port = port is not None
        self._port = port if port is not None else 0
        self.executable = executable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("RedisServer has no port until start()")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def output_path(self) -> Path:
        return self.directory / "redis.out"

    def log(self) -> str:
        """What the server logged so far, and what it printed before its log file was open
        (a bad argument is reported only on stderr): the first thing to read when it
        misbehaves."""
        parts = []
        for path in (self.output_path, self.log_path):
            with contextlib.suppress(FileNotFoundError):
                text = path.read_text(errors="replace").strip()
                if text:
                    parts.append(text)
        return "\n".join(parts) or "(nothing logged)"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _argv(self) -> list[str]:
        return [
            self.executable,
            "--save", "",
            "--appendonly", "no",
            "--port", str(self._port),
            "--bind", HOST,
            "--protected-mode", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]

    def start(self) -> RedisServer:
        """Start and wait (at most 5 s) until it answers PING. A free port can be taken by
        someone else between `free_port()` and the server's bind: then, unless the port was
        fixed, another one is tried; a fixed port is retried for a moment instead."""
        if self.running:
            raise RuntimeError(f"redis-server already running on port {self._port}")
        if not self._fixed_port:
            self._port = free_port()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._spawn_until_ready(deadline):
                return self
            # lost a race for the port (or it is still held): pick again or retry the same
            if not self._fixed_port:
                self._port = free_port()
            time.sleep(0.05)

    def _spawn_until_ready(self, deadline: float) -> bool:
        """One redis-server process: True once it answers PING, False when it exited because
        its port was taken (the caller retries); anything else raises with the log."""
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()  # a failed attempt's log must not be read as this one's
        with self.output_path.open("wb") as output:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        while True:
            if _answers_ping(self._port):
                return True
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                log = self.log()
                if _BIND_FAILURE in log and time.monotonic() < deadline:
                    return False
                raise RuntimeError(
                    f"redis-server on port {self._port} exited with {code} before answering "
                    f"PING; its log:\n{log}"
                )
            if time.monotonic() > deadline:
                self._reap(signal.SIGKILL)
                raise RuntimeError(
                    f"redis-server on port {self._port} did not answer PING within "
                    f"{START_TIMEOUT} s; its log:\n{self.log()}"
                )
            time.sleep(0.01)

    def _reap(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL and wait: Redis dies as in a crash or an OOM kill, connections reset, no
        chance to say goodbye. The port is kept for `restart()`."""
        self._reap(signal.SIGKILL)

    def restart(self) -> RedisServer:
        """Kill it if it runs, then start again on the SAME port (clients configured with the
        old URL must be able to reconnect), retrying the bind for up to 2 s."""
        port = self.port
        self.kill()
        fixed, self._fixed_port = self._fixed_port, True
        try:
            self._port = port
            deadline = time.monotonic() + REBIND_TIMEOUT
            while not self._spawn_until_ready(deadline + START_TIMEOUT):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server could not bind port {port} again within "
                        f"{REBIND_TIMEOUT} s; its log:\n{self.log()}"
                    )
                time.sleep(0.05)
        finally:
            self._fixed_port = fixed
        return self

    def stop(self) -> None:
        """SIGTERM, wait up to 5 s, then SIGKILL; remove the directory it made."""
        self._reap(signal.SIGTERM)
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def flushall(self) -> None:
        """Empty every database: a shared server between tests, without a restart."""
        command(self.port, "FLUSHALL")

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisCluster:
    """Three Redis Cluster masters (no replicas) on 127.0.0.1, all 16384 slots covered, so keys
    spread over three processes and multi-key commands must share a hash tag, as in production.
    Each node's cluster bus gets its own free port (`--cluster-port`): the default, port +
    10000, can be above 65535 or taken, since the client ports come from the ephemeral range."""

    def __init__(self, *extra_args: str, directory: Path | None = None) -> None:
        """`extra_args` go to every node's command line; without `directory` a temporary one
        is made (a subdirectory per node) and removed by `stop()`."""
        self._owns_directory = directory is None
        self.directory = (
            directory if directory is not None else Path(tempfile.mkdtemp("-redis-cluster"))
        )
        self.extra_args: tuple[str, ...] = extra_args
        self.nodes: list[RedisServer] = []

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node: a cluster client's startup node, from which it learns the rest."""
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        """Start three nodes, `redis-cli --cluster create` them, and wait (at most 15 s) until
        every node reports `cluster_state:ok` (create returns once the slots are assigned; the
        nodes agree on that a little later, and a client arriving earlier gets CLUSTERDOWN)."""
        try:
            for index in range(3):
                node_dir = self.directory / f"node-{index}"
                node_dir.mkdir(parents=True, exist_ok=True)
                node = RedisServer(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{index}.conf",
                    "--cluster-node-timeout", "2000",
                    "--cluster-port", str(free_port()),
                    *self.extra_args,
                    directory=node_dir,
                )
                self.nodes.append(node)
                node.start()
            self._create()
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        argv = [
            "redis-cli", "--cluster", "create", *(f"{HOST}:{port}" for port in self.ports),
            "--cluster-replicas", "0", "--cluster-yes",
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT, check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"redis-cli --cluster create did not finish within {CLUSTER_TIMEOUT} s: "
                f"{exc.stdout!r} {exc.stderr!r}"
            ) from None
        # be strict: a "[ERR] ..." line in the report is a failure whatever the exit code
        if done.returncode != 0 or "[ERR]" in done.stdout:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}\n{self._logs()}"
            )

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + CLUSTER_TIMEOUT
        states: dict[int, str] = {}
        while True:
            for port in self.ports:
                try:
                    info = command(port, "CLUSTER", "INFO")
                except (OSError, ValueError) as exc:
                    info = f"unreachable: {exc}"
                states[port] = next(
                    (line for line in info.splitlines() if line.startswith("cluster_state:")),
                    info,
                ).strip()
            if all(state == "cluster_state:ok" for state in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis cluster not ok within {CLUSTER_TIMEOUT} s: {states}\n{self._logs()}"
                )
            time.sleep(0.05)

    def _logs(self) -> str:
        return "\n".join(f"--- node {node.port} ---\n{node.log()}" for node in self.nodes)

    def flushall(self) -> None:
        """Empty every master: one cluster shared by a module's tests, each starting clean."""
        for port in self.ports:
            command(port, "FLUSHALL")

    def stop(self) -> None:
        """Kill every node (no state worth a clean shutdown) and remove the directory made."""
        for node in self.nodes:
            node.kill()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class TcpProxy:
    """A loopback TCP relay between clients and a target (a Redis): give ONE gateway instance
    `url_for()` instead of the server's URL, and `cut()` takes that instance off Redis (as a
    network partition would) while the others, connected directly, keep working.

    Runs on the test's event loop. Every relayed connection is a task this object tracks and
    awaits on `close()`, with a bounded upstream connect and a bounded count of connections,
    so nothing outlives the test."""

    CHUNK = 65536

    def __init__(
        self, target_host: str, target_port: int, *, connect_timeout: float = 2.0,
        max_connections: int = 256,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._port = 0
        self._cut = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.WriteTransport] = set()
        self.accepted = 0  # connections relayed (a test can tell a reconnect happened)

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("TcpProxy has no port until start()")
        return self._port

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def connections(self) -> int:
        """Connections being relayed now."""
        return len(self._tasks)

    def url_for(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    async def start(self) -> TcpProxy:
        """Listen on 127.0.0.1 on a port the kernel picks (no race with other tests)."""
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        """Reset every relayed connection, both sides, now; until `restore()`, a new
        connection is accepted and closed at once (the client sees its connection drop, as
        when a path to Redis is lost, rather than hang until a timeout)."""
        self._cut = True
        for transport in list(self._transports):
            transport.abort()

    def restore(self) -> None:
        """Relay new connections again (those cut stay closed: clients reconnect)."""
        self._cut = False

    async def close(self) -> None:
        """Stop listening, drop every connection, and wait for every relay task to end."""
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio runs this callback as a task it does not track: register it, so close() can
        # cancel and await it
        task = asyncio.current_task()
        assert task is not None
        if self._cut or len(self._tasks) >= self.max_connections or self._server is None:
            writer.transport.abort()
            return
        self._tasks.add(task)
        self._transports.add(writer.transport)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port),
                self.connect_timeout,
            )
            upstream = up_writer
            self._transports.add(up_writer.transport)
            if self._cut:  # cut while connecting
                return
            self.accepted += 1
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, TimeoutError):
            pass  # target down or slow: the client sees its connection closed
        finally:
            for side in (writer, upstream):
                if side is not None:
                    side.transport.abort()
                    self._transports.discard(side.transport)
            self._tasks.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy one direction until EOF or an error; either ends the whole connection (Redis
        clients do not half-close)."""
        with contextlib.suppress(OSError):
            while data := await source.read(self.CHUNK):
                sink.write(data)
                await sink.drain()
