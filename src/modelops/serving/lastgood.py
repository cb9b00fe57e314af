"""The last version this server loaded successfully, kept on local disk.

A server that restarts while the alias points at a version it cannot load (or while MLflow is down) serves this
copy instead of answering 503 forever: verified again like any download, with readiness true and a warning, while
the watcher keeps retrying the alias.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from modelops.registry import VersionInfo
from modelops.serving.model import LoadedModel, load_local
from modelops.signing import Verifier

log = logging.getLogger(__name__)

FOLDER = "last-good"
META = "last-good.json"


class LastGood:
    """Save the served model's folder after each successful load; load it back at start-up."""

    def __init__(self, work_dir: Path) -> None:
        self.folder = work_dir / FOLDER
        self.meta = work_dir / META

    def save(self, model: LoadedModel) -> None:
        """Copy the model's verified folder (signature included) next to a description; atomic per file."""
        if model.model_path is None:
            return
        staging = self.folder.with_name(FOLDER + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(model.model_path, staging)
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(staging, self.folder)
        description = {
            "name": model.name,
            "version": model.version,
            "run_id": model.run_id,
            "metrics": model.metrics,
        }
        tmp = self.meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(description))
        os.replace(tmp, self.meta)

    def load(self, model_name: str, verifier: Verifier, allow_pyfunc: bool) -> LoadedModel | None:
        """The saved model, verified and warmed; None when there is none (or it no longer verifies)."""
        try:
            description = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return None
        if description.get("name") != model_name or not self.folder.is_dir():
            return None
        version = VersionInfo(
            name=model_name,
            version=str(description["version"]),
            run_id=description.get("run_id"),
            source=str(self.folder),
            aliases=(),
            tags={},
            created_ms=0,
        )
        try:
            return load_local(
                self.folder, version, dict(description.get("metrics") or {}), verifier, allow_pyfunc
            )
        except Exception as exc:  # a copy that no longer verifies or loads is never served
            log.warning("the last good copy (v%s) cannot be served: %s", version.version, exc)
            return None
