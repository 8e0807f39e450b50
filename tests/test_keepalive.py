"""Keepalive and connection age: what the server asks of clients, and what the client does."""

from __future__ import annotations

import pytest

from daily_aggregator.client._channel import KEEPALIVE_OPTIONS, channel_options
from daily_aggregator.server.config import Settings
from daily_aggregator.server.connections import server_options


def test_the_bundled_client_pings_within_what_the_server_accepts() -> None:
    client = dict(KEEPALIVE_OPTIONS)
    server = dict(server_options(Settings()))
    # A client pinging more often than this, or between calls when the server forbids it,
    # is sent GOAWAY "too_many_pings" and loses its connection.
    assert (
        client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    )
    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1


def test_options_passed_to_the_client_replace_its_own_by_name() -> None:
    options = channel_options(
        [("grpc.keepalive_time_ms", 120_000), ("grpc.primary_user_agent", "x")]
    )
    assert [value for name, value in options if name == "grpc.keepalive_time_ms"] == [120_000]
    assert ("grpc.primary_user_agent", "x") in options


def test_connection_age_comes_from_the_flags_and_zero_keeps_connections() -> None:
    settings = Settings.from_args(
        ["--max-connection-age-seconds", "90", "--max-connection-age-grace-seconds", "1200"],
        env={},
    )
    options = dict(server_options(settings))
    assert (options["grpc.max_connection_age_ms"], options["grpc.max_connection_age_grace_ms"]) == (
        90_000,
        1_200_000,
    )
    forever = Settings.from_args([], env={"DAILY_AGGREGATOR_MAX_CONNECTION_AGE_SECONDS": "0"})
    assert "grpc.max_connection_age_ms" not in dict(server_options(forever))


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--workers", "2", "--listen", "unix:/tmp/da.sock"], "needs a TCP --listen address"),
    ],
)
def test_worker_counts_that_cannot_work_are_usage_errors(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        Settings.from_args(argv, env={})
    assert exited.value.code == 2
    assert error in capsys.readouterr().err


def test_workers_come_from_the_flag_or_the_environment() -> None:
    assert Settings.from_args([], env={}).workers == 1
    assert Settings.from_args([], env={"DAILY_AGGREGATOR_WORKERS": "3"}).workers == 3
    assert (
        Settings.from_args(["--workers", "4"], env={"DAILY_AGGREGATOR_WORKERS": "3"}).workers == 4
    )
