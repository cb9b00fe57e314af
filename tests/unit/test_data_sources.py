"""`--data` sources: redaction of secrets, the download limit and redirects, over real HTTP on 127.0.0.1 and S3 (moto).

Nothing here contacts an address outside 127.0.0.0/8: proxies are switched off and every URL is loopback.
"""

from __future__ import annotations

import base64
import gzip
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from modelops.errors import DataError, InvalidInput
from modelops.training.data import load_dataset, redact_source
from modelops.training.options import DEFAULT_MAX_BYTES
from tests.support import Service, free_port, moto_server

USER, PASSWORD, TOKEN, FRAGMENT = "user-q7z", "pw-hunter2-x", "tok-s3cr3t-9", "frag-k4w"
SECRETS = (USER, PASSWORD, TOKEN, FRAGMENT)
CSV = b"a,b,label\n" + b"".join(f"{i},{i * 2},{i % 2}\n".encode() for i in range(40))
ROW = b"1,2,0\n"


@dataclass
class Site:
    """A threaded HTTP server on 127.0.0.1 and the paths it was asked for."""

    server: ThreadingHTTPServer
    hits: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def secret_url(self, path: str) -> str:
        """`path` on this site with user-info, a token in the query and a fragment."""
        port = self.server.server_address[1]
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{port}{path}?token={TOKEN}#{FRAGMENT}"


Route = Callable[[BaseHTTPRequestHandler], None]


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def _endless_chunked(handler: BaseHTTPRequestHandler) -> None:
    """A body with no Content-Length that never ends (until the client hangs up)."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"a,b,label\n" + ROW * 10_000
    try:
        for _ in range(20_000):  # ~1.2 GB at most, should the client never stop
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        pass
    handler.close_connection = True


def _gzip_bomb(handler: BaseHTTPRequestHandler) -> None:
    """Content-Length is honest about the wire but tells nothing of the 8 MiB the body decodes to."""
    body = gzip.compress(b"a,b,label\n" + ROW * (8 * 2**20 // len(ROW)))
    _send(handler, 200, body, Content_Encoding="gzip")


def _declares_huge(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**12))
    handler.end_headers()
    handler.wfile.write(CSV)
    handler.close_connection = True


def _short_body(handler: BaseHTTPRequestHandler) -> None:
    """Content-Length promises more than is sent, then the connection closes."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(CSV) * 10))
    handler.end_headers()
    handler.wfile.write(CSV)
    handler.close_connection = True


def _private(handler: BaseHTTPRequestHandler) -> None:
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    query = urlsplit(handler.path).query
    if handler.headers.get("Authorization") != expected or query != f"token={TOKEN}":
        _send(handler, 403, b"forbidden")
    else:
        _send(handler, 200, CSV, Content_Type="text/csv")


