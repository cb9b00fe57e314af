from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import MlflowService, mlflow_server, principal_env


@pytest.fixture(scope="session", autouse=True)
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """One model-signing key pair; this process (and every process it starts) trains as the `trainer`
    principal and signs with the private key; model servers verify with the public one."""
    from modelops.signing import generate_keypair

    folder = tmp_path_factory.mktemp("keys")
    private, public = folder / "signing-key.pem", folder / "signing-public.pem"
    generate_keypair(private, public)
    patch = pytest.MonkeyPatch()
    for key, value in {
        **principal_env("trainer"),
        "MODELOPS_SIGNING_KEY_PATH": str(private),
        "MODELOPS_SIGNING_PUBLIC_KEY_PATH": str(public),
    }.items():
        patch.setenv(key, value)
    yield private, public
    patch.undo()


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowService]:
    """One real MLflow tracking server (SQLite, auth on, proxied artifacts in tmp) for the whole session."""
    service = mlflow_server(tmp_path_factory.mktemp("mlflow"))
    service.start()
    yield service
    service.stop()


@pytest.fixture
def model_name(tracking_server: MlflowService) -> str:
    """A registered model name no other test uses, created and granted on the session's MLflow."""
    name = f"test-model-{uuid.uuid4().hex[:8]}"
    tracking_server.grant(name)
    return name


@pytest.fixture
def aws_test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 2, 3, -1]]
    path = tmp_path / "data.csv"
    frame.rename(columns={"target": "label"}).to_csv(path, index=False)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests last (in their collected order): Playwright's sync API keeps an event loop running in the main
    thread for the rest of the session, and every asyncio test (anyio, asyncio.run) after it would fail."""
    items.sort(key=lambda item: Path(str(item.fspath)).parent.name == "browser")
