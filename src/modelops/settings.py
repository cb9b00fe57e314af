"""Settings for every process, read from the environment. The ONLY module that reads environment variables.

Each process builds its settings once at start-up and passes them down explicitly.
Field names carry their unit (`_s`, `_ms`, `_bytes`, `_rows`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
DEFAULT_MODEL_NAME = "ModelOpsStudioModel"
DEFAULT_ALIAS = "champion"

# The MLflow client retries a refused connection 7 times with exponential backoff by default
# (minutes). Our processes have their own retry loops, so the client should fail fast.
MLFLOW_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # Keep stdout for our own output (`--output json` must be one object).
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def apply_mlflow_credentials(username: str | None, password: SecretStr | str | None) -> None:
    """Make MLflow's own client (logging, artifact downloads) authenticate as this principal."""
    if username is None or password is None:
        return
    secret = password.get_secret_value() if isinstance(password, SecretStr) else password
    os.environ["MLFLOW_TRACKING_USERNAME"] = username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = secret


def apply_mlflow_client_defaults() -> None:
    """Set fail-fast defaults for the MLflow HTTP client unless the user set them."""
    for key, value in MLFLOW_CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELOPS_", extra="ignore", populate_by_name=True)


class RegistrySettings(_Base):
    """Which MLflow server, registered model and alias a process works with."""

    tracking_uri: str = Field(
        default=DEFAULT_TRACKING_URI,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "tracking_uri"),
        description="MLflow tracking server URI (env MLFLOW_TRACKING_URI).",
    )
    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="Registered model name.")
    model_alias: str = Field(
        default=DEFAULT_ALIAS, description="Registry alias that marks the served version."
    )
    tracking_username: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_USERNAME", "tracking_username"),
        description="MLflow principal this process authenticates as (env MLFLOW_TRACKING_USERNAME).",
    )
    tracking_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_PASSWORD", "tracking_password"),
        description="Password of that principal (env MLFLOW_TRACKING_PASSWORD).",
    )


class TrainerSettings(RegistrySettings):
    """Defaults for `modelops train`; every one can be overridden by a flag."""

    experiment: str = Field(default="modelops", description="MLflow experiment the runs go to.")
    wait_s: float = Field(default=120.0, ge=0, description="How long to wait for MLflow to become reachable.")
    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_S3_ENDPOINT_URL", "s3_endpoint_url"),
        description="S3 endpoint for s3:// data (env MLFLOW_S3_ENDPOINT_URL); AWS default when unset.",
    )
    git_commit: str | None = Field(
        default=None, description="Source commit to tag runs with (set by the image)."
    )
    signing_key_path: Path | None = Field(
        default=None, description="PEM elliptic-curve private key the trainer signs models with."
    )
    require_approval: bool = Field(
        default=False, description="A promotion only marks the version awaiting `modelops approve`."
    )
    image: str | None = Field(
        default=None, description="Container image the trainer runs in (for model cards)."
    )
    challenger_alias: str = Field(
        default="challenger", description="Alias `--promote rollout` points at a winning candidate."
    )
    rollout_steps: str = Field(
        default="5,25,50,100", description="Traffic percentages of the rollout `--promote rollout` starts."
    )
    rollout_interval_s: float = Field(default=60.0, gt=0, description="Length of each step of that rollout.")


class RolloutSettings(RegistrySettings):
    """Progressive delivery: the challenger alias, rollout defaults and the analysis' thresholds."""

    challenger_alias: str = Field(
        default="challenger", description="Registry alias of the version under a rollout."
    )
    rollout_steps: str = Field(
        default="5,25,50,100", description="Default traffic percentages of a rollout's steps, in order."
    )
    rollout_interval_s: float = Field(
        default=60.0, gt=0, description="Default length of a rollout step (its analysis window)."
    )
    rollout_min_requests: int = Field(
        default=100, ge=1, description="Challenger requests a step needs before its analysis decides."
    )
    rollout_max_error_ratio_increase: float = Field(
        default=0.01, ge=0, le=1, description="Most the challenger's error ratio may exceed the champion's."
    )
    rollout_max_p99_ratio: float = Field(
        default=1.5,
        ge=1,
        description="Most the challenger's p99 latency may be, as a multiple of the champion's.",
    )
    rollout_p99_slack_ms: float = Field(
        default=20.0, ge=0, description="A p99 increase below this many milliseconds always passes."
    )
    rollout_max_psi: float = Field(
        default=0.25,
        gt=0,
        description="Most the predicted-probability distribution may shift from the champion's (PSI).",
    )
    registry_write_username: str | None = Field(
        default=None, description="MLflow principal alias moves are made as (the operator)."
    )
    registry_write_password: SecretStr | None = Field(
        default=None, description="Password of the principal alias moves are made as."
    )


