"""Publish a trained model: log the run, register a version, decide the alias."""

from __future__ import annotations

import logging
import re
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops import __version__
from modelops.errors import ConfigError, InvalidInput, RegistryUnavailable, RolloutConflict
from modelops.registry import MODEL_ARTIFACT_PATH, Registry, classify
from modelops.training.card import CARD_JSON, CARD_MD, build_card, render_markdown
from modelops.training.data import BUILTIN, Dataset, is_prediction_log, load_dataset
from modelops.training.evaluation import Comparison, Threshold, decide, score_candidate, score_champion
from modelops.training.options import PROMOTE_MODES, TrainOptions
from modelops.training.train import (
    TrainResult,
    fit_and_evaluate,
    parse_params,
    reference_stats,
)

log = logging.getLogger(__name__)

TRIGGER_TAG = "modelops.trigger"
_TRIGGER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

# Models are saved with skops (no arbitrary pickle code on load). Types skops does not trust by default
# but our own algorithms need; we trust them because the trainer built the model itself.
TRUSTED_TYPES: dict[str, tuple[str, ...]] = {
    "random_forest": ("sklearn.tree._tree.Tree",),
    "gradient_boosting": ("sklearn.tree._tree.Tree",),
}


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
    awaiting_approval: bool = False
    evaluation: dict[str, Any] | None = None
    rollout: str | None = None  # id of the canary rollout started with this version as the challenger
    rollout_reason: str | None = None  # under --promote rollout: why none started (None when one did)
    trigger: str | None = None

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
            "awaiting_approval": self.awaiting_approval,
            "evaluation": self.evaluation,
            "rollout": self.rollout,
            "rollout_reason": self.rollout_reason,
            "trigger": self.trigger,
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


def _log_signed_model(
    client: Any, run_id: str, result: TrainResult, example: Any, signature: Any, options: TrainOptions
) -> None:
    """Save the model with skops, sign the folder (bound to model name + run), upload it as `model/`."""
    import tempfile

    import mlflow.sklearn

    from modelops.monitoring.drift import build_reference, write_reference
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
        # what drift detection compares served rows with: inside the folder, so it is signed with the model
        write_reference(folder, build_reference(result.x_train, seed=options.seed))
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
    result: TrainResult, dataset: Dataset, options: TrainOptions, registry: Registry, comparison: Comparison
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
    if options.trigger:
        tags[TRIGGER_TAG] = options.trigger
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
            # both models' scores on the same rows, as metrics (comparable across runs) and as the whole record
            client.log_batch(
                run_id,
                metrics=[
                    Metric(f"eval.{who}.{k}", float(v), now, 0)
                    for who, scores in (
                        ("candidate", comparison.candidate),
                        ("champion", comparison.champion or {}),
                    )
                    for k, v in scores.items()
                ],
            )
            client.log_dict(run_id, comparison.to_dict(), "evaluation.json")
            frame = dataset.features.assign(**{options.target: dataset.target.to_numpy()})
            # For the built-in set MLflow records the code that loaded it as the source.
            # MLflow has no dataset-source resolver for mlflow-artifacts: (the card and params keep the source)
            plain = dataset.source == BUILTIN or is_prediction_log(dataset.source)
            source = {} if plain else {"source": dataset.source}
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
    if options.trigger is not None and not _TRIGGER_NAME.match(options.trigger):
        raise InvalidInput(
            f"--trigger {options.trigger!r}: lower-case letters, digits, '.', '_', '-' (up to 63)",
            field="trigger",
        )
    steps = _rollout_steps(options)
    params = parse_params(options.params)
    dataset = load_dataset(
        options.data,
        options.target,
        options.s3_endpoint_url,
        max_bytes=options.max_bytes,
        tracking_uri=options.tracking_uri,
    )
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

    thresholds = [Threshold.parse(t) for t in options.thresholds]
    for threshold in thresholds:
        if threshold.metric not in result.metrics:
            raise InvalidInput(f"--threshold names an unknown metric {threshold.metric!r}", field="threshold")
    rows, eval_x, eval_y = _evaluation_rows(options, dataset, result)
    lap("fit_evaluate")

    from modelops.settings import RegistrySettings

    registry = Registry(
        RegistrySettings(
            tracking_uri=options.tracking_uri, model_name=options.model_name, model_alias=options.alias
        )
    )
    registry.wait_until_reachable(options.wait_s)
    # MLflow's auth answers "permission denied" for reads of a model that does not exist: create it first
    registry.ensure_registered_model()
    lap("connect")
    champion = registry.alias_version()
    comparison = Comparison(
        rows, len(eval_y), score_candidate(result.model, eval_x, eval_y, result.positive_class)
    )
    comparison.thresholds = {str(t): t.passes(comparison.candidate[t.metric]) for t in thresholds}
    if champion is not None:
        comparison.champion_version = champion.version
        if options.promote in ("auto", "rollout"):
            _score_champion(registry, champion, options, comparison, eval_x, eval_y, result.positive_class)
    # rollout decides like auto; only what a winner gets differs (below)
    mode = "auto" if options.promote == "rollout" else options.promote
    promoted, reason = decide(mode, options.metric, options.min_delta, comparison, thresholds)
    awaiting = promoted and options.require_approval
    lap("evaluate_champion")
    run_id, version = _log_run(result, dataset, options, registry, comparison)
    if options.trigger:
        registry.set_version_tags(version, {TRIGGER_TAG: options.trigger})
    lap("log_register")

    rollout_id: str | None = None
    rollout_reason: str | None = None
    if options.promote == "rollout" and champion is not None and not awaiting:
        if promoted:
            promoted = False  # never straight to champion: the rollout's analysis decides
            rollout_id, rollout_reason, reason = _start_rollout(registry, options, steps, version, reason)
        else:
            rollout_reason = f"not better than the champion: {reason}"
    if awaiting:
        registry.set_version_tags(
            version, {"modelops.awaiting_approval": "true", "modelops.approval_reason": reason}
        )
        promoted, reason = False, f"awaiting approval (`modelops approve {version}`): {reason}"
    elif promoted:
        registry.move_alias(version, action="promotion", why=reason)
    registry.set_version_tags(
        version, {"modelops.promoted": str(promoted).lower(), "modelops.promotion_reason": reason}
    )
    _log_card(registry, result, dataset, options, run_id, version, comparison, promoted, awaiting, reason)
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
        awaiting_approval=awaiting,
        evaluation=comparison.to_dict(),
        rollout=rollout_id,
        rollout_reason=rollout_reason,
        trigger=options.trigger,
    )


