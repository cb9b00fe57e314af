"""checkov finds nothing on the rendered chart beyond the skips listed, with reasons, in .checkov.yaml."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, CI_VALUES
from tests.tools import checkov_path


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_checkov_has_no_failed_check(
    render: Callable[..., list[dict[str, Any]]], values: Path, tmp_path: Path
) -> None:
    checkov = checkov_path()
    if checkov is None:
        pytest.skip("checkov not installed: run `python -m tests.tools` (make test does)")
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(render(values)))
    result = subprocess.run(
        [str(checkov), "--config-file", str(CHART / ".checkov.yaml"), "-f", str(manifest), "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [f"{c['check_id']} {c['resource']}" for r in reports for c in r["results"]["failed_checks"]]
    passed = sum(r["summary"]["passed"] for r in reports)
    assert failed == [], "\n".join(failed)
    assert passed > 100  # it really checked the workloads
