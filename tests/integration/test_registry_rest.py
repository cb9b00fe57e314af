"""The model server's registry reads over REST (no MLflow client), against a real MLflow: the same answers MLflow's
client gives, and a server process that resolves, downloads, verifies and loads a model without importing mlflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
from mlflow.tracking import MlflowClient

from modelops.mlflow_rest import RestReader, Transport
from modelops.registry import Registry, _ClientReader
from modelops.settings import RegistrySettings
from tests.integration.conftest import train_version
from tests.support import TEST_PASSWORDS, MlflowService, principal_env


def two_versions(tracking_server: MlflowService, model_name: str) -> None:
    train_version(tracking_server.uri, model_name)
    train_version(tracking_server.uri, model_name, promote="never", seed=7)
    MlflowClient(tracking_server.uri).set_model_version_tag(model_name, "2", "note", "second")


def test_the_rest_reader_answers_as_mlflows_client(tracking_server: MlflowService, model_name: str) -> None:
    two_versions(tracking_server, model_name)
    theirs = MlflowClient(tracking_server.uri)  # as the trainer (the test process's principal)
    ours = RestReader(Transport(tracking_server.uri, "trainer", TEST_PASSWORDS["trainer"]))

    def version_fields(mv: object) -> tuple[object, ...]:
        get = mv.__getattribute__
        return (get("name"), str(get("version")), get("run_id"), get("source"), list(get("aliases")),
                dict(get("tags")), get("creation_timestamp"))  # fmt: skip

    for version in ("1", "2"):
        assert version_fields(ours.get_model_version(model_name, version)) == version_fields(
            theirs.get_model_version(model_name, version)
        )
        assert ours.get_model_version_download_uri(
            model_name, version
        ) == theirs.get_model_version_download_uri(model_name, version)
    assert version_fields(ours.get_model_version_by_alias(model_name, "champion")) == version_fields(
        theirs.get_model_version_by_alias(model_name, "champion")
    )
    model, their_model = ours.get_registered_model(model_name), theirs.get_registered_model(model_name)
    assert (model.tags, model.aliases) == (
        their_model.tags,
        {k: str(v) for k, v in their_model.aliases.items()},
    )
    searched = ours.search_model_versions(f"name = '{model_name}'", order_by=["version_number DESC"])
    assert [version_fields(v) for v in searched] == [
        version_fields(v)
        for v in theirs.search_model_versions(f"name = '{model_name}'", order_by=["version_number DESC"])
    ]
    run_id = ours.get_model_version(model_name, "2").run_id
    run, their_run = ours.get_run(run_id), theirs.get_run(run_id)
    assert run.data.metrics == their_run.data.metrics and run.data.metrics
    assert run.info.artifact_uri == their_run.info.artifact_uri


def test_registry_reads_are_the_same_through_rest_and_through_mlflows_client(
    tracking_server: MlflowService, model_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_versions(tracking_server, model_name)
    for key, value in principal_env(
        "trainer"
    ).items():  # a Registry sets MLflow's process-wide login: restored
        monkeypatch.setenv(key, value)
    settings = RegistrySettings(
        tracking_uri=tracking_server.uri,
        model_name=model_name,
        tracking_username="model-server",
        tracking_password=TEST_PASSWORDS["model-server"],
    )
    rest = Registry(settings)
    assert isinstance(rest.reader, RestReader)
    client = Registry(settings)
    client.reader = _ClientReader(client)
    for registry in (rest, client):
        assert registry.alias_version() is not None
    assert [asdict(v) for v in rest.list_versions()] == [asdict(v) for v in client.list_versions()]
    assert rest.list_versions()[0].metrics  # the runs' metrics came through the bulk search
    assert rest.card("1") == client.card("1")
    assert rest.audit() == client.audit()
    assert rest.with_download_uri(rest.get_version("2")) == client.with_download_uri(client.get_version("2"))


SERVER_LIKE = """
import json, sys
from pathlib import Path
from modelops.registry import Registry
from modelops.settings import RegistrySettings, ServerSettings
from modelops.serving.model import load_model
from modelops.signing import Verifier
import modelops.cli, modelops.serving.http.app  # what `modelops serve` imports

registry = Registry(RegistrySettings())
version = registry.with_download_uri(registry.alias_version())
model = load_model(version, registry.download, registry.run_metrics(version.run_id), Path(sys.argv[1]),
                   Verifier(ServerSettings().signing_public_key_path))
print(json.dumps({"version": version.version, "rows": len(model.predict(model.example).labels),
                  "columns": len(model.columns), "mlflow": sorted(m for m in sys.modules if m.split(".")[0] == "mlflow")}))
"""


def test_a_server_process_loads_the_champion_without_importing_mlflow(
    tracking_server: MlflowService, model_name: str, tmp_path: os.PathLike[str]
) -> None:
    train_version(tracking_server.uri, model_name)
    env = {
        **os.environ,
        **principal_env("model-server"),
        "MLFLOW_TRACKING_URI": tracking_server.uri,
        "MODELOPS_MODEL_NAME": model_name,
    }
    done = subprocess.run(
        [sys.executable, "-c", SERVER_LIKE, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["mlflow"] == [], "a model server imported MLflow"
    assert out["version"] == "1" and out["columns"] == 30 and out["rows"] >= 1
