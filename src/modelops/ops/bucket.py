"""Create the artifact bucket idempotently, waiting for the object store first."""

from __future__ import annotations

import logging
import time

from modelops.errors import ConfigError, RegistryUnavailable

log = logging.getLogger(__name__)


def ensure_bucket(bucket: str, endpoint_url: str | None, region: str | None, wait_s: float) -> str:
    """Create `bucket` unless it exists. Returns "created" or "exists". Credentials: the standard AWS
    variables (or an IAM role). Retries connection failures for up to `wait_s` seconds."""
    import boto3
    import botocore.exceptions

    client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            try:
                client.head_bucket(Bucket=bucket)
                return "exists"
            except botocore.exceptions.ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status not in (404, 400) and exc.response.get("Error", {}).get("Code") not in (
                    "404",
                    "NoSuchBucket",
                ):
                    raise ConfigError(f"cannot check bucket {bucket!r}: {exc}") from exc
            kwargs = {}
            if region and region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                client.create_bucket(Bucket=bucket, **kwargs)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    return "exists"
                raise ConfigError(f"cannot create bucket {bucket!r}: {exc}") from exc
            return "created"
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
        ) as exc:
            if time.monotonic() + delay > deadline:
                raise RegistryUnavailable(
                    f"object store at {endpoint_url or 'AWS S3'} is not reachable after {wait_s:g} s: {exc}"
                ) from exc
            log.info("waiting for the object store at %s", endpoint_url)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
