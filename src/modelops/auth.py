"""MLflow principals: bootstrap of MLflow's basic-auth database, and the local credential files.

One principal per role, least privilege (MLflow's basic-auth app, `default_permission = READ`):
- `trainer`: creates runs (it owns the experiments it creates), registers versions and moves the alias
  when it promotes (EDIT on the registered model);
- `model-server`: reads only (the alias, versions, artifacts): the default READ permission;
- `operator`: the UI, deploy, rollback and rollouts (EDIT on the registered model); it writes the prediction log and
  the rollout reports (EDIT on those two experiments, READ on the trainer's);
- `admin`: manages users only; used by nothing that runs continuously.
No credential has a default: every password is generated (locally into files of mode 0600) or supplied.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops.errors import ConfigError

log = logging.getLogger(__name__)

ADMIN = "admin"
TRAINER = "trainer"
MODEL_SERVER = "model-server"
OPERATOR = "operator"
PRINCIPALS = (TRAINER, MODEL_SERVER, OPERATOR)
# Grants on the registered model beyond the default READ.
MODEL_GRANTS = {TRAINER: "EDIT", OPERATOR: "EDIT"}
PREDICTION_LOG_EXPERIMENT = "modelops-prediction-log"
ROLLOUT_EXPERIMENT = "modelops-rollouts"
DEFAULT_EXPERIMENT = "modelops"
# Where `mlflow server --serve-artifacts` puts an experiment's artifacts (no --default-artifact-root given).
SERVED_ARTIFACT_ROOT = "mlflow-artifacts:/"
FLASK_SECRET = "flask-secret-key"


def auth_config(database_uri: str) -> str:
    """The basic_auth.ini MLflow's auth app reads (no secret in it: passwords come from the environment)."""
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each request otherwise pays a full password hash (~0.3 s here): a trainer uploading a model
        # would wait seconds per file. A password change reaches other MLflow workers within this TTL.
        "auth_cache_ttl_seconds = 60\n"
    )


def create_registered_model(backend_store_uri: str, model_name: str) -> bool:
    """Create the registered model straight in MLflow's database, owned by no principal. Whoever creates it
    through the API becomes its manager (may delete it, move the alias): with the model already there, no
    principal can. Returns True when it was created now."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(backend_store_uri)
    try:
        store.get_registered_model(model_name)
        return False
    except MlflowException:
        store.create_registered_model(model_name)
        return True


def experiment_grants(training_experiment: str) -> dict[str, dict[str, str]]:
    """The experiments the platform writes to and the grants on each beyond READ: the trainer's runs (the trainer
    only: EDIT there would let the operator, whose credential model servers hold, rewrite any run's files), the
    prediction log and the rollout reports (both written as the operator). The bootstrap creates them owned by no
    principal, so no principal can take their names first and own them."""
    return {
        training_experiment: {TRAINER: "EDIT"},
        PREDICTION_LOG_EXPERIMENT: {OPERATOR: "EDIT"},
        ROLLOUT_EXPERIMENT: {OPERATOR: "EDIT"},
    }


def create_experiments(backend_store_uri: str, names: list[str]) -> dict[str, str]:
    """The experiments `names` (created straight in MLflow's database if missing, with the artifact location
    the tracking server itself would give them): name -> experiment id."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(backend_store_uri, SERVED_ARTIFACT_ROOT)
    ids = {}
    for name in names:
        found = store.get_experiment_by_name(name)
        ids[name] = str(found.experiment_id) if found is not None else str(store.create_experiment(name))
    return ids


def grant_experiments(database_uri: str, ids: dict[str, str], grants: dict[str, dict[str, str]]) -> list[str]:
    """Set each principal's permission on each experiment (`ids`: name -> id). Idempotent; it also lowers a
    principal that owns one (MANAGE, from having created it) to what it needs."""
    from mlflow.exceptions import MlflowException

    store = _auth_store(database_uri)
    done = []
    for name, experiment_id in ids.items():
        for user, permission in grants.get(name, {}).items():
            try:
                store.create_experiment_permission(experiment_id, user, permission)
            except MlflowException:
                store.update_experiment_permission(experiment_id, user, permission)
            done.append(f"{user}: {permission} on experiment {name}")
    return done


def _auth_store(database_uri: str) -> Any:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri)
    return store


def ensure_users(database_uri: str, admin_password: str, passwords: dict[str, str]) -> list[str]:
    """Create MLflow's auth tables, the admin and one user per principal, with the given passwords (so
    re-running rotates them). Returns what it did."""
    missing = [name for name in (ADMIN, *PRINCIPALS) if not (passwords | {ADMIN: admin_password}).get(name)]
    if missing:
        raise ConfigError(f"no password for MLflow principal(s): {', '.join(missing)}", field="password")
    store = _auth_store(database_uri)
    done: list[str] = []
    for user, password in {ADMIN: admin_password, **passwords}.items():
        if store.has_user(user, use_primary=True):
            store.update_user(user, password=password, is_admin=user == ADMIN)
            done.append(f"user {user}: password set")
        else:
            store.create_user(user, password, is_admin=user == ADMIN)
            done.append(f"user {user}: created")
    return done


def grant_model(
    database_uri: str,
    model_name: str,
    backend_store_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> list[str]:
    """The principals' grants on `model_name`; with `backend_store_uri`, also create the registered model
    itself (see create_registered_model) and the experiments the platform writes to, with their grants
    (see experiment_grants). Idempotent."""
    from mlflow.exceptions import MlflowException

    store = _auth_store(database_uri)
    done: list[str] = []
    for user, permission in MODEL_GRANTS.items():
        try:
            store.create_registered_model_permission(model_name, user, permission)
        except MlflowException:
            store.update_registered_model_permission(model_name, user, permission)
        done.append(f"{user}: {permission} on registered model {model_name}")
    if backend_store_uri:
        if create_registered_model(backend_store_uri, model_name):
            done.append(f"registered model {model_name}: created")
        grants = experiment_grants(experiment)
        done += grant_experiments(database_uri, create_experiments(backend_store_uri, list(grants)), grants)
    return done


def bootstrap(
    database_uri: str,
    model_name: str,
    admin_password: str,
    passwords: dict[str, str],
    backend_store_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> list[str]:
    """Users and passwords (ensure_users), then grants, the registered model and the experiments (grant_model).
    Idempotent."""
    return ensure_users(database_uri, admin_password, passwords) + grant_model(
        database_uri, model_name, backend_store_uri, experiment
    )


@dataclass(frozen=True)
class LocalCredentials:
    """The local platform's generated secrets, each in its own file of mode 0600 under `home/credentials`."""

    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    def get(self, name: str) -> str:
        """The secret `name`, generated on first use."""
        return _secret_file(self.path(name))

    def all(self) -> dict[str, str]:
        return {name: self.get(name) for name in (ADMIN, *PRINCIPALS, FLASK_SECRET)}


def private_dir(path: Path) -> Path:
    """A folder only its owner can enter (0700), created if needed."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def local_credentials(home: Path) -> LocalCredentials:
    private_dir(home)
    return LocalCredentials(private_dir(home / "credentials"))


def _secret_file(path: Path) -> str:
    if path.exists():
        os.chmod(path, 0o600)
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def local_signing_keys(home: Path) -> tuple[Path, Path]:
    """(private key, public key) of the local platform, generated on first use under `home/keys`."""
    from modelops.signing import generate_keypair

    folder = private_dir(home / "keys")
    private, public = folder / "signing-key.pem", folder / "signing-public.pem"
    if not private.exists():
        generate_keypair(private, public)
        log.info("generated a model-signing key pair in %s", folder)
    return private, public
