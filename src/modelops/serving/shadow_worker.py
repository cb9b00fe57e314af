"""The challenger of a shadow rollout, predicting in a process of its own.

Shadow copies used to be predicted on a thread of the serving process: the challenger's work then shared the
serving process's interpreter lock (and, with the CPU limit of a container, its core) with the champion's
requests, and showed in the champion's tail latency. Here the challenger runs in a child process started with
the lowest scheduling priority (Linux's SCHED_IDLE where allowed, and nice 19): the kernel runs it when the
champion leaves the CPU idle and takes the CPU back as soon as the champion wakes, and nothing it
does holds the champion's interpreter lock. The serving process only sends each batch of copies (the rows, the
champion's labels and positive-class probabilities) and counts the summary that comes back.

The child loads the challenger from the files the serving process downloaded, verifying their signature again
with the same key and loading them the same way (no code from the artifact). It answers with plain JSON numbers
(never a pickle), applies the rehearsal faults (`Faults`) as the threads do, and exits when the pipe closes. A
batch that takes longer than the challenger's timeout gets the child killed; the next batch starts a new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from modelops.serving.metrics import summarize
from modelops.serving.model import MODEL_DIR_PREFIX

if TYPE_CHECKING:
    from modelops.serving.model import LoadedModel
    from modelops.serving.routing import Faults
    from modelops.signing import Verifier

log = logging.getLogger(__name__)

# Loading in the child: interpreter start, imports, signature check, load and warm-up, at the lowest priority on a
# machine busy serving. Past this the child is killed and the copies meanwhile are dropped (and counted).
START_TIMEOUT_S = 120.0
# The wall-clock limit of one batch: a safety net for a hung challenger, far above its own timeout (which is judged
# on the latency the child reports), so that a loaded server starving the worker does not fail the challenger.
WALL_LIMIT_FACTOR = 10
WALL_LIMIT_MIN_S = 30.0
# What the child inherits: locale, temp folder and the numeric libraries' thread settings; never the server's
# secrets, and not PROMETHEUS_MULTIPROC_DIR.
CHILD_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
CHILD_ENV_PREFIXES = ("OMP_", "OPENBLAS_", "MKL_")


def child_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in CHILD_ENV_KEYS or k.startswith(CHILD_ENV_PREFIXES)}


class WorkerFailed(Exception):
    """The child could not start, died, or answered with an error: the batch is counted as an error."""


@dataclass(frozen=True)
class Summary:
    """What the serving process counts for one batch of copies."""

    latency_s: float
    agree: int
    rows: int
    abs_delta: float | None
    labels: list[tuple[Any, int]]
    bins: list[int] | None


class ShadowWorker:
    """One child process serving one challenger version. Blocking calls: run them off the event loop."""

    def __init__(
        self,
        model: LoadedModel,
        verifier: Verifier,
        faults: Faults,
        timeout_s: float,
        allow_pyfunc: bool = False,
    ) -> None:
        if model.model_path is None:
            raise ValueError(f"challenger v{model.version} has no files on disk to load in a worker")
        self.version = model.version
        self.model = model
        self.timeout_s = timeout_s
        self._ready = False
        self._process: subprocess.Popen[bytes] | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None
        # the worker's own copy of the files (hard links where it can): the server deletes its copy when the
        # challenger is unloaded, which may happen while the worker still starts
        work_dir = model.local_dir.parent if model.local_dir is not None else None
        self.files = Path(tempfile.mkdtemp(prefix=f"{MODEL_DIR_PREFIX}shadow-{model.version}-", dir=work_dir))
        try:
            shutil.copytree(model.model_path, self.files / "model", copy_function=_link_or_copy)
            # A fresh interpreter (nothing of this process copied; -I: no current folder on its path, no PYTHON*
            # variables) with a minimal environment (none of the server's secrets, and no metrics folder: its
            # metrics would merge into the server's), whose first act, before any import, is to lower its priority:
            # its start-up (imports, signature check, load) is the costly part of its life.
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-c", CHILD_BOOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                cwd=self.files,
                env=child_environment(),
            )
            assert self._process.stdin is not None and self._process.stdout is not None
            self._send = Connection(os.dup(self._process.stdin.fileno()), readable=False)
            self._recv = Connection(os.dup(self._process.stdout.fileno()), writable=False)
            self._process.stdin.close()
            self._process.stdout.close()
            # what to load: sent once, from this (trusted) process
            self._send.send(
                (
                    str(self.files / "model"),
                    model.name,
                    model.version,
                    model.run_id,
                    str(verifier.public_key_file),
                    faults.delay_s,
                    faults.error_rate,
                    allow_pyfunc,
                )
            )
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def wait_ready(self) -> None:
        """Block until the child has loaded and verified the challenger; WorkerFailed (and the child killed)
        when it cannot."""
        answer = self._receive(START_TIMEOUT_S, "start")
        if "error" in answer:
            self.close()
            raise WorkerFailed(
                f"challenger v{self.version} cannot load in the shadow worker: {answer['error']}"
            )
        self._ready = True

    def call(self, rows: np.ndarray, labels: np.ndarray, probabilities: np.ndarray | None) -> Summary:
        """The challenger's summary over `rows`, compared with the champion's `labels` and `probabilities`.
        WorkerFailed on the challenger's error; TimeoutError (and the child killed) when no answer came within the
        safety limit (`wall_limit_s`): at the lowest priority, wall time measures the server's load as much as the
        challenger, so the challenger's own timeout is judged on the latency the child reports."""
        if not self._ready:
            self.wait_ready()
        assert self._send is not None
        positive, classes = positive_class(probabilities)
        try:
            self._send.send((rows, labels, positive, classes))
        except (OSError, ValueError) as exc:
            self.close()
            raise WorkerFailed(f"shadow worker of v{self.version} is gone: {exc}") from None
        answer = self._receive(self.wall_limit_s, "prediction")
        if "error" in answer:
            raise WorkerFailed(str(answer["error"]))
        return Summary(
            latency_s=float(answer["latency_s"]),
            agree=int(answer["agree"]),
            rows=int(answer["rows"]),
            abs_delta=None if answer["abs_delta"] is None else float(answer["abs_delta"]),
            labels=[(value, int(count)) for value, count in answer["labels"]],
            bins=None if answer["bins"] is None else [int(b) for b in answer["bins"]],
        )

    @property
    def wall_limit_s(self) -> float:
        return max(self.timeout_s * WALL_LIMIT_FACTOR, WALL_LIMIT_MIN_S)

    def _receive(self, timeout_s: float, what: str) -> dict[str, Any]:
        assert self._recv is not None and self._process is not None
        try:
            ready = self._recv.poll(timeout_s)
            # JSON only: the child's bytes are never unpickled
            answer = orjson.loads(self._recv.recv_bytes(1 << 20)) if ready else None
        except (EOFError, OSError, orjson.JSONDecodeError) as exc:
            code = self._process.poll()
            self.close()
            raise WorkerFailed(f"shadow worker of v{self.version} died (exit code {code}): {exc}") from None
        if not ready:
            self.close()
            raise TimeoutError(f"shadow worker of v{self.version}: no {what} answer in {timeout_s:g} s")
        if not isinstance(answer, dict):
            self.close()
            raise WorkerFailed(f"shadow worker of v{self.version} answered {type(answer).__name__}")
        return answer

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def close(self) -> None:
        """Stop the child (at once: it holds no state worth a goodbye)."""
        for conn in (self._send, self._recv):
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        shutil.rmtree(self.files, ignore_errors=True)


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, destination)


