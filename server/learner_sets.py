"""Sets of learners: compressed bitmaps of dense learner numbers.

Every learner the folder has seen has a number (`learners.learner`), handed out
densely, so the learners active in a rollup unit fit a roaring bitmap of a few
bytes each. Distinct counts are unions of such sets, computed here, never
estimated. Learners of events not folded yet may have no number; `Numbering`
gives them numbers of their own for the length of one answer, above every
stored one, so they are distinct from everyone else and from each other.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyroaring import BitMap

__all__ = ["LearnerSet", "Numbering", "dump", "load", "load_all", "union"]

LearnerSet = BitMap
"""A set of learner numbers."""

_FIRST_UNSTORED = 1 << 31
"""Learner numbers of the database are below this (it numbers with a 32-bit integer)."""


def load(data: bytes) -> LearnerSet:
    """A set as the rollups store it."""
    return BitMap.deserialize(data)


def load_all(stored: Iterable[bytes]) -> list[LearnerSet]:
    """Sets as the rollups store them, in one pass of C."""
    return list(map(BitMap.deserialize, stored))


def dump(learners: LearnerSet) -> bytes:
    """A set in the stored form, compacted first."""
    learners.run_optimize()
    return learners.serialize()


def union(sets: Iterable[LearnerSet]) -> LearnerSet:
    """Every learner of any of `sets`."""
    return BitMap.union(BitMap(), *sets)


class Numbering:
    """Learner numbers for the events of one answer: stored ones, or numbers of its own."""

    def __init__(self) -> None:
        self._unstored: dict[str, int] = {}

    def number(self, learner: int | None, user_id: str) -> int:
        """`learner` when the learner has a stored number, else one kept for `user_id`."""
        if learner is not None:
            return learner
        return self._unstored.setdefault(user_id, _FIRST_UNSTORED + len(self._unstored))

    def split(self, learners: LearnerSet) -> tuple[list[int], list[str]]:
        """The stored numbers in `learners`, and the user ids of the numbers given here."""
        names = {number: user_id for user_id, number in self._unstored.items()}
        stored = [n for n in learners if n < _FIRST_UNSTORED]
        return stored, [names[n] for n in learners.iter_equal_or_larger(_FIRST_UNSTORED)]
