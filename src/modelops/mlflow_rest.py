"""MLflow's REST API without MLflow's client: the registry reads and model downloads of a model server.

Importing `mlflow` cost a model server about 0.75 s of its cold start and ~30 MiB of memory (issue 12, measured in
docs/benchmarks.md), for nine read calls and two artifact-proxy calls. `RestReader` makes those calls over HTTP with the same names and the
same answers' shapes as `mlflow.tracking.MlflowClient` (the attributes `modelops.registry` reads), and honours the
client settings MLflow's own client reads from the environment: the tracking token, TLS (insecure, server CA,
client certificate), the request timeout and retries. Errors carry MLflow's `error_code`, so
`modelops.registry.classify` reads them as it reads MLflow's exceptions; a server that cannot be reached raises
the built-in `ConnectionError`.

Downloads go only through MLflow's artifact proxy (`mlflow-artifacts:` URIs) of this tracking server: a URI naming
another host is refused, and every listed name must be a plain file or folder name inside the download folder.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from modelops.errors import ConfigError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_FILES = 10_000  # a model folder with more files than this is not a model
MAX_DOWNLOAD_BYTES = 16 << 30  # nor one larger than 16 GiB (checked while streaming, before any verification)
MAX_JSON_BYTES = 64 << 20  # an API answer larger than this is not one MLflow sends
SEARCH_MAX_RESULTS = 10_000  # MlflowClient.search_model_versions' default page
# MLflow's client's error codes for an error answer without an MLflow error body (mlflow.protos / rest_utils)
STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "ENDPOINT_NOT_FOUND",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}
UNSUPPORTED_ENV = ("MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_AWS_SIGV4")


class RestError(Exception):
    """MLflow answered with an error: `error_code` as MLflow names it (or derived from the status), `status`."""

    def __init__(self, message: str, *, error_code: str, status: int) -> None:
        super().__init__(f"{error_code}: {message} (HTTP {status})")
        self.error_code = error_code
        self.status = status


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    run_id: str
    source: str
    aliases: list[str]
    tags: dict[str, str]
    creation_timestamp: int


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    tags: dict[str, str]
    aliases: dict[str, str]  # alias -> version, as MLflow's entity


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    artifact_uri: str


@dataclass(frozen=True)
class RunData:
    metrics: dict[str, float]


@dataclass(frozen=True)
class Run:
    info: RunInfo
    data: RunData


@dataclass(frozen=True)
class Experiment:
    experiment_id: str


class Page(list[Any]):
    """One page of results, with MLflow's next-page token (None on the last page)."""

    def __init__(self, items: list[Any], token: str | None) -> None:
        super().__init__(items)
        self.token = token


def _tags(raw: Any) -> dict[str, str]:
    return {str(t["key"]): str(t.get("value", "")) for t in raw or [] if isinstance(t, dict) and "key" in t}


def _version(raw: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        name=str(raw.get("name", "")),
        version=str(raw.get("version", "")),
        run_id=str(raw.get("run_id") or ""),
        source=str(raw.get("source") or ""),
        aliases=[str(a) for a in raw.get("aliases") or []],
        tags=_tags(raw.get("tags")),
        creation_timestamp=int(raw.get("creation_timestamp") or 0),
    )


def _run(raw: dict[str, Any]) -> Run:
    info = raw.get("info") or {}
    metrics = (raw.get("data") or {}).get("metrics") or []
    return Run(
        RunInfo(str(info.get("run_id", "")), str(info.get("artifact_uri", ""))),
        RunData({str(m["key"]): float(m["value"]) for m in metrics if "key" in m and "value" in m}),
    )


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value not in ("", "true", "false", "1", "0"):
        raise ConfigError(f"{name}={value!r}: expected true or false")
    return value in ("true", "1")


def ssl_context() -> ssl.SSLContext:
    """TLS as MLflow's client sets it up from the environment: a CA bundle (MLFLOW_TRACKING_SERVER_CERT_PATH, else
    requests' REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, else certifi's), a client certificate, or no verification."""
    import certifi

    insecure = _env_flag("MLFLOW_TRACKING_INSECURE_TLS")
    server_ca = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    if insecure and server_ca:
        raise ConfigError(
            "MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH are both set: choose one"
        )
    cafile = (
        server_ca
        or os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
        or certifi.where()
    )
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if client_cert:
        context.load_cert_chain(client_cert)
    return context


