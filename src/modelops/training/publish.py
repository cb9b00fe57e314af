"""Publish a trained model: log the run, register a version, decide the alias."""

from __future__ import annotations

import logging
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelops import __version__
from modelops.errors import ConfigError, InvalidInput, RegistryUnavailable
from modelops.registry import MODEL_ARTIFACT_PATH, Registry, classify
from modelops.training.data import BUILTIN, DEFAULT_MAX_BYTES, Dataset, load_dataset
from modelops.training.train import (
    LOWER_IS_BETTER,
    PROMOTE_MODES,
    TrainResult,
    fit_and_evaluate,
    is_better,
    parse_params,
    reference_stats,
)

log = logging.getLogger(__name__)

# Models are saved with skops (no arbitrary pickle code on load). Types skops does not trust by default
# but our own algorithms need; we trust them because the trainer built the model itself.
TRUSTED_TYPES: dict[str, tuple[str, ...]] = {
    "random_forest": ("sklearn.tree._tree.Tree",),
    "gradient_boosting": ("sklearn.tree._tree.Tree",),
}


@dataclass(frozen=True)
class TrainOptions:
    """Everything one `modelops train` run needs."""

    tracking_uri: str
    model_name: str
    experiment: str
    alias: str
    algorithm: str = "logreg"
    params: list[str] = field(default_factory=list)
    data: str | None = None
    target: str = "target"
    test_size: float = 0.2
    seed: int = 42
    promote: str = "auto"
    metric: str = "roc_auc"
    wait_s: float = 120.0
    s3_endpoint_url: str | None = None
    git_commit: str | None = None
    signing_key_path: Path | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    positive_class: str | None = None


@dataclass
class TrainOutcome:
    """What a run did; `to_dict` is the documented `--output json` object."""

    run_id: str
    model_name: str
    version: str
    alias: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    champion_version: str | None
    timings_s: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model_name": self.model_name,
            "version": self.version,
            "alias": self.alias,
            "promoted": self.promoted,
            "reason": self.reason,
            "metrics": self.metrics,
            "champion_version": self.champion_version,
            "timings_s": self.timings_s,
        }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _pip_requirements() -> list[str]:
    # Explicit requirements: letting MLflow infer them costs seconds per run.
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow-skinny", "scikit-learn", "numpy", "pandas", "skops")]


def decide(
    promote: str,
    metric: str,
    new_metrics: dict[str, float],
    champion: Any,
    champion_metrics: dict[str, float],
) -> tuple[bool, str]:
    """The alias decision as (promote?, reason)."""
    if promote == "always":
        return True, "--promote always"
    if promote == "never":
        return False, "--promote never"
    if champion is None:
        return True, "no version held the alias yet"
    if metric not in champion_metrics:
        return True, f"champion v{champion.version} has no {metric} metric"
    new, old = new_metrics[metric], champion_metrics[metric]
    direction = "<=" if metric in LOWER_IS_BETTER else ">="
    if is_better(new, old, metric):
        return True, f"{metric} {new:.4f} {direction} champion v{champion.version}'s {old:.4f}"
    return False, f"{metric} {new:.4f} is worse than champion v{champion.version}'s {old:.4f}"


def _log_signed_model(
    client: Any, run_id: str, result: TrainResult, example: Any, signature: Any, options: TrainOptions
) -> None:
    """Save the model with skops, sign the folder (bound to model name + run), upload it as `model/`."""
    import tempfile

    import mlflow.sklearn

    from modelops.signing import sign_model

    assert options.signing_key_path is not None
    with tempfile.TemporaryDirectory(prefix="modelops-model-") as tmp:
        folder = Path(tmp) / MODEL_ARTIFACT_PATH
        mlflow.sklearn.save_model(
            result.model,
            str(folder),
            serialization_format="skops",
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
            skops_trusted_types=list(TRUSTED_TYPES.get(result.algorithm, ())),
        )
        sign_model(folder, options.signing_key_path, model_name=options.model_name, run_id=run_id)
        client.log_artifacts(run_id, str(folder), MODEL_ARTIFACT_PATH)


def _params(result: TrainResult, dataset: Dataset, options: TrainOptions) -> dict[str, Any]:
    params = {
        "algorithm": result.algorithm,
        **{f"hp.{k}": v for k, v in result.params.items()},
        "data_source": dataset.source,
        "data_digest": dataset.digest,
        "n_rows": dataset.n_rows,
        "n_features": dataset.n_features,
        "test_size": options.test_size,
        "seed": options.seed,
        "target": options.target,
        "positive_class": result.positive_class,
    }
    model_params = (
        result.model.get_params(deep=False)
        if result.algorithm != "logreg"
        else (result.model.named_steps["clf"].get_params(deep=False))
    )
    params.update({f"hp.{k}": v for k, v in model_params.items() if k not in result.params})
    return params


