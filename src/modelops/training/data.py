"""Datasets for training: the built-in breast cancer set, or a CSV from a path, s3:// or http(s)://."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from modelops.errors import DataError

BUILTIN = "builtin:breast_cancer"


@dataclass(frozen=True)
class Dataset:
    """Features (all numeric, named columns) and labels, with where they came from."""

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


def _read_bytes(source: str, s3_endpoint_url: str | None) -> bytes:
    parsed = urlparse(source)
    if parsed.scheme == "s3":
        import boto3
        import botocore.exceptions

        client = boto3.client("s3", endpoint_url=s3_endpoint_url)
        try:
            body: bytes = client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
            return body
        except botocore.exceptions.ClientError as exc:
            raise DataError(f"cannot read {source}: {exc}", field="data") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise DataError(f"cannot read {source}: {exc}", field="data") from exc
    if parsed.scheme in ("http", "https"):
        import httpx

        try:
            response = httpx.get(source, timeout=60, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise DataError(f"cannot download {source}: {exc}", field="data") from exc
        return response.content
    path = Path(parsed.path if parsed.scheme == "file" else source)
    if not path.is_file():
        raise DataError(f"data file not found: {path}", field="data")
    return path.read_bytes()


def _frame_from_csv(raw: bytes, source: str, target: str) -> Dataset:
    if not raw.strip():
        raise DataError(f"{source} is empty", field="data")
    try:
        frame = pd.read_csv(io.BytesIO(raw))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{source} is not a readable CSV: {exc}", field="data") from exc
    if frame.empty:
        raise DataError(f"{source} has a header but no rows", field="data")
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
    name = Path(urlparse(source).path).stem or "data"
    return Dataset(pd.DataFrame(converted), labels, source, name, _digest(raw))


def load_dataset(source: str | None, target: str = "target", s3_endpoint_url: str | None = None) -> Dataset:
    """Load and validate a dataset. Raises DataError with the offending field on any problem."""
    if source in (None, "", BUILTIN, "builtin"):
        return _builtin()
    assert source is not None
    return _frame_from_csv(_read_bytes(source, s3_endpoint_url), source, target)