def _rollout_steps(options: TrainOptions) -> tuple[int, ...]:
    """The rollout's steps, checked before anything is logged (a bad setting must not cost a training)."""
    from modelops.rollout.state import parse_steps

    if options.promote != "rollout":
        return ()
    if options.challenger_alias == options.alias:
        raise ConfigError("the challenger alias must differ from --alias", field="challenger_alias")
    if not 1 <= options.rollout_interval_s <= 86_400:
        raise ConfigError("rollout_interval_s must be between 1 s and 1 day", field="rollout_interval_s")
    return parse_steps(options.rollout_steps)


def _start_rollout(
    registry: Registry, options: TrainOptions, steps: tuple[int, ...], version: str, reason: str
) -> tuple[str | None, str | None, str]:
    """Start a canary rollout of `version` (the trainer holds EDIT on the model: enough for the challenger alias
    and the state tag). Returns (rollout id, why none started, the version's promotion reason). A rollout already
    running is not an error: the version stays registered for a later rollout."""
    from modelops.rollout.manage import Rollouts

    try:
        state = Rollouts(registry, options.challenger_alias).start(
            version, "canary", steps, options.rollout_interval_s
        )
    except RolloutConflict as exc:
        why = f"no rollout started: {exc.message}"
        log.warning("v%s beats the champion but %s", version, why)
        return None, why, f"{why}; {reason}"
    return state.id, None, f"challenger of canary rollout {state.id} (steps {list(steps)}): {reason}"


def _evaluation_rows(options: TrainOptions, dataset: Dataset, result: TrainResult) -> tuple[str, Any, Any]:
    """(description, features, labels) both models are scored on: --eval-data, else the held-out split."""
    if options.eval_data is None:
        assert result.x_test is not None and result.y_test is not None
        return "the candidate's held-out split", result.x_test, result.y_test
    data = load_dataset(
        options.eval_data,
        options.target,
        options.s3_endpoint_url,
        max_bytes=options.max_bytes,
        tracking_uri=options.tracking_uri,
    )
    missing = [c for c in dataset.features.columns if c not in data.features.columns]
    if missing:
        raise InvalidInput(
            f"--eval-data lacks the training features {', '.join(map(str, missing[:5]))}", field="eval_data"
        )
    return f"--eval-data {data.source}", data.features, data.target.to_numpy()


def _score_champion(
    registry: Registry,
    champion: Any,
    options: TrainOptions,
    comparison: Comparison,
    x: Any,
    y: Any,
    positive: Any,
) -> None:
    """Load the champion the way a server does (signature verified, no code from the artifact) and score it on
    the same rows; a champion that cannot be loaded is reported in the comparison, never silently beaten."""
    from modelops.errors import ModelOpsError
    from modelops.serving.model import load_model
    from modelops.signing import Verifier

    assert options.signing_key_path is not None
    try:
        located = registry.with_download_uri(champion)
        loaded = load_model(
            located, registry.download, {}, None, Verifier.from_private_key(options.signing_key_path)
        )
    except ModelOpsError as exc:
        comparison.champion_error = f"cannot be loaded: {exc.message}"
        return
    try:
        comparison.champion = score_champion(loaded, x, y, positive)
    except ModelOpsError as exc:
        comparison.champion_error = exc.message
    finally:
        loaded.release()


def _log_card(
    registry: Registry,
    result: TrainResult,
    dataset: Dataset,
    options: TrainOptions,
    run_id: str,
    version: str,
    comparison: Comparison,
    promoted: bool,
    awaiting: bool,
    reason: str,
) -> None:
    commit = options.git_commit or _git_commit()
    card = build_card(
        model_name=options.model_name,
        version=version,
        run_id=run_id,
        algorithm=result.algorithm,
        params=_params(result, dataset, options),
        data={
            "source": dataset.source,
            "digest": dataset.digest,
            "rows": dataset.n_rows,
            "features": dataset.n_features,
            "target": options.target,
            "positive_class": result.positive_class,
        },
        metrics=result.metrics,
        evaluation=comparison.to_dict(),
        decision={
            "outcome": "awaiting approval" if awaiting else ("promoted" if promoted else "not promoted"),
            "reason": reason,
        },
        signature=_signature_dict(registry, run_id),
        reference_stats=reference_stats(result.x_train),
        lineage={"modelops": __version__, "git_commit": commit, "image": options.image},
    )
    registry.client.log_dict(run_id, card, CARD_JSON)
    registry.client.log_text(run_id, render_markdown(card), CARD_MD)


def _signature_dict(registry: Registry, run_id: str) -> dict[str, Any] | None:
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = registry.client.download_artifacts(run_id, f"{MODEL_ARTIFACT_PATH}/MLmodel", tmp)
        signature = yaml.safe_load(Path(path).read_text()).get("signature")
    return dict(signature) if isinstance(signature, dict) else None
