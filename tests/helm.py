"""The one way tests render the chart: `helm template`, parsed into a list of objects.

The chart tests (tests/chart/conftest.py's `render` fixture), the container end-to-end test and any other test
that needs rendered manifests go through `render_chart`, so every one of them sees the same objects for the same
values. `chart_values` gives the values such a render used, for checks that depend on them (which Secrets the
user provides, for instance).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import tool_path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "modelops-stack"

# what `set_values` takes: "a.b=c" strings, or a mapping of dotted keys to values
SetValues = Mapping[str, Any] | Iterable[str] | None


class HelmError(RuntimeError):
    """`helm template` refused the values; `stderr` holds helm's own message (schema and `fail` errors)."""

    def __init__(self, command: Sequence[str], stderr: str) -> None:
        super().__init__(f"{' '.join(command)} failed:\n{stderr.strip()}")
        self.command = list(command)
        self.stderr = stderr


def helm_path() -> Path:
    """The helm binary (tests.tools.tool_path); skips the calling test when there is none."""
    path = tool_path("helm")
    if path is None:
        pytest.skip("helm not found: run `python -m tests.tools` (make test does) or install helm")
    return path


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Any helm command (e.g. `lint`), output captured, never raising on a non-zero exit."""
    return subprocess.run([str(helm_path()), *args], capture_output=True, text=True, check=False)


def _set_pairs(set_values: SetValues) -> list[str]:
    """`set_values` as "dotted.key=value" strings, one per --set."""
    if set_values is None:
        return []
    if isinstance(set_values, Mapping):
        return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in set_values.items()]
    if isinstance(set_values, str):
        return [set_values]
    return list(set_values)


def render_chart(
    *,
    values_files: Iterable[Path] = (),
    set_values: SetValues = None,
    namespace: str = "default",
    release: str = "rel",
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """`helm template <release> <chart> --namespace <namespace> -f <each file> --set <each value>`: every
    non-empty document, parsed, in helm's order (a fresh list on every call).

    Raises HelmError (helm's stderr in the message and in `.stderr`) when helm refuses the values; skips the
    calling test when helm is not installed."""
    command = [str(helm_path()), "template", release, str(chart), "--namespace", namespace]
    for path in values_files:
        command += ["-f", str(path)]
    for pair in _set_pairs(set_values):
        command += ["--set", pair]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HelmError(command, result.stderr)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def chart_values(
    *, values_files: Iterable[Path] = (), set_values: SetValues = None, chart: Path = CHART
) -> dict[str, Any]:
    """The values a `render_chart` with the same arguments used: the chart's values.yaml, each file merged
    over it, then each --set. Only plain `a.b.c=value` settings are understood (no lists, no escapes), and
    their values stay strings, except true/false."""
    values: dict[str, Any] = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    for path in values_files:
        values = _merge(values, yaml.safe_load(Path(path).read_text()) or {})
    for pair in _set_pairs(set_values):
        dotted, _, raw = pair.partition("=")
        value: Any = {"true": True, "false": False}.get(raw, raw)
        for key in reversed(dotted.split(".")):
            value = {key: value}
        values = _merge(values, value)
    return values
