"""The prediction log: every sampled answer (and every label sent to /feedback) as gzip'd JSON lines in the
artifact store, written in the background so that serving never waits for, or fails because of, the store.

Layout under the log root (`prediction_log_uri`), files of at most FILE_MAX_ROWS rows per partition:
  model=<name>/version=<v>/date=<YYYY-MM-DD>/<unix_ms>-<host>-<pid>-<seq>.jsonl.gz   answers
  model=<name>/feedback/date=<YYYY-MM-DD>/<unix_ms>-<host>-<pid>-<seq>.jsonl.gz      labels
A lone single-row answer is a line {"request_id", "row", "ts", "model", "version", "inputs": {column: value},
"outputs": {"label", "probabilities": {class: p} | null}, "latency_ms"}; a multi-row answer, and a run of
single-row answers of one model, a columnar line (see `expand`, which turns every form into those per-row
records); label record: {"request_id", "row", "label", "ts"}.

Through MLflow's artifact proxy (`mlflow-artifacts:/<path>`), the root is `<path>` inside the artifact root of
the experiment `PREDICTION_LOG_EXPERIMENT`: with MLflow's basic-auth app (default permission READ) only an
admin may upload to a path that names no experiment, while a principal granted EDIT on the experiment (the
operator: `modelops auth bootstrap` creates the experiment and grants it) may upload under `<experiment_id>/`.
Without the bootstrap (MLflow without auth) the writer creates the experiment itself. Every principal may read it
(default READ).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

import orjson

from modelops.auth import PREDICTION_LOG_EXPERIMENT
from modelops.errors import ConfigError
from modelops.monitoring import metrics

if TYPE_CHECKING:
    import httpx
    import numpy as np

    from modelops.serving.service import PredictionEvent
    from modelops.settings import ServerSettings

log = logging.getLogger(__name__)

FEEDBACK_DIR = "feedback"
SUFFIX = ".jsonl.gz"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_API = "/api/2.0/mlflow"
_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
# A file holds at most this many rows: a long outage followed by recovery writes several modest files, not one
# that takes minutes to upload or to read back.
FILE_MAX_ROWS = 50_000
# Flush early once this many rows wait, so that a burst does not wait for the timer.
EARLY_FLUSH_ROWS = 20_000
# Between flushes the writer encodes and compresses what waits this often: a flush's CPU, spread over its
# interval in small pieces, no longer takes the serving thread's interpreter lock for a third of a second.
ENCODE_S = 0.2
# Attempts per file within one flush (with backoff between); a file that still fails waits for the next flush.
WRITE_ATTEMPTS = 3
RETRY_BASE_S = 0.5


def path_segment(text: str) -> str:
    """`text` as one path segment of the log layout: characters outside [A-Za-z0-9._-] become '_'."""
    return _UNSAFE.sub("_", text) or "_"


def model_dir(model: str) -> str:
    return f"model={path_segment(model)}"


def utc_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def sampled(request_id: str, rate: float) -> bool:
    """Whether `request_id` is in the log's sample: a hash of the id, so every worker and replica agrees."""
    if rate >= 1.0:
        return True
    return rate > 0.0 and zlib.crc32(request_id.encode()) < rate * 0x1_0000_0000


# -- where files go -----------------------------------------------------------------------------------------
class StoreError(Exception):
    """A write or read failed; `permanent` when retrying cannot help (refused credentials, bad path)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class LogStore(Protocol):
    """Files of the log, by path relative to its root."""

    shown: str  # where it is, safe to log

    def put(self, path: str, data: bytes) -> None: ...

    def list(self, prefix: str) -> list[tuple[str, int]]: ...

    def get(self, path: str, max_bytes: int) -> bytes: ...


class FolderStore:
    """A local (or mounted) folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shown = str(root)

    def put(self, path: str, data: bytes) -> None:
        target = self.root / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            partial.write_bytes(data)
            os.replace(partial, target)  # readers never see half a file
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc

    def list(self, prefix: str) -> list[tuple[str, int]]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            (p.relative_to(self.root).as_posix(), p.stat().st_size)
            for p in base.rglob(f"*{SUFFIX}")
            if p.is_file() and not p.name.startswith(".")
        )

    def get(self, path: str, max_bytes: int) -> bytes:
        target = self.root / path
        try:
            if target.stat().st_size > max_bytes:
                raise StoreError(f"{target} is larger than {max_bytes} bytes", permanent=True)
            return target.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read {target}: {exc.strerror or exc}") from exc


