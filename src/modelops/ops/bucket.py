"""Create the artifact bucket idempotently, waiting for the object store first."""

from __future__ import annotations

import logging

from modelops.errors import ConfigError, ObjectStoreUnreachable
from modelops.waiting import wait_until

log = logging.getLogger(__name__)


def ensure_bucket(bucket: str, endpoint_url: str | None, region: str | None, wait_s: float) -> str:
    """Create `bucket` unless it exists. Returns "created" or "exists". Credentials: the standard AWS
    variables (or an IAM role). Retries connection failures for up to `wait_s` seconds."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}),
    )

    def attempt(_: float) -> str:
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

    where = endpoint_url or "AWS S3"
    return wait_until(
        attempt,
        what=f"the object store at {where}",
        timeout_s=wait_s,
        first_delay_s=0.5,
        retry_on=(
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
        ),
        on_timeout=lambda reason: ObjectStoreUnreachable(
            f"object store at {where} is not reachable after {wait_s:g} s: {reason}"
        ),
    )
