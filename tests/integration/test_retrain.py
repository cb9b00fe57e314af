"""`modelops train --promote rollout --trigger drift` (what a drift-triggered retraining runs) against a real
MLflow with auth, as the trainer principal: a better model becomes the challenger of a canary rollout, never the
champion directly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from modelops.cli import main
from modelops.rollout.state import ROLLOUT_TAG, RolloutState
from tests.integration.conftest import WORSE, train_version
from tests.support import MlflowService


def retrain(capsys: pytest.CaptureFixture[str], uri: str, model_name: str, *args: str) -> dict[str, Any]:
    code = main(
        [
            "train",
            "--tracking-uri",
            uri,
            "--model-name",
            model_name,
            "--promote",
            "rollout",
            "--trigger",
            "drift",
            *args,
            "--output",
            "json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    return dict(json.loads(out))


def rollout_state(client: MlflowClient, model_name: str) -> RolloutState | None:
    return RolloutState.parse(client.get_registered_model(model_name).tags.get(ROLLOUT_TAG))


def test_a_better_retrained_model_enters_as_the_challenger_of_a_canary_rollout(
    tracking_server: MlflowService, model_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = tracking_server.uri
    # a heavily regularised champion: the default candidate beats it on the same rows
    champion = train_version(uri, model_name, params=["C=0.0001"])
    assert champion.promoted

    outcome = retrain(capsys, uri, model_name)

    version = outcome["version"]
    assert outcome["promoted"] is False  # never straight to champion
    assert outcome["champion_version"] == champion.version
    assert outcome["trigger"] == "drift"
    assert outcome["rollout"] and outcome["rollout_reason"] is None
    assert outcome["reason"].startswith(f"challenger of canary rollout {outcome['rollout']}")
    client = MlflowClient(uri)
    assert client.get_model_version(model_name, version).tags["modelops.trigger"] == "drift"
    assert client.get_run(outcome["run_id"]).data.tags["modelops.trigger"] == "drift"
    assert client.get_model_version_by_alias(model_name, "challenger").version == version
    assert client.get_model_version_by_alias(model_name, "champion").version == champion.version
    state = rollout_state(client, model_name)
    assert state is not None
    assert (state.id, state.state, state.version, state.champion_version) == (
        outcome["rollout"],
        "running",
        version,
        champion.version,
    )
    assert (state.mode, state.steps, state.interval_s, state.who) == (
        "canary",
        (5, 25, 50, 100),
        60.0,
        "trainer",
    )

    # drift persists and another retraining wins too: it is registered, and says why no rollout started
    again = retrain(capsys, uri, model_name)
    assert again["rollout"] is None and again["promoted"] is False
    assert f"rollout {state.id} of v{version} is running" in again["rollout_reason"]
    assert client.get_model_version(model_name, again["version"]).tags["modelops.trigger"] == "drift"
    assert client.get_model_version_by_alias(model_name, "challenger").version == version
    after = rollout_state(client, model_name)
    assert after is not None and after.id == state.id and after.running


def test_a_retrained_model_that_does_not_beat_the_champion_starts_no_rollout(
    tracking_server: MlflowService, model_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = tracking_server.uri
    # no champion yet: --promote rollout behaves like auto (the first model is the champion)
    first = retrain(capsys, uri, model_name)
    assert first["promoted"] is True and first["champion_version"] == first["version"]
    assert first["rollout"] is None and first["rollout_reason"] is None

    worse = retrain(capsys, uri, model_name, "--algorithm", "random_forest", *(f"--param={p}" for p in WORSE))

    assert worse["promoted"] is False and worse["rollout"] is None
    assert worse["rollout_reason"].startswith("not better than the champion")
    client = MlflowClient(uri)
    assert client.get_model_version(model_name, worse["version"]).tags["modelops.trigger"] == "drift"
    assert client.get_model_version_by_alias(model_name, "champion").version == first["version"]
    assert rollout_state(client, model_name) is None
    assert "challenger" not in client.get_registered_model(model_name).aliases


def test_a_bad_trigger_name_is_refused_before_training(
    tracking_server: MlflowService, model_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--tracking-uri",
            tracking_server.uri,
            "--model-name",
            model_name,
            "--trigger",
            "Drift Now!",
        ]
    )
    _, err = capsys.readouterr()
    assert code == 1 and "--trigger" in err
    assert not MlflowClient(tracking_server.uri).search_model_versions(f"name='{model_name}'")
