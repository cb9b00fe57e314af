"""One-shot tasks the chart runs: the bucket provisioner and the database schema migration."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest

from modelops.cli import main
from tests.support import free_port, moto_server


def test_create_bucket_is_idempotent(
    tmp_path: Path, aws_test_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    moto = moto_server(tmp_path).start()
    try:
        args = ["create-bucket", "--bucket", "mlflow-artifacts", "--endpoint-url", moto.uri, "--wait-s", "5"]
        assert main(args) == 0
        assert "created" in capsys.readouterr().out
        assert main(args) == 0
        assert "exists" in capsys.readouterr().out
        names = [b["Name"] for b in boto3.client("s3", endpoint_url=moto.uri).list_buckets()["Buckets"]]
        assert names == ["mlflow-artifacts"]
    finally:
        moto.stop()


def test_create_bucket_waits_for_the_object_store(
    tmp_path: Path, aws_test_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    unreachable = main(
        [
            "create-bucket",
            "--bucket",
            "late-bucket",
            "--endpoint-url",
            f"http://127.0.0.1:{port}",
            "--wait-s",
            "1",
        ]
    )
    assert unreachable == 2 and "not reachable" in capsys.readouterr().err

    late = moto_server(tmp_path, port)
    starter = threading.Timer(2.0, late.start)
    starter.start()
    try:
        assert (
            main(
                [
                    "create-bucket",
                    "--bucket",
                    "late-bucket",
                    "--endpoint-url",
                    f"http://127.0.0.1:{port}",
                    "--wait-s",
                    "60",
                ]
            )
            == 0
        )
        assert "created" in capsys.readouterr().out
    finally:
        starter.join()
        late.stop()


def database_uris(tmp_path: Path) -> list[str]:
    uris = [f"sqlite:///{tmp_path / 'mlflow.db'}"]
    base = os.environ.get("MODELOPS_TEST_DATABASE_URL")
    if base:
        import psycopg

        name = f"modelops_ops_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        # the password travels in PGPASSWORD, as in the chart
        user = base.split("//", 1)[1].split(":", 1)[0]
        host = base.rsplit("@", 1)[1].rsplit("/", 1)[0]
        uris.append(f"postgresql+psycopg://{user}@{host}/{name}")
    return uris


def test_db_upgrade_on_empty_then_current_and_wait(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = os.environ.get("MODELOPS_TEST_DATABASE_URL")
    if base:
        monkeypatch.setenv("PGPASSWORD", base.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1])
    for uri in database_uris(tmp_path):
        assert (
            main(["db", "wait", "--backend-store-uri", uri, "--wait-s", "1"]) == 2
        )  # empty: not migrated yet
        assert "has the migration Job run" in capsys.readouterr().err
        waiter: dict[str, int] = {}

        def wait(u: str = uri, into: dict[str, int] = waiter) -> None:
            into["code"] = main(["db", "wait", "--backend-store-uri", u, "--wait-s", "60"])

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(1)
        assert main(["db", "upgrade", "--backend-store-uri", uri]) == 0
        assert "schema: created" in capsys.readouterr().out
        thread.join(timeout=60)
        assert waiter.get("code") == 0
        assert main(["db", "upgrade", "--backend-store-uri", uri]) == 0
        assert "schema: current" in capsys.readouterr().out
    if not base:
        pytest.skip("checked on SQLite only; set MODELOPS_TEST_DATABASE_URL to check PostgreSQL too")
