"""`modelops train` against a real MLflow tracking server (and moto as the S3 endpoint)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient

from modelops.cli import main
from tests.support import Service, free_port, mlflow_server, modelops, moto_server


def train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict | None, str]:
    """Run `modelops train` in-process; returns (exit code, parsed JSON or None, stderr)."""
    code = main(["train", *args, "--output", "json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_builtin_run_registers_and_promotes_then_auto_keeps_better_champion(
    tracking_server: Service, model_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = tracking_server.uri
    code, first, err = train(capsys, "--tracking-uri", uri, "--model-name", model_name)
    assert code == 0, err
    assert first is not None
    assert first["version"] == "1" and first["promoted"] is True
    assert first["champion_version"] == "1"
    assert set(first["metrics"]) >= {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "log_loss",
        "fit_time_s",
    }
    assert 0.9 < first["metrics"]["roc_auc"] <= 1.0

    client = MlflowClient(uri)
    run = client.get_run(first["run_id"])
    assert run.data.params["algorithm"] == "logreg"
    assert run.data.params["n_rows"] == "569" and run.data.params["n_features"] == "30"
    assert {"data_digest", "data_source", "test_size", "seed", "hp.C"} <= set(run.data.params)
    assert run.data.tags["modelops.version"]
    assert len(run.inputs.dataset_inputs) == 1
    stats = json.loads(Path(client.download_artifacts(first["run_id"], "reference_stats.json")).read_text())
    assert stats["features"]["mean radius"]["count"] == stats["n_rows"]
    assert set(stats["features"]["mean radius"]) >= {"mean", "std", "min", "max", "quantiles"}
    version = client.get_model_version(model_name, "1")
    assert version.tags["modelops.promoted"] == "true"

    import mlflow as mlflow_lib

    mlflow_lib.set_tracking_uri(uri)
    model_info = mlflow_lib.models.get_model_info(f"models:/{model_name}/1")
    assert model_info.signature.inputs.input_names()[0] == "mean radius"
    assert len(model_info.signature.inputs.input_names()) == 30

    # A deliberately worse model: registered, not promoted under auto.
    worse = ("--algorithm", "random_forest", "--param", "n_estimators=2", "--param", "max_depth=1")
    code, second, err = train(capsys, "--tracking-uri", uri, "--model-name", model_name, *worse)
    assert code == 0, err
    assert second is not None
    assert second["version"] == "2" and second["promoted"] is False
    assert "worse" in second["reason"] and second["champion_version"] == "1"
    assert client.get_model_version(model_name, "2").tags["modelops.promoted"] == "false"

    code, third, err = train(
        capsys, "--tracking-uri", uri, "--model-name", model_name, *worse, "--promote", "never", "--seed", "3"
    )
    assert code == 0 and third is not None
    assert third["promoted"] is False and third["champion_version"] == "1"

    code, fourth, err = train(
        capsys, "--tracking-uri", uri, "--model-name", model_name, *worse, "--promote", "always"
    )
    assert code == 0 and fourth is not None
    assert fourth["promoted"] is True and fourth["champion_version"] == fourth["version"] == "4"
    assert client.get_model_version_by_alias(model_name, "champion").version == "4"


def test_lower_is_better_metric_is_compared_the_right_way(
    tracking_server: Service, model_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = tracking_server.uri
    assert train(capsys, "--tracking-uri", uri, "--model-name", model_name)[0] == 0
    code, worse, _ = train(
        capsys,
        "--tracking-uri",
        uri,
        "--model-name",
        model_name,
        "--metric",
        "log_loss",
        "--algorithm",
        "random_forest",
        "--param",
        "n_estimators=2",
        "--param",
        "max_depth=1",
    )
    assert code == 0 and worse is not None
    assert worse["promoted"] is False, worse["reason"]


def test_csv_run(
    tracking_server: Service, model_name: str, csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = train(
        capsys,
        "--tracking-uri",
        tracking_server.uri,
        "--model-name",
        model_name,
        "--data",
        str(csv_file),
        "--target",
        "label",
    )
    assert code == 0, err
    assert out is not None and out["promoted"] is True
    run = MlflowClient(tracking_server.uri).get_run(out["run_id"])
    assert run.data.params["n_features"] == "4"
    assert run.data.params["data_source"] == str(csv_file)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_file", "data file not found"),
        ("missing_target", "target column 'label' not in"),
        ("non_numeric", "feature column 'b' is not numeric"),
        ("empty", "is empty"),
        ("header_only", "has a header but no rows"),
        ("single_class", "single class"),
        ("unknown_algorithm", "invalid choice: 'svm'"),
        ("unknown_param", "unknown parameter 'depth'"),
        ("bad_param_value", "'C'"),
        ("malformed_param", "not of the form key=value"),
    ],
)
def test_bad_input_fails_with_one_line_error_and_registers_nothing(
    tracking_server: Service,
    model_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    expected: str,
) -> None:
    good = "a,b,label\n1,2,0\n2,3,1\n3,4,0\n4,5,1\n5,6,0\n6,7,1\n"
    csv = {
        "missing_target": "a,b,y\n1,2,0\n",
        "non_numeric": "a,b,label\n1,x,0\n2,3,1\n",
        "empty": "",
        "header_only": "a,b,label\n",
        "single_class": "a,b,label\n1,2,1\n2,3,1\n",
        "unknown_param": good,
        "bad_param_value": good,
    }
    args = {
        "missing_file": ["--data", str(tmp_path / "nope.csv"), "--target", "label"],
        "unknown_algorithm": ["--algorithm", "svm"],
        "unknown_param": ["--param", "depth=3"],
        "bad_param_value": ["--param", "C=-1"],
        "malformed_param": ["--param", "C"],
    }.get(case, [])
    if case in csv:
        args += ["--data", _write(tmp_path / "d.csv", csv[case]), "--target", "label"]
    code = main(["train", "--tracking-uri", tracking_server.uri, "--model-name", model_name, *args])
    _, err = capsys.readouterr()
    assert code == 1
    assert expected in err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert MlflowClient(tracking_server.uri).search_model_versions(f"name = '{model_name}'") == []


def test_unreachable_mlflow_exits_2_quickly_naming_the_uri(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    result = modelops("train", "--tracking-uri", uri, "--wait-s", "1")
    assert result.returncode == 2, result.stderr
    assert uri in result.stderr and "not reachable" in result.stderr
    assert result.stderr.count("\n") == 1
    assert time.monotonic() - start < 30


def test_json_output_is_one_object_on_stdout(tracking_server: Service, model_name: str) -> None:
    result = modelops(
        "train",
        "--tracking-uri",
        tracking_server.uri,
        "--model-name",
        model_name,
        "--output",
        "json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert {
        "run_id",
        "model_name",
        "version",
        "alias",
        "promoted",
        "reason",
        "metrics",
        "champion_version",
    } <= set(document)


def test_text_output_shows_timing_breakdown(tracking_server: Service, model_name: str) -> None:
    result = modelops("train", "--tracking-uri", tracking_server.uri, "--model-name", model_name)
    assert result.returncode == 0, result.stderr
    assert "timing: load_data" in result.stdout and "total" in result.stdout
    assert "promoted (no version held the alias yet" in result.stdout


@pytest.fixture
def s3_stack(tmp_path: Path, aws_test_env: None):  # type: ignore[no-untyped-def]
    moto = moto_server(tmp_path / "moto").start()
    s3 = boto3.client("s3", endpoint_url=moto.uri)
    s3.create_bucket(Bucket="artifacts")
    env = {
        "MLFLOW_S3_ENDPOINT_URL": moto.uri,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    server = mlflow_server(
        tmp_path / "mlflow", artifacts_destination="s3://artifacts/mlflow", env=env
    ).start()
    yield server, s3, moto
    server.stop()
    moto.stop()


def test_s3_artifact_store_and_s3_data(
    s3_stack: tuple[Service, object, Service],
    model_name: str,
    csv_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, s3, moto = s3_stack
    s3.upload_file(str(csv_file), "artifacts", "data/train.csv")  # type: ignore[attr-defined]
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto.uri)
    code, out, err = train(
        capsys,
        "--tracking-uri",
        server.uri,
        "--model-name",
        model_name,
        "--data",
        "s3://artifacts/data/train.csv",
        "--target",
        "label",
    )
    assert code == 0, err
    assert out is not None and out["promoted"] is True
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="artifacts", Prefix="mlflow/")["Contents"]]  # type: ignore[attr-defined]
    assert any(k.endswith("/MLmodel") for k in keys), keys
    assert any(k.endswith("model.skops") or k.endswith("model.pkl") for k in keys), keys
    assert any(k.endswith("reference_stats.json") for k in keys), keys


def test_s3_data_missing_key_is_a_clear_error(
    s3_stack: tuple[Service, object, Service],
    model_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _, moto = s3_stack
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto.uri)
    code = main(
        [
            "train",
            "--tracking-uri",
            server.uri,
            "--model-name",
            model_name,
            "--data",
            "s3://artifacts/nope.csv",
        ]
    )
    assert code == 1
    assert "cannot read s3://artifacts/nope.csv" in capsys.readouterr().err


def test_any_two_valued_label_works_and_the_positive_class_is_explicit(
    tracking_server: Service,
    model_name: str,
    csv_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import pandas as pd

    frame = pd.read_csv(csv_file)
    frame["label"] = frame["label"].map({0: "no", 1: "yes"})
    path = tmp_path / "yes_no.csv"
    frame.to_csv(path, index=False)
    common = ["--tracking-uri", tracking_server.uri, "--model-name", model_name, "--data", str(path)]
    code, default, err = train(capsys, *common, "--target", "label", "--promote", "never")
    assert code == 0, err
    assert MlflowClient(tracking_server.uri).get_run(default["run_id"]).data.params["positive_class"] == "yes"
    code, other, err = train(
        capsys, *common, "--target", "label", "--promote", "never", "--positive-class", "no"
    )
    assert code == 0, err
    # the same model seen from the other class: accuracy and roc_auc agree, precision/recall are the other class's
    assert other["metrics"]["accuracy"] == pytest.approx(default["metrics"]["accuracy"])
    assert other["metrics"]["roc_auc"] == pytest.approx(default["metrics"]["roc_auc"])
    assert other["metrics"]["precision"] != pytest.approx(default["metrics"]["precision"])
    code, _, err = train(capsys, *common, "--target", "label", "--positive-class", "maybe")
    assert code == 1 and "--positive-class 'maybe'" in err and "no, yes" in err


class FlakyProxy:
    """A reverse proxy in front of MLflow that, once `trigger` appears in a request path, answers nothing
    (closes the connection) for `outage_s` seconds: MLflow lost in the middle of a run."""

    def __init__(self, upstream: str, trigger: str, outage_s: float) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import httpx

        proxy = self
        self.down_until = 0.0
        self.tripped = False

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                now = time.monotonic()
                if trigger in self.path and not proxy.tripped:
                    proxy.tripped, proxy.down_until = True, now + outage_s
                if now < proxy.down_until:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                answer = httpx.request(
                    self.command, upstream + self.path, content=body, headers=headers, timeout=60
                )
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_mlflow_lost_mid_run_exits_2_and_marks_the_run_failed(
    tracking_server: Service, model_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # the outage starts with the model upload and is over before the trainer gives up marking the run
    proxy = FlakyProxy(tracking_server.uri, "mlflow-artifacts/artifacts/", outage_s=3)
    try:
        code, _, err = train(
            capsys, "--tracking-uri", proxy.uri, "--model-name", model_name, "--wait-s", "20"
        )
    finally:
        proxy.close()
    assert proxy.tripped
    assert code == 2, err
    assert "was lost during run" in err and "marked FAILED" in err and "Traceback" not in err
    client = MlflowClient(tracking_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("modelops").experiment_id], max_results=1)
    assert runs[0].info.status == "FAILED"
    assert not client.search_model_versions(f"name = '{model_name}'")  # nothing half-made was registered