def http_client(
    base: str,
    auth: httpx.Auth | tuple[str, str] | None,
    timeout: float | httpx.Timeout,
    headers: dict[str, str],
) -> httpx.Client:
    """An HTTP client for the tracking server at `base`: MLflow's TLS settings for https, redirects not followed
    (credentials go to this server only), no proxy or netrc from the environment."""
    return httpx.Client(
        auth=auth,
        headers=headers,
        verify=ssl_context() if base.startswith("https:") else True,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


@dataclass
class Transport:
    """HTTP to one tracking server with MLflow's client settings (see the module's docstring). Redirects are not
    followed (credentials go to this server only) and are errors, as is any other answer that is not 2xx."""

    tracking_uri: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = field(
        default_factory=lambda: float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120"))
    )
    retries: int = field(default_factory=lambda: int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")))
    backoff_s: float = field(
        default_factory=lambda: float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2"))
    )

    def __post_init__(self) -> None:
        unsupported = [name for name in UNSUPPORTED_ENV if os.environ.get(name)]
        if unsupported:
            raise ConfigError(f"{', '.join(unsupported)}: not supported by the model server's MLflow client")
        headers = {}
        auth = None
        if self.username and self.password:
            auth = httpx.BasicAuth(self.username, self.password)
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
        if os.environ.get("MLFLOW_WORKSPACE"):
            headers["X-MLFLOW-WORKSPACE"] = os.environ["MLFLOW_WORKSPACE"]
        self.base = self.tracking_uri.rstrip("/")
        self.http = http_client(self.base, auth, self.timeout_s, headers)

    def send(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        """One request to `path` (below the tracking URI), retried as MLflow's client retries: on a connection
        failure, a timeout or a 429/5xx answer. ConnectionError when the server cannot be reached. A `stream`ed
        response must be closed by the caller."""
        attempt = 0
        while True:
            try:
                request = self.http.build_request(method, self.base + path, **kwargs)
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise ConnectionError(f"MLflow at {self.base} is not reachable: {exc!r}") from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt >= self.retries:
                    return response
                response.close()
            time.sleep(self.backoff_s * (2**attempt) * random.uniform(0.5, 1.0))
            attempt += 1

    def json(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON object of a 2xx answer (at most MAX_JSON_BYTES); RestError for any other answer."""
        response = self.send(method, path, stream=True, **kwargs)
        try:
            raise_for_error(response, what)
            body = _read_at_most(response, MAX_JSON_BYTES)
        finally:
            response.close()
        if len(body) > MAX_JSON_BYTES:
            raise RestError(
                f"{what}: an answer over {MAX_JSON_BYTES} bytes", error_code="INVALID_STATE", status=502
            )
        try:
            data = json.loads(body) if body else {}
        except ValueError as exc:
            raise RestError(f"{what}: not JSON", error_code="INVALID_STATE", status=502) from exc
        return data if isinstance(data, dict) else {}

    def close(self) -> None:
        self.http.close()


def _chunks(response: httpx.Response) -> Any:
    """A streamed body's chunks; a connection that breaks mid-body is ConnectionError, as before the answer."""
    try:
        yield from response.iter_bytes(1 << 20)
    except httpx.TransportError as exc:
        raise ConnectionError(f"MLflow's answer broke off: {exc!r}") from exc


def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """A streamed body, but no more than `limit` + 1 bytes of it (one more tells the caller it was longer)."""
    body = bytearray()
    for chunk in _chunks(response):
        body += chunk
        if len(body) > limit:
            break
    return bytes(body[: limit + 1])


def raise_for_error(response: httpx.Response, what: str) -> None:
    """RestError for an answer that is not 2xx, with MLflow's error code (or the one MLflow's client derives from
    the status). A redirect is an error too: it is not followed."""
    if 200 <= response.status_code < 300:
        return
    if 300 <= response.status_code < 400:
        where = response.headers.get("location", "")
        raise RestError(
            f"{what}: MLflow redirected to {where!r}; redirects are not followed (set MLFLOW_TRACKING_URI to the "
            "final address)",
            error_code="REDIRECT_NOT_FOLLOWED",
            status=response.status_code,
        )
    text = _read_at_most(response, 65536)[:65536].decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = {}
    payload = payload if isinstance(payload, dict) else {}
    code = str(payload.get("error_code") or STATUS_CODES.get(response.status_code, "INTERNAL_ERROR"))
    message = str(payload.get("message") or text[:200])
    raise RestError(f"{what}: {message}", error_code=code, status=response.status_code)


class RestReader:
    """The subset of `MlflowClient` that `modelops.registry.Registry` reads with, over REST."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def _call(self, method: str, endpoint: str, *, params: Any = None, body: Any = None) -> dict[str, Any]:
        return self.transport.json(method, f"/api/2.0/mlflow/{endpoint}", endpoint, params=params, json=body)

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        found = self._call("GET", "registered-models/alias", params={"name": name, "alias": alias})
        return _version(found["model_version"])

    def get_model_version(self, name: str, version: str) -> ModelVersion:
        found = self._call("GET", "model-versions/get", params={"name": name, "version": version})
        return _version(found["model_version"])

    def get_model_version_download_uri(self, name: str, version: str) -> str:
        found = self._call(
            "GET", "model-versions/get-download-uri", params={"name": name, "version": version}
        )
        return str(found["artifact_uri"])

    def get_registered_model(self, name: str) -> RegisteredModel:
        raw = self._call("GET", "registered-models/get", params={"name": name})["registered_model"]
        aliases = {str(a["alias"]): str(a["version"]) for a in raw.get("aliases") or [] if "alias" in a}
        return RegisteredModel(str(raw.get("name", name)), _tags(raw.get("tags")), aliases)

    def get_run(self, run_id: str) -> Run:
        return _run(self._call("GET", "runs/get", params={"run_id": run_id})["run"])

    def search_model_versions(
        self, filter_string: str, max_results: int = SEARCH_MAX_RESULTS, order_by: list[str] | None = None
    ) -> Page:
        params: list[tuple[str, str | int]] = [("filter", filter_string), ("max_results", max_results)]
        params += [("order_by", o) for o in order_by or []]
        found = self._call("GET", "model-versions/search", params=params)
        return Page([_version(v) for v in found.get("model_versions") or []], found.get("next_page_token"))

    def search_experiments(self, page_token: str | None = None) -> Page:
        """Every experiment this principal can see, deleted ones too (one page)."""
        body: dict[str, Any] = {"max_results": 1000, "view_type": "ALL"}
        if page_token:
            body["page_token"] = page_token
        found = self._call("POST", "experiments/search", body=body)
        experiments = [Experiment(str(e["experiment_id"])) for e in found.get("experiments") or []]
        return Page(experiments, found.get("next_page_token"))

    def search_runs(self, experiment_ids: list[str], filter_string: str, max_results: int) -> Page:
        """Runs of `experiment_ids` matching `filter_string`, deleted ones too (one page)."""
        body = {
            "experiment_ids": experiment_ids,
            "filter": filter_string,
            "run_view_type": "ALL",
            "max_results": max_results,
        }
        found = self._call("POST", "runs/search", body=body)
        return Page([_run(r) for r in found.get("runs") or []], found.get("next_page_token"))

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        """One artifact of a run (a file or a folder) into `dst_path`; its local path."""
        return str(self.download(f"runs:/{run_id}/{path.strip('/')}", Path(dst_path)))

    # -- the artifact proxy ------------------------------------------------------------------------
    def resolve(self, uri: str) -> str:
        """The `mlflow-artifacts:` URI behind a `runs:/<run>/<path>` or `models:/<name>/<version>` URI (as MLflow's
        client resolves them, through this server); other URIs as they are."""
        parts = urlsplit(uri)
        segments = parts.path.strip("/").split("/")
        if parts.scheme == "runs" and not parts.netloc and segments[0]:
            root = self.get_run(segments[0]).info.artifact_uri.rstrip("/")
            return "/".join([root, *segments[1:]])
        if parts.scheme == "models" and not parts.netloc and len(segments) == 2 and segments[1].isdigit():
            return self.get_model_version_download_uri(segments[0], segments[1])
        return uri

    def _proxy_path(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "mlflow-artifacts":
            raise _refused(f"{uri.split(':', 1)[0]}: URIs are not behind this MLflow's artifact proxy")
        if parts.netloc and parts.netloc.lower() != urlsplit(self.transport.base).netloc.lower():
            raise _refused(f"{uri} names another server than {self.transport.base}")
        path = parts.path.strip("/")
        if not path or any(p in ("", ".", "..") for p in path.split("/")):
            raise _refused(f"{uri} is not an artifact path")
        return path

    def _list(self, path: str) -> list[dict[str, Any]]:
        found = self.transport.json(
            "GET", "/api/2.0/mlflow-artifacts/artifacts", f"listing {path}", params={"path": path}
        )
        return [f for f in found.get("files") or [] if isinstance(f, dict)]

    def _fetch(self, path: str, target: Path, budget: int) -> int:
        """Stream one file to `target`, at most `budget` bytes (what the download may still take); its size."""
        response = self.transport.send(
            "GET", "/api/2.0/mlflow-artifacts/artifacts/" + quote(path), stream=True
        )
        try:
            raise_for_error(response, f"download of {path}")
            size = 0
            with target.open("wb") as out:
                for chunk in _chunks(response):
                    size += len(chunk)
                    if size > budget:
                        raise _bad_listing(f"the download is larger than {MAX_DOWNLOAD_BYTES} bytes")
                    out.write(chunk)
        finally:
            response.close()
        return size

    def download(self, uri: str, dst: Path) -> Path:
        """The file or folder at `uri` into folder `dst`; the local path of what was downloaded (`dst/<last part of
        the URI>`). Only through this server's artifact proxy: a `runs:` or `models:` URI is resolved here first,
        and any URI that does not then name a path behind the proxy is refused unfetched (NotThisProxy). At most
        MAX_FILES files and MAX_DOWNLOAD_BYTES bytes."""
        path = self._proxy_path(self.resolve(uri))
        name = path.rsplit("/", 1)[-1]
        local = dst / name
        budget = MAX_DOWNLOAD_BYTES
        listed = self._list(path)
        # a file: the proxy lists nothing under it, or (some stores) the file itself (MLflow's own rule)
        if not listed or (len(listed) == 1 and listed[0].get("path") == name and not listed[0].get("is_dir")):
            self._fetch(path, local, budget)
            return local
        local.mkdir(parents=True, exist_ok=True)
        folders: list[tuple[str, Path, list[dict[str, Any]]]] = [(path, local, listed)]
        files = 0
        while folders:
            remote, folder, entries = folders.pop()
            for entry in entries:
                entry_name = str(entry.get("path", ""))
                if not entry_name or "/" in entry_name or "\\" in entry_name or entry_name in (".", ".."):
                    raise _bad_listing(f"the artifact proxy listed {entry_name!r} under {remote}")
                files += 1
                if files > MAX_FILES:
                    raise _bad_listing(f"{uri} holds more than {MAX_FILES} files")
                if entry.get("is_dir"):
                    (folder / entry_name).mkdir()
                    folders.append(
                        (f"{remote}/{entry_name}", folder / entry_name, self._list(f"{remote}/{entry_name}"))
                    )
                else:
                    budget -= self._fetch(f"{remote}/{entry_name}", folder / entry_name, budget)
        return local


class NotThisProxy(RestError):
    """An artifact URI that is not a path behind this tracking server's artifact proxy (nothing was fetched)."""


def _refused(message: str) -> RestError:
    return NotThisProxy(message, error_code="INVALID_PARAMETER_VALUE", status=400)


def _bad_listing(message: str) -> RestError:
    return RestError(message, error_code="INVALID_STATE", status=502)
