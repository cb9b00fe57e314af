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


AUDIT_PREFIX = "modelops.audit."
ACTIONS = ("promotion", "deploy", "rollback", "approval", "rollout")


@dataclass(frozen=True)
class AliasMove:
    """One audit record: who moved which alias, when, why, from which version to which."""

    when_ms: int
    alias: str
    action: str
    who: str
    from_version: str | None
    to_version: str
    why: str

    def key(self, nonce: str) -> str:
        # registered-model tags are the store: sortable by time, unique by nonce
        return f"{AUDIT_PREFIX}{self.when_ms:013d}.{nonce}"

    def to_dict(self) -> dict[str, object]:
        import datetime

        when = datetime.datetime.fromtimestamp(self.when_ms / 1000, tz=datetime.UTC)
        return {
            "when": when.isoformat(timespec="milliseconds"),
            "when_ms": self.when_ms,
            "alias": self.alias,
            "action": self.action,
            "who": self.who,
            "from": self.from_version,
            "to": self.to_version,
            "why": self.why,
        }

    def render(self) -> str:
        import json

        return json.dumps(
            {
                "alias": self.alias,
                "action": self.action,
                "who": self.who,
                "from": self.from_version,
                "to": self.to_version,
                "why": self.why[:2000],
            }
        )

    @classmethod
    def parse(cls, key: str, value: str) -> AliasMove | None:
        """None for a tag that is not a well-formed record."""
        import json

        try:
            when_ms = int(key[len(AUDIT_PREFIX) :].split(".", 1)[0])
            data = json.loads(value)
            return cls(
                when_ms,
                str(data["alias"]),
                str(data["action"]),
                str(data["who"]),
                None if data.get("from") is None else str(data["from"]),
                str(data["to"]),
                str(data.get("why", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None
