"""Evaluated promotion, approval, audit trail and model cards, through the real trainer and a real MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from modelops.cli import main
from tests.support import TEST_PASSWORDS, MlflowService


def train(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code = main(["train", *args, "--output", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return dict(json.loads(out))


def as_operator(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run a CLI command as the operator principal (what `approve` and `history` need)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", "operator")
        patch.setenv("MLFLOW_TRACKING_PASSWORD", TEST_PASSWORDS["operator"])
        code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def datasets(csv_file: Path, tmp_path: Path) -> dict[str, Path]:
    """real.csv (the real distribution), easy.csv (a feature leaks the label: a trivially easy split) and
    eval.csv (held-out real rows, the shared evaluation set)."""
    frame = pd.read_csv(csv_file).sample(frac=1.0, random_state=0).reset_index(drop=True)
    real, evaluation = frame.iloc[:400], frame.iloc[400:]
    easy = real.copy()
    features = [c for c in easy.columns if c != "label"]
    noise = np.random.default_rng(0)
    # a feature that gives the label away (the other way round from real data), the rest noise: perfect on its
    # own split, worse than useless on real rows
    easy[features[0]] = (1 - easy["label"]) * 1000.0
    for column in features[1:]:
        easy[column] = noise.normal(size=len(easy))
    paths = {"real": tmp_path / "real.csv", "easy": tmp_path / "easy.csv", "eval": tmp_path / "eval.csv"}
    real.to_csv(paths["real"], index=False)
    easy.to_csv(paths["easy"], index=False)
    evaluation.to_csv(paths["eval"], index=False)
    return paths


def test_a_candidate_better_only_on_its_own_easier_split_is_not_promoted(
    tracking_server: MlflowService,
    model_name: str,
    datasets: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--tracking-uri", tracking_server.uri, "--model-name", model_name, "--target", "label"]
    champion = train(capsys, *common, "--data", str(datasets["real"]))
    assert champion["promoted"] is True
    candidate = train(capsys, *common, "--data", str(datasets["easy"]), "--eval-data", str(datasets["eval"]))
    assert (
        candidate["metrics"]["roc_auc"] > champion["metrics"]["roc_auc"]
    )  # it looks better on its own split
    evaluation = candidate["evaluation"]
    assert evaluation["rows"] == 169 and evaluation["champion_version"] == "1"
    own, theirs = evaluation["candidate"]["roc_auc"], evaluation["champion"]["roc_auc"]
    assert own < theirs  # and is worse on the shared rows
    assert candidate["promoted"] is False
    assert f"roc_auc {own:.4f} is worse than champion v1's {theirs:.4f}" in candidate["reason"]
    assert "--eval-data" in candidate["reason"] and "169 rows" in candidate["reason"]
    client = MlflowClient(tracking_server.uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    run = client.get_run(candidate["run_id"])
    assert run.data.metrics["eval.candidate.roc_auc"] == pytest.approx(own)
    assert run.data.metrics["eval.champion.roc_auc"] == pytest.approx(theirs)

    # a non-inferiority margin wide enough lets it through; an absolute bar it misses stops it again
    margin = train(
        capsys,
        *common,
        "--data",
        str(datasets["easy"]),
        "--eval-data",
        str(datasets["eval"]),
        "--min-delta",
        "1",
    )
    assert margin["promoted"] is True and "--min-delta 1" in margin["reason"]
    barred = train(
        capsys,
        *common,
        "--data",
        str(datasets["real"]),
        "--threshold",
        "accuracy>=0.999",
        "--promote",
        "auto",
    )
    assert barred["promoted"] is False and "fails --threshold accuracy>=0.999" in barred["reason"]


def test_an_unloadable_champion_is_reported_not_silently_beaten(
    tracking_server: MlflowService,
    model_name: str,
    datasets: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--tracking-uri", tracking_server.uri, "--model-name", model_name, "--target", "label"]
    champion = train(capsys, *common, "--data", str(datasets["real"]))
    for path in tracking_server.root.glob(f"artifacts/**/{champion['run_id']}/artifacts/model/model.skops"):
        path.write_bytes(b"tampered")
    candidate = train(capsys, *common, "--data", str(datasets["real"]), "--seed", "3")
    assert candidate["promoted"] is False
    assert (
        "champion v1 could not be evaluated" in candidate["reason"]
        and "differ from its signature" in candidate["reason"]
    )


def test_approval_gates_every_move_and_history_lists_them_all(
    tracking_server: MlflowService,
    model_name: str,
    datasets: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = tracking_server.uri
    common = [
        "--tracking-uri",
        uri,
        "--model-name",
        model_name,
        "--target",
        "label",
        "--data",
        str(datasets["real"]),
    ]
    first = train(capsys, *common, "--require-approval")
    client = MlflowClient(uri)
    assert first["promoted"] is False and first["awaiting_approval"] is True
    assert "awaiting approval" in first["reason"]
    assert client.get_registered_model(model_name).aliases == {}  # no alias moved
    tags = client.get_model_version(model_name, first["version"]).tags
    assert tags["modelops.awaiting_approval"] == "true"

    target = ["--tracking-uri", uri, "--model-name", model_name]
    code, _, err = as_operator(capsys, "approve", first["version"], *target)  # --reason is required
    assert code == 1 and "--reason" in err
    code, out, err = as_operator(
        capsys, "approve", first["version"], *target, "--reason", "reviewed the card"
    )
    assert code == 0, err
    assert client.get_model_version_by_alias(model_name, "champion").version == first["version"]
    code, _, err = as_operator(capsys, "approve", first["version"], *target, "--reason", "again")
    assert code == 1 and "not awaiting approval" in err

    second = train(capsys, *common, "--promote", "always", "--seed", "4")
    assert second["promoted"] is True

    code, out, err = as_operator(capsys, "history", *target, "--output", "json")
    assert code == 0, err
    moves = json.loads(out)
    assert [(m["action"], m["from"], m["to"]) for m in moves] == [
        ("approval", None, first["version"]),
        ("promotion", first["version"], second["version"]),
    ]
    assert moves[0]["who"] == "operator" and moves[0]["why"] == "reviewed the card"
    assert moves[1]["who"] == "trainer" and moves[1]["why"] == "--promote always"


def test_every_registered_version_has_a_card(
    tracking_server: MlflowService,
    model_name: str,
    datasets: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--tracking-uri", tracking_server.uri, "--model-name", model_name, "--target", "label"]
    outcomes = [
        train(capsys, *common, "--data", str(datasets["real"])),
        train(capsys, *common, "--data", str(datasets["easy"]), "--eval-data", str(datasets["eval"])),
    ]
    client = MlflowClient(tracking_server.uri)
    for outcome in outcomes:
        folder = Path(client.download_artifacts(outcome["run_id"], ""))
        card = json.loads((folder / "model_card.json").read_text())
        assert card["version"] == outcome["version"] and card["run_id"] == outcome["run_id"]
        assert card["data"]["digest"] and card["data"]["rows"] == 400
        assert card["metrics"]["own_split"]["roc_auc"] == pytest.approx(outcome["metrics"]["roc_auc"])
        assert card["metrics"]["same_data_comparison"] == outcome["evaluation"]
        assert card["decision"]["reason"] == outcome["reason"]
        assert card["signature"]["inputs"] and card["lineage"]["modelops"]
        assert len(card["reference_statistics"]["features"]) == 4
        markdown = (folder / "model_card.md").read_text()
        assert f"# {model_name} v{outcome['version']}" in markdown and outcome["reason"] in markdown
