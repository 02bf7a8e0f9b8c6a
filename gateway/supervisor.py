"""The supervisor of `workers: N`, and what a worker knows of it (`Role`).

With `workers: N` the process started as `python -m gateway` serves nothing itself: it is a
`Supervisor` that runs N worker processes, each
`python -m gateway --config FILE --worker-of MACHINE --worker-index I --ready-fd FD`, which bind
the public and admin ports with SO_REUSEPORT (the kernel spreads connections over them) and are
each a member of the fleet like any other instance. The supervisor forwards SIGTERM/SIGINT (stop)
and SIGHUP (reload) to them and restarts one that dies.

Both ends of the contract between them live here, so that one reading shows all of it: the
supervisor's side (`Supervisor`: the command line, the ready pipe it reads, restarts) and the
worker's (`Role`: which process it is, the ready pipe it writes once listening;
`watch_supervisor`: stop when the supervisor is gone). `gateway.__main__` parses the worker's
flags into a `Role` and serves with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from gateway.config import ConfigError, GatewayConfig, Listen, load_config
from gateway.metrics import MULTIPROC_ENV

log = logging.getLogger("gateway")  # not "gateway.supervisor": log lines read as before the move

START_TIMEOUT = 30.0  # seconds for every worker to be listening, at start
STOP_GRACE = 20.0  # seconds workers have to stop after SIGTERM before they are killed
# Seconds a serving process (alone or a worker) gives the requests in flight after SIGTERM:
# below STOP_GRACE, so that a worker ends by itself, and below the 10 s that `docker stop`
# waits by default before SIGKILL, with room for the rest of the stop (cut handlers, access log).
DRAIN_TIMEOUT = 7.0
RESTART_BACKOFF = 0.5  # seconds before restarting a dead worker, doubled per recent restart
RESTART_BACKOFF_MAX = 8.0
RESTARTS_PER_MINUTE = 5  # a worker slot that dies more often than this stops the gateway
BROKEN_CONFIG_RETRY = 2.0  # seconds between checks of a broken file before a restart
TICK = 0.1  # the supervisor's loop: signals, exits and restarts are seen within this
ORPHAN_CHECK = 1.0  # seconds between a worker's checks that its supervisor is still there

# ---------------------------------------------------------------- the worker's side


@dataclass(frozen=True)
class Role:
    """Which process of the machine this is. `machine` names the machine's processes as one
    (`host:pid` of the supervisor, or of the only process); `index` is the worker's number."""

    machine: str
    index: int = 0
    supervisor: int | None = None  # the supervisor's pid, for a worker it started
    ready_fd: int | None = None  # written to once listening, for the supervisor

    @property
    def worker(self) -> bool:
        return self.supervisor is not None

    @classmethod
    def alone(cls) -> Role:
        return cls(machine=machine_id())

    def ready(self) -> None:
        """Tell the supervisor that this worker listens (it may be gone: no matter)."""
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, b"ready\n")
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)


