"""A PostgreSQL cluster kept by a helper process, so that a test can restart it at any time.

`EmbeddedPostgres.start` forks; a process whose gRPC threads are busy (a test
streaming to its own server while PostgreSQL goes down) may crash in the child
before `exec`, in gRPC's fork handlers. The helper, ``python -m tests.pg_keeper
DATA_DIR BIN_DIR``, runs no gRPC: it owns the `EmbeddedPostgres` and obeys one
command per line on stdin, answering one line on stdout:

    start   starts the server (also after a kill)   -> "<dsn> <postmaster pid>"
    stop    fast shutdown                            -> "stopped"
    kill    kill -9 of the postmaster, then reaping  -> "killed"

At the end of stdin it stops the server; if the helper dies, the server follows it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

from daily_aggregator.server.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]


class KeptPostgres:
    """The test's side of the helper: `async with KeptPostgres(data_dir, bin_dir) as pg`."""

    def __init__(self, data_dir: Path, bin_dir: Path) -> None:
        self._args = [str(data_dir), str(bin_dir)]
        self._helper: asyncio.subprocess.Process | None = None
        self.dsn = ""
        self.pid = 0

    async def __aenter__(self) -> Self:
        self._helper = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.pg_keeper",
            *self._args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        helper = self._helper
        assert helper is not None
        assert helper.stdin is not None
        helper.stdin.close()
        try:
            await asyncio.wait_for(helper.wait(), 60)
        finally:
            if helper.returncode is None:
                helper.kill()
                await helper.wait()

    async def _command(self, command: str) -> str:
        helper = self._helper
        assert helper is not None
        assert helper.stdin is not None
        assert helper.stdout is not None
        helper.stdin.write(f"{command}\n".encode())
        await helper.stdin.drain()
        line = await asyncio.wait_for(helper.stdout.readline(), 120)
        if not line:
            raise RuntimeError(f"the PostgreSQL helper exited on {command!r}")
        return line.decode().strip()

    async def start(self) -> str:
        """Start the server; return its DSN."""
        self.dsn, pid = (await self._command("start")).rsplit(" ", 1)
        self.pid = int(pid)
        return self.dsn

    async def stop(self) -> None:
        """Shut the server down (fast shutdown)."""
        assert await self._command("stop") == "stopped"

    async def kill(self) -> None:
        """Kill the postmaster with SIGKILL; PostgreSQL recovers from its WAL at the next start."""
        assert await self._command("kill") == "killed"


def main(data_dir: str, bin_dir: str) -> None:
    loop = asyncio.new_event_loop()
    postgres = EmbeddedPostgres(Path(data_dir), bin_dir=Path(bin_dir))
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "start":
                loop.run_until_complete(postgres.start())
                reply = f"{postgres.dsn} {postgres.pid}"
            elif command == "stop":
                loop.run_until_complete(postgres.stop())
                reply = "stopped"
            elif command == "kill":
                assert postgres.pid is not None
                os.kill(postgres.pid, signal.SIGKILL)
                loop.run_until_complete(postgres.stop())
                reply = "killed"
            else:
                raise SystemExit(f"unknown command {command!r}")
            print(reply, flush=True)
    finally:
        loop.run_until_complete(postgres.stop())
        loop.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