class ControllerSettings(RolloutSettings):
    """The rollout controller (`modelops controller`): drives rollouts stored in the registry."""

    controller_targets: str = Field(
        default="http://127.0.0.1:8000",
        description="Comma-separated base URLs of model-server replicas whose /metrics the analysis reads.",
    )
    controller_targets_dns: str | None = Field(
        default=None,
        description="host:port of a headless Service; every address it resolves to is a replica (chart).",
    )
    controller_prometheus_url: str | None = Field(
        default=None, description="Prometheus to query instead of scraping the replicas."
    )
    controller_tick_s: float = Field(
        default=5.0, gt=0, description="How often the controller reads the rollout and the metrics."
    )
    retrain_on_drift: bool = Field(
        default=True,
        description="Start one retraining when served inputs drift for retrain_drift_checks checks.",
    )
    retrain_drift_checks: int = Field(
        default=3, ge=1, description="Consecutive drift checks that must all see drift before a retraining."
    )
    retrain_check_s: float = Field(
        default=60.0, gt=0, description="Seconds between drift checks (at least one window of traffic apart)."
    )
    retrain_cooldown_s: float = Field(
        default=6 * 3600.0, ge=0, description="Least time between two drift-triggered retrainings."
    )
    retrain_launcher: str = Field(
        default="local",
        pattern="^(local|kubernetes)$",
        description="How a retraining starts: a local `modelops train` process, or a Job from the CronJob.",
    )
    retrain_cronjob: str | None = Field(
        default=None, description="CronJob whose job template a drift-triggered Job copies (kubernetes)."
    )
    retrain_namespace: str | None = Field(
        default=None, description="Namespace of that CronJob; the pod's own when unset (kubernetes)."
    )
    retrain_home: Path | None = Field(
        default=None, description="The local platform's home, for the trainer's credentials and key (local)."
    )
    kubernetes_service_host: str = Field(
        default="kubernetes.default.svc",
        validation_alias=AliasChoices("KUBERNETES_SERVICE_HOST", "kubernetes_service_host"),
        description="The Kubernetes API's address (env KUBERNETES_SERVICE_HOST, set by the kubelet).",
    )
    kubernetes_service_port: int = Field(
        default=443,
        validation_alias=AliasChoices("KUBERNETES_SERVICE_PORT", "kubernetes_service_port"),
        description="The Kubernetes API's port (env KUBERNETES_SERVICE_PORT, set by the kubelet).",
    )
    controller_health_host: str = Field(
        default="127.0.0.1",
        description="Address of the controller's /healthz (the chart listens on 0.0.0.0).",
    )
    controller_health_port: int = Field(
        default=8090, ge=0, le=65535, description="Port of the controller's /healthz; 0 turns it off."
    )


