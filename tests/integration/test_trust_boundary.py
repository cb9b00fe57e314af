"""The trust boundary, tried as an attacker would, against a real MLflow with auth on and a real model server.

Three locks, each tested on its own: (1) MLflow needs credentials and gives each principal only what it needs;
(2) a server loads only what the trainer's key signed, for this model and run; (3) loading runs no code from the
artifact, even for a validly signed one. A harmless marker file shows whether any payload ran.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
import skops.io
import yaml
from mlflow.tracking import MlflowClient

from modelops.signing import generate_keypair, sign_model
from tests.integration.conftest import ADMIN_TOKEN, model_server, train_version
from tests.support import TEST_PASSWORDS, MlflowService, Service, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
API = "/api/2.0/mlflow/"


class TouchMarker:
    """Unpickling this creates the marker file: proof that code from an artifact ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


@dataclass
class Stack:
    mlflow: MlflowService
    server: Service
    name: str
    marker: Path
    tmp: Path

    @property
    def url(self) -> str:
        return self.server.uri

    def alias(self) -> str:
        return str(MlflowClient(self.mlflow.uri).get_model_version_by_alias(self.name, "champion").version)

    def served(self) -> str:
        return str(httpx.get(f"{self.url}/readyz", timeout=5).json().get("model_version"))

    def refusals(self, reason: str) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith(f'modelops_model_refusals_total{{reason="{reason}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="module")
def stack(tracking_server: MlflowService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("trust")
    name = f"trust-{tmp.name[-6:]}"
    tracking_server.grant(name)
    train_version(tracking_server.uri, name)
    server = model_server(tmp / "server", tracking_server.uri, name).start()
    wait_for(lambda: httpx.get(f"{server.uri}/readyz").status_code == 200, 60, "the server to serve v1")
    yield Stack(tracking_server, server, name, tmp / "marker", tmp)
    server.stop()


def rest(stack: Stack, method: str, endpoint: str, body: dict[str, Any], who: str | None) -> httpx.Response:
    auth = (who, TEST_PASSWORDS[who]) if who else None
    return httpx.request(method, f"{stack.mlflow.uri}{API}{endpoint}", json=body, auth=auth, timeout=30)


def log_folder(
    stack: Stack, build: Callable[[Path], None], *, sign_with: Path | None, name: str | None = None
) -> str:
    """As the trainer principal: a run whose `model/` is the folder `build` makes (signed or not); register
    it as a new version (not moving the alias). Returns the version."""
    mlflow.set_tracking_uri(stack.mlflow.uri)
    mlflow.set_experiment("attacks")
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        build(folder)
        if sign_with is not None:
            sign_model(folder, sign_with, model_name=name or stack.name, run_id=run.info.run_id)
        mlflow.log_artifacts(str(folder), "model")
    created = rest(
        stack,
        "POST",
        "model-versions/create",
        {"name": stack.name, "source": f"{run.info.artifact_uri}/model", "run_id": run.info.run_id},
        "trainer",
    )
    assert created.status_code == 200, created.text
    return str(created.json()["model_version"]["version"])


def write_mlmodel(folder: Path, flavors: dict[str, Any], **extra: Any) -> None:
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": flavors, **extra}))


def pickle_model(marker: Path, fmt: str) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        (folder / "model.pkl").write_bytes(pickle.dumps(TouchMarker(marker)))
        write_mlmodel(
            folder,
            {
                "sklearn": {"pickled_model": "model.pkl", "serialization_format": fmt},
                "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.pkl"},
            },
        )

    return build


def models_from_code(marker: Path) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        (folder / "model.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
        write_mlmodel(
            folder,
            {"python_function": {"loader_module": "mlflow.pyfunc.model", "model_code_path": "model.py"}},
        )

    return build


def skops_own_trusted_types(marker: Path) -> Callable[[Path], None]:
    """A skops file that needs `posix.system`, with an MLmodel that 'trusts' it (MLflow would load it)."""

    def build(folder: Path) -> None:
        import os

        skops.io.dump({"run": os.system, "arg": f"touch {marker}"}, folder / "model.skops")
        write_mlmodel(
            folder,
            {
                "sklearn": {
                    "pickled_model": "model.skops",
                    "serialization_format": "skops",
                    "skops_trusted_types": ["posix.system", "builtins.dict"],
                },
                "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.skops"},
            },
        )

    return build


def code_paths(marker: Path) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        (folder / "code").mkdir()
        (folder / "code" / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
        skops.io.dump({"a": 1}, folder / "model.skops")
        write_mlmodel(
            folder,
            {
                "sklearn": {"pickled_model": "model.skops", "serialization_format": "skops", "code": "code"},
                "python_function": {
                    "loader_module": "mlflow.sklearn",
                    "model_path": "model.skops",
                    "code": "code",
                },
            },
        )

    return build


def deploy(stack: Stack, version: str) -> httpx.Response:
    return httpx.post(f"{stack.url}/deploy", json={"version": version}, headers=AUTH, timeout=60)


# -- lock 1: MLflow requires credentials, least privilege ----------------------------------------------
@pytest.mark.parametrize("who", [None, "model-server"])
def test_no_credential_and_the_read_only_principal_change_nothing(stack: Stack, who: str | None) -> None:
    before_alias, before_tags = (
        stack.alias(),
        MlflowClient(stack.mlflow.uri).get_registered_model(stack.name).tags,
    )
    versions_before = len(MlflowClient(stack.mlflow.uri).search_model_versions(f"name = '{stack.name}'"))
    expected = 401 if who is None else 403
    attempts = {
        "move the alias": (
            "POST",
            "registered-models/alias",
            {"name": stack.name, "alias": "champion", "version": "1"},
        ),
        "forge the rollback history": (
            "POST",
            "registered-models/set-tag",
            {"name": stack.name, "key": "modelops.alias.champion.history", "value": "1,1,1"},
        ),
        "register a version": (
            "POST",
            "model-versions/create",
            {"name": stack.name, "source": "mlflow-artifacts:/0/x/artifacts/model"},
        ),
        "delete the model": ("DELETE", "registered-models/delete", {"name": stack.name}),
    }
    for what, (method, endpoint, body) in attempts.items():
        response = rest(stack, method, endpoint, body, who)
        assert response.status_code == expected, f"{what} as {who}: {response.status_code} {response.text}"
    assert stack.alias() == before_alias
    assert MlflowClient(stack.mlflow.uri).get_registered_model(stack.name).tags == before_tags
    assert (
        len(MlflowClient(stack.mlflow.uri).search_model_versions(f"name = '{stack.name}'")) == versions_before
    )


def test_nobody_but_the_admin_can_delete_the_registered_model(stack: Stack) -> None:
    for who in ("trainer", "operator", "model-server"):
        response = rest(stack, "DELETE", "registered-models/delete", {"name": stack.name}, who)
        assert response.status_code == 403, f"{who}: {response.status_code}"
    assert stack.alias()  # still there, alias and all


def test_artifacts_cannot_be_overwritten_through_the_proxy_without_write_access(stack: Stack) -> None:
    version = MlflowClient(stack.mlflow.uri).get_model_version(stack.name, "1")
    run = MlflowClient(stack.mlflow.uri).get_run(version.run_id)
    path = run.info.artifact_uri.split("mlflow-artifacts:/", 1)[1].lstrip("/") + "/model/model.skops"
    url = f"{stack.mlflow.uri}/api/2.0/mlflow-artifacts/artifacts/{path}"
    reader = ("model-server", TEST_PASSWORDS["model-server"])
    original = httpx.get(url, auth=reader, timeout=30)
    assert original.status_code == 200 and original.content
    assert httpx.put(url, content=b"evil", timeout=30).status_code == 401
    assert httpx.put(url, content=b"evil", auth=reader, timeout=30).status_code == 403
    # nor the operator (whose credential model servers hold): it writes rollout reports to runs of its own
    operator = ("operator", TEST_PASSWORDS["operator"])
    assert httpx.put(url, content=b"evil", auth=operator, timeout=30).status_code == 403
    assert httpx.get(url, auth=reader, timeout=30).content == original.content


def test_the_mlflow_ui_needs_a_login(stack: Stack) -> None:
    assert httpx.get(stack.mlflow.uri + "/", timeout=10).status_code == 401
    operator = ("operator", TEST_PASSWORDS["operator"])
    assert httpx.get(stack.mlflow.uri + "/", auth=operator, timeout=10).status_code == 200


# -- lock 2: only what the trainer's key signed, for this model and run ---------------------------------
def test_unsigned_foreign_key_and_misbound_versions_are_refused(
    stack: Stack, signing_keys: tuple[Path, Path]
) -> None:
    """Stolen trainer credentials are not enough: without the private key nothing new can be served."""
    other_private, other_public = stack.tmp / "other.pem", stack.tmp / "other.pub"
    generate_keypair(other_private, other_public)
    real_key = signing_keys[0]

    def genuine(folder: Path) -> None:
        # a genuine model folder: copy version 1's files, minus its signature
        src = mlflow.artifacts.download_artifacts(f"models:/{stack.name}/1", dst_path=str(stack.tmp / "v1"))
        for item in Path(src).iterdir():
            if item.is_file() and item.name not in (
                "modelops.sig",
                "modelops-identity.json",
                "registered_model_meta",
            ):
                (folder / item.name).write_bytes(item.read_bytes())

    cases = {
        "unsigned": log_folder(stack, genuine, sign_with=None),
        "unknown_key": log_folder(stack, genuine, sign_with=other_private),
        "identity_mismatch": log_folder(stack, genuine, sign_with=real_key, name="another-model"),
    }
    for reason, version in cases.items():
        before = stack.refusals(reason)
        response = deploy(stack, version)
        assert response.status_code == 422, f"{reason}: {response.text}"
        assert response.json()["error"]["code"] == "model_refused"
        assert stack.refusals(reason) == before + 1
        assert stack.alias() == "1" and stack.served() == "1"
    log = stack.server.log_path.read_text()
    assert all(f"refused {stack.name} v{v} ({r})" in log for r, v in cases.items())


def test_an_alias_moved_to_an_unsigned_version_is_not_followed(stack: Stack) -> None:
    def genuine_but_unsigned(folder: Path) -> None:
        skops.io.dump({"a": 1}, folder / "model.skops")
        write_mlmodel(folder, {"sklearn": {"pickled_model": "model.skops", "serialization_format": "skops"}})

    version = log_folder(stack, genuine_but_unsigned, sign_with=None)
    before = stack.refusals("unsigned")
    response = rest(
        stack,
        "POST",
        "registered-models/alias",
        {"name": stack.name, "alias": "champion", "version": version},
        "trainer",
    )
    assert response.status_code == 200
    try:
        wait_for(lambda: stack.refusals("unsigned") > before, 30, "the watcher to refuse the version")
        assert stack.served() == "1"
        assert (
            f"alias 'champion' of {stack.name} moved: v1 -> v{version}" in stack.server.log_path.read_text()
        )
        assert (
            httpx.post(f"{stack.url}/predict", json={"features": [0.0] * 30}, timeout=10).headers[
                "x-model-version"
            ]
            == "1"
        )
    finally:
        rest(
            stack,
            "POST",
            "registered-models/alias",
            {"name": stack.name, "alias": "champion", "version": "1"},
            "operator",
        )


# -- lock 3: loading never runs code from the artifact, even when it is validly signed ---------------------
@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("cloudpickle", "pickle"),
        ("pickle", "pickle"),
        ("models_from_code", "code"),
        ("skops_own_trusted_types", "untrusted_types"),
        ("code_paths", "code"),
    ],
)
def test_signed_artifacts_that_would_run_code_are_refused(
    stack: Stack, attack: str, reason: str, signing_keys: tuple[Path, Path]
) -> None:
    builders: dict[str, Callable[[Path], None]] = {
        "cloudpickle": pickle_model(stack.marker, "cloudpickle"),
        "pickle": pickle_model(stack.marker, "pickle"),
        "models_from_code": models_from_code(stack.marker),
        "skops_own_trusted_types": skops_own_trusted_types(stack.marker),
        "code_paths": code_paths(stack.marker),
    }
    key = signing_keys[0]
    for signed in (True, False):
        version = log_folder(stack, builders[attack], sign_with=key if signed else None)
        before = stack.refusals(reason if signed else "unsigned")
        response = deploy(stack, version)
        assert response.status_code == 422, response.text
        assert stack.refusals(reason if signed else "unsigned") == before + 1, response.text
        assert not stack.marker.exists(), f"code from the {attack} artifact ran in the server"
        assert stack.alias() == "1" and stack.served() == "1"


def test_signed_but_broken_model_fails_to_load_without_moving_the_alias(
    stack: Stack, signing_keys: tuple[Path, Path]
) -> None:
    def broken(folder: Path) -> None:
        (folder / "model.skops").write_bytes(b"not a zip file")
        write_mlmodel(folder, {"sklearn": {"pickled_model": "model.skops", "serialization_format": "skops"}})

    version = log_folder(stack, broken, sign_with=signing_keys[0])
    response = deploy(stack, version)
    assert response.status_code == 422 and response.json()["error"]["code"] == "model_load_failed", (
        response.text
    )
    assert stack.alias() == "1"
