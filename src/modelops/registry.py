"""MLflow Model Registry access: resolve the alias, move it (with history for rollback), read metrics.

The registry is the single source of truth for what is served. Moving the alias records the previous
holder in a registered-model tag so that `rollback` works from any replica and survives restarts.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import SecretStr

from modelops.alias import AUDIT_PREFIX, HISTORY_TAG, AliasHistory, AliasMove
from modelops.errors import (
    InvalidInput,
    NothingToRollBack,
    RegistryError,
    RegistryForbidden,
    RegistryUnavailable,
    VersionNotFound,
)
from modelops.mlflow_rest import RestError, RestReader, Transport
from modelops.settings import RegistrySettings, apply_mlflow_client_defaults, apply_mlflow_credentials
from modelops.waiting import wait_until

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
CARD_FILE = "model_card.json"

T = TypeVar("T")
RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids
RUN_TOKEN = re.compile(r"[0-9a-f]{8}")  # rollout ids (rollout/state.py)
MAX_EXPERIMENT_PAGES = 100  # of 1,000 experiments each: a server repeating its page token stops here


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version, as the registry describes it."""

    name: str
    version: str
    run_id: str | None
    source: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    created_ms: int
    metrics: dict[str, float] = field(default_factory=dict)
    download_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "source": self.source,
            "aliases": list(self.aliases),
            "tags": self.tags,
            "created_ms": self.created_ms,
            "metrics": self.metrics,
        }


# The one place MLflow's client errors are classified: by exception type (the transport) and MLflow error code.
MISSING_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"})
FORBIDDEN_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})
INVALID_CODES = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST"})


def classify(exc: BaseException) -> str:
    """ "unreachable", "missing", "forbidden", "invalid" or "other" for an exception from MLflow's client."""
    unreachable: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    requests = sys.modules.get("requests")  # MLflow's client's transport, when MLflow's client was used
    if requests is not None:
        unreachable += (requests.ConnectionError, requests.Timeout)
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(e, unreachable) for e in chain):
        return "unreachable"
    code = str(getattr(exc, "error_code", "") or "")
    if code in MISSING_CODES:
        return "missing"
    if code in FORBIDDEN_CODES:
        return "forbidden"
    if code in INVALID_CODES:
        return "invalid"
    # a 401/403 without an MLflow error body (the auth app's plain-text answers)
    if any(f"error code {status}" in str(exc) for status in (401, 403)):
        return "forbidden"
    return "other"


def _is_unreachable(exc: BaseException) -> bool:
    return classify(exc) == "unreachable"


def _is_forbidden(exc: BaseException) -> bool:
    return classify(exc) == "forbidden"


def _missing(exc: BaseException) -> bool:
    """The server answered that the thing does not exist (not: the server could not be reached)."""
    return classify(exc) == "missing"