def _start_site(routes: dict[str, Route]) -> Site:
    site: Site

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            site.hits.append(path)
            route = routes.get(path)
            if route is None:
                _send(self, 404, b"not found")
            else:
                route(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    site = Site(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return site


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours proxy variables; these tests must go straight to loopback."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def other() -> Iterator[Site]:
    """A second server: another port on 127.0.0.1 is another host for redirects."""
    site = _start_site({"/data.csv": lambda h: _send(h, 200, CSV)})
    yield site
    site.server.shutdown()
    site.server.server_close()


@pytest.fixture(scope="module")
def site(other: Site) -> Iterator[Site]:
    site: Site

    def to_self_over_https(handler: BaseHTTPRequestHandler) -> None:
        _send(handler, 302, Location=f"https://127.0.0.1:{site.server.server_address[1]}/data.csv")

    routes: dict[str, Route] = {
        "/data.csv": lambda h: _send(h, 200, CSV, Content_Type="text/csv"),
        "/private.csv": _private,
        "/no-label.csv": lambda h: _send(h, 200, b"a,b\n1,2\n3,4\n"),
        "/moved": lambda h: _send(h, 302, Location="/data.csv"),
        "/moved-private": lambda h: _send(h, 301, Location=f"/private.csv?token={TOKEN}"),
        "/loop": lambda h: _send(h, 302, Location="/loop"),
        "/elsewhere": lambda h: _send(h, 302, Location=f"{other.base}/data.csv?sig={TOKEN}"),
        "/to-https": to_self_over_https,
        "/endless": _endless_chunked,
        "/gzip": _gzip_bomb,
        "/declares-huge": _declares_huge,
        "/short": _short_body,
    }
    site = _start_site(routes)
    yield site
    site.server.shutdown()
    site.server.server_close()


def everything_said(exc: BaseException) -> str:
    """Every text an exception can surface: its message, args, fields, chain and formatted traceback."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *map(repr, current.args), repr(vars(current))]
        todo += [current.__cause__, current.__context__]
    return "\n".join(texts)


def assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{leaked} leaked into: {text}"


@pytest.mark.parametrize(
    ("source", "redacted"),
    [
        ("http://u:p@h:8080/a/b.csv?x=1#f", "http://h:8080/a/b.csv"),
        ("https://h/x.csv", "https://h/x.csv"),
        ("https://h", "https://h"),
        ("s3://bucket/key/part.csv?versionId=3", "s3://bucket/key/part.csv"),
        ("s3://AKIA:SECRET@bucket/k.csv", "s3://bucket/k.csv"),
        ("file://u:p@/tmp/x.csv?q=1", "file:///tmp/x.csv"),
        ("http://u:p@ss@h/x", "http://h/x"),
        ("http://u:p@[::1]:9000/x?y#z", "http://[::1]:9000/x"),
        ("  http://u:p@h/x?y  ", "http://h/x"),
        ("/tmp/data.csv", "/tmp/data.csv"),
        ("data/train.csv", "data/train.csv"),
        ("http://h/#only-fragment", "http://h/"),
    ],
)
def test_redact_source(source: str, redacted: str) -> None:
    assert redact_source(source) == redacted


def test_default_limit_is_one_gib() -> None:
    assert DEFAULT_MAX_BYTES == 1 << 30


def test_http_csv_loads(site: Site) -> None:
    dataset = load_dataset(f"{site.base}/data.csv", "label")
    assert (dataset.n_rows, dataset.n_features) == (40, 2)
    assert dataset.source == f"{site.base}/data.csv" and dataset.name == "data"


def test_credentials_and_query_are_used_but_never_kept(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # its own level: configure_logging quiets it to WARNING
    dataset = load_dataset(site.secret_url("/private.csv"), "label")
    assert dataset.n_rows == 40  # the server saw the user-info as Basic auth and the token in the query
    assert dataset.source == f"{site.base}/private.csv"
    assert_no_secret(repr(dataset.source) + dataset.name + dataset.digest)
    assert any(r.name == "httpx" for r in caplog.records), "httpx logged nothing: the check below is vacuous"
    assert_no_secret("\n".join(r.getMessage() for r in caplog.records))


def test_same_host_redirects_are_followed_with_credentials(site: Site) -> None:
    assert load_dataset(f"{site.base}/moved", "label").n_rows == 40
    dataset = load_dataset(site.secret_url("/moved-private"), "label")
    assert dataset.n_rows == 40 and dataset.source == f"{site.base}/moved-private"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/missing", "HTTP 404"),
        ("/elsewhere", "redirects to another host"),
        ("/to-https", "redirects to another host"),
        ("/loop", "more than 5 redirects"),
        ("/short", "cannot download"),
        ("/no-label.csv", "target column 'label' not in"),
    ],
)
def test_http_failures_name_the_redacted_source_only(
    site: Site, path: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")
    with pytest.raises(DataError) as info:
        load_dataset(site.secret_url(path), "label")
    assert expected in info.value.message
    assert f"{site.base}{path}" in info.value.message
    assert_no_secret(everything_said(info.value))
    assert_no_secret("\n".join(r.getMessage() for r in caplog.records))


def test_redirect_to_another_port_is_refused_before_contacting_it(site: Site, other: Site) -> None:
    other.hits.clear()
    with pytest.raises(DataError) as info:
        load_dataset(f"{site.base}/elsewhere", "label")
    assert info.value.field == "data"
    assert f"{other.base}/data.csv" in info.value.message  # where it was sent, without the signature
    assert other.hits == []


def test_unreachable_host_error_has_no_secret() -> None:
    with pytest.raises(DataError) as info:
        load_dataset(f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/d.csv?token={TOKEN}", "label")
    assert info.value.message.startswith("cannot download http://127.0.0.1:")
    assert_no_secret(everything_said(info.value))


@pytest.mark.parametrize("path", ["/endless", "/gzip", "/declares-huge"])
def test_http_size_limit_is_enforced_while_streaming(site: Site, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        load_dataset(site.secret_url(path), "label", max_bytes=1 << 20)
    assert time.monotonic() - started < 20  # stopped early, did not read the endless body
    assert info.value.field == "data"
    assert "1048576 bytes" in info.value.message and "--max-bytes" in info.value.message
    assert_no_secret(everything_said(info.value))


def test_http_body_at_the_limit_loads(site: Site) -> None:
    assert load_dataset(f"{site.base}/data.csv", "label", max_bytes=len(CSV)).n_rows == 40
    with pytest.raises(DataError, match="--max-bytes"):
        load_dataset(f"{site.base}/data.csv", "label", max_bytes=len(CSV) - 1)


def test_local_file_limit(csv_file: Path) -> None:
    size = csv_file.stat().st_size
    assert load_dataset(str(csv_file), "label", max_bytes=size).source == str(csv_file)
    assert load_dataset(f"file://{csv_file}", "label").n_rows == 569
    with pytest.raises(DataError) as info:
        load_dataset(str(csv_file), "label", max_bytes=100)
    assert info.value.field == "data"
    assert "100 bytes" in info.value.message and "--max-bytes" in info.value.message


def test_missing_local_file_and_bad_limit(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_dataset(str(tmp_path / "nope.csv"), "label")
    with pytest.raises(DataError) as info:
        load_dataset(f"file://{USER}:{PASSWORD}@{tmp_path}/nope.csv?token={TOKEN}", "label")
    assert_no_secret(everything_said(info.value))
    with pytest.raises(InvalidInput) as bad:
        load_dataset(str(tmp_path / "nope.csv"), "label", max_bytes=0)
    assert bad.value.field == "max_bytes"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = moto_server(tmp_path_factory.mktemp("moto")).start()
    s3 = boto3.client(
        "s3",
        endpoint_url=service.uri,  # type: ignore[attr-defined]
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="data")
    s3.put_object(Bucket="data", Key="train.csv", Body=CSV)
    yield service
    service.stop()


@pytest.mark.usefixtures("aws_test_env")
def test_s3_source_is_redacted_and_limited(moto: Service) -> None:
    endpoint = moto.uri  # type: ignore[attr-defined]
    dataset = load_dataset(f"s3://data/train.csv?versionId={TOKEN}#{FRAGMENT}", "label", endpoint)
    assert dataset.n_rows == 40 and dataset.source == "s3://data/train.csv"
    with pytest.raises(DataError) as info:
        load_dataset("s3://data/train.csv", "label", endpoint, max_bytes=len(CSV) - 1)
    assert info.value.field == "data" and "--max-bytes" in info.value.message
    assert load_dataset("s3://data/train.csv", "label", endpoint, max_bytes=len(CSV)).n_rows == 40


@pytest.mark.usefixtures("aws_test_env")
def test_s3_failures_have_no_secret(moto: Service) -> None:
    endpoint = moto.uri  # type: ignore[attr-defined]
    with pytest.raises(DataError) as info:
        load_dataset(f"s3://data/nope.csv?token={TOKEN}", "label", endpoint)
    assert (
        info.value.message.startswith("cannot read s3://data/nope.csv: ")
        and "NoSuchKey" in info.value.message
    )
    assert_no_secret(everything_said(info.value))
    with pytest.raises(DataError) as info:
        load_dataset(f"s3://{USER}:{PASSWORD}@data/train.csv", "label", endpoint)
    assert "credentials in an s3:// URL are not used" in info.value.message
    assert_no_secret(everything_said(info.value))
