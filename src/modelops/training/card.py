"""Model cards: what a version is, how it was made and judged, as JSON (for tools) and Markdown (for people).

The trainer logs `model_card.json` and `model_card.md` with every run it registers; the model server serves a
version's card (`GET /models/{version}/card`) with its alias history from the audit trail added.
"""

from __future__ import annotations

import json
from typing import Any

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"


def build_card(
    *,
    model_name: str,
    version: str,
    run_id: str,
    algorithm: str,
    params: dict[str, Any],
    data: dict[str, Any],
    metrics: dict[str, float],
    evaluation: dict[str, Any] | None,
    decision: dict[str, Any],
    signature: dict[str, Any] | None,
    reference_stats: dict[str, Any],
    lineage: dict[str, Any],
) -> dict[str, Any]:
    """The card as a JSON-able dict (the Markdown is rendered from it)."""
    features = reference_stats.get("features", {})
    return {
        "model_name": model_name,
        "version": version,
        "run_id": run_id,
        "algorithm": algorithm,
        "parameters": {k: str(v) for k, v in sorted(params.items())},
        "data": data,
        "metrics": {"own_split": metrics, "same_data_comparison": evaluation},
        "decision": decision,
        "signature": signature,
        "reference_statistics": {
            "rows": reference_stats.get("n_rows"),
            "features": {
                name: {
                    "mean": stats.get("mean"),
                    "std": stats.get("std"),
                    "min": stats.get("min"),
                    "max": stats.get("max"),
                }
                for name, stats in features.items()
            },
        },
        "lineage": lineage,
        "alias_history": [],
    }


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("", "")) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def render_markdown(card: dict[str, Any]) -> str:
    """A readable card; every number in it comes from the JSON card."""
    lines = [f"# {card['model_name']} v{card['version']}", ""]
    lines += [f"Run `{card['run_id']}`, algorithm `{card['algorithm']}`.", ""]
    data = card.get("data", {})
    lines += ["## Data", "", *_table([(k, f"`{v}`") for k, v in data.items()], ("", "")), ""]
    own = card["metrics"]["own_split"]
    lines += ["## Metrics on its own held-out split", ""]
    lines += [*_table([(k, f"{v:.4f}") for k, v in sorted(own.items())], ("metric", "value")), ""]
    comparison = card["metrics"].get("same_data_comparison")
    if comparison:
        champion = comparison.get("champion") or {}
        lines += [f"## Compared with the champion on {comparison['data']} ({comparison['rows']} rows)", ""]
        if comparison.get("champion_version") is None:
            lines += ["No version held the alias.", ""]
        elif comparison.get("champion_error"):
            lines += [
                f"Champion v{comparison['champion_version']} could not be evaluated: {comparison['champion_error']}",
                "",
            ]
        lines += ["| metric | this version | champion |", "| --- | --- | --- |"]
        for name, value in sorted(comparison["candidate"].items()):
            other = champion.get(name)
            lines.append(f"| {name} | {value:.4f} | {'' if other is None else f'{other:.4f}'} |")
        lines.append("")
    decision = card.get("decision", {})
    lines += ["## Decision", "", f"{decision.get('outcome', '')}: {decision.get('reason', '')}", ""]
    lineage = card.get("lineage", {})
    lines += ["## Lineage", "", *_table([(k, f"`{v}`") for k, v in lineage.items()], ("", "")), ""]
    parameters = card.get("parameters", {})
    lines += ["## Parameters", "", *_table([(k, f"`{v}`") for k, v in parameters.items()], ("", "")), ""]
    stats = card.get("reference_statistics", {})
    lines += [f"## Training data statistics ({stats.get('rows')} rows)", ""]
    lines += ["| feature | mean | std | min | max |", "| --- | --- | --- | --- | --- |"]
    for name, s in stats.get("features", {}).items():
        lines.append(f"| {name} | {s['mean']:.4g} | {s['std']:.4g} | {s['min']:.4g} | {s['max']:.4g} |")
    lines.append("")
    history = card.get("alias_history") or []
    lines += ["## Alias history", ""]
    if history:
        lines += ["| when | action | by | from | to | why |", "| --- | --- | --- | --- | --- | --- |"]
        for h in history:
            lines.append(
                f"| {h.get('when')} | {h.get('action')} | {h.get('who')} | {h.get('from') or ''} | {h.get('to')} | {h.get('why')} |"
            )
    else:
        lines.append("Never held an alias.")
    signature = card.get("signature")
    if signature:
        lines += ["", "## Signature", "", "```json", json.dumps(signature, indent=2), "```"]
    return "\n".join(lines) + "\n"
