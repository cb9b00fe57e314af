"""Rollout operations on the registry: start, advance, abort, promote. The admin API and the controller share them.

The state is one registered-model tag (state.py) plus the challenger alias. Each write re-reads the state first and
refuses when it changed underneath (another controller, an operator), so two writers cannot both decide a step.

When a rollout ends the challenger alias stays on the version last rolled out: removing an alias needs MANAGE on
the registered model, which would also let its holder delete the model, and the principal that drives rollouts
(the operator, whose credential model servers hold) must not have that. Replicas route to the challenger only while
the state says `running`, so the alias left behind is a label, not traffic.

Every decision also writes the rollout report (report.py) into the rollout's own MLflow run, in the experiment
`modelops-rollouts`, linked from the challenger version's tag `modelops.rollout_run` (not into the trainer's run:
write access to the trainer's experiment would let the operator rewrite any run's files, model files included).
"""

from __future__ import annotations

import logging

from modelops.errors import InvalidInput, ModelOpsError, RolloutConflict
from modelops.registry import Registry
from modelops.rollout import report
from modelops.rollout.state import ABORTED, PROMOTED, ROLLOUT_TAG, RolloutState, new_rollout

log = logging.getLogger(__name__)


class Rollouts:
    """The rollout of one registered model: its champion alias, its challenger alias and the state tag."""

    def __init__(self, registry: Registry, challenger_alias: str) -> None:
        if challenger_alias == registry.alias:
            raise InvalidInput(
                "the challenger alias must differ from the served alias", field="challenger_alias"
            )
        self.champion = registry
        self.challenger = registry.for_alias(challenger_alias)

    @property
    def who(self) -> str:
        return self.champion.writer.username or "anonymous"

    def current(self) -> RolloutState | None:
        return RolloutState.parse(self.champion.model_tag(ROLLOUT_TAG))

    def running(self) -> RolloutState:
        state = self.current()
        if state is None or not state.running:
            raise RolloutConflict("no rollout is running", field="rollout")
        return state

    def _check(self, expect: RolloutState) -> None:
        stored = self.current()
        if stored is None or (stored.id, stored.step, stored.state) != (expect.id, expect.step, expect.state):
            raise RolloutConflict("the rollout changed meanwhile (another controller or an operator)")

    def save(self, state: RolloutState, *, expect: RolloutState | None = None) -> RolloutState:
        """Write `state`; with `expect`, only if the stored state is still that one (same rollout and step)."""
        if expect is not None:
            self._check(expect)
        self.champion.set_model_tag(ROLLOUT_TAG, state.render())
        last = state.decisions[-1] if state.decisions else None
        if last is not None:
            log.info(
                "rollout %s of v%s: %s at step %d (%d%%): %s",
                state.id,
                state.version,
                last.verdict,
                last.step + 1,
                last.percent,
                last.reason,
            )
        self.report(state)
        return state

    def report(self, state: RolloutState) -> None:
        """Write the rollout report into the rollout's run (Registry.rollout_run), best effort: a registry that
        refuses or is down, or anything else, costs the report, never the decision, which is already saved."""
        try:
            run_id = self.champion.rollout_run(state.id, state.version)
            json_path, markdown_path = report.paths(state)
            self.champion.put_run_artifacts(
                run_id, {json_path: report.as_json(state), markdown_path: report.as_markdown(state)}
            )
            if not state.running:  # ended only once its last report is in: an ended run's report is final
                self.champion.finish_run(run_id, "FINISHED" if state.state == PROMOTED else "KILLED")
        except ModelOpsError as exc:
            log.warning("rollout %s: no report written: %s", state.id, exc.message)
        except Exception:
            log.exception("rollout %s: no report written", state.id)

    def start(self, version: str, mode: str, steps: tuple[int, ...], interval_s: float) -> RolloutState:
        """Point the challenger alias at `version` and start at the first step. One rollout at a time."""
        stored = self.current()
        if stored is not None and stored.running:
            raise RolloutConflict(
                f"rollout {stored.id} of v{stored.version} is running: abort or promote it first",
                field="version",
            )
        champion = self.champion.alias_version()
        if champion is None:
            raise RolloutConflict(
                f"no version holds {self.champion.alias!r}: deploy one before rolling out", field="version"
            )
        target = self.champion.get_version(version)
        if (
            target.version == champion.version
        ):  # a conflict with the registry's state, as a running rollout is
            raise RolloutConflict(f"v{version} is already the champion", field="version")
        state = new_rollout(target.version, champion.version, mode, steps, interval_s, self.who)
        self.challenger.set_alias(target.version, action="rollout-start", why=f"rollout {state.id} ({mode})")
        return self.save(state)

    def abort(self, reason: str, *, expect: RolloutState | None = None) -> RolloutState:
        """Stop the running rollout: the champion takes all traffic again."""
        state = expect or self.running()
        done = state.decided("abort", reason, state=ABORTED)
        return self.save(done, expect=state)

    def promote(self, reason: str, *, expect: RolloutState | None = None) -> RolloutState:
        """Make the challenger the champion (the old one goes into the rollback history) and end the rollout."""
        state = expect or self.running()
        self._check(state)
        self.champion.move_alias(state.version, action="rollout-promote", why=f"rollout {state.id}: {reason}")
        return self.save(state.decided("promote", reason, state=PROMOTED))

    def advance(self, state: RolloutState, reason: str, now: float) -> RolloutState:
        """The step passed: on to the next one (the caller promotes after the last)."""
        return self.save(
            state.decided("pass", reason, step=state.step + 1, step_started_at=now), expect=state
        )

    def extend(self, state: RolloutState, reason: str, now: float) -> RolloutState:
        """The step had too little traffic to decide: run it again."""
        return self.save(state.decided("wait", reason, step_started_at=now), expect=state)