class RestWriter:
    """Registry writes over MLflow's REST API with one explicit principal.

    A model server reads as its read-only principal (MLflow's client, credentials from the environment) and
    writes, for its admin API only, as the operator: two identities in one process, so writes do not go
    through MLflow's process-wide credentials."""

    def __init__(self, tracking_uri: str, username: str | None, password: SecretStr | None) -> None:
        self.username = username
        # no retries: a write (create a version, move an alias) is not repeated behind the caller's back
        self.transport = Transport(tracking_uri, username, _secret(password) if username else None, retries=0)

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one call; RegistryForbidden on 401/403, VersionNotFound on a missing resource."""
        return self.call("POST", endpoint, body)

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created by this principal when it does not exist yet."""
        try:
            found = self.call("GET", f"experiments/get-by-name?experiment_name={quote(name)}", {})
            return str(found["experiment"]["experiment_id"])
        except VersionNotFound:
            return str(self.post("experiments/create", {"name": name})["experiment_id"])

    def call(self, method: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call with `method` (MLflow's DELETE endpoints take a JSON body too)."""
        try:
            return self.transport.json(method, f"/api/2.0/mlflow/{endpoint}", endpoint, json=body)
        except ConnectionError as exc:
            raise _unreachable(exc) from exc
        except RestError as exc:
            if exc.status in (401, 403):
                who = f"principal {self.username!r}" if self.username else "an anonymous client"
                raise RegistryForbidden(f"MLflow refused {endpoint} for {who} (HTTP {exc.status})") from exc
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or exc.status == 404:
                raise VersionNotFound(str(exc), field="version") from exc
            raise RegistryError(f"MLflow {endpoint} failed (HTTP {exc.status}): {exc}") from exc


def _unreachable(exc: ConnectionError) -> RegistryUnavailable:
    """What a write that could not reach MLflow raises (naming the transport's error, not its details)."""
    return RegistryUnavailable(f"MLflow is not reachable: {type(exc.__cause__ or exc).__name__}")


def _secret(password: SecretStr | None) -> str | None:
    return None if password is None else password.get_secret_value()


class _ClientReader:
    """Registry reads through MLflow's client, for a local store (file:, sqlite:): `RestReader`'s methods."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self.registry.client, name)

    def search_experiments(self, page_token: str | None = None) -> Any:
        from mlflow.entities import ViewType

        return self.registry.client.search_experiments(view_type=ViewType.ALL, page_token=page_token)

    def search_runs(self, experiment_ids: list[str], filter_string: str, max_results: int) -> Any:
        from mlflow.entities import ViewType

        return self.registry.client.search_runs(
            experiment_ids, filter_string, run_view_type=ViewType.ALL, max_results=max_results
        )


class Registry:
    """Registry operations for one registered model and alias."""

    def __init__(
        self,
        settings: RegistrySettings,
        *,
        write_username: str | None = None,
        write_password: SecretStr | None = None,
    ) -> None:
        apply_mlflow_client_defaults()
        apply_mlflow_credentials(settings.tracking_username, settings.tracking_password)
        self.tracking_uri = settings.tracking_uri
        self.name = settings.model_name
        self.alias = settings.model_alias
        self._client: Any = None
        # reads: over REST for a tracking server (no `mlflow` import in a model server), else MLflow's client
        self.reader: Any = (
            RestReader(
                Transport(
                    settings.tracking_uri, settings.tracking_username, _secret(settings.tracking_password)
                )
            )
            if settings.tracking_uri.startswith(("http://", "https://"))
            else _ClientReader(self)
        )
        if write_username is None:
            write_username, write_password = settings.tracking_username, settings.tracking_password
        self.writer = RestWriter(settings.tracking_uri, write_username, write_password)

    @property
    def client(self) -> Any:
        """MLflow's own client for this tracking URI (the trainer logs runs and models with it), made on first
        use: a model server never imports MLflow."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def download(self, uri: str, dst: Path) -> Path:
        """The artifact (file or folder) at `uri` into folder `dst`, through this tracking server; its local
        path."""
        if isinstance(self.reader, RestReader):  # only through this server's artifact proxy (NotThisProxy)
            return self.reader.download(uri, dst)
        import mlflow.artifacts

        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(dst), tracking_uri=self.tracking_uri
            )
        )

    # -- connectivity -------------------------------------------------------------------------------
    def ping(self, timeout_s: float = 5.0) -> None:
        """Raise RegistryUnavailable unless the tracking server answers its health check."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return  # a local store (file:, sqlite:) is always there
        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            response = self.writer.transport.http.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"MLflow at {self.tracking_uri} is not reachable: {exc}") from exc
        if response.status_code != 200:
            raise RegistryUnavailable(
                f"MLflow at {self.tracking_uri} is not healthy: HTTP {response.status_code}"
            )

    def wait_until_reachable(self, wait_s: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """Retry `ping` with backoff for up to `wait_s` seconds, logging progress at INFO."""
        wait_until(
            lambda timeout_s: self.ping(timeout_s=timeout_s),
            what=f"MLflow at {self.tracking_uri}",
            timeout_s=wait_s,
            retry_on=(RegistryUnavailable,),
            on_timeout=lambda reason: RegistryUnavailable(
                f"MLflow at {self.tracking_uri} is not reachable after {wait_s:g} s: {reason}"
            ),
            sleep=sleep,
        )

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one client call and translate its failures into domain errors."""
        try:
            return fn()
        except RegistryError:
            raise
        except Exception as exc:
            if _is_unreachable(exc):
                raise RegistryUnavailable(f"MLflow at {self.tracking_uri} is not reachable: {exc}") from exc
            if _is_forbidden(exc):
                raise RegistryForbidden(f"MLflow refused the registry call: {exc}") from exc
            raise RegistryError(f"registry call failed: {exc}") from exc

    # -- reading ------------------------------------------------------------------------------------
    def _info(self, mv: Any, metrics: dict[str, float] | None = None) -> VersionInfo:
        return VersionInfo(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id or None,
            source=mv.source,
            aliases=tuple(getattr(mv, "aliases", []) or []),
            tags=dict(mv.tags or {}),
            created_ms=int(mv.creation_timestamp or 0),
            metrics=metrics or {},
        )

    def with_download_uri(self, version: VersionInfo) -> VersionInfo:
        """`version` with where its files are, as the tracking server resolves it."""
        uri = self._call(lambda: self.reader.get_model_version_download_uri(self.name, version.version))
        return replace(version, download_uri=str(uri))

    def alias_version(self) -> VersionInfo | None:
        """The version the alias points to, or None when no version holds it (or the model is new)."""

        def get() -> VersionInfo | None:
            try:
                mv = self.reader.get_model_version_by_alias(self.name, self.alias)
            except Exception as exc:
                # MLflow answers INVALID_PARAMETER_VALUE ("alias ... not found") for an alias no version holds
                if classify(exc) in ("missing", "invalid"):
                    return None
                raise
            return self._info(mv)

        return self._call(get)

    def get_version(self, version: str) -> VersionInfo:
        """One version; VersionNotFound when it does not exist."""

        def get() -> VersionInfo:
            try:
                mv = self.reader.get_model_version(self.name, str(version))
            except Exception as exc:
                kind = classify(exc)
                if kind == "missing":
                    raise VersionNotFound(
                        f"model {self.name!r} has no version {version!r}", field="version"
                    ) from exc
                if kind == "invalid":
                    raise InvalidInput(f"{version!r} is not a version number", field="version") from exc
                raise
            return self._info(mv)

        return self._call(get)

    def run_metrics(self, run_id: str | None) -> dict[str, float]:
        """The metrics logged by a run ({} when there is no run)."""
        if not run_id:
            return {}
        return self._call(lambda: dict(self.reader.get_run(run_id).data.metrics))

    def list_versions(self, limit: int = 100) -> list[VersionInfo]:
        """Registry versions newest first, each with its run's metrics.

        A bounded number of MLflow calls whatever the number of versions: one search for the versions, one
        read of the registered model (aliases), then the runs in bulk (the experiments, and one run search per
        200 runs). A run this principal cannot see shows no metrics."""
        runs_per_search = 200

        def bulk_metrics(run_ids: list[str]) -> dict[str, dict[str, float]]:
            # Run ids come from the registry: keep only well-formed ones, as they go into a filter string.
            run_ids = sorted({r for r in run_ids if r.replace("-", "").replace("_", "").isalnum()})
            if not run_ids:
                return {}
            experiment_ids: list[str] = []
            token: str | None = None
            # search_runs needs the experiments; runs of any of them may be registered
            for _ in range(MAX_EXPERIMENT_PAGES):
                page = self.reader.search_experiments(page_token=token)
                experiment_ids += [e.experiment_id for e in page]
                token = page.token
                if not token:
                    break
            found: dict[str, dict[str, float]] = {}
            for start in range(0, len(run_ids), runs_per_search):
                chunk = run_ids[start : start + runs_per_search]
                quoted = ", ".join(f"'{r}'" for r in chunk)
                for run in self.reader.search_runs(
                    experiment_ids, f"attributes.run_id IN ({quoted})", max_results=len(chunk)
                ):
                    found[run.info.run_id] = dict(run.data.metrics)
            return found

        def get() -> list[VersionInfo]:
            try:
                found = self.reader.search_model_versions(
                    f"name = '{self.name}'", max_results=limit, order_by=["version_number DESC"]
                )
            except Exception as exc:
                if _missing(exc):
                    return []
                raise
            # search results carry no aliases: take them from the registered model
            aliases: dict[str, list[str]] = {}
            if found:
                for alias, version in (self.reader.get_registered_model(self.name).aliases or {}).items():
                    aliases.setdefault(str(version), []).append(alias)
            metrics = bulk_metrics([mv.run_id for mv in found if mv.run_id])
            return [
                replace(
                    self._info(mv, metrics.get(mv.run_id or "")),
                    aliases=tuple(aliases.get(str(mv.version), ())),
                )
                for mv in found
            ]

        versions = self._call(get)
        return sorted(versions, key=lambda v: int(v.version), reverse=True)

    # -- writing ------------------------------------------------------------------------------------
    def version_for_run(self, run_id: str) -> VersionInfo:
        """The registered version made from this run; registers the run's model first if there is none."""

        def find() -> VersionInfo | None:
            found = self.reader.search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'")
            return self._info(found[0]) if found else None

        existing = self._call(find)
        if existing is not None:
            return existing

        def source() -> str:
            try:
                run = self.reader.get_run(run_id)
            except Exception as exc:
                # MLflow's auth answers "permission denied" for a run that does not exist
                if _missing(exc) or _is_forbidden(exc):
                    raise VersionNotFound(
                        f"no run {run_id!r} that this principal can read", field="run_id"
                    ) from exc
                raise
            return f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"

        model_source = self._call(source)
        self.ensure_registered_model()
        created = self.writer.post(
            "model-versions/create", {"name": self.name, "source": model_source, "run_id": run_id}
        )
        return self.get_version(str(created["model_version"]["version"]))

    def ensure_registered_model(self) -> None:
        """Create the registered model if it does not exist yet."""

        def exists() -> bool:
            try:
                self.reader.get_registered_model(self.name)
            except Exception as exc:
                if _missing(exc):
                    return False
                raise
            return True

        if not self._call(exists):
            self.writer.post("registered-models/create", {"name": self.name})

    def _history(self) -> AliasHistory:
        model = self._call(lambda: self.reader.get_registered_model(self.name))
        return AliasHistory.parse((model.tags or {}).get(HISTORY_TAG.format(alias=self.alias)))

    def _set_history(self, history: AliasHistory) -> None:
        key = HISTORY_TAG.format(alias=self.alias)
        self.writer.post(
            "registered-models/set-tag", {"name": self.name, "key": key, "value": history.render()}
        )

    def move_alias(self, version: str, *, action: str = "deploy", why: str = "") -> str | None:
        """Point the alias at `version`, remembering the previous holder and recording the move in the audit
        trail. Returns that previous version."""
        target = self.get_version(version)
        current = self.alias_version()
        if current is not None and current.version == target.version:
            return current.version
        self._set_alias(target.version)
        if current is not None:
            self._set_history(self._history().moved(current.version, target.version))
        self._record(action, current.version if current else None, target.version, why)
        return current.version if current else None

    def _record(self, action: str, from_version: str | None, to_version: str, why: str) -> None:
        import secrets

        move = AliasMove(
            int(time.time() * 1000),
            self.alias,
            action,
            self.writer.username or "anonymous",
            from_version,
            to_version,
            why,
        )
        self.writer.post(
            "registered-models/set-tag",
            {"name": self.name, "key": move.key(secrets.token_hex(3)), "value": move.render()},
        )
        log.info(
            "alias %r of %s: %s v%s -> v%s by %s (%s)",
            self.alias,
            self.name,
            action,
            from_version,
            to_version,
            move.who,
            why,
        )

    def card(self, version: str) -> dict[str, Any]:
        """The model card the trainer logged for `version`, with the version's alias moves added."""
        import json
        import tempfile

        run_id = self.get_version(version).run_id
        if not run_id:
            raise VersionNotFound(f"v{version} was not made by a run: it has no model card", field="version")

        def download() -> dict[str, Any]:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    path = self.reader.download_artifacts(run_id, CARD_FILE, tmp)
                except Exception as exc:
                    if classify(exc) in ("missing", "other"):
                        raise VersionNotFound(
                            f"v{version} has no model card (trained before cards existed?)", field="version"
                        ) from exc
                    raise
                return dict(json.loads(Path(path).read_text()))

        card = self._call(download)
        card["alias_history"] = [
            m.to_dict() for m in self.audit() if version in (m.to_version, m.from_version)
        ]
        return card

    def audit(self) -> list[AliasMove]:
        """Every recorded alias move of this model (all aliases), oldest first."""
        model = self._call(lambda: self.reader.get_registered_model(self.name))
        moves = [
            move
            for key, value in (model.tags or {}).items()
            if key.startswith(AUDIT_PREFIX) and (move := AliasMove.parse(key, value)) is not None
        ]
        return sorted(moves, key=lambda m: m.when_ms)

    def previous_version(self) -> str:
        """The version `rollback` would move the alias to; NothingToRollBack when there is none."""
        return self._rollback_target()[0]

    def _exists(self, version: str) -> bool:
        try:
            self.get_version(version)
        except VersionNotFound:
            return False  # deleted since: look further back
        return True

    def _rollback_target(self) -> tuple[str, AliasHistory, VersionInfo | None]:
        current = self.alias_version()
        found = self._history().rollback(current.version if current else None, self._exists)
        if found is None:
            raise NothingToRollBack(
                f"alias {self.alias!r} of {self.name!r} has no earlier version to roll back to"
            )
        return found[0], found[1], current

    def rollback(self, why: str = "") -> tuple[str | None, str]:
        """Move the alias back to its previous holder. Returns (from_version, to_version)."""
        candidate, rest, current = self._rollback_target()
        self._set_alias(candidate)
        self._set_history(rest)
        self._record("rollback", current.version if current else None, candidate, why)
        return (current.version if current else None, candidate)

    def _set_alias(self, version: str) -> None:
        self.writer.post(
            "registered-models/alias", {"name": self.name, "alias": self.alias, "version": version}
        )

    # -- other aliases and rollout state -------------------------------------------------------------
    def for_alias(self, alias: str) -> Registry:
        """The same registry (client, principals) working with another alias of the model."""
        other = copy.copy(self)
        other.alias = alias
        return other

    def set_alias(self, version: str, *, action: str, why: str) -> None:
        """Point the alias at `version` (no rollback history: for the challenger) and audit the move."""
        current = self.alias_version()
        self._set_alias(self.get_version(version).version)
        self._record(action, current.version if current else None, version, why)

    def model_tag(self, key: str) -> str | None:
        """A tag of the registered model, or None."""
        model = self._call(lambda: self.reader.get_registered_model(self.name))
        value = (model.tags or {}).get(key)
        return None if value is None else str(value)

    def set_model_tag(self, key: str, value: str) -> None:
        self.writer.post("registered-models/set-tag", {"name": self.name, "key": key, "value": value})

    def rollout_run(self, rollout_id: str, version: str) -> str:
        """The run of rollout `rollout_id` (of `version`) in the experiment ROLLOUT_EXPERIMENT, created on first
        use as the write principal, tagged with the challenger's version and run, and linked from the version's
        tag `modelops.rollout_run`."""
        from modelops.auth import ROLLOUT_EXPERIMENT

        if not RUN_TOKEN.fullmatch(rollout_id) or not version.isdigit():
            raise InvalidInput(f"not a rollout id: {rollout_id!r}", field="rollout")
        # created by the auth bootstrap; on an MLflow without it, by the writer here
        experiment = self.writer.experiment_id(ROLLOUT_EXPERIMENT)
        runs = (
            self.writer.post(
                "runs/search",
                {
                    "experiment_ids": [experiment],
                    "filter": f"tags.`modelops.rollout_id` = '{rollout_id}'",
                    "max_results": 1,
                },
            ).get("runs")
            or []
        )
        if runs:
            run_id = str(runs[0]["info"]["run_id"])
        else:
            challenger = self.get_version(version)
            tags = {
                "mlflow.runName": f"rollout-{rollout_id}-v{version}",
                "modelops.rollout_id": rollout_id,
                "modelops.model_name": self.name,
                "modelops.challenger_version": version,
                "modelops.challenger_run_id": challenger.run_id or "",
            }
            created = self.writer.post(
                "runs/create",
                {
                    "experiment_id": experiment,
                    "run_name": tags["mlflow.runName"],
                    "start_time": int(time.time() * 1000),
                    "tags": [{"key": k, "value": v} for k, v in tags.items()],
                },
            )
            run_id = str(created["run"]["info"]["run_id"])
            self.set_version_tags(version, {"modelops.rollout_run": run_id})
        return run_id

    def finish_run(self, run_id: str, status: str) -> None:
        """Mark run `run_id` ended with `status` (FINISHED or KILLED), as the write principal."""
        self.writer.post(
            "runs/update", {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)}
        )

    def put_run_artifacts(self, run_id: str, files: dict[str, bytes]) -> None:
        """Upload `files` (artifact path -> bytes) into run `run_id`, as the write principal, through MLflow's
        artifact proxy (the only way in for a principal that holds no object-store credential).
        RegistryForbidden without EDIT on the run's experiment."""
        bad = [p for p in files if any(part in ("", ".", "..") for part in p.split("/"))]
        if not RUN_ID.fullmatch(run_id) or bad:
            raise InvalidInput(f"not a run artifact: {run_id}/{bad[0] if bad else ''}", field="path")
        run = self.writer.call("GET", f"runs/get?run_id={run_id}", {})
        root = str(run["run"]["info"]["artifact_uri"])
        if urlsplit(root).scheme != "mlflow-artifacts":
            raise RegistryError(
                f"run {run_id} keeps its artifacts at {root}, not behind MLflow's artifact proxy"
            )
        base = "/api/2.0/mlflow-artifacts/artifacts/"
        for path, data in files.items():
            url = base + quote(f"{urlsplit(root).path.strip('/')}/{path.strip('/')}")
            try:
                response = self.writer.transport.send("PUT", url, content=data)
            except ConnectionError as exc:
                raise _unreachable(exc) from exc
            if response.status_code in (401, 403):
                raise RegistryForbidden(
                    f"MLflow refused an artifact of run {run_id} for principal {self.writer.username!r} "
                    f"(HTTP {response.status_code})"
                )
            if response.status_code >= 400:
                raise RegistryError(
                    f"upload of {path} failed (HTTP {response.status_code}): {response.text[:200]}"
                )

    def set_version_tags(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.writer.post(
                "model-versions/set-tag", {"name": self.name, "version": version, "key": key, "value": value}
            )
