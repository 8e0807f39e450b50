"""Where the server's log goes and how it looks: text lines, or one JSON object per line.

Either way every record goes to stderr. A record may carry structured data as
``extra={"fields": {...}}``: the text format shows only the message, the JSON format
adds each field to the object (the access log passes its fields this way).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from daily_aggregator.server.config import LOG_FORMATS

__all__ = ["TEXT_FORMAT", "WORKERS_TEXT_FORMAT", "JsonFormatter", "configure", "failed"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The text line: local time, level, logger, message."""
WORKERS_TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
"""The text line of a service with several processes: also the pid of the one writing."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    ``time`` (RFC 3339, UTC, microseconds), ``level`` (``debug`` ... ``critical``),
    ``logger``, ``pid`` (the process writing) and ``message``, then the record's
    ``fields``, and ``exception`` with the traceback when one is logged. Values JSON cannot
    hold are written as their ``str``.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            # The keys above describe the record itself; a field never replaces them.
            entry.update((k, v) for k, v in fields.items() if k not in entry)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, log_format: str, *, processes: bool = False) -> None:
    """Send every logger's records at `level` or above to stderr in `log_format`; with
    `processes` (a service of several worker processes) text lines also name their pid.

    Raises:
        ValueError: `log_format` is not one of LOG_FORMATS.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter(WORKERS_TEXT_FORMAT if processes else TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # warnings too come out in the chosen format


def failed(message: str) -> None:
    """Log why the service could not start, at ERROR on `daily_aggregator.server`."""
    logging.getLogger("daily_aggregator.server").error("%s", message)
