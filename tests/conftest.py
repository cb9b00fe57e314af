from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Service, mlflow_server


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One real MLflow tracking server (SQLite, proxied artifacts in tmp) for the whole session."""
    service = mlflow_server(tmp_path_factory.mktemp("mlflow")).start()
    yield service
    service.stop()


@pytest.fixture
def model_name() -> str:
    """A registered model name no other test uses."""
    return f"test-model-{uuid.uuid4().hex[:8]}"


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
