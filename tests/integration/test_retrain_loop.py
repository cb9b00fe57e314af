"""The whole drift loop with real processes: a model server sees shifted inputs, the real `modelops controller`
notices the drift persist and starts exactly one retraining (a real `modelops train --promote rollout --trigger
drift`, as the trainer), whose version enters as the challenger of a canary rollout, not as the champion."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_breast_cancer

from modelops.rollout.state import ROLLOUT_TAG, RolloutState
from tests.integration.conftest import controller, train_version
from tests.support import TEST_PASSWORDS, MlflowService, Service, wait_for

pytestmark = pytest.mark.slow


def predict_rows(url: str, rows: np.ndarray) -> None:
    response = httpx.post(f"{url}/predict", json={"instances": rows.tolist()}, timeout=30)
    assert response.status_code == 200, response.text


def drifted(url: str) -> bool:
    return "modelops_drift_detected 1.0" in httpx.get(f"{url}/metrics", timeout=10).text


def test_sustained_drift_starts_one_retraining_that_enters_as_challenger(
    tracking_server: MlflowService,
    model_name: str,
    start_server: Callable[..., Service],
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    # a weak champion: the retraining (default parameters) beats it by more than the margin drift runs need
    train_version(tracking_server.uri, model_name, promote="always", params=["C=0.0001"])
    server = start_server(tracking_server.uri, model_name, extra_env={"MODELOPS_DRIFT_WINDOW_ROWS": "100"})
    wait_for(lambda: httpx.get(f"{server.uri}/readyz").status_code == 200, 120, "server ready")
    # the local platform's home layout: the trainer's login and the signing key the retraining uses
    home = tmp_path / "home"
    (home / "credentials").mkdir(parents=True)
    (home / "keys").mkdir()
    (home / "credentials" / "trainer").write_text(TEST_PASSWORDS["trainer"])
    shutil.copy(signing_keys[0], home / "keys" / "signing-key.pem")
    service = controller(
        tmp_path,
        tracking_server.uri,
        model_name,
        [server.uri],
        CONTROLLER_TICK_S="0.5",
        RETRAIN_CHECK_S="1",
        RETRAIN_DRIFT_CHECKS="3",
        RETRAIN_COOLDOWN_S="3600",
        RETRAIN_LAUNCHER="local",
        RETRAIN_HOME=str(home),
    ).start()
    try:
        data = load_breast_cancer().data
        rng = np.random.default_rng(3)
        # rows from the training distribution: no drift, no retraining
        for _ in range(4):
            predict_rows(server.uri, data[rng.choice(len(data), 50)])
        time.sleep(4)  # several drift checks
        assert not drifted(server.uri)
        assert not list(home.glob("logs/retrain-*.log")), "a retraining started without drift"
        # three features shifted by +1 standard deviation, sustained for well over the checks needed
        shifted = data.copy()
        shifted[:, :3] += data[:, :3].std(axis=0)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            predict_rows(server.uri, shifted[rng.choice(len(data), 50)])
            time.sleep(0.2)
        assert drifted(server.uri)
        logs = list(home.glob("logs/retrain-*.log"))
        assert len(logs) == 1, f"{len(logs)} retrainings for one sustained drift:\n{service.tail()}"

        client = MlflowClient(tracking_server.uri)

        def retrained() -> list[str]:
            versions = client.search_model_versions(f"name='{model_name}'")
            return [v.version for v in versions if v.tags.get("modelops.trigger") == "drift"]

        try:
            wait_for(lambda: len(retrained()) == 1, 240, "the drift-triggered version")
        except TimeoutError:
            pytest.fail(f"no retrained version:\n{logs[0].read_text()[-3000:]}\n{service.tail()}")
        version = retrained()[0]
        model = client.get_registered_model(model_name)
        state = RolloutState.parse(model.tags.get(ROLLOUT_TAG))
        assert state is not None and state.version == version and state.running, model.tags.get(ROLLOUT_TAG)
        assert client.get_model_version_by_alias(model_name, "champion").version == "1"  # never straight in
        record = json.loads(model.tags["modelops.retrain"])
        assert record["launcher"] == "local", record
        # drift goes on, but the cooldown holds: still one retraining
        for _ in range(10):
            predict_rows(server.uri, shifted[rng.choice(len(data), 50)])
            time.sleep(0.3)
        assert len(list(home.glob("logs/retrain-*.log"))) == 1
    finally:
        service.stop()
