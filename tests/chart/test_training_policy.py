"""The chart's training policy: evaluated promotion flags, and approval for scheduled runs only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.chart.conftest import containers

Render = Callable[..., list[dict[str, Any]]]


def trainers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The trainer container of the on-install Job and of the CronJob, by kind."""
    found = {}
    for obj in objects:
        if obj["kind"] in ("Job", "CronJob") and any(c["name"] == "trainer" for c in containers(obj)):
            found[obj["kind"]] = next(c for c in containers(obj) if c["name"] == "trainer")
    return found


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_approval_applies_to_scheduled_runs_and_install_still_serves(render: Render) -> None:
    found = trainers(render(sets=("training.requireApproval=true",)))
    assert set(found) == {"Job", "CronJob"}
    assert env(found["CronJob"])["MODELOPS_REQUIRE_APPROVAL"] == "true"
    # the first training on install must promote, or `helm install --wait` would wait for a person
    assert env(found["Job"])["MODELOPS_REQUIRE_APPROVAL"] == "false"
    default = trainers(render())
    assert {env(c)["MODELOPS_REQUIRE_APPROVAL"] for c in default.values()} == {"false"}


def test_evaluated_promotion_flags_and_lineage(render: Render, tmp_path: Path) -> None:
    values = tmp_path / "training.yaml"
    values.write_text(
        "training:\n  minDelta: 0.01\n  evalData: s3://data/eval.csv\n  positiveClass: 'yes'\n"
        "  thresholds: ['accuracy>=0.9']\n"
    )
    found = trainers(render(values))
    for container in found.values():
        args = container["args"]
        for expected in (
            "--min-delta=0.01",
            "--eval-data=s3://data/eval.csv",
            "--positive-class=yes",
            "--threshold=accuracy>=0.9",
        ):
            assert expected in args, (expected, args)
        assert (
            env(container)["MODELOPS_IMAGE"].startswith("modelops:")
            or ":" in env(container)["MODELOPS_IMAGE"]
        )
