"""Last-known-good: a server restarted while the alias points at a version it cannot serve serves the last
version it loaded successfully (kept on local disk, verified again), and keeps retrying the alias."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from mlflow.tracking import MlflowClient

from tests.integration.conftest import train_version
from tests.support import MlflowService, Service, wait_for


def ready(url: str) -> dict[str, object]:
    response = httpx.get(f"{url}/readyz", timeout=5)
    return dict(response.json()) if response.status_code == 200 else {}


def served_once(
    tracking_server: MlflowService, model_name: str, start_server: Callable[..., Service], models: Path
) -> dict[str, str]:
    """Train v1, serve it from a server with a model folder on disk, stop that server; the env to restart with."""
    train_version(tracking_server.uri, model_name)
    env = {"MODELOPS_MODEL_DIR": str(models)}
    first = start_server(tracking_server.uri, model_name, extra_env=env)
    wait_for(lambda: ready(first.uri).get("model_version") == "1", 60, "v1 served")
    # the copy is written right after the swap, off the request path: wait for it, not for readiness
    wait_for(lambda: (models / "last-good.json").is_file(), 30, "the last good copy on disk")
    assert (models / "last-good" / "modelops.sig").is_file()
    first.stop()  # as a crash would: downloaded folders may be left behind
    return env


def break_the_alias(tracking_server: MlflowService, model_name: str) -> None:
    """Point the alias at a new version whose files were tampered with."""
    broken = train_version(tracking_server.uri, model_name, promote="never", seed=5)
    for path in tracking_server.root.glob(f"artifacts/**/{broken.run_id}/artifacts/model/model.skops"):
        path.write_bytes(b"tampered")
    MlflowClient(tracking_server.uri).set_registered_model_alias(model_name, "champion", broken.version)


def test_restart_with_the_alias_on_a_broken_version_serves_the_last_good_one(
    tracking_server: MlflowService, model_name: str, start_server: Callable[..., Service], tmp_path: Path
) -> None:
    uri = tracking_server.uri
    models = tmp_path / "models"
    env = served_once(tracking_server, model_name, start_server, models)
    (models / "model-v7-leftover").mkdir()
    break_the_alias(tracking_server, model_name)

    second = start_server(uri, model_name, extra_env=env)
    wait_for(lambda: ready(second.uri).get("model_version") == "1", 60, "the last good v1 served")
    response = httpx.post(f"{second.uri}/predict", json={"features": [1.0] * 30}, timeout=10)
    assert response.status_code == 200 and response.headers["x-model-version"] == "1"
    assert not (models / "model-v7-leftover").exists()  # cleaned at start
    log = second.log_path.read_text()
    assert "serving the last good version v1 from local disk" in log
    # the alias is still retried: once it points at a good version again, that one is served
    MlflowClient(uri).set_registered_model_alias(model_name, "champion", "1")
    fixed = train_version(uri, model_name, promote="always", seed=9)
    wait_for(lambda: ready(second.uri).get("model_version") == fixed.version, 60, "the alias followed again")


def test_a_last_good_copy_that_no_longer_verifies_is_not_served(
    tracking_server: MlflowService, model_name: str, start_server: Callable[..., Service], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    env = served_once(tracking_server, model_name, start_server, models)
    (models / "last-good" / "model.skops").write_bytes(b"tampered on the node")
    break_the_alias(tracking_server, model_name)
    second = start_server(tracking_server.uri, model_name, extra_env=env)
    wait_for(lambda: "cannot be served" in second.log_path.read_text(), 60, "the copy to be refused")
    assert httpx.get(f"{second.uri}/readyz", timeout=5).status_code == 503
