"""Named SQL statements, read once from the `sql/` folder."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

_MIGRATION_NAME = re.compile(r"(\d{4})_(\w+)\.sql")


_names: dict[str, str] = {}


@functools.cache
def query(name: str) -> str:
    """The text of `sql/<name>.sql`."""
    text = resources.files("daily_aggregator.sql").joinpath(f"{name}.sql").read_text()
    _names[text] = name
    return text


def statement_name(text: str) -> str | None:
    """The name of a statement `query` returned, from its text; None for any other text."""
    return _names.get(text)


@dataclass(frozen=True)
class Migration:
    """One numbered schema change, `sql/migrations/NNNN_name.sql`."""

    version: int
    name: str
    sql: str


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Every migration, in version order."""
    found = []
    for entry in resources.files("daily_aggregator.sql.migrations").iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(
            f"migrations must be numbered 1, 2, 3, ... without gaps; found {versions}"
        )
    return tuple(found)