class ArtifactProxyStore:
    """MLflow's artifact proxy (`--serve-artifacts`), under the log experiment's artifact root; plain httpx
    with a timeout (the MLflow client retries for minutes and would hold the writer that long)."""

    def __init__(
        self,
        tracking_uri: str,
        root: str,
        auth: tuple[str, str] | None,
        *,
        create_experiment: bool = False,
        timeout_s: float = 10.0,
        experiment: str = PREDICTION_LOG_EXPERIMENT,
    ) -> None:
        import httpx

        self.base = tracking_uri.rstrip("/")
        self.root = root.strip("/")
        self.experiment = experiment
        self.create_experiment = create_experiment
        self.shown = f"mlflow-artifacts:/{self.root} (experiment {experiment} at {self.base})"
        from modelops.mlflow_rest import http_client

        self.client = http_client(self.base, auth, httpx.Timeout(timeout_s), {})
        self._experiment_id: str | None = None

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.is_success:
            return
        permanent = response.status_code in (400, 401, 403, 404)
        raise StoreError(f"{what}: HTTP {response.status_code} {response.text[:200]}", permanent)

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            return self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise StoreError(f"{method} {self.base}: {type(exc).__name__}: {exc}") from exc

    def experiment_id(self) -> str:
        """The log experiment's id, created on first use when this principal may (it then owns it)."""
        if self._experiment_id is not None:
            return self._experiment_id
        for _ in range(2):
            response = self._call(
                "GET",
                f"{self.base}{_API}/experiments/get-by-name",
                params={"experiment_name": self.experiment},
            )
            if response.is_success:
                self._experiment_id = str(response.json()["experiment"]["experiment_id"])
                return self._experiment_id
            if response.status_code != 404 or not self.create_experiment:
                self._check(response, f"experiment {self.experiment}")
                raise StoreError(f"experiment {self.experiment} does not exist (yet)")
            created = self._call(
                "POST", f"{self.base}{_API}/experiments/create", json={"name": self.experiment}
            )
            if created.is_success:
                self._experiment_id = str(created.json()["experiment_id"])
                return self._experiment_id
            if "RESOURCE_ALREADY_EXISTS" not in created.text:  # else another worker made it: read it again
                self._check(created, f"creating experiment {self.experiment}")
        raise StoreError(f"experiment {self.experiment} could not be resolved")

    def _url(self, path: str) -> str:
        parts = [self.experiment_id(), self.root, path.strip("/")]
        return f"{self.base}{_ARTIFACTS}/" + "/".join(p for p in parts if p)

    def put(self, path: str, data: bytes) -> None:
        url = self._url(path)
        response = self._call("PUT", url, content=data, headers={"Content-Type": "application/octet-stream"})
        self._check(response, f"upload of {path}")

    def list(self, prefix: str) -> list[tuple[str, int]]:
        start = "/".join(p for p in (self.experiment_id(), self.root, prefix.strip("/")) if p)
        strip = len("/".join(p for p in (self.experiment_id(), self.root) if p)) + 1
        found: list[tuple[str, int]] = []
        pending = [start]
        while pending:
            folder = pending.pop()
            response = self._call("GET", f"{self.base}{_ARTIFACTS}", params={"path": folder})
            self._check(response, f"listing {folder}")
            for entry in response.json().get("files", []):
                full = f"{folder}/{entry['path'].rpartition('/')[2]}"
                if entry.get("is_dir"):
                    pending.append(full)
                elif full.endswith(SUFFIX):
                    found.append((full[strip:], int(entry.get("file_size") or 0)))
        return sorted(found)

    def get(self, path: str, max_bytes: int) -> bytes:
        url = self._url(path)
        import httpx

        try:
            with self.client.stream("GET", url) as response:
                self._check(response, f"download of {path}")
                parts, size = [], 0
                for chunk in response.iter_raw():
                    size += len(chunk)
                    if size > max_bytes:
                        raise StoreError(f"{path} is larger than {max_bytes} bytes", permanent=True)
                    parts.append(chunk)
                return b"".join(parts)
        except httpx.HTTPError as exc:
            raise StoreError(f"GET {path}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.client.close()


def open_store(
    uri: str,
    tracking_uri: str,
    auth: tuple[str, str] | None,
    *,
    create_experiment: bool = False,
    timeout_s: float = 10.0,
) -> tuple[LogStore, str]:
    """The store a log URI names and the prefix inside it: `mlflow-artifacts:/<path>` (through the proxy at
    `tracking_uri`), `file:///<folder>` or a plain folder. ConfigError for anything else."""
    parts = urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    if scheme == "mlflow-artifacts":
        if parts.netloc:
            raise ConfigError(
                f"{uri}: give the path only (mlflow-artifacts:/<path>); the server is the tracking URI",
                field="prediction_log_uri",
            )
        store = ArtifactProxyStore(
            tracking_uri, "", auth, create_experiment=create_experiment, timeout_s=timeout_s
        )
        return store, unquote(parts.path).strip("/")
    if scheme == "file" or scheme == "":
        folder = Path(unquote(parts.path) if scheme == "file" else uri)
        return FolderStore(folder), ""
    raise ConfigError(
        f"{uri}: the prediction log goes to mlflow-artifacts:/<path> or file:///<folder>",
        field="prediction_log_uri",
    )


# -- the writer ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedbackItem:
    """A label for row `row` of the answer to `request_id`."""

    request_id: str
    label: str | int | float | bool
    row: int = 0


@dataclass
class _Pending:
    """A file waiting to be written (again)."""

    path: str
    data: bytes
    rows: int


@dataclass
class _Open:
    """A file being built: its lines gzip'd as they are encoded, written at the next flush."""

    folder: str
    compressor: Any = field(default_factory=lambda: zlib.compressobj(1, zlib.DEFLATED, 31))  # gzip, level 1
    parts: list[bytes] = field(default_factory=list)
    rows: int = 0


_Model = tuple[str, str, tuple[str, ...], "tuple[str, ...] | None"]
"""(name, version, column names, class names) of the model that answered."""
_Answer = tuple[float, str, _Model, "np.ndarray", "np.ndarray", "np.ndarray | None", float]
"""(at, request id, model, rows, labels, probabilities, latency in s) of one buffered answer. Plain tuples of
strings, numbers and arrays on purpose: the garbage collector untracks them at its first pass. A buffer of
PredictionEvents (tens of thousands between two flushes at single-row traffic) was walked by every full
collection while the event loop waited."""


def _record(run: list[_Answer]) -> dict[str, Any]:
    """The log line of one run of `_runs`. A lone single-row answer: a record of its row. A multi-row answer, or
    several single-row answers: one columnar line written straight from numpy arrays (a 1000-row request costs
    the writer about a tenth of 1000 per-row dicts; at single-row traffic a per-row line cost it about 5 µs of
    the interpreter lock per answer, taken from serving); several answers carry a request id, time and latency
    per row. `expand` turns every form back into per-row records."""
    at, request_id, (name, version, columns, classes), rows, labels, probabilities, latency_s = run[0]
    if len(run) == 1 and len(rows) == 1:
        proba = probabilities[0].tolist() if probabilities is not None else None
        names = classes or ([str(c) for c in range(len(proba))] if proba is not None else None)
        row = rows[0].tolist()
        return {
            "request_id": request_id,
            "row": 0,
            "ts": at,
            "model": name,
            "version": version,
            "inputs": dict(zip(columns, row, strict=False)) if columns else row,
            "outputs": {
                "label": labels[0].item() if hasattr(labels[0], "item") else labels[0],
                "probabilities": dict(zip(names, proba, strict=False))
                if proba is not None and names
                else None,
            },
            "latency_ms": round(latency_s * 1000, 3),
        }
    if len(run) == 1:
        line: dict[str, Any] = {"request_id": request_id, "rows": len(rows), "ts": at}
        latency_ms: Any = round(latency_s * 1000, 3)
    else:
        import numpy as np

        line = {"request_ids": [a[1] for a in run], "rows": len(run), "ts": [a[0] for a in run]}
        latency_ms = [round(a[6] * 1000, 3) for a in run]
        rows = np.concatenate([a[3] for a in run])
        labels = np.concatenate([a[4] for a in run])
        probabilities = None if probabilities is None else np.concatenate([a[5] for a in run])
    line.update(
        model=name,
        version=version,
        columns=list(columns),
        classes=list(classes) if classes is not None else None,
        inputs=_plain(rows),
        labels=_plain(labels),
        probabilities=None if probabilities is None else _plain(probabilities),
        latency_ms=latency_ms,
    )
    return line


def _plain(values: np.ndarray) -> Any:
    """An array as orjson writes it, the same numbers as the per-row form's `tolist()`: C-ordered (orjson
    refuses others, e.g. the transposed probabilities of some sklearn models), floats as float64 (a float32
    written by orjson reads back shorter than its `tolist()`), and anything but numbers and booleans as lists."""
    import numpy as np

    if values.dtype.kind == "f":
        return np.ascontiguousarray(values, dtype=np.float64)
    if values.dtype.kind in "biu":
        return np.ascontiguousarray(values)
    return values.tolist()


RUN_MAX_ROWS = 5_000
"""Most single-row answers in one columnar line: after an outage the backlog is written as lines of modest
size, each encoded in a short hold of the interpreter lock."""


def _runs(answers: list[_Answer]) -> Iterator[tuple[str, list[_Answer]]]:
    """(folder, answers) in order: a multi-row answer alone, consecutive single-row answers of one model that
    fit one columnar line together (same folder, one label per row of one type, the same probability columns;
    at most RUN_MAX_ROWS)."""
    folders: dict[tuple[int, int], str] = {}  # (model, UTC day) -> folder: not formatted per answer
    run: list[_Answer] = []
    run_key: tuple[Any, ...] = ()
    for answer in answers:
        at, _, model, rows, labels, probabilities, _ = answer
        day = (id(model), int(at // 86_400))
        folder = folders.get(day)
        if folder is None:
            folder = f"{model_dir(model[0])}/version={path_segment(model[1])}/date={utc_date(at)}"
            folders[day] = folder
        key = (
            folder,
            id(model),
            labels.dtype.str,
            None if probabilities is None else probabilities.shape[1:],
        )
        alone = len(rows) != 1 or labels.ndim != 1
        if run and (alone or key != run_key or len(run) >= RUN_MAX_ROWS):
            yield run_key[0], run
            run = []
        if alone:
            yield folder, [answer]
            continue
        run.append(answer)
        run_key = key
    if run:
        yield run_key[0], run


def record_rows(record: dict[str, Any]) -> int:
    """How many answered rows one log line holds."""
    return int(record.get("rows", 1))


def expand(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The per-row records of one log line (a columnar line, of one multi-row answer or of single-row answers,
    becomes one record per row)."""
    if "rows" not in record:
        yield record
        return
    columns = record.get("columns") or []
    classes = record.get("classes")
    probabilities = record.get("probabilities")
    singles = record.get("request_ids")  # single-row answers: a request id, time and latency per row
    for i, (row, label) in enumerate(zip(record["inputs"], record["labels"], strict=False)):
        proba = probabilities[i] if probabilities is not None else None
        names = classes or ([str(c) for c in range(len(proba))] if proba is not None else None)
        yield {
            "request_id": singles[i] if singles is not None else record["request_id"],
            "row": 0 if singles is not None else i,
            "ts": record["ts"][i] if singles is not None else record["ts"],
            "model": record["model"],
            "version": record["version"],
            "inputs": dict(zip(columns, row, strict=False)) if columns else row,
            "outputs": {
                "label": label,
                "probabilities": dict(zip(names, proba, strict=False))
                if proba is not None and names
                else None,
            },
            "latency_ms": record["latency_ms"][i] if singles is not None else record["latency_ms"],
        }


def _line(record: dict[str, Any]) -> bytes:
    """One JSON line; the file it goes into gzips it at level 1 (a third of level 5's time for files about 10%
    larger, measured on 1000 answers of 30 features: 11 ms and 404 kB against 33 ms and 362 kB)."""
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


class PredictionLog:
    """A bounded in-memory buffer filled by `observe` (a prediction listener: O(1), never raises, never
    blocks) and drained by a writer thread every `flush_s` into the store.

    Memory is bounded by `max_buffer_rows` rows (waiting plus failed-and-retrying): above it new answers are
    dropped and counted. A file that cannot be written is retried at the next flush; `stop` writes what is
    left within its deadline and counts the rest as failed. With no store (`store=None`: no credential that
    may write) every answer is dropped and counted."""

    def __init__(
        self,
        store: LogStore | None,
        prefix: str = "",
        *,
        sample_rate: float = 1.0,
        flush_s: float = 5.0,
        max_buffer_rows: int = 200_000,
        host: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self.sample_rate = sample_rate
        self.flush_s = flush_s
        self.max_buffer_rows = max_buffer_rows
        self.host = path_segment(host or socket.gethostname())
        self.pid = os.getpid()
        self.clock = clock
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._answers: list[_Answer] = []
        self._described: object = None  # the model _model describes
        self._model: _Model = ("", "", (), None)
        self._labels: list[tuple[str, float, FeedbackItem]] = []
        self._retry: list[_Pending] = []
        self._open: dict[str, _Open] = {}  # the writer's files being built, by folder
        self._closed: list[_Pending] = []  # the writer's files full before the flush
        self.buffer_rows = 0
        self.written = self.dropped = self.failed = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()

    # -- the serving side (event loop) ------------------------------------------------------------------
    def observe(self, event: PredictionEvent) -> None:
        """Queue a sampled answer, or drop and count it when the buffer is full."""
        if not sampled(event.request_id, self.sample_rate):
            return
        model = event.model
        if model is not self._described:  # described once per model, not per request
            classes = tuple(str(c) for c in model.classes) if model.classes else None
            self._model = (model.name, model.version, tuple(model.columns or ()), classes)
            self._described = model
        prediction = event.prediction
        answer = (
            event.at,
            event.request_id,
            self._model,
            event.rows,
            prediction.labels,
            prediction.probabilities,
            event.latency_s,
        )
        self._add(len(event.rows), lambda: self._answers.append(answer))

    def log_labels(self, model: str, items: list[FeedbackItem]) -> int:
        """Queue labels for the log; returns how many were queued (the rest were dropped and counted)."""
        at = self.clock()
        queued = 0
        for item in items:
            if self._add(1, functools.partial(self._labels.append, (model, at, item))):
                queued += 1
        return queued

    def _add(self, rows: int, append: Callable[[], None]) -> bool:
        with self._lock:
            if self.store is None or self.buffer_rows + rows > self.max_buffer_rows:
                self.dropped += rows
                metrics.LOG_RECORDS.labels("dropped").inc(rows)
                return False
            append()
            self.buffer_rows += rows
            buffered = self.buffer_rows
        metrics.LOG_BUFFER_ROWS.set(buffered)
        if buffered >= EARLY_FLUSH_ROWS:
            self._wake.set()
        return True

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.store is None:
            log.warning(
                "prediction log: nowhere to write (no credential that may write); records are dropped"
            )
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 20.0) -> None:
        """Write everything queued (blocking, at most `timeout_s`); what cannot be written is counted failed."""
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():  # a hanging store: stop waiting, the process is going away
                log.warning("prediction log: writer still busy after %.0f s; giving up", timeout_s)
            self._thread = None
        else:
            self.flush(deadline)
        with self._lock:
            lost = self.buffer_rows
            self.buffer_rows = 0
            self._answers, self._labels, self._retry = [], [], []
            self._open, self._closed = {}, []
        if lost:
            self._count("failed", lost)
            log.warning("prediction log: %d rows could not be written before shutdown", lost)
        metrics.LOG_BUFFER_ROWS.set(0)
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_s
        while not self._stopping.is_set():
            early = self._wake.wait(max(0.0, min(ENCODE_S, next_flush - time.monotonic())))
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                if early or time.monotonic() >= next_flush:
                    self.flush(time.monotonic() + max(self.flush_s * 4, 30.0))
                    next_flush = time.monotonic() + self.flush_s
                else:
                    self._encode()
            except Exception:  # the writer must outlive any bug: the next flush tries again
                log.exception("prediction log: flush failed")
                next_flush = time.monotonic() + self.flush_s
        try:
            self.flush(time.monotonic() + 15.0, final=True)
        except Exception:  # what is left is counted failed by stop()
            log.exception("prediction log: the last flush failed")

    # -- writing (writer thread) -----------------------------------------------------------------------
    def flush(self, deadline: float, final: bool = False) -> None:
        """Write what is queued now, and retry files that failed before; stop trying at `deadline`."""
        self._encode()
        files = self._closed + [self._close(f) for f in self._open.values()]
        self._open, self._closed = {}, []
        with self._lock:
            files, self._retry = self._retry + files, []
        for index, pending in enumerate(files):
            if time.monotonic() >= deadline:
                self._requeue(files[index:])
                return
            try:
                written = self._write(pending, deadline, final)
            except Exception:  # not a StoreError: a bug, or a store answering what we cannot read
                log.exception("prediction log: writing %s failed", pending.path)
                written = False
                self._requeue([pending])
            if not written:
                # the store is down: the rest waits for the next flush rather than for more timeouts
                self._requeue(files[index + 1 :])
                return

    def _encode(self) -> None:
        """Take what is queued and add it, encoded and compressed, to the files being built."""
        with self._lock:
            answers, self._answers = self._answers, []
            labels, self._labels = self._labels, []
        groups: dict[str, list[tuple[bytes, int]]] = {}  # folder -> (JSON line, rows)
        for folder, run in _runs(answers):
            try:
                record = _record(run)
                encoded = (_line(record), record_rows(record))
            except Exception:  # a bug or an answer orjson cannot write: these rows are lost (counted), never
                # the writer, the other answers or the buffer's bound
                rows = sum(len(a[3]) for a in run)
                log.exception("prediction log: %d answers (%d rows) could not be encoded", len(run), rows)
                self._release(rows, "failed")
                continue
            groups.setdefault(folder, []).append(encoded)
        for model, at, item in labels:
            key = f"{model_dir(model)}/{FEEDBACK_DIR}/date={utc_date(at)}"
            record = {"request_id": item.request_id, "row": item.row, "label": item.label, "ts": at}
            try:
                groups.setdefault(key, []).append((_line(record), 1))
            except Exception:
                log.exception("prediction log: a label could not be encoded")
                self._release(1, "failed")
        for folder, lines in groups.items():
            chunk: list[bytes] = []
            building = self._open.setdefault(folder, _Open(folder))
            for line, rows in lines:
                chunk.append(line)
                building.rows += rows
                if building.rows >= FILE_MAX_ROWS:  # full: closed now, written at the next flush
                    building.parts.append(building.compressor.compress(b"".join(chunk)))
                    self._closed.append(self._close(self._open.pop(folder)))
                    chunk, building = [], self._open.setdefault(folder, _Open(folder))
            if chunk:
                building.parts.append(building.compressor.compress(b"".join(chunk)))
            else:
                del self._open[folder]  # nothing in it (yet): no empty file at the flush

    def _close(self, building: _Open) -> _Pending:
        name = f"{int(self.clock() * 1000)}-{self.host}-{self.pid}-{next(self._seq)}{SUFFIX}"
        path = "/".join(p for p in (self.prefix, building.folder, name) if p)
        data = b"".join([*building.parts, building.compressor.flush()])
        return _Pending(path, data, building.rows)

    def _write(self, pending: _Pending, deadline: float, final: bool) -> bool:
        """Write one file (retrying); False when the store is unreachable and the file was requeued."""
        assert self.store is not None
        for attempt in range(WRITE_ATTEMPTS):
            try:
                self.store.put(pending.path, pending.data)
            except StoreError as exc:
                metrics.LOG_WRITE_ERRORS.inc()
                if exc.permanent:
                    self._warn_once(
                        "refused", "prediction log: %s refused a write (%s)", self.store.shown, exc
                    )
                    self._release(pending.rows, "failed")
                    return True
                self._warn_once(
                    "down", "prediction log: cannot write to %s (%s); retrying", self.store.shown, exc
                )
                delay = RETRY_BASE_S * 2**attempt
                if attempt + 1 == WRITE_ATTEMPTS or time.monotonic() + delay >= deadline:
                    break
                if final:
                    time.sleep(delay)
                elif self._stopping.wait(delay):
                    break  # shutting down: the final flush tries again, without waiting for the timer
            else:
                self._warned.discard("down")
                self._release(pending.rows, "written")
                return True
        self._requeue([pending])
        return False

    def _requeue(self, files: list[_Pending]) -> None:
        with self._lock:
            self._retry.extend(files)

    def _release(self, rows: int, outcome: str) -> None:
        with self._lock:
            self.buffer_rows -= rows
            buffered = self.buffer_rows
        self._count(outcome, rows)
        metrics.LOG_BUFFER_ROWS.set(buffered)

    def _count(self, outcome: str, rows: int) -> None:
        with self._lock:
            if outcome == "written":
                self.written += rows
            else:
                self.failed += rows
        metrics.LOG_RECORDS.labels(outcome).inc(rows)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


def from_settings(settings: ServerSettings) -> PredictionLog | None:
    """The server's log (None when `prediction_log_sample_rate` is 0). Through MLflow it writes as the
    server's write principal (the operator): the read-only one may not upload. A server with only a read
    credential has nowhere to write: its log drops (and counts) every record."""
    if settings.prediction_log_sample_rate <= 0:
        return None
    store: LogStore | None = None
    prefix = ""
    uri = settings.prediction_log_uri
    if urlsplit(uri.strip()).scheme.lower() == "mlflow-artifacts":
        auth: tuple[str, str] | None = None
        if settings.registry_write_username and settings.registry_write_password:
            auth = (settings.registry_write_username, settings.registry_write_password.get_secret_value())
        if auth is not None or settings.tracking_username is None:  # none at all: MLflow without auth
            store, prefix = open_store(uri, settings.tracking_uri, auth, create_experiment=True)
    else:
        store, prefix = open_store(uri, settings.tracking_uri, None)
    return PredictionLog(
        store,
        prefix,
        sample_rate=settings.prediction_log_sample_rate,
        flush_s=settings.prediction_log_flush_s,
        max_buffer_rows=settings.prediction_log_max_buffer_rows,
    )
