"""LoadedModel: one registered version in memory, with a fast numpy predict and a warm-up."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelops.errors import ModelLoadError, ModelRefused
from modelops.mlflow_rest import NotThisProxy
from modelops.monitoring.drift import read_reference
from modelops.registry import VersionInfo
from modelops.serving.compiled import compile_proba
from modelops.signing import Verifier

log = logging.getLogger(__name__)

# Types skops may build beyond its own safe defaults. Fixed here, in the server's code: the list an artifact's
# MLmodel carries (`skops_trusted_types`) is never read, or an artifact could trust `os.system`.
TRUSTED_SKOPS_TYPES: tuple[str, ...] = ("sklearn.tree._tree.Tree",)
MODEL_DIR_PREFIX = "model-v"
DOWNLOAD_SCHEMES = ("mlflow-artifacts", "models", "runs")


@dataclass(frozen=True)
class Prediction:
    """Labels for N rows and, when the model has them, class probabilities (N x C)."""

    labels: np.ndarray
    probabilities: np.ndarray | None


@dataclass
class LoadedModel:
    """A model version ready to predict on float64 arrays whose columns follow `columns`."""

    name: str
    version: str
    run_id: str | None
    columns: list[str]
    classes: list[Any] | None
    flavor: str
    predict_fn: Callable[[np.ndarray], Prediction]
    example: np.ndarray
    signature: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    local_dir: Path | None = None
    model_path: Path | None = None
    # the training reference for drift detection (modelops.monitoring.drift), when the trainer stored one
    drift_reference: dict[str, Any] | None = None
    loaded_at: float = field(default_factory=time.time)
    load_duration_s: float = 0.0
    verify_duration_s: float = 0.0
    released: bool = False  # no longer served (its files are gone)

    @property
    def n_features(self) -> int:
        return len(self.columns)

    def predict(self, x: np.ndarray) -> Prediction:
        return self.predict_fn(x)

    def warm_up(self) -> None:
        """Predict on the input example so the first real request is not the slow one."""
        result = self.predict(self.example)
        if len(result.labels) != len(self.example):
            raise ModelLoadError(f"warm-up of v{self.version} returned {len(result.labels)} labels")

    def release(self) -> None:
        """Drop the downloaded artifacts (the object itself goes when the last request lets go)."""
        self.released = True
        if self.local_dir is not None:
            shutil.rmtree(self.local_dir, ignore_errors=True)
            self.local_dir = None

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "flavor": self.flavor,
            "features": self.columns,
            "classes": self.classes,
            "metrics": self.metrics,
            "signature": self.signature,
            "input_example": self.example[0].tolist() if len(self.example) else None,
            "loaded_at": self.loaded_at,
            "load_duration_s": round(self.load_duration_s, 3),
            "verify_duration_s": round(self.verify_duration_s, 4),
        }


def _sklearn_predictor(
    model: Any, example: np.ndarray
) -> tuple[Callable[[np.ndarray], Prediction], list[Any] | None]:
    classes = getattr(model, "classes_", None)
    if classes is not None and hasattr(model, "predict_proba"):
        class_array = np.asarray(classes)
        # a linear pipeline as numpy when it answers exactly as sklearn (compiled.py), else sklearn's own
        proba_fn = compile_proba(model, example) or model.predict_proba

        def predict_with_proba(x: np.ndarray) -> Prediction:
            proba = proba_fn(x)
            # argmax of the probabilities is what predict() returns for these classifiers,
            # and it saves a second pass over the model.
            return Prediction(class_array[proba.argmax(axis=1)], proba)

        return predict_with_proba, class_array.tolist()

    def predict_only(x: np.ndarray) -> Prediction:
        return Prediction(np.asarray(model.predict(x)), None)

    return predict_only, None if classes is None else np.asarray(classes).tolist()


def _read_mlmodel(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load((path / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"the model has no readable MLmodel file: {type(exc).__name__}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict):
        raise ModelLoadError("the MLmodel file has no flavors")
    return data


def _trusted_flavor(mlmodel: dict[str, Any], allow_pyfunc: bool) -> str:
    """The flavor we may load without running code from the artifact; ModelRefused otherwise."""
    flavors: dict[str, Any] = mlmodel["flavors"]
    if mlmodel.get("code_paths") or any(
        isinstance(f, dict) and (f.get("code") or f.get("model_code_path")) for f in flavors.values()
    ):
        raise ModelRefused("the model ships code (code_paths / models from code)", reason="code")
    sklearn = flavors.get("sklearn")
    if isinstance(sklearn, dict):
        fmt = sklearn.get("serialization_format")
        if fmt != "skops":
            raise ModelRefused(
                f"the sklearn model is serialized as {fmt!r}; only skops is loaded (pickle runs code)",
                reason="pickle",
            )
        loader = (flavors.get("python_function") or {}).get("loader_module")
        if loader not in (None, "mlflow.sklearn"):
            raise ModelRefused(f"the model names loader module {loader!r}", reason="code")
        return "sklearn"
    if "python_function" in flavors and allow_pyfunc:
        return "python_function"
    raise ModelRefused(
        f"flavors {sorted(flavors)} are not loaded by default: only sklearn saved with skops "
        "(MODELOPS_ALLOW_PYFUNC_MODELS=true accepts python_function models, which run code)",
        reason="untrusted_format",
    )


def _load_skops(path: Path, mlmodel: dict[str, Any]) -> Any:
    import skops.io

    name = str(mlmodel["flavors"]["sklearn"].get("pickled_model", ""))
    file = (path / name).resolve()
    if not name or path.resolve() not in file.parents or not file.is_file():
        raise ModelLoadError(f"the sklearn flavor names no model file inside the artifact ({name!r})")
    try:
        return skops.io.load(file, trusted=list(TRUSTED_SKOPS_TYPES))
    except Exception as exc:
        if "Untrusted types" in str(exc) or type(exc).__name__ == "UntrustedTypesFoundException":
            raise ModelRefused(f"the model needs untrusted types: {exc}", reason="untrusted_types") from None
        raise


def _pyfunc_predictor(path: Path, columns: list[str]) -> Callable[[np.ndarray], Prediction]:
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(str(path))

    def predict(x: np.ndarray) -> Prediction:
        out = model.predict(pd.DataFrame(x, columns=columns))
        labels = (
            out.iloc[:, 0].to_numpy()
            if isinstance(out, pd.DataFrame)
            else np.asarray(out).reshape(len(x), -1)[:, 0]
        )
        return Prediction(labels, None)

    return predict


def _input_names(signature: dict[str, Any] | None) -> list[str]:
    """The named inputs of an MLmodel signature (its `inputs` is a JSON list of column specs), or []."""
    try:
        specs = json.loads((signature or {}).get("inputs") or "[]")
    except (TypeError, ValueError):
        return []
    if not isinstance(specs, list) or not specs:
        return []
    names = [spec.get("name") if isinstance(spec, dict) else None for spec in specs]
    return [str(n) for n in names] if all(n is not None for n in names) else []


def _input_example(mlmodel: dict[str, Any], path: Path, columns: list[str]) -> np.ndarray | None:
    """The saved input example as float64 rows in `columns` order (MLflow's dataframe and ndarray forms, read as
    MLflow's `load_input_example` reads them), or None when there is none or it cannot be read."""
    info = mlmodel.get("saved_input_example_info")
    if not isinstance(info, dict) or not isinstance(info.get("artifact_path"), str):
        return None
    file = (path / info["artifact_path"]).resolve()
    if path.resolve() not in file.parents or not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
        if info.get("params"):  # an example saved with params: {"inputs": <the example>, "params": {...}}
            data = data["inputs"]
        if info.get("type") == "dataframe":  # MLflow reads every dataframe example as orient "split"
            index = {str(c): i for i, c in enumerate(data["columns"])}
            rows = [[row[index[c]] for c in columns] for row in data["data"]]
        elif info.get("type") == "ndarray":  # TF-serving form
            rows = (
                next(data[k] for k in ("inputs", "instances") if k in data)
                if isinstance(data, dict)
                else data
            )
        else:
            return None
        return np.asarray(rows, dtype=np.float64).reshape(-1, len(columns))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _columns_and_example(
    mlmodel: dict[str, Any], path: Path, n_features: int | None
) -> tuple[list[str], np.ndarray, dict[str, Any] | None]:
    raw = mlmodel.get("signature")
    signature = (
        {"inputs": raw.get("inputs"), "outputs": raw.get("outputs"), "params": raw.get("params")}
        if isinstance(raw, dict)
        else None
    )
    columns = _input_names(signature)
    if not columns and n_features:
        columns = [f"f{i}" for i in range(n_features)]
    if not columns:
        raise ModelLoadError("the model has no input signature and no feature count; cannot validate input")
    example = _input_example(mlmodel, path, columns)
    array = example if example is not None and len(example) else np.zeros((1, len(columns)), dtype=np.float64)
    return columns, np.ascontiguousarray(array, dtype=np.float64), signature


def load_model(
    version: VersionInfo,
    download: Callable[[str, Path], Path],
    metrics: dict[str, float],
    work_dir: Path | None,
    verifier: Verifier,
    allow_pyfunc: bool = False,
) -> LoadedModel:
    """Download a registered version through the tracking server (`download(uri, folder)`: the registry's),
    verify its signature, load it without running code from the artifact, and warm it up. ModelRefused when a
    trust check fails."""
    uri = version.download_uri or f"models:/{version.name}/{version.version}"
    if uri.split(":", 1)[0] not in DOWNLOAD_SCHEMES:
        # only through the tracking server: a version whose source is a local path or a foreign URL is not fetched
        raise ModelRefused(
            f"the version's files are at {uri.split(':', 1)[0]}: URIs, not in MLflow",
            reason="untrusted_source",
        )
    start = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix=f"{MODEL_DIR_PREFIX}{version.version}-", dir=work_dir))
    try:
        # the version's own artifact location (resolved by the registry client, which knows its URI): MLflow's
        # `models:/` resolution falls back to the process-wide registry URI, which this package never sets
        path = download(uri, base)
        loaded = load_local(path, version, metrics, verifier, allow_pyfunc)
    except NotThisProxy as exc:
        shutil.rmtree(base, ignore_errors=True)
        raise ModelRefused(f"not downloaded: {exc}", reason="untrusted_source") from None
    except ModelLoadError:
        shutil.rmtree(base, ignore_errors=True)
        raise
    except Exception as exc:  # the download: a missing artifact, a storage or network failure
        shutil.rmtree(base, ignore_errors=True)
        raise ModelLoadError(
            f"cannot download {version.name} v{version.version}: {type(exc).__name__}: {exc}"
        ) from exc
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    loaded.local_dir = base
    loaded.load_duration_s = time.perf_counter() - start
    return loaded