# The child's first lines: the lowest priority, then the real work (its imports happen after). Nice 19 alone
# was not enough: measured at 1,600 requests/s with server and worker on one core, the champion's p99 rose
# 40-55%, the kernel letting the worker finish its time slice before the champion's waking thread ran. A
# SCHED_IDLE process is preempted as soon as any normal one wakes (Linux; lowering one's own policy needs no
# privilege; where refused, nice 19 stays).
CHILD_BOOT = """import os
os.nice(19)
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except (AttributeError, OSError):
    pass
from modelops.serving.shadow_worker import child_main
child_main()
"""


def child_main() -> None:
    """The worker process: read what to load from stdin, then batches; answer each in JSON on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the server, which stops us
    recv = Connection(os.dup(0), writable=False)
    send = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # anything printed goes to the server's log, never into the answers
    try:
        path, name, version, run_id, key_file, delay_s, error_rate, allow_pyfunc = recv.recv()
        import sklearn

        from modelops.registry import VersionInfo
        from modelops.serving.model import load_local
        from modelops.serving.routing import Faults
        from modelops.signing import Verifier

        # as the server: rows are checked before they get here
        sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
        faults = Faults(delay_s, error_rate)
        info = VersionInfo(name, version, run_id, "", (), {}, 0)
        model = load_local(Path(path), info, {}, Verifier(Path(key_file)), allow_pyfunc)
        predict = faults.wrap(model)
    except Exception as exc:
        send.send_bytes(orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    send.send_bytes(orjson.dumps({"ready": True}))
    while True:
        try:
            rows, labels, positive, classes = recv.recv()
        except (EOFError, OSError):  # the server closed the pipe or is gone
            return
        start = time.process_time()
        try:
            result = predict(rows)
            if len(result.labels) != len(rows):
                raise ValueError(f"answered {len(result.labels)} labels for {len(rows)} rows")
            # the challenger's own cost: CPU time (all its threads), plus a rehearsal's injected delay. Its wall
            # time at the lowest priority on a busy server would measure the champion's load, not the challenger.
            latency_s = time.process_time() - start + faults.delay_s
            answer = orjson.dumps(
                _compare(result.labels, result.probabilities, labels, positive, classes, latency_s)
            )
        except Exception as exc:
            answer = orjson.dumps({"error": f"challenger v{version} failed: {type(exc).__name__}: {exc}"})
        send.send_bytes(answer)


def _compare(
    labels: np.ndarray,
    probabilities: np.ndarray | None,
    champion: np.ndarray,
    positive: np.ndarray | None,
    classes: int | None,
    latency_s: float,
) -> dict[str, Any]:
    counts, bins = summarize(labels, probabilities)
    agree, delta = agreement(champion, positive, classes, labels, probabilities)
    return {
        "latency_s": latency_s,
        "agree": agree,
        "rows": len(labels),
        "abs_delta": delta,
        "labels": counts,
        "bins": bins,
    }


def positive_class(probabilities: np.ndarray | None) -> tuple[np.ndarray | None, int | None]:
    """The positive class's column of N x C probabilities and C; (None, None) without them."""
    if probabilities is None or probabilities.ndim != 2:
        return None, None
    return probabilities[:, -1], probabilities.shape[1]


def agreement(
    champion: Any,
    positive: np.ndarray | None,
    classes: int | None,
    labels: Any,
    probabilities: np.ndarray | None,
) -> tuple[int, float | None]:
    """Rows where the challenger's label equals the champion's, and the sum of |challenger - champion|
    positive-class probability (None unless both have probabilities over the same number of classes)."""
    agree = int(np.count_nonzero(np.asarray(labels) == np.asarray(champion)))
    if (
        positive is None
        or probabilities is None
        or probabilities.ndim != 2
        or probabilities.shape[1] != classes
    ):
        return agree, None
    return agree, float(np.abs(probabilities[:, -1] - positive).sum())
