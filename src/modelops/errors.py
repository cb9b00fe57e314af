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
│   └── NothingToRollBack     the alias has no earlier holder
└── ModelError
    ├── ModelLoadError        a version could not be downloaded, loaded or warmed up
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


class NothingToRollBack(RegistryError):
    code = "nothing_to_roll_back"


class ModelError(ModelOpsError):
    code = "model_error"


class ModelLoadError(ModelError):
    code = "model_load_failed"


class ModelNotReady(ModelError):
    code = "model_not_ready"
