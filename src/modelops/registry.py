"""MLflow Model Registry access: resolve the alias, move it (with history for rollback), read metrics.

The registry is the single source of truth for what is served. Moving the alias records the previous
holder in a registered-model tag so that `rollback` works from any replica and survives restarts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import httpx

from modelops.errors import (
    NothingToRollBack,
    RegistryError,
    RegistryUnavailable,
    VersionNotFound,
)
from modelops.settings import RegistrySettings, apply_mlflow_client_defaults

log = logging.getLogger(__name__)

HISTORY_TAG = "modelops.alias.{alias}.history"
HISTORY_MAX = 50
MODEL_ARTIFACT_PATH = "model"

T = TypeVar("T")


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


def _is_unreachable(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    markers = (
        "ConnectionError",
        "Connection refused",
        "Max retries exceeded",
        "ConnectTimeout",
        "Failed to establish",
        "Name or service not known",
        "timed out",
        "RemoteDisconnected",
        "Temporary failure in name resolution",
        "ReadTimeout",
    )
    return any(m in text for m in markers)


def _is_not_found(exc: BaseException) -> bool:
    text = str(exc)
    return (
        "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower() or "INVALID_PARAMETER_VALUE" in text
    )


def _missing(exc: BaseException) -> bool:
    """The server answered that the thing does not exist (not: the server could not be reached)."""
    return not _is_unreachable(exc) and _is_not_found(exc)


class Registry:
    """Registry operations for one registered model and alias."""

    def __init__(self, settings: RegistrySettings) -> None:
        apply_mlflow_client_defaults()
        from mlflow.tracking import MlflowClient

        self.settings = settings
        self.tracking_uri = settings.tracking_uri
        self.name = settings.model_name
        self.alias = settings.model_alias
        self.client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)

    # -- connectivity -------------------------------------------------------------------------------
    def ping(self, timeout_s: float = 5.0) -> None:
        """Raise RegistryUnavailable unless the tracking server answers its health check."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return  # a local store (file:, sqlite:) is always there
        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            response = httpx.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"MLflow at {self.tracking_uri} is not reachable: {exc}") from exc
        if response.status_code != 200:
            raise RegistryUnavailable(
                f"MLflow at {self.tracking_uri} is not healthy: HTTP {response.status_code}"
            )

    def wait_until_reachable(self, wait_s: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """Retry `ping` with exponential backoff for up to `wait_s` seconds."""
        deadline = time.monotonic() + wait_s
        delay = 0.25
        while True:
            try:
                self.ping(timeout_s=max(0.5, min(5.0, wait_s)))
                return
            except RegistryUnavailable:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RegistryUnavailable(
                        f"MLflow at {self.tracking_uri} is not reachable after {wait_s:g} s"
                    ) from None
                log.info("waiting for MLflow at %s (%.0f s left)", self.tracking_uri, remaining)
                sleep(min(delay, remaining))
                delay = min(delay * 2, 5.0)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one client call and translate its failures into domain errors."""
        try:
            return fn()
        except RegistryError:
            raise
        except Exception as exc:
            if _is_unreachable(exc):
                raise RegistryUnavailable(f"MLflow at {self.tracking_uri} is not reachable: {exc}") from exc
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

    def alias_version(self) -> VersionInfo | None:
        """The version the alias points to, or None when no version holds it (or the model is new)."""

        def get() -> VersionInfo | None:
            try:
                mv = self.client.get_model_version_by_alias(self.name, self.alias)
            except Exception as exc:
                if _missing(exc):
                    return None
                raise
            return self._info(mv)

        return self._call(get)

    def get_version(self, version: str) -> VersionInfo:
        """One version; VersionNotFound when it does not exist."""

        def get() -> VersionInfo:
            try:
                mv = self.client.get_model_version(self.name, str(version))
            except Exception as exc:
                if _missing(exc):
                    raise VersionNotFound(
                        f"model {self.name!r} has no version {version!r}", field="version"
                    ) from exc
                raise
            return self._info(mv)

        return self._call(get)

    def run_metrics(self, run_id: str | None) -> dict[str, float]:
        """The metrics logged by a run ({} when there is no run)."""
        if not run_id:
            return {}
        return self._call(lambda: dict(self.client.get_run(run_id).data.metrics))

    def list_versions(self, limit: int = 100) -> list[VersionInfo]:
        """Registry versions newest first, each with its run's key metrics."""

        def get() -> list[VersionInfo]:
            try:
                found = self.client.search_model_versions(
                    f"name = '{self.name}'", max_results=limit, order_by=["version_number DESC"]
                )
            except Exception as exc:
                if _missing(exc):
                    return []
                raise
            # search results carry no aliases: take them from the registered model
            aliases: dict[str, list[str]] = {}
            if found:
                for alias, version in (self.client.get_registered_model(self.name).aliases or {}).items():
                    aliases.setdefault(str(version), []).append(alias)
            return [
                replace(
                    self._info(mv, self.run_metrics(mv.run_id)),
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
            found = self.client.search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'")
            return self._info(found[0]) if found else None

        existing = self._call(find)
        if existing is not None:
            return existing

        def register() -> VersionInfo:
            import mlflow

            try:
                self.client.get_run(run_id)
            except Exception as exc:
                if _missing(exc):
                    raise VersionNotFound(f"no run {run_id!r}", field="run_id") from exc
                raise
            try:
                mv = mlflow.register_model(f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}", self.name)
            except Exception as exc:
                if _missing(exc):
                    raise VersionNotFound(
                        f"run {run_id!r} has no model at '{MODEL_ARTIFACT_PATH}'", field="run_id"
                    ) from exc
                raise
            return self._info(mv)

        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return self._call(register)

    def _history(self) -> list[str]:
        model = self._call(lambda: self.client.get_registered_model(self.name))
        raw = (model.tags or {}).get(HISTORY_TAG.format(alias=self.alias), "")
        return [v for v in raw.split(",") if v]

    def _set_history(self, history: list[str]) -> None:
        value = ",".join(history[-HISTORY_MAX:])
        key = HISTORY_TAG.format(alias=self.alias)
        self._call(lambda: self.client.set_registered_model_tag(self.name, key, value))

    def move_alias(self, version: str) -> str | None:
        """Point the alias at `version`, remembering the previous holder. Returns that previous version."""
        target = self.get_version(version)
        current = self.alias_version()
        if current is not None and current.version == target.version:
            return current.version
        self._set_alias(target.version)
        if current is not None:
            self._set_history([*self._history(), current.version])
        return current.version if current else None

    def previous_version(self) -> str:
        """The version `rollback` would move the alias to; NothingToRollBack when there is none."""
        return self._rollback_target()[0]

    def _rollback_target(self) -> tuple[str, list[str], VersionInfo | None]:
        history = self._history()
        current = self.alias_version()
        while history:
            candidate = history.pop()
            if current is not None and candidate == current.version:
                continue
            try:
                self.get_version(candidate)
            except VersionNotFound:
                continue  # that version was deleted since; look further back
            return candidate, history, current
        raise NothingToRollBack(
            f"alias {self.alias!r} of {self.name!r} has no earlier version to roll back to"
        )

    def rollback(self) -> tuple[str | None, str]:
        """Move the alias back to its previous holder. Returns (from_version, to_version)."""
        candidate, rest, current = self._rollback_target()
        self._set_alias(candidate)
        self._set_history(rest)
        return (current.version if current else None, candidate)

    def _set_alias(self, version: str) -> None:
        self._call(lambda: self.client.set_registered_model_alias(self.name, self.alias, version))

    def set_version_tags(self, version: str, tags: dict[str, str]) -> None:
        def set_all() -> None:
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, version, key, value)

        self._call(set_all)
