"""A rollout's state, kept as one tag of the registered model so that every replica and a restarted
controller read the same step, start time and decisions.

Only the controller (or an operator through the admin API) writes it; replicas read it to know the challenger's
share of traffic and the mode.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from modelops.errors import InvalidInput

ROLLOUT_TAG = "modelops.rollout"
MODES = ("canary", "shadow")
MAX_DECISIONS = 30  # a registry tag holds a few kB: keep the latest decisions
RUNNING, PROMOTED, ABORTED = "running", "promoted", "aborted"
ROLLOUT_ID = re.compile(r"[0-9a-f]{8}")


@dataclass(frozen=True)
class Decision:
    """One step of the rollout's history: what was decided, at which step, and why."""

    at: float
    step: int
    percent: int
    verdict: str  # start | pass | wait | fail | promote | abort
    reason: str


@dataclass(frozen=True)
class RolloutState:
    id: str
    version: str  # the challenger
    champion_version: str | None
    mode: str
    steps: tuple[int, ...]
    interval_s: float
    state: str
    step: int
    started_at: float
    step_started_at: float
    who: str
    decisions: tuple[Decision, ...] = field(default=())
    shadow: dict[str, Any] | None = None  # the latest shadow comparison (agreement, |delta p|, copies)
    analysis: dict[str, Any] | None = None  # the numbers behind the latest decision (per version)

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def percent(self) -> int:
        """The challenger's share of traffic now (sampled share of copies in shadow mode)."""
        return self.steps[self.step] if self.running else 0

    def decided(self, verdict: str, reason: str, **changes: Any) -> RolloutState:
        """This state with a decision appended (and `changes` applied after it)."""
        decision = Decision(round(time.time(), 3), self.step, self.percent, verdict, reason)
        return replace(self, decisions=(*self.decisions, decision)[-MAX_DECISIONS:], **changes)

    def render(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["percent"] = self.percent
        body["steps"] = list(self.steps)
        body["step_ends_at"] = self.step_started_at + self.interval_s if self.running else None
        return body

    @classmethod
    def parse(cls, raw: str | None) -> RolloutState | None:
        """The state in a tag value; None for no tag (a malformed one is treated as no rollout)."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            data["steps"] = tuple(int(p) for p in data["steps"])
            data["decisions"] = tuple(Decision(**d) for d in data.get("decisions", []))
            state = cls(**data)
        except (ValueError, TypeError, KeyError):
            return None
        # the id names a run and files (the report): only what new_rollout makes
        if not (
            isinstance(state.id, str) and ROLLOUT_ID.fullmatch(state.id) and str(state.version).isdigit()
        ):
            return None
        return state


def parse_steps(value: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Traffic percentages of a rollout's steps, 1..100, one of them 100 (the whole traffic, after which the
    challenger is promoted); taken in increasing order, duplicates once."""
    try:
        steps = tuple(int(p) for p in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise InvalidInput("steps must be whole percentages, e.g. 5,25,50,100", field="steps") from None
    if not steps or any(not 1 <= p <= 100 for p in steps):
        raise InvalidInput("every step must be a percentage between 1 and 100", field="steps")
    if 100 not in steps:
        raise InvalidInput("the last step must be 100 (the whole traffic)", field="steps")
    return tuple(sorted(set(steps)))


def new_rollout(
    version: str, champion: str | None, mode: str, steps: tuple[int, ...], interval_s: float, who: str
) -> RolloutState:
    import secrets

    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}", field="mode")
    if not 1 <= interval_s <= 86_400:
        raise InvalidInput("interval must be between 1 s and 1 day", field="interval_s")
    now = round(time.time(), 3)
    state = RolloutState(
        id=secrets.token_hex(4),
        version=version,
        champion_version=champion,
        mode=mode,
        steps=steps,
        interval_s=interval_s,
        state=RUNNING,
        step=0,
        started_at=now,
        step_started_at=now,
        who=who,
    )
    return state.decided("start", f"{mode} rollout of v{version} over v{champion}: steps {list(steps)}")
