"""MLflow's backend database schema: upgrade once (a Job), and wait for it (init containers).

Running the migration in one Job instead of in every MLflow replica avoids replicas racing to create
or migrate the schema. `upgrade` works on an empty database (creates the schema) and on an existing one.
The password comes from libpq's PGPASSWORD, so it never appears in a URI or in the pod spec.
"""

from __future__ import annotations

import logging

from modelops.errors import DatabaseUnreachable
from modelops.waiting import NotYet, wait_until

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

    def attempt(timeout_s: float) -> None:
        engine = sqlalchemy.create_engine(uri, pool_pre_ping=True, connect_args=_connect_args(uri, timeout_s))
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
        except sqlalchemy.exc.OperationalError as exc:
            raise NotYet(str(exc.orig).strip().splitlines()[0] if exc.orig else "not reachable") from None
        finally:
            engine.dispose()

    wait_until(
        attempt,
        what=f"the database at {_redact(uri)}",
        timeout_s=wait_s,
        on_timeout=lambda reason: DatabaseUnreachable(
            f"database is not reachable after {wait_s:g} s: {reason}"
        ),
    )


def wait_for_schema(uri: str, wait_s: float) -> str:
    """Block until the schema is at this MLflow's head (the migration Job has run)."""
    _wait_for_database(uri, wait_s)

    def attempt(_: float) -> str:
        current, head = schema_state(uri)
        if current != head:
            raise NotYet(
                f"schema at {current or 'nothing (empty)'}, expected {head}: has the migration Job run?"
            )
        return head

    return wait_until(
        attempt,
        what="the database schema",
        timeout_s=wait_s,
        first_delay_s=1.0,
        on_timeout=lambda reason: DatabaseUnreachable(
            f"database schema not ready after {wait_s:g} s: {reason}"
        ),
    )


def _connect_args(uri: str, timeout_s: float) -> dict[str, object]:
    # a connection attempt must not hang longer than the attempt (libpq's default is forever)
    return {"connect_timeout": max(1, int(timeout_s))} if uri.startswith("postgresql") else {}


def _redact(uri: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    host = parts.hostname or ""
    return (
        f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"
        if host
        else parts.scheme
    )