def machine_id(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


async def watch_supervisor(pid: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor is gone (killed outright) stops, rather than hold the port."""
    while True:
        await asyncio.sleep(ORPHAN_CHECK)
        if os.getppid() != pid:
            break
    log.error("supervisor %d is gone: stopping", pid)
    stop.set()


# ---------------------------------------------------------------- the supervisor


@dataclass
class Slot:
    """Worker `index`: its process (None while it waits to be restarted) and its history."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # read end of its ready pipe, until it said ready or died
    ready: bool = False  # it said it listens (and handles SIGHUP)
    reload_pending: bool = False  # a SIGHUP came before it was ready: send it once it is
    restart_at: float | None = None  # when a dead worker is started again (monotonic)
    restarts: list[float] = field(default_factory=list)  # when it was restarted (monotonic)


class Supervisor:
    """Runs `workers` processes of this gateway and keeps them running.

    - Start: every worker must be listening within START_TIMEOUT, or all are stopped and the
      supervisor exits 1 (a port taken meanwhile, a worker that fails at start). A listen port
      some process already listens on is refused before any worker starts: SO_REUSEPORT would
      otherwise let the workers join another gateway's sockets and share its traffic.
    - SIGTERM / SIGINT: SIGTERM to every worker, STOP_GRACE seconds for them to finish, then
      SIGKILL; exit 0.
    - SIGHUP: forwarded to every worker; each re-reads the file (and logs what it did).
    - A worker that dies is logged and restarted after RESTART_BACKOFF (doubled for each
      restart of that worker within the last minute); one that would need more than
      RESTARTS_PER_MINUTE restarts in a minute is crash-looping, and the supervisor stops every
      worker and exits 1 so that the service manager sees the failure.
    """

    def __init__(
        self, config_path: str, config: GatewayConfig, log_level: str, *, demo: bool = False
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.log_level = log_level
        self.demo = demo  # started as the demo (`--demo`): so are its workers
        self.machine = machine_id()
        self.slots = [Slot(i) for i in range(config.workers)]
        self.signals: list[int] = []
        # Where the workers keep their metrics for each other's scrapes (gateway/metrics.py):
        # made for this run, so a scrape never sums a previous run's counts.
        self.metrics_dir: str | None = None

    def command(self, slot: Slot, ready_fd: int) -> list[str]:
        return [
            sys.executable, "-m", "gateway", "--config", self.config_path,
            "--log-level", self.log_level, "--worker-of", self.machine,
            "--worker-index", str(slot.index), "--ready-fd", str(ready_fd),
            *(["--demo"] if self.demo else []),
        ]

    def run(self) -> int:
        problem = self.preflight()
        if problem is not None:
            log.error("%s", problem)
            return 1
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        self.metrics_dir = tempfile.mkdtemp(prefix="edge-gateway-metrics-")
        try:
            return self._run()
        finally:
            self.stop_all()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def preflight(self) -> str | None:
        """Why the workers cannot listen where the config says, or None."""
        listens = [("listen", self.config.listen)]
        if self.config.admin.listen is not None:
            listens.append(("admin.listen", self.config.admin.listen))
        for name, where in listens:
            if where.port == 0:
                return f"{name}: workers above 1 need a fixed port (each would pick its own)"
            busy = port_in_use(where)
            if busy is not None:
                return f"{name} {where}: cannot listen: {busy}"
        return None

    def _run(self) -> int:
        log.info("starting %d workers (machine %s)", len(self.slots), self.machine)
        for slot in self.slots:
            self.spawn(slot)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(slot.ready for slot in self.slots):
            if self.stop_requested():
                return 0
            self.wait_ready(TICK)
            failed = [
                s for s in self.slots if s.proc is None or s.proc.poll() is not None
                or (s.ready_fd is None and not s.ready)  # closed its pipe without a word
            ]
            if failed:
                for slot in failed:
                    log.error("worker %d did not start (%s)", slot.index, self.ended(slot))
                return 1
            if time.monotonic() > deadline:
                log.error("workers not listening within %.0f s", START_TIMEOUT)
                return 1
        log.info("%d workers listening", len(self.slots))
        while True:
            if self.stop_requested():
                return 0
            for slot in self.slots:
                if not self.tend(slot):
                    return 1
            self.wait_ready(TICK)

    def stop_requested(self) -> bool:
        """Act on the signals received; True once asked to stop."""
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGHUP:
                log.info("SIGHUP: reloading %d workers", len(self.live()))
                for slot in self.live():
                    if slot.ready:
                        self.reload(slot)
                    else:  # SIGHUP would kill it before it handles it
                        slot.reload_pending = True
            else:
                log.info("%s: stopping %d workers", signal.Signals(sig).name, len(self.live()))
                return True
        return False

    def reload(self, slot: Slot) -> None:
        slot.reload_pending = False
        if slot.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGHUP)

    def ended(self, slot: Slot) -> str:
        """How a worker that closed its ready pipe or exited ended (waiting a little for it)."""
        if slot.proc is None:
            return "not started"
        with contextlib.suppress(subprocess.TimeoutExpired):
            slot.proc.wait(timeout=1.0)
        return exit_status(slot.proc.returncode)

    def live(self) -> list[Slot]:
        return [s for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def tend(self, slot: Slot) -> bool:
        """Notice a dead worker, restart it when due; False if it is crash-looping."""
        now = time.monotonic()
        if slot.proc is not None and slot.proc.poll() is not None:
            self.close_ready(slot)
            what = f"worker {slot.index} (pid {slot.proc.pid}) {exit_status(slot.proc.returncode)}"
            if self.metrics_dir is not None:  # its gauges no longer count; its counters do
                mark_process_dead(slot.proc.pid, self.metrics_dir)
            slot.proc = None
            if not self.schedule_restart(slot, now, what):
                return False
        if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
            broken = self.config_problem()
            if broken is not None:  # not the worker's fault: not counted, the others serve on
                log.error("worker %d not restarted, the config file is broken (retrying in"
                          " %.0f s):\n%s", slot.index, BROKEN_CONFIG_RETRY, broken)
                slot.restart_at = now + BROKEN_CONFIG_RETRY
                return True
            slot.restart_at = None
            slot.restarts.append(now)
            self.spawn(slot)
            if slot.proc is None:  # not even started (logged)
                return self.schedule_restart(slot, now, f"worker {slot.index} not started")
        return True

    def config_problem(self) -> str | None:
        """What is wrong with the config file now, if anything: a worker started on a broken
        file exits at once, and restarting it in a loop would stop the healthy ones too."""
        try:
            load_config(self.config_path)
        except ConfigError as exc:
            return str(exc)
        return None

    def schedule_restart(self, slot: Slot, now: float, what: str) -> bool:
        """A restart after a backoff, or False if the worker needed too many this minute."""
        slot.restarts = [t for t in slot.restarts if now - t < 60.0]
        if len(slot.restarts) >= RESTARTS_PER_MINUTE:
            log.error("%s after %d restarts within a minute: it is crash-looping, stopping the"
                      " gateway", what, len(slot.restarts))
            return False
        delay = min(RESTART_BACKOFF * 2 ** len(slot.restarts), RESTART_BACKOFF_MAX)
        log.error("%s: restarting it in %.1f s", what, delay)
        slot.restart_at = now + delay
        return True

    def spawn(self, slot: Slot) -> None:
        read_end, write_end = os.pipe()
        slot.ready = slot.reload_pending = False
        try:
            env = dict(os.environ)
            if self.metrics_dir is not None:
                env[MULTIPROC_ENV] = self.metrics_dir
            slot.proc = subprocess.Popen(
                self.command(slot, write_end), pass_fds=(write_end,), env=env
            )
        except OSError as exc:
            os.close(read_end)
            log.error("worker %d not started: %s", slot.index, exc)
            slot.proc = None
        else:
            slot.ready_fd = read_end
            log.info("worker %d started, pid %d", slot.index, slot.proc.pid)
        finally:
            os.close(write_end)

    def wait_ready(self, timeout: float) -> None:
        """Wait up to `timeout` for a worker to say it listens (also the loop's pause)."""
        waiting = {s.ready_fd: s for s in self.slots if s.ready_fd is not None}
        if not waiting:
            time.sleep(timeout)
            return
        readable, _, _ = select.select(list(waiting), [], [], timeout)
        for fd in readable:
            slot = waiting[fd]
            if os.read(fd, 64):
                slot.ready = True
                assert slot.proc is not None
                log.info("worker %d (pid %d) listening", slot.index, slot.proc.pid)
                if slot.reload_pending:
                    self.reload(slot)
            self.close_ready(slot)  # said ready, or closed it without: died (seen by tend)

    def close_ready(self, slot: Slot) -> None:
        if slot.ready_fd is not None:
            os.close(slot.ready_fd)
            slot.ready_fd = None

    def stop_all(self) -> None:
        """SIGTERM to every worker, STOP_GRACE for them to exit, then SIGKILL."""
        running = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop within %.0f s: killed", proc.pid, STOP_GRACE)
                proc.kill()
                proc.wait()
        for slot in self.slots:
            self.close_ready(slot)
            if slot.proc is not None and slot.proc.returncode not in (0, None):
                log.warning("worker %d (pid %d) %s", slot.index, slot.proc.pid,
                            exit_status(slot.proc.returncode))
        if running:
            log.info("workers stopped")


def exit_status(code: int | None) -> str:
    if code is None:
        return "not running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with status {code}"


def port_in_use(where: Listen) -> OSError | None:
    """The error binding `where` gives when some process listens there (a socket lingering in
    TIME_WAIT does not count, as it does not for the workers' SO_REUSEADDR)."""
    try:
        addresses = socket.getaddrinfo(
            where.host, where.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return None  # the workers will say what is wrong with the host
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return exc
    return None
