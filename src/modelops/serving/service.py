"""The model server's operations, free of any transport (like MLServer's DataPlane).

HTTP routes (serving/http/) parse a request, call one method here and render the answer; a second transport
(gRPC, a CLI) would call the same methods. Everything here speaks domain errors (modelops.errors) only.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson

from modelops.errors import InvalidInput, ModelError, ModelNotReady, ModelOpsError, VersionNotFound
from modelops.monitoring.drift import DriftMonitor
from modelops.registry import Registry
from modelops.rollout.manage import Rollouts
from modelops.rollout.state import parse_steps
from modelops.serving import metrics
from modelops.serving.batching import MicroBatcher
from modelops.serving.model import LoadedModel, Prediction
from modelops.serving.routing import ChallengerBusy, ChallengerFollower, ChallengerRunner, Faults, selected
from modelops.serving.store import ModelStore
from modelops.serving.watcher import AliasWatcher
from modelops.settings import ServerSettings
from modelops.signing import Verifier

T = TypeVar("T")
log = logging.getLogger(__name__)

ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
# MLflow's own rule for run ids; anything else is refused before it reaches a registry filter string.
RUN_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_\-]{0,255}$")
# Registered versions are positive integers; 18 digits keep them inside MLflow's int64.
VERSION = re.compile(r"^[0-9]{1,18}$")
INPUT_NAME = "input-0"
PREDICT_OUTPUT = "predict"
PROBA_OUTPUT = "predict_proba"
# why, in the audit trail, for alias moves made through this server's admin API (the token holder is not named)
ADMIN_API = "through the model server's admin API (admin token)"


def public_reason(detail: str, alias: str) -> str:
    """A short reason anyone may read: one of a few fixed phrases, never the detail's URLs, file paths or
    exception text (the detail is in the log, and in /readyz for the admin token)."""
    text = detail.lower()
    if text.startswith("starting"):
        return "starting"
    if text.startswith("loading"):
        return "loading model"
    if "holds alias" in text:
        return f"no version holds alias {alias}"
    if "not reachable" in text or "not healthy" in text:
        return "waiting for the registry (not reachable)"
    if "refused the registry" in text or text.startswith("mlflow refused"):
        return "waiting for the registry (credentials refused)"
    if text.startswith("registry call failed"):
        return "waiting for the registry (error)"
    return "the version the alias points to cannot be served"


class AnswerCache:
    """Rendered answers by key for `ttl_s` seconds, each valid only for the `owner` it was made for (e.g. the
    served model). Concurrent misses on one key share one computation, so a burst costs one registry call."""

    def __init__(self, ttl_s: float, max_keys: int = 64) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._answers: dict[Hashable, tuple[float, Hashable, bytes]] = {}
        self._pending: dict[Hashable, tuple[Hashable, asyncio.Future[bytes]]] = {}

    async def get(self, key: Hashable, owner: Hashable, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        hit = self._answers.get(key)
        if hit is not None and hit[1] == owner and hit[0] > time.monotonic():
            return hit[2]
        pending = self._pending.get(key)
        if pending is None or pending[0] != owner:
            pending = self._pending[key] = (owner, asyncio.ensure_future(self._compute(key, owner, compute)))
        # shield: a client that disconnects must not cancel the call the others wait for
        return await asyncio.shield(pending[1])

    async def _compute(
        self, key: Hashable, owner: Hashable, compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        try:
            answer = await compute()
            if self.ttl_s > 0:
                if len(self._answers) >= self.max_keys:
                    self._answers.clear()
                self._answers[key] = (time.monotonic() + self.ttl_s, owner, answer)
            return answer
        finally:
            pending = self._pending.get(key)
            if pending is not None and pending[1] is asyncio.current_task():
                del self._pending[key]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model's Open Inference Protocol metadata."""

    name: str
    datatype: str
    shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


def label_datatype(kind: str) -> str:
    """The protocol datatype of labels whose numpy dtype kind is `kind`."""
    return "INT64" if kind in "iu" else "FP64" if kind == "f" else "BOOL" if kind == "b" else "BYTES"


def input_names(model: LoadedModel) -> list[str]:
    """The names of a model's inputs (cheap: checked on every infer request)."""
    return [INPUT_NAME]


def output_names(model: LoadedModel) -> list[str]:
    """The names of a model's outputs (cheap: checked on every infer request)."""
    return [PREDICT_OUTPUT, PROBA_OUTPUT] if model.classes else [PREDICT_OUTPUT]


