"""Alias history: which versions held an alias before, and where `rollback` goes. Pure logic, no I/O.

The history lives in a registered-model tag (`modelops.alias.<alias>.history`, comma-separated versions, oldest
first) that only the trainer and operator principals may write (see modelops.auth).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

HISTORY_TAG = "modelops.alias.{alias}.history"
HISTORY_MAX = 50


@dataclass
class AliasHistory:
    """Earlier holders of one alias, oldest first, at most HISTORY_MAX."""

    versions: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> AliasHistory:
        return cls([v.strip() for v in (raw or "").split(",") if v.strip().isdigit()])

    def render(self) -> str:
        return ",".join(self.versions[-HISTORY_MAX:])

    def moved(self, previous: str | None, target: str) -> AliasHistory:
        """The history after the alias moves from `previous` to `target` (unchanged if it does not move)."""
        if previous is None or previous == target:
            return AliasHistory(list(self.versions))
        return AliasHistory([*self.versions, previous][-HISTORY_MAX:])

    def rollback(self, current: str | None, exists: Callable[[str], bool]) -> tuple[str, AliasHistory] | None:
        """(the version to roll back to, the history after it) skipping the current holder and deleted
        versions; None when there is nothing to go back to."""
        remaining = list(self.versions)
        while remaining:
            candidate = remaining.pop()
            if candidate == current or not exists(candidate):
                continue
            return candidate, AliasHistory(remaining)
        return None
