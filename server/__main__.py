"""`python -m daily_aggregator.server`: the `daily-aggregator` command, as its script runs it.

The command line lives in `daily_aggregator.client.cli`; its `serve` command imports the
server lazily, so the client commands never load it.
"""

from __future__ import annotations

import sys

from daily_aggregator.client.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
