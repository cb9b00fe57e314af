"""The environment the chart gives the model server, the trainer and the rollout controller is exactly what the
code reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from modelops.settings import ControllerSettings, ServerSettings, TrainerSettings
from tests.chart.conftest import CI_VALUES, containers, find, values_file
from tests.unit.test_settings_documented import env_names

Render = Callable[..., list[dict[str, Any]]]
# read by prometheus_client through settings.prometheus_multiproc_dir()
EXTRA_SERVER_VARIABLES = {"PROMETHEUS_MULTIPROC_DIR"}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_model_server_env(render: Render, values: Any) -> None:
    objects = render(values)
    server = find(objects, "Deployment", "model-server")
    names = {e["name"] for e in containers(server)[0]["env"]}
    unknown = names - set(env_names(ServerSettings)) - EXTRA_SERVER_VARIABLES
    assert unknown == set(), f"the chart sets variables the server never reads: {unknown}"
    assert {
        "MLFLOW_TRACKING_URI",
        "MODELOPS_MODEL_NAME",
        "MODELOPS_MODEL_ALIAS",
        "MODELOPS_ADMIN_TOKEN",
    } <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_trainer_env(render: Render, values: Any) -> None:
    objects = render(values)
    cron = next(o for o in objects if o["kind"] == "CronJob")
    names = {e["name"] for e in containers(cron)[0]["env"]}
    unknown = names - set(env_names(TrainerSettings))
    assert unknown == set(), f"the chart sets variables the trainer never reads: {unknown}"
    assert {"MLFLOW_TRACKING_URI", "MODELOPS_MODEL_NAME"} <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_controller_env(render: Render, values: Any) -> None:
    objects = render(values)
    controller = find(objects, "Deployment", "controller")
    names = {e["name"] for e in containers(controller)[0]["env"]}
    unknown = names - set(env_names(ControllerSettings))
    assert unknown == set(), f"the chart sets variables the controller never reads: {unknown}"
    assert {
        "MLFLOW_TRACKING_URI",
        "MODELOPS_MODEL_NAME",
        "MODELOPS_CHALLENGER_ALIAS",
        "MODELOPS_REGISTRY_WRITE_PASSWORD",
        "MODELOPS_CONTROLLER_TARGETS_DNS",
    } <= names


def test_tracking_uri_points_at_the_mlflow_service(render: Render) -> None:
    objects = render(values_file("default"))
    service = find(objects, "Service", "mlflow")
    expected = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    for kind, component in (
        ("Deployment", "model-server"),
        ("CronJob", "training"),
        ("Deployment", "controller"),
    ):
        env = {e["name"]: e.get("value") for e in containers(find(objects, kind, component))[0]["env"]}
        assert env["MLFLOW_TRACKING_URI"] == expected
