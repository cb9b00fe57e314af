"""Domain errors. No HTTP here: the API layer maps these to status codes in one table, the CLI to exit codes in
EXIT_CODES below (the same order of specificity).

ModelOpsError
├── ConfigError               a setting or flag is wrong (caught at start-up)
├── InvalidInput              bad input from a user; carries the offending `field`
│   ├── DataError             training data cannot be used (missing file, bad column, one class...)
│   └── PayloadTooLarge       body or batch over the configured limit
├── Unreachable               a service did not answer (connection refused, DNS, timeout)
│   ├── RegistryUnavailable   the MLflow tracking server (also a RegistryError)
│   ├── DatabaseUnreachable   PostgreSQL / the backend store
│   ├── ObjectStoreUnreachable  S3 / MinIO
│   └── ServerUnreachable     the model server
├── RegistryError             talking to the MLflow registry failed
│   ├── AliasNotFound         no version holds the alias
│   ├── VersionNotFound       no such model version / run
│   ├── RegistryForbidden     the registry refused our credential (401/403 from MLflow)
│   ├── NothingToRollBack     the alias has no earlier holder
│   └── RolloutConflict       a rollout is (or is not) running, so this rollout action cannot be done
├── ModelError
│   ├── ModelLoadError        a version could not be downloaded, loaded or warmed up
│   │   └── ModelRefused      a version failed the trust checks (signature, format, types); has `reason`
│   └── ModelNotReady         no model is loaded yet
├── ServerError               the model server answered with an error (CLI client side)
├── StartupFailed             a local platform component did not start
└── SmokeTestFailed           a check of a running platform failed
"""

from __future__ import annotations

import reprlib


class ModelOpsError(Exception):
    """Base of every error this package raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConfigError(ModelOpsError):
    code = "config_error"


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlevel = 2
    short.maxlist = short.maxdict = 4
    short.maxstring = short.maxother = 60
    short.maxlong = 40
    return short


_SHORT = _short_repr()


def shown(value: object) -> str:
    """A client's value for an error message: bounded in depth and length (a deeply nested list's own repr would
    recurse past Python's limit, a 5,000-digit number would be echoed whole)."""
    return _SHORT.repr(value)


class InvalidInput(ModelOpsError):
    code = "invalid_input"


class DataError(InvalidInput):
    code = "data_error"


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"


class Unreachable(ModelOpsError):
    code = "unreachable"


class RegistryError(ModelOpsError):
    code = "registry_error"


class RegistryUnavailable(RegistryError, Unreachable):
    code = "registry_unavailable"


class DatabaseUnreachable(Unreachable):
    code = "database_unreachable"


class ObjectStoreUnreachable(Unreachable):
    code = "object_store_unreachable"


class ServerUnreachable(Unreachable):
    code = "server_unreachable"


class AliasNotFound(RegistryError):
    code = "alias_not_found"


class VersionNotFound(RegistryError):
    code = "not_found"


class RegistryForbidden(RegistryError):
    code = "registry_forbidden"


class NothingToRollBack(RegistryError):
    code = "nothing_to_roll_back"


class RolloutConflict(RegistryError):
    code = "rollout_conflict"


class ModelError(ModelOpsError):
    code = "model_error"


class ModelLoadError(ModelError):
    code = "model_load_failed"


class ModelNotReady(ModelError):
    code = "model_not_ready"


class ModelRefused(ModelLoadError):
    """A version that must never be served: unsigned, signed by another key, tampered, or in a format
    that could run code. `reason` is a short label for metrics (unsigned, bad_signature, ...)."""

    code = "model_refused"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, field="version")
        self.reason = reason


class ServerError(ModelOpsError):
    code = "server_error"


class StartupFailed(ModelOpsError):
    code = "startup_failed"


class SmokeTestFailed(ModelOpsError):
    code = "smoke_test_failed"


# The CLI's exit codes, most specific first (mirrors the API's status table): 1 the user can fix the input or
# the request, 2 a service is unreachable (retry later), 3 a running platform is unhealthy.
EXIT_OK = 0
EXIT_INPUT = 1
EXIT_UNREACHABLE = 2
EXIT_UNHEALTHY = 3
EXIT_CODES: list[tuple[type[ModelOpsError], int]] = [
    (Unreachable, EXIT_UNREACHABLE),
    (StartupFailed, EXIT_UNHEALTHY),
    (SmokeTestFailed, EXIT_UNHEALTHY),
    (ModelOpsError, EXIT_INPUT),
]


def exit_code(exc: ModelOpsError) -> int:
    """The CLI exit code of a domain error."""
    return next(code for kind, code in EXIT_CODES if isinstance(exc, kind))
