"""The `daily-aggregator` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from daily_aggregator.server.app import serve
from daily_aggregator.server.config import Settings


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `daily-aggregator` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="daily-aggregator",
        description="Learning-activity aggregation over gRPC.",
        epilog="Run `daily-aggregator COMMAND --help` for a command's options.",
    )
    parser.add_argument("command", choices=["serve"], help="serve: run the gRPC service")
    parsed = parser.parse_args(args[:1])
    if parsed.command == "serve":
        settings = Settings.from_args(args[1:])
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
