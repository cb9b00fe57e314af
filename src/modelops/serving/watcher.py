"""AliasWatcher: keep this process serving the version the registry alias points to.

Polls the registry; on a new version it loads and warms it in a thread, then swaps it in. A version
that fails to load is counted and retried on the next poll while the old model keeps serving.
While MLflow is unreachable the loaded model keeps serving and the poll backs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from modelops.errors import AliasNotFound, ModelLoadError, ModelRefused, RegistryError, RegistryUnavailable
from modelops.registry import Registry, VersionInfo
from modelops.serving import metrics
from modelops.serving.lastgood import LastGood
from modelops.serving.model import LoadedModel, clean_model_dirs, load_model
from modelops.serving.store import ModelStore
from modelops.serving.tasks import cancel
from modelops.signing import Verifier

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5


class AliasWatcher:
    def __init__(
        self,
        store: ModelStore,
        registry: Registry,
        poll_interval_s: float,
        backoff_max_s: float,
        verifier: Verifier,
        model_dir: Path | None = None,
        allow_pyfunc: bool = False,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.allow_pyfunc = allow_pyfunc
        # only with a model folder that outlives the process (the chart's volume, `modelops up`'s home)
        self.last_good = LastGood(model_dir) if model_dir is not None else None
        self._tried_last_good = False
        self.registry = registry
        self.poll_interval_s = poll_interval_s
        self.backoff_max_s = backoff_max_s
        self.model_dir = model_dir
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.last_error: str | None = None
        self.last_poll_at: float | None = None
        self._unfollowed = 0
        self._last_alias_version: str | None = None

    # -- loading ------------------------------------------------------------------------------------
    async def load(self, version: VersionInfo) -> LoadedModel:
        """Download, load and warm `version` off the event loop; counts the attempt in metrics."""
        start = time.perf_counter()
        try:
            run_metrics = await asyncio.to_thread(self.registry.run_metrics, version.run_id)
            version = await asyncio.to_thread(self.registry.with_download_uri, version)
            model = await asyncio.to_thread(
                load_model,
                version,
                self.registry.download,
                run_metrics,
                self.model_dir,
                self.verifier,
                self.allow_pyfunc,
            )
        except ModelRefused as exc:
            metrics.MODEL_LOADS.labels("refused").inc()
            metrics.MODEL_REFUSALS.labels(exc.reason).inc()
            metrics.MODEL_LOAD_FAILURES.inc()
            log.warning(
                "refused %s v%s (%s): %s; the served version is unchanged",
                version.name,
                version.version,
                exc.reason,
                exc.message,
            )
            raise
        except (ModelLoadError, RegistryError) as exc:
            metrics.MODEL_LOADS.labels("failure").inc()
            metrics.MODEL_LOAD_FAILURES.inc()
            log.error("loading %s v%s failed: %s", version.name, version.version, exc)
            raise ModelLoadError(
                str(exc) if isinstance(exc, ModelLoadError) else f"cannot load: {exc}"
            ) from exc
        metrics.MODEL_LOADS.labels("success").inc()
        metrics.MODEL_LOAD_DURATION.observe(time.perf_counter() - start)
        return model

    async def _serve_locked(
        self, version: VersionInfo, commit: Callable[[], object] | None = None
    ) -> LoadedModel:
        current = self.store.current
        if current is not None and current.version == version.version:
            if commit is not None:
                await asyncio.to_thread(commit)
            return current
        if current is None:
            self.store.reason = f"loading {version.name} v{version.version}"
        model = await self.load(version)
        if commit is not None:
            try:
                await asyncio.to_thread(commit)
            except BaseException:
                model.release()
                raise
        self.store.swap(model)
        self.store.warning = None
        if self.last_good is not None:
            try:
                await asyncio.to_thread(self.last_good.save, model)
            except OSError as exc:  # serving goes on; only the fallback copy is stale
                log.warning("cannot keep v%s as the last good copy: %s", model.version, exc)
        return model

    async def _fall_back_to_last_good(self, error: str) -> bool:
        """At start-up, when the alias's version cannot be served: serve the last good copy, once."""
        if self.last_good is None or self._tried_last_good or self.store.current is not None:
            return False
        self._tried_last_good = True
        model = await asyncio.to_thread(
            self.last_good.load, self.registry.name, self.verifier, self.allow_pyfunc
        )
        if model is None:
            return False
        self.store.swap(model)
        self.store.warning = f"serving the last good version v{model.version} from local disk: {error}"
        log.warning("%s; retrying the alias every poll", self.store.warning)
        return True

    async def serve_version(
        self, version: VersionInfo, commit: Callable[[], object] | None = None
    ) -> LoadedModel:
        """Make this process serve `version`: load and warm it, run `commit` (e.g. move the alias),
        then swap. The old model keeps serving if any step fails. Polls and deploys are serialized,
        so a poll that read the alias before a deploy moved it cannot swap the old version back."""
        async with self._lock:
            return await self._serve_locked(version, commit)

    # -- polling ------------------------------------------------------------------------------------
    async def sync_once(self) -> None:
        """One poll: resolve the alias and serve what it points to. Raises on failure."""
        async with self._lock:
            try:
                target = await asyncio.to_thread(self.registry.alias_version)
            except RegistryError:
                metrics.ALIAS_POLLS.labels("error").inc()
                raise
            metrics.ALIAS_POLLS.labels("ok").inc()
            self.last_poll_at = time.time()
            if target is None:
                raise AliasNotFound(
                    f"no version of {self.registry.name!r} holds alias {self.registry.alias!r} yet"
                )
            current = self.store.current
            if self._last_alias_version is None:
                log.info(
                    "alias %r of %s points to v%s", self.registry.alias, self.registry.name, target.version
                )
            elif self._last_alias_version != target.version:
                log.info(
                    "alias %r of %s moved: v%s -> v%s",
                    self.registry.alias,
                    self.registry.name,
                    self._last_alias_version,
                    target.version,
                )
            self._last_alias_version = target.version
            if current is None or current.version != target.version:
                self._unfollowed += 1
                metrics.ALIAS_UNFOLLOWED_POLLS.set(self._unfollowed)
            await self._serve_locked(target)
            self._unfollowed = 0
            metrics.ALIAS_UNFOLLOWED_POLLS.set(0)

    async def run(self) -> None:
        delay = FIRST_RETRY_S
        while True:
            try:
                await self.sync_once()
                self.last_error = None
                delay = FIRST_RETRY_S
                wait = self.poll_interval_s
            except (RegistryUnavailable, AliasNotFound, ModelLoadError, RegistryError) as exc:
                self.last_error = exc.message
                await self._fall_back_to_last_good(exc.message)
                if self.store.current is None:
                    self.store.reason = exc.message
                    wait = delay  # nothing served yet: retry soon, backing off
                    delay = min(delay * 2, self.backoff_max_s, self.poll_interval_s * 6)
                else:
                    # keep serving; retry on the normal schedule (longer while MLflow is down)
                    wait = (
                        self.poll_interval_s
                        if not isinstance(exc, RegistryUnavailable)
                        else min(max(delay, self.poll_interval_s), self.backoff_max_s)
                    )
                    delay = min(delay * 2, self.backoff_max_s)
                log.warning("alias poll: %s (next in %.1f s)", exc.message, wait)
            except Exception as exc:  # never let the watcher die
                log.exception("alias poll failed unexpectedly")
                self.last_error = f"{type(exc).__name__}: {exc}"
                wait = self.poll_interval_s
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # not wait_for: it can lose a cancellation on 3.11
                    await self._wake.wait()

    def start(self) -> None:
        removed = clean_model_dirs(self.model_dir)
        if removed:
            log.info("removed %d model folder(s) left by an earlier process", removed)
        self._task = asyncio.create_task(self.run(), name="alias-watcher")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