class ServerSettings(RolloutSettings):
    """The model server (`modelops serve`)."""

    routing_header: str = Field(
        default="x-request-id",
        description="Request header whose sticky hash picks champion or challenger during a rollout.",
    )
    challenger_timeout_ms: float = Field(
        default=1000.0, gt=0, description="Longest a challenger may take; then the champion answers."
    )
    shadow_queue_requests: int = Field(
        default=1000,
        gt=0,
        description="Requests waiting for the challenger in shadow mode; more are dropped.",
    )
    fault_challenger_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="Fault injection for rehearsals: extra latency of every challenger prediction (0: off).",
    )
    fault_challenger_error_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Fault injection for rehearsals: share of challenger predictions that fail (0: off).",
    )

    poll_interval_s: float = Field(default=10.0, gt=0, description="How often to check the alias.")
    poll_backoff_max_s: float = Field(
        default=60.0, gt=0, description="Upper bound of the retry delay while MLflow is unreachable."
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for /deploy and /rollback; admin API disabled when unset."
    )
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="Largest request body accepted.")
    max_request_rows: int = Field(default=10_000, gt=0, description="Most rows one request may carry.")
    max_batch_rows: int = Field(
        default=256, gt=0, description="Most rows the micro-batcher puts into one predict call."
    )
    max_batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        description="Longest a request waits for concurrent ones to share its predict call.",
    )
    inline_predict_max_rows: int = Field(
        default=64,
        ge=0,
        description="Batches up to this size are predicted on the event loop; larger ones in a thread.",
    )
    model_dir: Path | None = Field(
        default=None, description="Where model artifacts are downloaded; a temp folder when unset."
    )
    log_level: str = Field(default="info", description="Log level of the server.")
    signing_public_key_path: Path | None = Field(
        default=None,
        description="PEM public key or certificate that verifies model signatures; required to serve.",
    )
    drift_window_rows: int = Field(
        default=200, ge=20, le=100_000, description="Served rows per drift window (per version, per worker)."
    )
    drift_false_alarm_rate: float = Field(
        default=0.01, gt=0, lt=1, description="Chance an unshifted window is flagged as drift (all features)."
    )
    allow_pyfunc_models: bool = Field(
        default=False,
        description="Also load python_function-only models (runs code from the artifact: a risk).",
    )
    max_concurrent_connections: int = Field(
        default=1000,
        ge=2,
        description="Open connections plus running requests per worker; requests above it get a 503.",
    )
    listen_backlog_connections: int = Field(
        default=2048, gt=0, description="Connections the kernel queues for each worker before accepting."
    )
    keep_alive_timeout_s: int = Field(
        default=75,
        gt=0,
        description="How long an idle keep-alive connection stays open (above load balancers' 60 s).",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest a client may take to send a request's line and headers."
    )
    max_header_bytes: int = Field(
        default=65536, ge=1024, description="Largest request line plus headers (431 above)."
    )
    versions_cache_s: float = Field(
        default=5.0, ge=0, description="How long a /models/versions answer is reused; 0 disables the cache."
    )
    registry_threads: int = Field(
        default=4, gt=0, description="Threads for registry calls made by HTTP handlers (not predictions)."
    )
    ui_enabled: bool = Field(default=True, description="Serve the web console at /ui.")
    ui_public_read: bool = Field(
        default=False, description="Let anyone see the console's read-only pages without signing in."
    )
    ui_session_ttl_s: int = Field(default=8 * 3600, gt=0, description="How long a console sign-in lasts.")
    ui_session_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs console session cookies; derived from the admin token when unset.",
    )
    prediction_log_sample_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of answered requests written to the prediction log (0: off).",
    )
    prediction_log_uri: str = Field(
        default="mlflow-artifacts:/predictions",
        description="Where prediction-log files go: through MLflow's artifact proxy, or a file:// folder.",
    )
    prediction_log_flush_s: float = Field(
        default=5.0, gt=0, description="Longest a logged prediction waits in memory before it is written."
    )
    prediction_log_max_buffer_rows: int = Field(
        default=200_000, gt=0, description="Rows held in memory for the log; above it records are dropped."
    )
    feedback_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of POST /feedback (a labelling pipeline's); the admin token works too.",
    )
    feedback_max_pending: int = Field(
        default=100_000, gt=0, description="Recent answers kept per worker to join labels sent to /feedback."
    )


class StackSettings(_Base):
    """The local platform (`modelops up`)."""

    home: Path = Field(default=Path(".modelops"), description="Where the local platform keeps its state.")
    startup_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest a component may take to be healthy."
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_S3_ENDPOINT_URL", "s3_endpoint_url"),
        description="S3 endpoint for an s3:// artifact destination (env MLFLOW_S3_ENDPOINT_URL).",
    )


class AuthBootstrapSettings(_Base):
    """Passwords `modelops auth bootstrap` gives MLflow's principals (the chart sets them from its Secret)."""

    admin_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_AUTH_ADMIN_PASSWORD", "admin_password"),
        description="Password of MLflow's admin user (env MLFLOW_AUTH_ADMIN_PASSWORD).",
    )
    auth_trainer_password: SecretStr | None = Field(default=None, description="Password of `trainer`.")
    auth_model_server_password: SecretStr | None = Field(
        default=None, description="Password of `model-server` (read-only)."
    )
    auth_operator_password: SecretStr | None = Field(default=None, description="Password of `operator`.")


def prometheus_multiproc_dir() -> str | None:
    """The folder prometheus_client shares between worker processes, if set."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")
