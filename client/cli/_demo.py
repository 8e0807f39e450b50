"""`daily-aggregator demo`: a realistic data set streamed into a running (or started) service."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import grpc

from daily_aggregator.client import (
    Dimension,
    Event,
    Granularity,
    Metric,
)
from daily_aggregator.client.cli._common import (
    EXIT_OK,
    EXIT_PARTIAL,
    UsageError,
    client_for,
    credentials_for,
    fail,
)
from daily_aggregator.client.cli._ingest import progress_bar
from daily_aggregator.client.cli._reports import print_breakdown, print_summary, print_uniques

DEFAULT_TARGET = "127.0.0.1:50051"
# --------------------------------------------------------------------------- demo


_COUNTRIES = [("JP", 30), ("US", 25), ("DE", 12), ("BR", 10), ("IN", 10), ("FR", 8), ("", 5)]


@dataclass
class _Learner:
    user_id: str
    country: str
    weight: float
    hour: float


@dataclass
class _DemoData:
    """A generated data set: learners of skewed activity, sessions minutes apart."""

    events: list[Event]
    first: datetime
    learners: list[_Learner] = field(default_factory=list)


def _generate(count: int, users: int, rng: random.Random, now: datetime) -> _DemoData:
    countries, weights = zip(*_COUNTRIES, strict=True)
    learners = [
        _Learner(
            user_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            country=rng.choices(countries, weights)[0],
            weight=rng.paretovariate(1.2),
            hour=rng.gauss(19, 3) % 24,
        )
        for _ in range(users)
    ]
    days = 21
    first = now - timedelta(days=days)
    activity = [learner.weight for learner in learners]
    events: list[Event] = []
    while len(events) < count:
        learner = rng.choices(learners, activity)[0]
        day = now.date() - timedelta(days=min(days - 1, int(rng.expovariate(1 / 7))))
        at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
            hours=(learner.hour + rng.gauss(0, 1.5)) % 24
        )
        for _ in range(min(rng.randint(3, 7), count - len(events))):
            if first <= at <= now:
                words = max(1, int(rng.lognormvariate(3, 0.6)))
                events.append(
                    Event(
                        user_id=learner.user_id,
                        word_count=words,
                        study_seconds=min(86_400, int(words * rng.uniform(6, 20))),
                        occurred_at=at,
                        country=learner.country,
                        idempotency_key=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    )
                )
            at += timedelta(minutes=rng.uniform(2, 6))
    events.sort(key=lambda e: e.occurred_at or now)
    return _DemoData(events, first, learners)


def _health(
    target: str, timeout: float, credentials: grpc.ChannelCredentials | None = None
) -> str | None:
    """The health status name of the service at `target`, or None when nothing answers."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options = [("grpc.enable_http_proxy", 0)]
    channel = (
        grpc.insecure_channel(target, options=options)
        if credentials is None
        else grpc.secure_channel(target, credentials, options=options)
    )
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
    except grpc.RpcError:
        return None
    finally:
        channel.close()
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class _Service:
    """A `daily-aggregator serve` child process on the embedded database."""

    def __init__(self, target: str, data_dir: Path | None) -> None:
        self._temporary = None if data_dir else tempfile.TemporaryDirectory(prefix="da-demo-")
        self.data_dir = data_dir or Path(self._temporary.name)  # type: ignore[union-attr]
        self.target = target
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daily_aggregator.server",
                "serve",
                "--listen",
                target,
                "--data-dir",
                str(self.data_dir),
                "--grace-seconds",
                "5",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        )

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._die(f"the service exited with code {self.process.returncode}")
            if _health(self.target, 1.0) == "SERVING":
                return
            time.sleep(0.2)
        self._die(f"the service did not become SERVING within {timeout:.0f} s")

    def _die(self, reason: str) -> NoReturn:
        self.stop()
        raise _DemoError(f"{reason}; its log ends:\n{self.log_tail()}")

    def log_tail(self) -> str:
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-15:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._temporary is not None:
            with contextlib.suppress(OSError):
                self._temporary.cleanup()
            self._temporary = None


class _DemoError(Exception):
    pass


def demo_command(args: argparse.Namespace) -> int:
    if args.events < 1:
        raise UsageError("--events must be at least 1")
    users = args.users if args.users is not None else max(5, args.events // 40)
    if users < 1:
        raise UsageError("--users must be at least 1")
    service: _Service | None = None
    credentials = credentials_for(args)
    if _health(args.target, 2.0, credentials) is None:
        if credentials is not None:
            raise UsageError(f"nothing answers at {args.target} over TLS")
        service = _Service(args.target, args.data_dir)
        fail(
            f"nothing answers at {args.target}: starting `daily-aggregator serve` there "
            f"(pid {service.process.pid}, data in {service.data_dir})"
        )
    try:
        if service is not None:
            try:
                service.wait_serving(180)
            except _DemoError as exc:
                fail(f"daily-aggregator demo: could not start the service: {exc}")
                return EXIT_PARTIAL
        fail(f"using the service at {args.target}")
        return _run_demo(args, users)
    finally:
        if service is not None:
            service.stop()
            fail(f"stopped the service it started (pid {service.process.pid})")


def _run_demo(args: argparse.Namespace, users: int) -> int:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    data = _generate(args.events, users, random.Random(args.seed), now)
    with client_for(args) as client:
        with progress_bar(total=len(data.events)) as progress, client.writer() as writer:
            progress.describe("demo")
            for written, event in enumerate(data.events, start=1):
                writer.write(event)
                progress.advance(written, written)
        result = writer.totals
        print(
            f"generated {len(data.events):,} events for {users:,} learners over 3 weeks; "
            f"inserted {result.inserted:,}, duplicates {result.duplicates:,}, "
            f"rejected {result.rejected:,}"
        )
        print()
        today = datetime(now.year, now.month, now.day, tzinfo=UTC)
        start, end = today - timedelta(days=13), today + timedelta(days=1)
        summary = client.summary(start, end, granularity=Granularity.DAY, time_zone="UTC")
        print_summary(summary, "Summary, daily, last 14 days (UTC)")
        uniques = client.uniques(start, end, granularity=Granularity.DAY, time_zone="UTC")
        print_uniques(uniques, "Unique learners, daily, last 14 days (UTC)")
        rows = client.breakdown(
            data.first,
            now + timedelta(seconds=1),
            dimension=Dimension.USER,
            metric=Metric.WORD_COUNT,
            limit=10,
        )
        print_breakdown(rows, "user", "words", "Top 10 learners by words, last 3 weeks")
    return EXIT_OK if not result.rejected else EXIT_PARTIAL
