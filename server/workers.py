"""Several server processes on one port: the supervisor and its workers.

`serve --workers N` with N above 1 makes the serving process a supervisor that serves no
RPC itself. It

1. reserves the address: binds it with SO_REUSEADDR but neither SO_REUSEPORT nor
   listen(), so port 0 becomes the one free port every worker will share. The kernel
   refuses that bind while anyone listens on the port, so a second service on a port
   already served fails with "address in use", as it does against a single process;
2. starts the embedded PostgreSQL (unless a database URL is given), waits for it and
   applies the migrations, once;
3. starts N workers, ``python -m daily_aggregator.server.workers``, telling each its
   settings (the shared address, the database URL) on its stdin. A worker binds the port
   with SO_REUSEPORT, and the kernel spreads new connections over the workers listening;
   it runs its own folder, and the fold lock (server/folding.py) lets one of them fold at
   a time. It says on its stdout when it serves;
4. logs ``serving daily_aggregator.v1.AggregatorService on port P with N workers`` once
   they all serve;
5. starts another worker in place of one that exits, after a back-off that doubles with
   each quick death (from `BACKOFF_FIRST_SECONDS` up to `BACKOFF_MAX_SECONDS`), while the
   others keep serving;
6. on SIGTERM or SIGINT sends every worker SIGTERM: each reports NOT_SERVING, refuses new
   RPCs, lets those in flight finish within the grace period and exits. A worker still
   running `EXIT_MARGIN_SECONDS` after the grace period is killed. Then the supervisor
   stops the embedded PostgreSQL and returns.

Workers run in a process group of their own, so a terminal's Ctrl-C reaches only the
supervisor, which stops them in order; the kernel sends them SIGTERM when the supervisor
dies (``PR_SET_PDEATHSIG``), even by SIGKILL.

Before the first worker listens, and whenever none is listening (all died at once), the
reservation alone does not keep out another service started at that very moment with
``--workers`` above 1, since its workers could bind the port beside these: the kernel
cannot tell one service's SO_REUSEPORT sockets from another's of the same user.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO

import asyncpg

from daily_aggregator.server import metrics
from daily_aggregator.server.app import (
    SERVICE_NAME,
    StartupError,
    apply_migrations,
    configure_logging,
    database,
    postgres,
    start_server,
)
from daily_aggregator.server.config import Settings
from daily_aggregator.server.database import CONNECTION_ERRORS
from daily_aggregator.server.queries import query

__all__ = [
    "BACKOFF_FIRST_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "EXIT_MARGIN_SECONDS",
    "PortReservation",
    "supervise",
]

log = logging.getLogger(__name__)

BACKOFF_FIRST_SECONDS = 0.5
"""Wait before starting a worker in place of one that died."""

BACKOFF_MAX_SECONDS = 30.0
"""The longest wait before a restart: the wait doubles with each quick death up to this."""

STABLE_SECONDS = 60.0
"""A worker that served this long before dying died no quick death: the wait starts over."""

EXIT_MARGIN_SECONDS = 10.0
"""After the grace period, how long a worker may take to stop folding and close its pool."""

_WORKER_MAIN = "import sys; from daily_aggregator.server.workers import main; sys.exit(main())"
_READY = "ready"
_ERROR = "error "
_PR_SET_PDEATHSIG = 1


class PortReservation:
    """The listen address bound without listening, for as long as the supervisor runs.

    Attributes:
        port: the port reserved; a free one when the address asked for port 0.
        listen: the address with that port, for the workers to bind.

    Raises:
        StartupError: someone listens on the port already, or the address is invalid.
    """

    def __init__(self, listen: str) -> None:
        host, _, port_text = listen.rpartition(":")
        self._sockets: list[socket.socket] = []
        try:
            port = int(port_text)
            infos = socket.getaddrinfo(
                host.strip("[]") or None,
                port,
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )
            families = {info[0] for info in infos}
            for family, kind, protocol, _, address in infos:
                reservation = socket.socket(family, kind, protocol)
                self._sockets.append(reservation)
                reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # A lone IPv6 wildcard covers IPv4 too, as gRPC binds it; beside an
                    # IPv4 address of its own it must not, or the two would collide.
                    v6only = 1 if socket.AF_INET in families else 0
                    reservation.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
                reservation.bind((address[0], port, *address[2:]))
                port = reservation.getsockname()[1]
        except (OSError, ValueError) as exc:
            self.close()
            raise StartupError(f"cannot listen on {listen}: address in use or invalid") from exc
        self.port: int = port
        self.listen = f"{host}:{port}"

    def close(self) -> None:
        """Give the address back."""
        for reservation in self._sockets:
            reservation.close()
        self._sockets.clear()


async def supervise(settings: Settings) -> None:
    """Run `settings.workers` worker processes on one port until SIGTERM or SIGINT.

    Raises:
        StartupError: the address is taken, the database is out of reach, or a worker
            could not start (its own reason).
    """
    await _Supervisor(settings).run()


@dataclass(frozen=True)
class _Assignment:
    """What a worker is told on its stdin."""

    settings: Settings
    number: int
    supervisor_pid: int


class _WorkerFailed(Exception):
    """A worker could not be started, or exited before it served."""


class _Worker:
    """One of the supervisor's places for a worker; its process is replaced when it dies."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.quick_deaths = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class _Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stopping = asyncio.Event()
        self._workers = [_Worker(number) for number in range(1, settings.workers + 1)]
        self._keepers: list[asyncio.Task[None]] = []
        # With metrics, the workers count into files here and the supervisor serves their sum.
        self._metrics_dir: str | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        reservation = PortReservation(self._settings.listen)
        try:
            async with postgres(self._settings) as dsn, self._metrics():
                await self._prepare(dsn)
                assigned = dataclasses.replace(
                    self._settings, listen=reservation.listen, database_url=dsn
                )
                try:
                    await self._serve(assigned, reservation.port)
                finally:
                    await self._drain()
        finally:
            reservation.close()
        log.info("stopped")

    @contextlib.asynccontextmanager
    async def _metrics(self) -> AsyncIterator[None]:
        """With --metrics-listen, serve every worker's metrics from their shared files."""
        listen = self._settings.metrics_listen
        if listen is None:
            yield
            return
        self._metrics_dir = tempfile.mkdtemp(prefix="daily-aggregator-metrics-")
        try:
            try:
                endpoint = metrics.MetricsEndpoint.start(listen, processes_dir=self._metrics_dir)
            except (OSError, ValueError) as exc:
                raise StartupError(f"cannot serve metrics on {listen}: {exc}") from exc
            host = listen.rpartition(":")[0]
            log.info("Prometheus metrics at http://%s:%d/metrics", host, endpoint.port)
            try:
                yield
            finally:
                await endpoint.stop()
        finally:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    async def _prepare(self, dsn: str) -> None:
        """Migrate once for every worker, and warn when their pools could exhaust PostgreSQL."""
        try:
            conn = await asyncpg.connect(dsn)
            try:
                await apply_migrations(conn)
                available: int = await conn.fetchval(query("connection_limit"))
            finally:
                await conn.close()
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StartupError(f"cannot use PostgreSQL: {exc}") from exc
        needed = self._settings.workers * self._settings.pool_max_size
        if needed > available:
            log.warning(
                "%d workers may open %d connections each, %d in all, but PostgreSQL allows"
                " %d: calls will fail when the pools fill up; run fewer workers",
                self._settings.workers,
                self._settings.pool_max_size,
                needed,
                available,
            )

    async def _serve(self, assigned: Settings, port: int) -> None:
        """Start every worker, keep them running until asked to stop."""
        starting = asyncio.create_task(self._start_all(assigned))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        await starting
        log.info("serving %s on port %d with %d workers", SERVICE_NAME, port, len(self._workers))
        self._keepers = [asyncio.create_task(self._keep(w, assigned)) for w in self._workers]
        await self._stopping.wait()
        log.info("shutting down; in-flight RPCs have %.0f s to finish", assigned.grace_seconds)

    async def _start_all(self, assigned: Settings) -> None:
        """Start every worker and return once they all serve.

        Raises:
            StartupError: one exited first (the others are stopped by `_drain`).
        """
        try:
            async with asyncio.TaskGroup() as group:
                for worker in self._workers:
                    group.create_task(self._start(worker, assigned))
        except ExceptionGroup as failed:
            first = failed.exceptions[0]
            if isinstance(first, _WorkerFailed):
                raise StartupError(str(first)) from None
            raise

    async def _start(self, worker: _Worker, assigned: Settings) -> None:
        """Start `worker`'s process and return once it serves.

        Raises:
            _WorkerFailed: it exited first; the reason it gave, or its exit status.
        """
        assignment = _Assignment(assigned, worker.number, supervisor_pid=os.getpid())
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # the modules of the working directory must not shadow the installed
                "-c",
                _WORKER_MAIN,
                env=self._worker_environment(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                process_group=0,
            )
        except OSError as exc:
            raise _WorkerFailed(f"cannot start worker {worker.number}: {exc}") from exc
        worker.process = process
        worker.started = asyncio.get_running_loop().time()
        assert process.stdin is not None
        assert process.stdout is not None
        log.info("worker %d started, pid %d", worker.number, process.pid)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(pickle.dumps(assignment))
            await process.stdin.drain()
        process.stdin.close()
        report = (await process.stdout.readline()).decode().rstrip("\n")
        if report == _READY:
            return
        code = await process.wait()
        if report.startswith(_ERROR):
            raise _WorkerFailed(report.removeprefix(_ERROR))
        raise _WorkerFailed(
            f"worker {worker.number} (pid {process.pid}) exited with {_status(code)}"
            " before it served"
        )

    def _worker_environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self._metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        return env

    async def _keep(self, worker: _Worker, assigned: Settings) -> None:
        """Start another process whenever `worker`'s exits, after a back-off."""
        loop = asyncio.get_running_loop()
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self._metrics_dir is not None:
                metrics.process_exited(worker.process.pid, self._metrics_dir)
            served = loop.time() - worker.started
            worker.quick_deaths = 0 if served >= STABLE_SECONDS else worker.quick_deaths + 1
            delay = min(
                BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, worker.quick_deaths - 1)
            )
            log.warning(
                "worker %d (pid %d) exited with %s; starting another in %.1f s",
                worker.number,
                worker.process.pid,
                _status(code),
                delay,
            )
            await asyncio.sleep(delay)
            try:
                await self._start(worker, assigned)
            except _WorkerFailed as exc:
                log.warning("%s", exc)

    async def _drain(self) -> None:
        """Stop every worker: SIGTERM, the grace period and the margin, then SIGKILL."""
        for keeper in self._keepers:
            keeper.cancel()
        for keeper in self._keepers:
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        running = [w.process for w in self._workers if w.running and w.process is not None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not running:
            return
        waits = [asyncio.ensure_future(process.wait()) for process in running]
        _, late = await asyncio.wait(
            waits, timeout=self._settings.grace_seconds + EXIT_MARGIN_SECONDS
        )
        for process, wait in zip(running, waits, strict=True):
            if wait in late:
                log.warning("worker pid %d did not stop in time; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await wait


def _status(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


# --------------------------------------------------------------------------- the worker


def main() -> int:
    """A worker: read the assignment on stdin, serve until SIGTERM, report on stdout."""
    assignment: _Assignment = pickle.load(sys.stdin.buffer)
    _stop_with_supervisor(assignment.supervisor_pid)
    configure_logging(assignment.settings)
    # Only the report goes to the supervisor: anything else written to stdout goes to the log.
    report = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        asyncio.run(_work(assignment, report))
    except StartupError as exc:
        _say(report, f"{_ERROR}{exc}")
        return 1
    except asyncio.CancelledError:
        pass  # stopped before it served
    return 0


async def _work(assignment: _Assignment, report: IO[str]) -> None:
    settings = assignment.settings
    stopping = asyncio.Event()
    startup = asyncio.current_task()
    assert startup is not None
    serving = False

    def on_signal() -> None:
        # Until it serves there is nothing to drain: give up the start-up at once.
        if serving:
            stopping.set()
        else:
            startup.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    async with database(settings, migrations=False) as pool:
        running = await start_server(pool, settings, reuse_port=True, serve_metrics=False)
        serving = True
        log.info("worker %d ready", assignment.number)
        _say(report, _READY)
        await stopping.wait()
        await running.stop(settings.grace_seconds)
    log.info("worker %d stopped", assignment.number)


def _say(report: IO[str], line: str) -> None:
    with contextlib.suppress(OSError):  # a supervisor gone sends SIGTERM anyway
        report.write(line + "\n")
        report.flush()


def _stop_with_supervisor(supervisor_pid: int) -> None:
    """Have the kernel send this process SIGTERM when the supervisor dies."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    if prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The supervisor may have died before the setting took effect.
    if os.getppid() != supervisor_pid:
        sys.exit(1)