def model_inputs(model: LoadedModel) -> list[TensorSpec]:
    return [TensorSpec(INPUT_NAME, "FP64", [-1, model.n_features])]


def model_outputs(model: LoadedModel) -> list[TensorSpec]:
    """What a model answers: its labels and, for a classifier, the class probabilities."""
    classes = model.classes
    # a regressor (or a model without classes) answers numbers
    labels = label_datatype(np.asarray(classes).dtype.kind) if classes else "FP64"
    outputs = [TensorSpec(PREDICT_OUTPUT, labels, [-1])]
    if classes:
        outputs.append(TensorSpec(PROBA_OUTPUT, "FP64", [-1, len(classes)]))
    return outputs


@dataclass(frozen=True)
class PredictionEvent:
    """One answered prediction request, as listeners (prediction log, console, rollout statistics) see it."""

    at: float  # unix time the answer was ready
    request_id: str
    model: LoadedModel
    rows: np.ndarray  # float64, N x features (do not modify)
    prediction: Prediction
    latency_s: float  # from the start of the predict call to the answer


PredictionListener = Callable[[PredictionEvent], None]


class ServingService:
    """The served model and the registry behind it: readiness, metadata, predictions, alias moves."""

    def __init__(
        self,
        settings: ServerSettings,
        store: ModelStore,
        watcher: AliasWatcher,
        registry: Registry,
        batcher: MicroBatcher,
    ) -> None:
        self.settings = settings
        self.alias = settings.model_alias
        self.store = store
        self.watcher = watcher
        self.registry = registry
        self.batcher = batcher
        self.admin_token = settings.admin_token.get_secret_value().encode() if settings.admin_token else None
        # Registry calls made by handlers run on their own small pool: a slow MLflow then queues them, never
        # the predictions, whose threads are the default executor's.
        self.registry_pool = ThreadPoolExecutor(settings.registry_threads, thread_name_prefix="registry")
        self.versions_cache = AnswerCache(settings.versions_cache_s)
        self._drift_key: tuple[str, float] | None = None
        self._drift: DriftMonitor | None = None
        self.prediction_listeners: list[PredictionListener] = []
        self.rollouts = Rollouts(registry, settings.challenger_alias)
        # the challenger is loaded (and verified) by the same loader as the champion
        self.follower = ChallengerFollower(self.rollouts.challenger, watcher, settings.poll_interval_s)
        self.challenger_runner = ChallengerRunner(
            settings.challenger_timeout_ms / 1000,
            settings.shadow_queue_requests,
            faults=Faults(settings.fault_challenger_delay_ms / 1000, settings.fault_challenger_error_rate),
            verifier=watcher.verifier,  # a shadow worker process verifies the challenger's files again
            allow_pyfunc=settings.allow_pyfunc_models,
        )
        if self.challenger_runner.faults:
            log.warning(
                "fault injection (rehearsal) is on: every challenger prediction +%g ms, %g%% of them fail",
                settings.fault_challenger_delay_ms,
                settings.fault_challenger_error_rate * 100,
            )

    @classmethod
    def from_settings(cls, settings: ServerSettings, registry: Registry | None = None) -> ServingService:
        """Wire the store, the alias watcher (verifying signatures with the configured key) and the batcher."""
        verifier = Verifier.from_path(settings.signing_public_key_path)
        registry = registry or Registry(
            settings,
            write_username=settings.registry_write_username,
            write_password=settings.registry_write_password,
        )
        if settings.model_dir is not None:
            settings.model_dir.mkdir(parents=True, exist_ok=True)
        store = ModelStore()
        watcher = AliasWatcher(
            store,
            registry,
            settings.poll_interval_s,
            settings.poll_backoff_max_s,
            verifier,
            settings.model_dir,
            settings.allow_pyfunc_models,
        )
        batcher = MicroBatcher(
            settings.max_batch_rows, settings.max_batch_wait_ms, settings.inline_predict_max_rows
        )
        return cls(settings, store, watcher, registry, batcher)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        import sklearn

        # Inputs are validated (finite, right shape) before they reach the model.
        sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
        metrics.MODEL_LOADED.set(0)
        self.watcher.start()
        self.batcher.start()
        self.follower.start()
        self.challenger_runner.start()

    async def stop(self) -> None:
        await self.follower.stop()
        await self.challenger_runner.stop()
        await self.watcher.stop()
        await self.batcher.stop()
        self.registry_pool.shutdown(wait=False, cancel_futures=True)
        if self.store.current is not None:
            self.store.current.release()

    async def registry_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.registry_pool, fn, *args)

    # -- readiness --------------------------------------------------------------------------------------
    def is_admin(self, token: str | None) -> bool:
        """Whether `token` is the configured admin token (constant-time; False when none is configured)."""
        return (
            self.admin_token is not None
            and token is not None
            and hmac.compare_digest(token.strip().encode("utf-8", "replace"), self.admin_token)
        )

    def readiness(self, detail: bool = False) -> tuple[bool, dict[str, Any]]:
        """Whether a model serves and, if not, a short reason; `detail` adds the full text for operators."""
        model = self.store.current
        if model is None:
            body: dict[str, Any] = {
                "status": "not ready",
                "reason": public_reason(self.store.reason, self.alias),
            }
            if detail:
                body["detail"] = self.store.reason
            return False, body
        body = {
            "status": "ready",
            "model_name": model.name,
            "model_version": model.version,
            "run_id": model.run_id,
            "alias": self.alias,
        }
        if self.store.warning:  # the last good copy serves: the alias' version cannot be loaded
            body["serving_warning"] = f"serving the last good version v{model.version} from local disk"
            if detail:
                body["serving_detail"] = self.store.warning
        if self.watcher.last_error:  # serving on; the registry is unwell
            body["registry_warning"] = public_reason(self.watcher.last_error, self.alias)
            if detail:
                body["registry_detail"] = self.watcher.last_error
        return True, body

    # -- the served model -------------------------------------------------------------------------------
    def model(self, name: str | None = None, version: str | None = None) -> LoadedModel:
        """The served model; VersionNotFound when `name` (or `version`) is not what this server serves,
        ModelNotReady while nothing is loaded."""
        model = self.store.require()
        if name is not None and name != model.name:
            raise VersionNotFound(
                f"model {name!r} is not served here; this server serves {model.name!r}", field="name"
            )
        if version is not None and version != model.version:
            active = self.follower.active()
            if active is not None and active[1].version == version:
                return active[1]
            raise VersionNotFound(
                f"version {version!r} of {name!r} is not loaded; this server serves v{model.version}",
                field="version",
            )
        return model

    def model_info(self) -> dict[str, Any]:
        return {**self.store.require().info(), "alias": self.alias}

    def model_metadata(self, model: LoadedModel) -> dict[str, Any]:
        """Open Inference Protocol model metadata."""
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": f"mlflow-{model.flavor}",
            "inputs": [t.to_dict() for t in model_inputs(model)],
            "outputs": [t.to_dict() for t in model_outputs(model)],
        }

    def add_prediction_listener(self, listener: PredictionListener) -> None:
        """Call `listener` after every answered prediction, on the event loop. It must be quick (hand work to
        a queue) and never block; an exception it raises is logged and the answer still goes out."""
        self.prediction_listeners.append(listener)

    async def predict(self, model: LoadedModel, rows: np.ndarray, request_id: str = "") -> Prediction:
        """Predict float64 rows (already validated) with `model`, micro-batched with concurrent requests."""
        start = time.perf_counter()
        self._observe_drift(model, rows)
        try:
            result = await self.batcher.predict(model, rows)
        except Exception:
            metrics.version_series(model.version).errors.inc()
            raise
        self._answered(model, rows, result, time.perf_counter() - start, request_id)
        return result

    async def predict_routed(
        self, model: LoadedModel, rows: np.ndarray, request_id: str, routing_key: str
    ) -> tuple[LoadedModel, Prediction]:
        """Predict with the champion `model`, or during a canary rollout with the challenger when the routing key
        falls in its share (a challenger failure or timeout is answered by the champion); in shadow mode the
        champion answers and a copy goes to the challenger. Returns the version that answered and its answer."""
        active = self.follower.active()
        if (
            active is None
            or active[1].columns != model.columns
            or not selected(routing_key, active[0].percent)
        ):
            return model, await self.predict(model, rows, request_id)
        state, challenger = active
        if state.mode == "shadow":
            result = await self.predict(model, rows, request_id)
            self.challenger_runner.offer(challenger, rows, result)
            return model, result
        self._observe_drift(model, rows)
        try:
            result, latency_s = await self.challenger_runner.predict(challenger, rows)
        except ChallengerBusy:  # a burst, not the challenger's fault: the champion answers, nothing counted
            return model, await self.predict(model, rows, request_id)
        except Exception as exc:  # the client never sees the challenger fail: the champion answers
            metrics.version_series(challenger.version).errors.inc()
            log.debug("challenger v%s failed (%s): the champion answers", challenger.version, exc)
            return model, await self.predict(model, rows, request_id)
        self._answered(challenger, rows, result, latency_s, request_id)
        return challenger, result

    async def predict_pinned(self, model: LoadedModel, rows: np.ndarray, request_id: str) -> Prediction:
        """Predict with exactly `model` (asked for by version): the champion, or the challenger in its threads."""
        active = self.follower.active()
        if active is None or active[1] is not model:
            return await self.predict(model, rows, request_id)
        try:
            result, latency_s = await self.challenger_runner.predict(model, rows)
        except ChallengerBusy as exc:
            raise ModelNotReady(f"challenger v{model.version} is busy: {exc}") from None
        except TimeoutError:
            metrics.version_series(model.version).errors.inc()
            raise ModelError(f"challenger v{model.version} did not answer in time") from None
        except ModelOpsError:
            metrics.version_series(model.version).errors.inc()
            raise
        except Exception as exc:
            metrics.version_series(model.version).errors.inc()
            raise ModelError(f"challenger v{model.version} failed: {type(exc).__name__}") from exc
        self._answered(model, rows, result, latency_s, request_id)
        return result

    def _observe_drift(self, model: LoadedModel, rows: np.ndarray) -> None:
        monitor = self.drift_monitor(model)
        if monitor is not None:
            monitor.observe(rows)  # a copy into a bounded ring buffer; the statistics run when asked

    def _answered(
        self, model: LoadedModel, rows: np.ndarray, result: Prediction, latency_s: float, request_id: str
    ) -> None:
        metrics.observe_version(model.version, result.labels, result.probabilities, latency_s)
        if self.prediction_listeners:
            event = PredictionEvent(time.time(), request_id, model, rows, result, latency_s)
            for listener in self.prediction_listeners:
                try:
                    listener(event)
                except Exception:  # a listener's bug never costs a client its answer
                    log.exception("prediction listener %r failed", listener)

    # -- drift --------------------------------------------------------------------------------------------
    def drift_monitor(self, model: LoadedModel) -> DriftMonitor | None:
        """The window of rows `model` served (one per loaded model; a swap starts a new one)."""
        key = (model.version, model.loaded_at)
        if self._drift_key != key:
            self._drift_key = key
            self._drift = (
                DriftMonitor(
                    model.drift_reference,
                    model.columns,
                    self.settings.drift_window_rows,
                    self.settings.drift_false_alarm_rate,
                )
                if model.drift_reference
                else None
            )
        return self._drift

    def drift_report(self) -> dict[str, Any]:
        """GET /drift: per feature statistic, threshold, window and verdict for the served version; also
        refreshes the drift metrics."""
        model = self.store.require()
        monitor = self.drift_monitor(model)
        if monitor is None:
            report: dict[str, Any] = {
                "drift": None,
                "reason": "this version has no training reference (trained before drift detection)",
                "features": [],
            }
        else:
            report = monitor.report()
        metrics.set_drift(model.version, report)
        return {"model_name": model.name, "model_version": model.version, **report}

    def refresh_drift_metrics(self) -> None:
        """Before a scrape: the drift gauges of the served version (cheap when no full window yet)."""
        if self.store.current is not None:
            self.drift_report()

    # -- model cards ------------------------------------------------------------------------------------
    async def card(self, version: str) -> dict[str, Any]:
        """A version's model card, with its alias history from the audit trail."""
        if not VERSION.match(version):
            raise InvalidInput("version must be a registered version number, e.g. '3'", field="version")
        return await self.registry_call(self.registry.card, version)

    async def versions(self, limit: int) -> bytes:
        """Registry versions newest first, as rendered JSON (cached for versions_cache_s)."""
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000", field="limit")
        model = self.store.current
        served = model.version if model else None

        async def compute() -> bytes:
            versions = await self.registry_call(self.registry.list_versions, limit)
            body = {
                "model_name": self.registry.name,
                "alias": self.registry.alias,
                "served_version": served,
                "versions": [v.to_dict() for v in versions],
            }
            return orjson.dumps(body, option=ORJSON_OPTIONS)

        # The answer names the served version: a swap (this process deployed, rolled back or followed the
        # alias) makes a new one. Other replicas' alias moves show within versions_cache_s.
        owner = (id(model), served, model.loaded_at) if model else None
        return await self.versions_cache.get(limit, owner, compute)

    # -- admin ------------------------------------------------------------------------------------------
    async def deploy(self, version: str | None, run_id: str | None) -> dict[str, Any]:
        """Load, warm and serve a registered version (or the version of a run, registering it first), then
        move the alias to it. Exactly one of `version` and `run_id`."""
        if (version is None) == (run_id is None):
            raise InvalidInput("send exactly one of 'version' or 'run_id'", field="version")
        if run_id is not None:
            if not RUN_ID.match(run_id):
                raise InvalidInput(
                    "run_id must be an MLflow run id (letters, digits, '_' and '-')", field="run_id"
                )
            version = (await self.registry_call(self.registry.version_for_run, run_id)).version
        assert version is not None
        if not VERSION.match(version):
            raise InvalidInput("version must be a registered version number, e.g. '3'", field="version")
        target = version
        return await self._serve_and_move(target, "deploy", _MoveAlias(self.registry, target))

    async def rollback(self) -> dict[str, Any]:
        """Serve the alias' previous holder, then move the alias back to it."""
        target = await self.registry_call(self.registry.previous_version)
        return await self._serve_and_move(
            target, "rollback", functools.partial(self.registry.rollback, ADMIN_API)
        )

    async def _serve_and_move(
        self, version: str, action: str, move_alias: Callable[[], object]
    ) -> dict[str, Any]:
        target = await self.registry_call(self.registry.get_version, version)
        previous = self.store.current.version if self.store.current else None
        # Load and warm here first: the alias moves only once the version serves, so a version that cannot
        # load never gets it.
        model = await self.watcher.serve_version(target, move_alias)
        return {
            "action": action,
            "model_name": model.name,
            "alias": self.alias,
            "previous_version": previous,
            "version": model.version,
            "run_id": model.run_id,
        }

    # -- rollouts ---------------------------------------------------------------------------------------
    def rollout_status(self) -> dict[str, Any]:
        """What this replica applies now (from its last poll of the registry)."""
        state = self.follower.state
        active = self.follower.active()
        body: dict[str, Any] = state.to_dict() if state is not None else {"state": "idle"}
        body["challenger_alias"] = self.settings.challenger_alias
        body["challenger_loaded"] = active[1].version if active else None
        if self.follower.last_error:
            body["registry_warning"] = public_reason(self.follower.last_error, self.settings.challenger_alias)
        return body

    async def rollout_start(
        self, version: str, steps: list[int] | str | None, interval_s: float | None, mode: str | None
    ) -> dict[str, Any]:
        """Start a rollout of `version` against the champion: it must load and verify here first, and take
        the same inputs as the champion."""
        if not VERSION.match(version):
            raise InvalidInput("version must be a registered version number, e.g. '3'", field="version")
        parsed = parse_steps(steps if steps is not None else self.settings.rollout_steps)
        interval = self.settings.rollout_interval_s if interval_s is None else interval_s
        champion = self.store.require()
        info = await self.registry_call(self.registry.get_version, version)
        candidate = await self.watcher.load(info)  # refused or broken versions stop here (422)
        try:
            if candidate.columns != champion.columns:
                raise InvalidInput(
                    f"v{version} takes columns {candidate.columns}, the champion {champion.columns}",
                    field="version",
                )
            state = await self.registry_call(
                self.rollouts.start, version, mode or "canary", parsed, float(interval)
            )
        finally:
            candidate.release()
        self.follower.wake()
        return state.to_dict()

    async def rollout_abort(self, why: str) -> dict[str, Any]:
        state = await self.registry_call(self.rollouts.abort, why or "aborted through the admin API")
        self.follower.wake()
        return state.to_dict()

    async def rollout_promote(self, why: str) -> dict[str, Any]:
        """Serve the challenger as champion here first, then move the aliases (every replica follows)."""
        state = await self.registry_call(self.rollouts.running)
        reason = why or "promoted through the admin API"
        await self._serve_and_move(
            state.version, "promote", functools.partial(self.rollouts.promote, reason, expect=state)
        )
        self.follower.wake()
        current = await self.registry_call(self.rollouts.current)
        return current.to_dict() if current else {"state": "idle"}


@dataclass(frozen=True)
class _MoveAlias:
    """The commit step of a deploy: point the alias at `version` (a callable, so it runs in the watcher)."""

    registry: Registry
    version: str

    def __call__(self) -> object:
        return self.registry.move_alias(self.version, action="deploy", why=ADMIN_API)
