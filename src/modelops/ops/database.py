"""MLflow's backend database schema: upgrade once (a Job), and wait for it (init containers).

Running the migration in one Job instead of in every MLflow replica avoids replicas racing to create
or migrate the schema. `upgrade` works on an empty database (creates the schema) and on an existing one.
The password comes from libpq's PGPASSWORD, so it never appears in a URI or in the pod spec.
"""

from __future__ import annotations

import logging
import time

from modelops.errors import RegistryUnavailable

log = logging.getLogger(__name__)


def _engine(uri: str):  # type: ignore[no-untyped-def]
    import sqlalchemy

    return sqlalchemy.create_engine(uri, pool_pre_ping=True)


def schema_state(uri: str) -> tuple[str | None, str]:
    """(current revision or None for an empty database, the revision this MLflow expects)."""
    from mlflow.store.db import utils

    engine = _engine(uri)
    try:
        current = None if utils._is_empty_database(engine) else utils._get_schema_version(engine)
        return current, utils._get_latest_schema_revision()
    finally:
        engine.dispose()


def upgrade(uri: str, wait_s: float) -> str:
    """Create or migrate the schema to this MLflow's head. Waits up to `wait_s` for the database."""
    from mlflow.store.db import utils

    _wait_for_database(uri, wait_s)
    engine = _engine(uri)
    try:
        if utils._is_empty_database(engine):
            utils._initialize_tables(engine)
            return "created"
        if utils._get_schema_version(engine) == utils._get_latest_schema_revision():
            return "current"
        utils._upgrade_db(engine)
        return "upgraded"
    finally:
        engine.dispose()


def _wait_for_database(uri: str, wait_s: float) -> None:
    import sqlalchemy

    deadline = time.monotonic() + wait_s
    while True:
        engine = _engine(uri)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            return
        except sqlalchemy.exc.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RegistryUnavailable(
                    f"database is not reachable after {wait_s:g} s: {exc.orig}"
                ) from exc
            log.info("waiting for the database")
            time.sleep(1.0)
        finally:
            engine.dispose()


def wait_for_schema(uri: str, wait_s: float) -> str:
    """Block until the schema is at this MLflow's head (the migration Job has run)."""
    _wait_for_database(uri, wait_s)
    deadline = time.monotonic() + wait_s
    while True:
        current, head = schema_state(uri)
        if current == head:
            return head
        if time.monotonic() > deadline:
            raise RegistryUnavailable(
                f"database schema is at {current or 'nothing (empty)'}, expected {head}: has the migration Job run?"
            )
        time.sleep(2.0)
