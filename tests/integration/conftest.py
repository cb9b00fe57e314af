from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelops.settings import TrainerSettings
from modelops.training.options import TrainOptions
from modelops.training.publish import TrainOutcome, run_training
from tests.support import TEST_PASSWORDS, VENV_BIN, Service, free_port, principal_env, serve_argv

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
AUTH_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WORSE = ["n_estimators=2", "max_depth=1"]


def train_version(
    uri: str,
    name: str,
    promote: str = "auto",
    algorithm: str = "logreg",
    params: list[str] | None = None,
    seed: int = 42,
) -> TrainOutcome:
    return run_training(
        TrainOptions(
            tracking_uri=uri,
            model_name=name,
            experiment="tests",
            alias="champion",
            algorithm=algorithm,
            params=params or [],
            promote=promote,
            seed=seed,
            wait_s=10,
            signing_key_path=TrainerSettings().signing_key_path,
        )
    )


def model_server(
    tmp: Path,
    tracking_uri: str,
    model_name: str,
    *,
    workers: int = 1,
    admin_token: str | None = ADMIN_TOKEN,
    extra_env: dict[str, str] | None = None,
) -> Service:
    port = free_port()
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MODELOPS_MODEL_NAME": model_name,
        "MODELOPS_POLL_INTERVAL_S": "0.5",
        "MODELOPS_POLL_BACKOFF_MAX_S": "2",
        # reads as the read-only principal; the admin API writes as the operator (as the chart sets it)
        **principal_env("model-server"),
        "MODELOPS_REGISTRY_WRITE_USERNAME": "operator",
        "MODELOPS_REGISTRY_WRITE_PASSWORD": TEST_PASSWORDS["operator"],
        **(extra_env or {}),
    }
    if admin_token:
        env["MODELOPS_ADMIN_TOKEN"] = admin_token
    tmp.mkdir(parents=True, exist_ok=True)
    return Service(
        f"server-{port}",
        serve_argv(port, workers),
        f"http://127.0.0.1:{port}/healthz",
        tmp,
        env=env,
        uri=f"http://127.0.0.1:{port}",
    )


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(tracking_uri: str, model_name: str, **kwargs: object) -> Service:
        service = model_server(tmp_path / f"s{len(started)}", tracking_uri, model_name, **kwargs).start()  # type: ignore[arg-type]
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def controller(
    log_dir: Path, tracking_uri: str, model_name: str, targets: list[str], **settings: str
) -> Service:
    """A real `modelops controller` (not started): reads as model-server, moves aliases as the operator, scrapes
    `targets`; `settings` are MODELOPS_* variables without the prefix (e.g. RETRAIN_CHECK_S="1")."""
    health = free_port()
    return Service(
        "controller",
        [str(VENV_BIN / "modelops"), "controller", "--health-port", str(health)],
        f"http://127.0.0.1:{health}/healthz",
        log_dir,
        env={
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MODELOPS_MODEL_NAME": model_name,
            **principal_env("model-server"),
            "MODELOPS_REGISTRY_WRITE_USERNAME": "operator",
            "MODELOPS_REGISTRY_WRITE_PASSWORD": TEST_PASSWORDS["operator"],
            "MODELOPS_CONTROLLER_TARGETS": ",".join(targets),
            **{f"MODELOPS_{key}": value for key, value in settings.items()},
        },
    )