def _mark_failed(client: Any, run_id: str, wait_s: float) -> bool:
    """Mark the run FAILED, retrying while MLflow comes back (bounded). False when it never could."""
    from modelops.waiting import wait_until

    try:
        wait_until(
            lambda _: client.set_terminated(run_id, "FAILED"),
            what=f"MLflow, to mark run {run_id} FAILED",
            timeout_s=wait_s,
            retry_on=(Exception,),
            on_timeout=lambda reason: RuntimeError(reason),
        )
    except RuntimeError:
        return False
    return True


def _log_run(
    result: TrainResult, dataset: Dataset, options: TrainOptions, registry: Registry
) -> tuple[str, str]:
    """Log params, metrics, artifacts and the signed model as one run (explicit client: no global MLflow
    state), register a version. Returns (run_id, version). A run that fails half-way is marked FAILED."""
    import mlflow.data.pandas_dataset
    from mlflow.entities import DatasetInput, InputTag, Metric, Param
    from mlflow.models import infer_signature

    client = registry.client
    experiment = client.get_experiment_by_name(options.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(options.experiment)
    example = result.x_train.head(5)
    tags = {"modelops.version": __version__}
    commit = options.git_commit or _git_commit()
    if commit:
        tags["modelops.git_commit"] = commit
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    try:
        with warnings.catch_warnings():
            # MLflow's schema hints and sklearn's feature-name notices are noise for a CLI user.
            warnings.simplefilter("ignore", UserWarning)
            signature = infer_signature(example, result.model.predict_proba(example.to_numpy()))
            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in result.metrics.items()],
                params=[Param(k, str(v)) for k, v in _params(result, dataset, options).items()],
            )
            client.log_dict(run_id, reference_stats(result.x_train), "reference_stats.json")
            frame = dataset.features.assign(**{options.target: dataset.target.to_numpy()})
            # For the built-in set MLflow records the code that loaded it as the source.
            source = {} if dataset.source == BUILTIN else {"source": dataset.source}
            data = mlflow.data.pandas_dataset.from_pandas(
                frame, name=dataset.name, targets=options.target, **source
            )
            client.log_inputs(
                run_id,
                datasets=[
                    DatasetInput(data._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])
                ],
            )
            _log_signed_model(client, run_id, result, example, signature, options)
        client.set_terminated(run_id, "FINISHED")
    except BaseException as exc:
        marked = _mark_failed(client, run_id, min(options.wait_s, 30.0))
        if classify(exc) == "unreachable" or isinstance(exc, RegistryUnavailable):
            raise RegistryUnavailable(
                f"MLflow at {options.tracking_uri} was lost during run {run_id}; "
                + ("the run is marked FAILED" if marked else "it could not be marked FAILED")
            ) from exc
        raise
    version = registry.version_for_run(run_id).version
    return run_id, version


def run_training(options: TrainOptions) -> TrainOutcome:
    """Validate, fit, log, register and decide the alias. Input errors surface before anything is logged."""

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    if options.signing_key_path is None or not options.signing_key_path.is_file():
        raise ConfigError(
            "no signing key: set MODELOPS_SIGNING_KEY_PATH to the trainer's private key "
            f"({options.signing_key_path or 'unset'}); model servers load only signed models",
            field="signing_key_path",
        )
    if options.promote not in PROMOTE_MODES:
        raise InvalidInput(f"--promote must be one of {', '.join(PROMOTE_MODES)}", field="promote")
    params = parse_params(options.params)
    dataset = load_dataset(options.data, options.target, options.s3_endpoint_url, max_bytes=options.max_bytes)
    lap("load_data")
    result = fit_and_evaluate(
        dataset, options.algorithm, params, options.test_size, options.seed, options.positive_class
    )
    if options.metric not in result.metrics:
        raise InvalidInput(
            f"unknown metric {options.metric!r}; choose one of: {', '.join(sorted(result.metrics))}",
            field="metric",
        )
    lap("fit_evaluate")

    from modelops.settings import RegistrySettings

    registry = Registry(
        RegistrySettings(
            tracking_uri=options.tracking_uri, model_name=options.model_name, model_alias=options.alias
        )
    )
    registry.wait_until_reachable(options.wait_s)
    lap("connect")
    run_id, version = _log_run(result, dataset, options, registry)
    lap("log_register")

    champion = registry.alias_version()
    champion_metrics = registry.run_metrics(champion.run_id) if champion else {}
    promoted, reason = decide(options.promote, options.metric, result.metrics, champion, champion_metrics)
    if promoted:
        registry.move_alias(version)
    registry.set_version_tags(
        version, {"modelops.promoted": str(promoted).lower(), "modelops.promotion_reason": reason}
    )
    after = registry.alias_version()
    lap("promote")
    return TrainOutcome(
        run_id=run_id,
        model_name=options.model_name,
        version=version,
        alias=options.alias,
        promoted=promoted,
        reason=reason,
        metrics=result.metrics,
        champion_version=after.version if after else None,
        timings_s=timings,
    )
