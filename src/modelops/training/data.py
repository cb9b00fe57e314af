"""Datasets for training: the built-in breast cancer set, a CSV from a path, s3:// or http(s)://, or the
labelled rows of a prediction log (mlflow-artifacts:/... or a local folder).

`--data` is untrusted input that may carry secrets (user-info, a token in the query string): only
`redact_source(source)` is ever stored, logged or shown. Downloads are bounded in size, time and redirects.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import numpy as np
import orjson
import pandas as pd

from modelops.errors import DataError, InvalidInput
from modelops.training.options import DEFAULT_MAX_BYTES

if TYPE_CHECKING:
    import httpx

BUILTIN = "builtin:breast_cancer"

_MAX_REDIRECTS = 5
_CONNECT_TIMEOUT_S = 10.0
_READ_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1 << 20
# scheme://netloc path, then ?query#fragment; netloc ends where urllib's does (at / ? #).
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<netloc>[^/?#]*)(?P<path>[^?#]*)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
# Loggers that may print a request URL or a Location header while we download.
_HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")


def redact_source(source: str) -> str:
    """`source` without user-info, query string and fragment: safe to log, store and show.

    `scheme://host[:port]/path` for URLs (s3:// keeps bucket and key); a plain path is returned unchanged.
    Never raises.
    """
    match = _URL.match(source.strip())
    if match is None:
        return source
    host = match["netloc"].rpartition("@")[2]
    return f"{match['scheme']}://{host}{match['path']}"


def _secrets(source: str) -> set[str]:
    """The parts of a URL that `redact_source` drops, in raw and decoded form."""
    text = source.strip()
    match = _URL.match(text)
    if match is None:
        return set()
    userinfo = match["netloc"].rpartition("@")[0]
    rest = text[match.end() :]
    query, _, fragment = rest[1:].partition("#") if rest.startswith("?") else ("", "", rest[1:])
    password = userinfo.partition(":")[2]
    found = {userinfo, query, fragment, password}
    return {part for value in found for part in (value, unquote(value)) if part}


def _scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every URL in it redacted and every known secret masked."""
    text = _URL_IN_TEXT.sub(lambda match: redact_source(match.group(0)), text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class _HideSecrets(logging.Filter):
    """Masks secrets of the URL being fetched in this thread's HTTP client log records (`--verbose` shows them)."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        self.secrets = secrets
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.get_ident() == self.thread:
            message = record.getMessage()
            scrubbed = _scrub(message, self.secrets)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        return True


@contextmanager
def _hidden_in_logs(secrets: set[str]) -> Iterator[_HideSecrets]:
    hide = _HideSecrets(secrets)
    loggers = [logging.getLogger(name) for name in _HTTP_LOGGERS]
    for logger in loggers:
        logger.addFilter(hide)
    try:
        yield hide
    finally:
        for logger in loggers:
            logger.removeFilter(hide)


@dataclass(frozen=True)
class Dataset:
    """Features (all numeric, named columns) and labels, with where they came from (redacted)."""

    features: pd.DataFrame
    target: pd.Series
    source: str
    name: str
    digest: str

    @property
    def n_rows(self) -> int:
        return len(self.features)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _builtin() -> Dataset:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    features = frame.drop(columns=["target"]).astype("float64")
    digest = _digest(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return Dataset(features, frame["target"], BUILTIN, "breast_cancer", digest)


def _too_large(shown: str, max_bytes: int) -> DataError:
    return DataError(
        f"{shown} is larger than the download limit of {max_bytes} bytes; raise it with --max-bytes",
        field="data",
    )


def _collect(chunks: Iterable[bytes], shown: str, max_bytes: int) -> bytes:
    """Join `chunks`, failing as soon as they pass `max_bytes` (declared sizes can lie or be absent)."""
    parts: list[bytes] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(shown, max_bytes)
        parts.append(chunk)
    return b"".join(parts)


def _read_file(path: Path, shown: str, max_bytes: int) -> bytes:
    if not path.is_file():
        raise DataError(f"data file not found: {shown}", field="data")
    chunk = min(_CHUNK_BYTES, max_bytes + 1)
    failure = ""
    try:
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size > max_bytes:  # the open file, not a name swapped since
                raise _too_large(shown, max_bytes)
            return _collect(iter(lambda: file.read(chunk), b""), shown, max_bytes)
    except OSError as exc:
        failure = exc.strerror or type(exc).__name__
    raise DataError(f"cannot read {shown}: {failure}", field="data")


def _read_s3(bucket: str, key: str, shown: str, endpoint_url: str | None, max_bytes: int) -> bytes:
    import boto3
    import botocore.config
    import botocore.exceptions

    config = botocore.config.Config(connect_timeout=_CONNECT_TIMEOUT_S, read_timeout=_READ_TIMEOUT_S)
    client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
    # botocore's texts carry the endpoint URL and the key, never the query or user-info of --data (not sent),
    # but they are scrubbed anyway and raised outside the handler so no unscrubbed exception is chained.
    failure = ""
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            if int(response.get("ContentLength") or 0) > max_bytes:
                raise _too_large(shown, max_bytes)
            return _collect(body.iter_chunks(min(_CHUNK_BYTES, max_bytes + 1)), shown, max_bytes)
        finally:
            body.close()
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        failure = _scrub(str(exc))
    raise DataError(f"cannot read {shown}: {failure}", field="data")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port  # httpx normalises default ports to None


def _response_body(response: httpx.Response, shown: str, max_bytes: int) -> bytes:
    if not response.is_success:
        raise DataError(
            f"cannot download {shown}: HTTP {response.status_code} {response.reason_phrase}".rstrip(),
            field="data",
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(shown, max_bytes)
    return _collect(response.iter_bytes(), shown, max_bytes)  # as decoded: a gzip bomb is counted


def _download(url: str, shown: str, max_bytes: int) -> bytes:
    """GET `url`, following at most a few redirects on the same origin (scheme, host, port)."""
    import httpx

    match = _URL.match(url)
    assert match is not None
    userinfo, _, host = match["netloc"].rpartition("@")
    # User-info becomes an explicit Authorization header and the fragment is never sent, so neither is in the
    # URL httpx logs or puts into its exceptions; what stays secret there (the query) is masked.
    rest = url[match.end() :]
    query = rest.partition("#")[0] if rest.startswith("?") else ""
    target = f"{match['scheme']}://{host}{match['path']}{query}"
    user, _, password = userinfo.partition(":")
    auth = httpx.BasicAuth(unquote(user), unquote(password)) if userinfo else None
    timeout = httpx.Timeout(_READ_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S)
    failure = ""
    with _hidden_in_logs(_secrets(url)) as hide, httpx.Client(timeout=timeout) as client:
        try:
            request = client.build_request("GET", target)
            origin = _origin(request.url)
            for _ in range(_MAX_REDIRECTS + 1):
                response = client.send(request, auth=auth, stream=True, follow_redirects=False)
                try:
                    if response.next_request is None:
                        return _response_body(response, shown, max_bytes)
                    request = response.next_request
                finally:
                    response.close()
                hide.secrets |= _secrets(str(request.url))
                if _origin(request.url) != origin:
                    raise DataError(
                        f"{shown} redirects to another host ({redact_source(str(request.url))}); refusing to "
                        "follow it: pass the final URL as --data if you trust it",
                        field="data",
                    )
            raise DataError(f"cannot download {shown}: more than {_MAX_REDIRECTS} redirects", field="data")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure = _scrub(f"{type(exc).__name__}: {exc}", hide.secrets)
    raise DataError(f"cannot download {shown}: {failure}", field="data")


def _read_bytes(source: str, s3_endpoint_url: str | None, max_bytes: int) -> bytes:
    shown = redact_source(source)
    url = source.strip()
    match = _URL.match(url)
    scheme = match["scheme"].lower() if match else ""
    if match is not None and scheme == "s3":
        userinfo, _, bucket = match["netloc"].rpartition("@")
        if userinfo:
            raise DataError(
                f"{shown}: credentials in an s3:// URL are not used; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY instead",
                field="data",
            )
        return _read_s3(bucket, match["path"].lstrip("/"), shown, s3_endpoint_url, max_bytes)
    if scheme in ("http", "https"):
        return _download(url, shown, max_bytes)
    path = Path(urlsplit(url).path if scheme == "file" else source)
    return _read_file(path, shown, max_bytes)


def _frame_from_csv(raw: bytes, source: str, target: str) -> Dataset:
    """Validate the CSV `raw`; `source` is already redacted."""
    if not raw.strip():
        raise DataError(f"{source} is empty", field="data")
    try:
        frame = pd.read_csv(io.BytesIO(raw))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{source} is not a readable CSV: {exc}", field="data") from exc
    if frame.empty:
        raise DataError(f"{source} has a header but no rows", field="data")
    return _validated(frame, source, target, _digest(raw))


def _validated(frame: pd.DataFrame, source: str, target: str, digest: str) -> Dataset:
    """Numeric features and a target with at least two classes, from `frame`; `source` is already redacted."""
    if target not in frame.columns:
        raise DataError(
            f"target column {target!r} not in {source}; columns are: {', '.join(map(str, frame.columns))}",
            field="target",
        )
    labels = frame[target]
    if labels.isna().any():
        raise DataError(f"target column {target!r} has missing values", field="target")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{source} has no feature columns besides {target!r}", field="data")
    converted = {}
    for column in features.columns:
        numeric = pd.to_numeric(features[column], errors="coerce")
        bad = numeric.isna() & features[column].notna()
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise DataError(
                f"feature column {column!r} is not numeric (value {features[column].iloc[row]!r} in row {row + 1})",
                field=str(column),
            )
        if numeric.isna().any():
            raise DataError(f"feature column {column!r} has missing values", field=str(column))
        converted[str(column)] = numeric.astype("float64")
    if labels.nunique() < 2:
        raise DataError(
            f"target column {target!r} has a single class ({labels.iloc[0]!r}); need at least two",
            field="target",
        )
    name = Path(urlsplit(source).path).stem or "data"
    return Dataset(pd.DataFrame(converted), labels, source, name, digest)


def is_prediction_log(source: str) -> bool:
    """Whether `source` names a prediction log: mlflow-artifacts:/..., or a local folder (file:// or a path)."""
    text = source.strip()
    if text.lower().startswith("mlflow-artifacts:"):
        return True
    match = _URL.match(text)
    scheme = match["scheme"].lower() if match else ""
    if scheme not in ("", "file"):
        return False
    return Path(unquote(urlsplit(text).path) if scheme == "file" else text).is_dir()


def _gunzip(data: bytes, limit: int, shown: str) -> bytes:
    """Decompress one gzip member, never inflating past `limit` bytes (a gzip bomb stops there)."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        text = inflate.decompress(data, limit + 1)
    except zlib.error as exc:
        raise DataError(f"{shown}: a prediction-log file is not gzip ({exc})", field="data") from exc
    if len(text) > limit:
        raise DataError(
            f"{shown} is larger than the download limit of {limit} bytes (decompressed); raise it with "
            "--max-bytes",
            field="data",
        )
    return text


def _prediction_log(source: str, target: str, max_bytes: int, tracking_uri: str | None) -> Dataset:
    """Labelled rows of a prediction log (see modelops.monitoring.predlog): answers joined to labels by
    request id and row; rows without a label are left out. `max_bytes` bounds the decompressed total."""
    from modelops.monitoring.feedback import labelled_records
    from modelops.monitoring.predlog import FEEDBACK_DIR, StoreError, expand, open_store

    shown = redact_source(source)
    text = source.strip()
    auth: tuple[str, str] | None = None
    if text.lower().startswith("mlflow-artifacts:"):
        import mlflow
        from mlflow.utils.credentials import read_mlflow_creds

        # the trainer's principal, as `modelops train` set it for MLflow's own client
        creds = read_mlflow_creds()
        auth = (creds.username, creds.password) if creds.username and creds.password else None
        store, prefix = open_store(
            text, tracking_uri or mlflow.get_tracking_uri(), auth, timeout_s=_READ_TIMEOUT_S
        )
    else:
        folder = Path(unquote(urlsplit(text).path) if text.lower().startswith("file:") else text)
        # open the store above `model=<name>`, so that a version folder still finds the model's labels
        parts = folder.parts
        cut = max((i for i, p in enumerate(parts) if p.startswith("model=")), default=len(parts))
        store, _ = open_store(str(Path(*parts[:cut])) if cut else ".", "", None)
        prefix = "/".join(parts[cut:])
    segments = prefix.split("/") if prefix else []
    model_at = next((i for i, p in enumerate(segments) if p.startswith("model=")), None)
    try:
        files = store.list(prefix)
        if model_at is not None and len(segments) > model_at + 1:
            files += store.list("/".join([*segments[: model_at + 1], FEEDBACK_DIR]))
        answers: list[dict[str, object]] = []
        labels: list[dict[str, object]] = []
        digest = hashlib.sha256()
        budget = max_bytes
        for path, size in sorted(set(files)):
            if size > budget:
                raise _too_large(shown, max_bytes)
            raw = _gunzip(store.get(path, budget), budget, shown)
            budget -= len(raw)
            digest.update(raw)
            into = labels if f"/{FEEDBACK_DIR}/" in f"/{path}" else answers
            for line in raw.splitlines():
                if line.strip():
                    into.extend(expand(orjson.loads(line)))
    except StoreError as exc:
        raise DataError(f"cannot read {shown}: {_scrub(str(exc))}", field="data") from None
    except orjson.JSONDecodeError as exc:
        raise DataError(f"{shown}: a prediction-log line is not JSON ({exc})", field="data") from None
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    joined = labelled_records(answers, labels)
    if not joined:
        raise DataError(
            f"{shown} holds {len(answers)} logged rows and {len(labels)} labels but no labelled row; send labels "
            "to POST /feedback",
            field="data",
        )
    rows = [
        record["inputs"]
        if isinstance(record.get("inputs"), dict)
        else {f"x{i}": v for i, v in enumerate(record.get("inputs") or [])}
        for record, _ in joined
    ]
    frame = pd.DataFrame.from_records(rows)
    if target in frame.columns:
        raise DataError(
            f"a logged feature is named like the target {target!r}; pass another --target", field="target"
        )
    frame[target] = [label for _, label in joined]
    return _validated(frame, shown, target, digest.hexdigest()[:16])


def load_dataset(
    source: str | None,
    target: str = "target",
    s3_endpoint_url: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    tracking_uri: str | None = None,
) -> Dataset:
    """Load and validate a dataset. Raises DataError with the offending field on any problem.

    Reads at most `max_bytes` from a path, s3:// or http(s)://; http(s) follows redirects only on the same
    scheme, host and port. `Dataset.source` and every error message carry `redact_source(source)` only.
    A prediction log (`mlflow-artifacts:/<log>/model=<name>` through the MLflow server at `tracking_uri`,
    MLflow's configured one when None, or a local folder of that layout) gives its labelled rows: the logged
    inputs as features and the label as `target`.
    """
    if source in (None, "", BUILTIN, "builtin"):
        return _builtin()
    assert source is not None
    if max_bytes < 1:
        raise InvalidInput(
            f"--max-bytes must be a positive number of bytes, not {max_bytes}", field="max_bytes"
        )
    if is_prediction_log(source):
        return _prediction_log(source, target, max_bytes, tracking_uri)
    return _frame_from_csv(_read_bytes(source, s3_endpoint_url, max_bytes), redact_source(source), target)
