"""Domain errors. No HTTP here: the API layer maps these to status codes in one table.

ModelOpsError
├── ConfigError               a setting or flag is wrong (exit 2 / HTTP 500 never: caught at start-up)
├── InvalidInput              bad input from a user; carries the offending `field`
│   ├── DataError             training data cannot be used (missing file, bad column, one class...)
│   └── PayloadTooLarge       body or batch over the configured limit
├── RegistryError             talking to the MLflow registry failed
│   ├── RegistryUnavailable   the tracking server cannot be reached
│   ├── AliasNotFound         no version holds the alias
│   ├── VersionNotFound       no such model version / run
│   ├── RegistryForbidden     the registry refused our credential (401/403 from MLflow)
│   └── NothingToRollBack     the alias has no earlier holder
└── ModelError
    ├── ModelLoadError        a version could not be downloaded, loaded or warmed up
    │   └── ModelRefused      a version failed the trust checks (signature, format, types); has `reason`
    └── ModelNotReady         no model is loaded yet
"""

from __future__ import annotations


class ModelOpsError(Exception):
    """Base of every error this package raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConfigError(ModelOpsError):
    code = "config_error"


class InvalidInput(ModelOpsError):
    code = "invalid_input"


class DataError(InvalidInput):
    code = "data_error"


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"


class RegistryError(ModelOpsError):
    code = "registry_error"


class RegistryUnavailable(RegistryError):
    code = "registry_unavailable"


class AliasNotFound(RegistryError):
    code = "alias_not_found"


class VersionNotFound(RegistryError):
    code = "not_found"


class RegistryForbidden(RegistryError):
    code = "registry_forbidden"


class NothingToRollBack(RegistryError):
    code = "nothing_to_roll_back"


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
