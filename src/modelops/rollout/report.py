"""The rollout report: the state, the latest analysis and (in shadow mode) the comparison of the challenger with the
champion, as JSON and Markdown. The controller (and an operator's abort or promote) writes it at every decision into
the rollout's MLflow run (experiment `modelops-rollouts`, linked from the challenger version's tag
`modelops.rollout_run`, tagged with the challenger's run), under `rollout/<id>/`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from modelops.rollout.state import RolloutState

FOLDER = "rollout"


def paths(state: RolloutState) -> tuple[str, str]:
    """Where the JSON and the Markdown report go inside the rollout's run artifacts."""
    return f"{FOLDER}/{state.id}/report.json", f"{FOLDER}/{state.id}/report.md"


def as_json(state: RolloutState) -> bytes:
    return json.dumps(state.to_dict(), indent=2, sort_keys=True).encode()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    # a reason is free text (an operator's --why): no line breaks, no table cells, no markup of its own
    text = "".join(c if c.isprintable() else " " for c in text)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("`", "\\`")


def as_markdown(state: RolloutState) -> bytes:
    """A page a reviewer reads in MLflow's artifact view."""
    champion = f"v{state.champion_version}" if state.champion_version else "no champion"
    lines = [
        f"# Rollout {_cell(state.id)}: v{_cell(state.version)} over {_cell(champion)} ({_cell(state.mode)}): "
        f"{_cell(state.state)}",
        "",
        f"Started {_when(state.started_at)} by {_cell(state.who)}; steps "
        f"{', '.join(f'{p}%' for p in state.steps)}, {state.interval_s:g} s each.",
    ]
    if state.running:
        lines.append(f"Now at step {state.step + 1} of {len(state.steps)} ({state.percent}%).")
    numbers = state.analysis or {}
    if numbers:
        lines += [
            "",
            "## Latest analysis (the step's window)",
            "",
            f"| | challenger v{state.version} | champion {champion} |",
            "|---|---|---|",
            f"| requests | {_cell(numbers.get('challenger_requests'))} | "
            f"{_cell(numbers.get('champion_requests'))} |",
            f"| error ratio | {_cell(numbers.get('challenger_error_ratio'))} | "
            f"{_cell(numbers.get('champion_error_ratio'))} |",
            f"| p99 latency (ms) | {_cell(numbers.get('challenger_p99_ms'))} | "
            f"{_cell(numbers.get('champion_p99_ms'))} |",
            "",
            f"PSI of the predicted probabilities against the champion's: {_cell(numbers.get('psi'))}",
        ]
    shadow = state.shadow or {}
    if shadow:
        copies = shadow.get("copies") or {}
        lines += [
            "",
            "## Shadow comparison (the champion answered; the challenger got copies)",
            "",
            "| rows compared | agreement rate | mean abs delta p | copies compared | dropped | errors | timeouts |",
            "|---|---|---|---|---|---|---|",
            "| "
            + " | ".join(
                _cell(v)
                for v in (
                    shadow.get("rows_compared"),
                    shadow.get("agreement_rate"),
                    shadow.get("mean_abs_delta_p"),
                    copies.get("compared"),
                    copies.get("dropped"),
                    copies.get("error"),
                    copies.get("timeout"),
                )
            )
            + " |",
        ]
    lines += ["", "## Decisions", "", "| time | step | share | verdict | reason |", "|---|---|---|---|---|"]
    lines += [
        f"| {_when(d.at)} | {d.step + 1} | {d.percent}% | {_cell(d.verdict)} | {_cell(d.reason)} |"
        for d in state.decisions
    ]
    return ("\n".join(lines) + "\n").encode()