def load_local(
    path: Path,
    version: VersionInfo,
    metrics: dict[str, float],
    verifier: Verifier,
    allow_pyfunc: bool = False,
) -> LoadedModel:
    """Verify and load a model folder already on disk (downloaded, or the last good copy), warm it up."""
    start = time.perf_counter()
    try:
        verifier.verify(path, model_name=version.name, run_id=version.run_id)
        verify_s = time.perf_counter() - start
        mlmodel = _read_mlmodel(path)
        flavor = _trusted_flavor(mlmodel, allow_pyfunc)
        if flavor == "sklearn":
            native = _load_skops(path, mlmodel)
            n_features = getattr(native, "n_features_in_", None)
        else:
            classes, n_features = None, None
        columns, example, signature = _columns_and_example(mlmodel, path, n_features)
        if flavor == "sklearn":
            predict_fn, classes = _sklearn_predictor(native, example)
        if flavor == "python_function":
            predict_fn = _pyfunc_predictor(path, columns)
        loaded = LoadedModel(
            name=version.name,
            version=version.version,
            run_id=version.run_id,
            columns=columns,
            classes=classes,
            flavor=flavor,
            predict_fn=predict_fn,
            example=example,
            signature=signature,
            metrics=metrics,
            model_path=path,
            verify_duration_s=verify_s,
            drift_reference=read_reference(path),
        )
        loaded.warm_up()
        loaded.load_duration_s = time.perf_counter() - start
        return loaded
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {version.name} v{version.version}: {type(exc).__name__}: {exc}"
        ) from exc


def clean_model_dirs(work_dir: Path | None) -> int:
    """Remove downloaded model folders a killed process left behind (never the last good copy)."""
    if work_dir is None or not work_dir.is_dir():
        return 0
    removed = 0
    for entry in work_dir.iterdir():
        if entry.is_dir() and entry.name.startswith(MODEL_DIR_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed
