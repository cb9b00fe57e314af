"""ModelStore: the model this process serves, swapped atomically, with the reason it is (not) ready."""

from __future__ import annotations

import gc
import logging

from modelops.errors import ModelNotReady
from modelops.serving import metrics
from modelops.serving.model import LoadedModel

log = logging.getLogger(__name__)


class ModelStore:
    """Holds the current LoadedModel. Readers take a reference and keep it for their whole request,
    so a swap never changes the model under a request that already started."""

    def __init__(self) -> None:
        self._current: LoadedModel | None = None
        self.reason = "starting: no model loaded yet"
        # set while serving something other than what the alias says (the last good copy)
        self.warning: str | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelNotReady(self.reason)
        return model

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Make `new` the served model; returns the previous one (already released)."""
        old, self._current = self._current, new
        self.reason = f"serving {new.name} v{new.version}"
        metrics.set_model_info(new.name, new.version, new.run_id, old)
        if old is not None:
            metrics.MODEL_SWAPS.inc()
            old.release()
            log.info("swapped %s v%s -> v%s", new.name, old.version, new.version)
        else:
            log.info("serving %s v%s", new.name, new.version)
        freeze_long_lived_objects()
        return old


def freeze_long_lived_objects(collect: bool = True) -> None:
    """Move everything alive now (the interpreter, libraries, the model) out of the garbage collector's
    reach. Full collections otherwise walk those hundreds of thousands of objects again and again while
    requests wait: measured here as the bulk of the p99 at 32 connections (docs/benchmarks.md). Unfreezing
    first lets the previous model, released above, be collected instead of staying frozen; that full collection
    stops this process for about 200 ms here, so `collect=False` (a challenger's load) only freezes: what is
    garbage now stays until the next swap's collection."""
    if collect:
        gc.unfreeze()
        gc.collect()
    gc.freeze()
