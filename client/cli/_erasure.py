"""`delete-user`: erase a learner, once the user has confirmed it."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from daily_aggregator.client.cli._common import EXIT_OK, EXIT_PARTIAL, UsageError, client_for, fail


def delete_user_command(args: argparse.Namespace) -> int:
    """Erase `args.user_id` after a yes on the terminal (or with --yes); print what went."""
    if not args.yes and not _confirmed(args.user_id):
        fail("daily-aggregator delete-user: not erased")
        return EXIT_PARTIAL
    with client_for(args) as client:
        result = client.delete_user(args.user_id)
    erased_at = _utc(result.erased_at)
    if args.json:
        print(
            json.dumps(
                {
                    "user_id": args.user_id,
                    "deleted_events": result.deleted_events,
                    "erased_at": erased_at,
                },
                indent=2,
            )
        )
    else:
        events = "event" if result.deleted_events == 1 else "events"
        print(f"erased learner {args.user_id}: {result.deleted_events:,} {events} deleted")
        print(f"erased_at: {erased_at} (their events from before then are refused from now on)")
    return EXIT_OK


def _confirmed(user_id: str) -> bool:
    """Whether the user typed yes; a stdin that is no terminal cannot say it."""
    if not sys.stdin.isatty():
        raise UsageError(
            "refusing to erase without confirmation: stdin is not a terminal; pass --yes"
        )
    print(
        f"Erase learner {user_id}? Every stored event of theirs is deleted and their events "
        "before now are refused from then on; this cannot be undone. [y/N] ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
