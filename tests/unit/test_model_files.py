"""Reading a model folder's MLmodel without MLflow: the same signature, columns and input example MLflow's own
`Model.load` reads, and the download refused when the registry points outside its artifact proxy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelops.errors import ModelRefused
from modelops.mlflow_rest import RestReader, Transport
from modelops.registry import VersionInfo
from modelops.serving.model import _columns_and_example, _input_example, _read_mlmodel, load_model
from modelops.signing import Verifier, generate_keypair
from tests.support import free_port


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model saved by MLflow itself, as the trainer saves one (skops, signature, dataframe input example)."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(20, 3)), columns=["b col", "a", "c"])
    model = LogisticRegression().fit(x.to_numpy(), (x["a"] > 0).astype(int))
    path = tmp_path_factory.mktemp("saved") / "model"
    mlflow.sklearn.save_model(
        model,
        path,
        serialization_format="skops",
        signature=infer_signature(x, model.predict_proba(x.to_numpy())),
        input_example=x.head(4),
    )
    return path


def test_signature_columns_and_example_match_what_mlflow_reads(saved: Path) -> None:
    from mlflow.models import Model

    theirs = Model.load(str(saved))
    columns, example, signature = _columns_and_example(_read_mlmodel(saved), saved, 3)
    assert signature == theirs.signature.to_dict()
    assert columns == theirs.signature.inputs.input_names() == ["b col", "a", "c"]
    expected = theirs.load_input_example(str(saved))[columns].to_numpy(dtype=np.float64)
    assert example.shape == (4, 3)
    np.testing.assert_array_equal(example, expected)


def write_example(folder: Path, info: dict[str, object], content: object) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "example.json").write_text(json.dumps(content))
    return {"saved_input_example_info": {"artifact_path": "example.json", **info}}


def test_ndarray_examples_and_examples_saved_with_params_are_read(tmp_path: Path) -> None:
    ndarray = write_example(tmp_path / "n", {"type": "ndarray"}, {"inputs": [[1, 2], [3, 4]]})
    np.testing.assert_array_equal(_input_example(ndarray, tmp_path / "n", ["x", "y"]), [[1, 2], [3, 4]])
    instances = write_example(tmp_path / "i", {"type": "ndarray"}, {"instances": [[5, 6]]})
    np.testing.assert_array_equal(_input_example(instances, tmp_path / "i", ["x", "y"]), [[5, 6]])
    with_params = write_example(
        tmp_path / "p",
        {"type": "dataframe", "pandas_orient": "split", "params": {"k": 1}},
        {"inputs": {"columns": ["y", "x"], "data": [[2, 1]]}, "params": {"k": 1}},
    )
    np.testing.assert_array_equal(_input_example(with_params, tmp_path / "p", ["x", "y"]), [[1, 2]])


@pytest.mark.parametrize(
    ("info", "content"),
    [
        (
            {"type": "dataframe", "pandas_orient": "split"},
            {"columns": ["x"], "data": [[1]]},
        ),  # a column missing
        ({"type": "dataframe", "pandas_orient": "split"}, {"columns": ["x", "y"], "data": [["a", "b"]]}),
        ({"type": "ndarray"}, {"inputs": [[1, 2, 3]]}),  # the wrong width
        ({"type": "sparse"}, {}),
    ],
)
def test_an_unreadable_example_is_none_and_the_model_warms_up_on_zeros(
    tmp_path: Path, info: dict[str, object], content: object
) -> None:
    mlmodel = write_example(tmp_path, info, content)
    assert _input_example(mlmodel, tmp_path, ["x", "y"]) is None
    mlmodel["signature"] = {
        "inputs": json.dumps([{"type": "double", "name": "x"}, {"type": "double", "name": "y"}])
    }
    columns, example, _ = _columns_and_example(mlmodel, tmp_path, None)
    assert columns == ["x", "y"]
    np.testing.assert_array_equal(example, [[0.0, 0.0]])


def test_an_example_outside_the_model_folder_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "secret.json").write_text(json.dumps({"inputs": [[1, 2]]}))
    mlmodel = {"saved_input_example_info": {"artifact_path": "../secret.json", "type": "ndarray"}}
    (tmp_path / "model").mkdir()
    assert _input_example(mlmodel, tmp_path / "model", ["x", "y"]) is None


def test_a_version_whose_files_are_on_another_server_is_refused_unfetched(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    # nothing listens at the tracking URI: a request would fail as unreachable, not be refused
    reader = RestReader(Transport(f"http://127.0.0.1:{free_port()}", retries=0))
    (tmp_path / "work").mkdir()
    version = VersionInfo(
        "m", "1", "r" * 32, "src", (), {}, 0, download_uri="mlflow-artifacts://127.0.0.2:5000/1/m"
    )
    with pytest.raises(ModelRefused) as refused:
        load_model(version, reader.download, {}, tmp_path / "work", Verifier(tmp_path / "k.pub"))
    assert refused.value.reason == "untrusted_source"
    assert "another server" in refused.value.message
    assert list((tmp_path / "work").iterdir()) == []  # its download folder is gone
