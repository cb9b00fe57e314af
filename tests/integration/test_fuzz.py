"""Schema-driven fuzzing: schemathesis, with all its checks, against a real `modelops serve` process and the
OpenAPI document it serves; once with the admin token and once without. Expected: no failure, no 5xx.

The run is bounded (examples per operation, a fixed seed) so that it takes well under two minutes on 2 cores.
Tuning, per operation, where the document cannot say everything (schemathesis' own advice, `st explain`):
- v2 infer: a tensor's value count must equal the product of its shape, and binary tensors must match the
  Inference-Header-Content-Length framing: cross-field rules JSON Schema cannot express, so schema-valid
  requests may still get 400/422 (positive_data_acceptance);
- /deploy: exactly one of body `version`, body `run_id` and query `run_id` (a rule across body and query);
- 413 is the answer to a body or row count over the limit (negative_data_rejection does not list it).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ADMIN_TOKEN, model_server, train_version
from tests.support import VENV_BIN, MlflowService, Service, wait_for

pytestmark = pytest.mark.slow
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

[[operations]]
include-path-regex = "^/v2/models/.*/infer$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "413", "422"]

[[operations]]
include-path = "/deploy"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


@pytest.fixture(scope="module")
def server(tracking_server: MlflowService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    name = f"fuzz-{uuid.uuid4().hex[:8]}"
    tracking_server.grant(name)
    train_version(tracking_server.uri, name)  # type: ignore[attr-defined]
    service = model_server(
        tmp_path_factory.mktemp("server"),
        tracking_server.uri,  # type: ignore[attr-defined]
        name,
        extra_env={"MODELOPS_MAX_REQUEST_ROWS": "50", "MODELOPS_MAX_BODY_BYTES": "100000"},
    ).start()
    url = service.uri  # type: ignore[attr-defined]
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "the model to load")
    yield service
    service.stop()


@pytest.mark.parametrize("token", [True, False], ids=["admin-token", "no-token"])
def test_fuzzer_finds_nothing(server: Service, tmp_path: Path, token: bool) -> None:
    url = server.uri  # type: ignore[attr-defined]
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    argv = [
        str(VENV_BIN / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "50",
        "--seed",
        "20261127",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
    ]
    if token:
        argv += ["--header", f"Authorization: Bearer {ADMIN_TOKEN}"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20000:]
    assert "No issues found" in output or "0 failures" in output or "passed" in output, output[-5000:]
    log = server.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    assert "unhandled error" not in log, log[-5000:]
