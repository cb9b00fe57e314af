"""Open Inference Protocol v2 in process: health and metadata (plain and versioned), JSON and binary tensors
in and out, requested outputs, exact numeric conversions, and `{"error": "<message>"}` bodies."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.unit.test_http_app import NAME, ROW, Client, client_for, make_app, small_model

pytestmark = pytest.mark.anyio
INFER = f"/v2/models/{NAME}/infer"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async for c in client_for(make_app(model=small_model(), max_request_rows=10)):
        yield c


def tensor(
    data: Any = None, datatype: str = "FP64", shape: list[int] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"name": "input-0", "shape": shape or [1, 3], "datatype": datatype, "data": data or ROW, **extra}


def v2_error(response: httpx.Response) -> str:
    """The protocol's error body: {"error": "<message>"}."""
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return str(body["error"])


def binary_request(
    arrays: list[tuple[str, np.ndarray, str]], extra: dict[str, Any] | None = None, tail: bytes = b""
) -> tuple[bytes, dict[str, str]]:
    """A body in the binary tensor data extension, as the Triton client writes it."""
    inputs = [
        {"name": name, "shape": list(a.shape), "datatype": dt, "parameters": {"binary_data_size": a.nbytes}}
        for name, a, dt in arrays
    ]
    header = json.dumps({"inputs": inputs, **(extra or {})}).encode()
    content = header + b"".join(a.tobytes() for _, a, _ in arrays) + tail
    return content, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def split_binary(response: httpx.Response) -> tuple[dict[str, Any], dict[str, bytes]]:
    size = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:size])
    chunks, offset = {}, size
    for output in header["outputs"]:
        if "binary_data_size" in (output.get("parameters") or {}):
            n = output["parameters"]["binary_data_size"]
            chunks[output["name"]] = response.content[offset : offset + n]
            offset += n
    assert offset == len(response.content)
    return header, chunks


# -- health and metadata ------------------------------------------------------------------------------------
async def test_server_health_and_metadata(client: Client) -> None:
    meta = (await client.get("/v2")).json()
    assert meta["name"] and "binary_tensor_data" in meta["extensions"]
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}


async def test_not_ready_answers_503_with_the_protocol_body() -> None:
    async for client in client_for(make_app()):
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        for url in (f"/v2/models/{NAME}", f"/v2/models/{NAME}/ready"):
            response = await client.get(url)
            assert response.status_code == 503 and v2_error(response)
        assert (await client.post(INFER, {"inputs": [tensor()]})).status_code == 503


@pytest.mark.parametrize("prefix", [f"/v2/models/{NAME}", f"/v2/models/{NAME}/versions/1"])
async def test_model_metadata_and_ready_plain_and_versioned(client: Client, prefix: str) -> None:
    meta = (await client.get(prefix)).json()
    assert meta["name"] == NAME and meta["versions"] == ["1"] and meta["platform"] == "mlflow-sklearn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    ready = await client.get(f"{prefix}/ready")
    assert ready.status_code == 200 and ready.json() == {"name": NAME, "ready": True}


@pytest.mark.parametrize(
    "url",
    [
        "/v2/models/other",
        "/v2/models/other/ready",
        f"/v2/models/{NAME}/versions/2",
        f"/v2/models/{NAME}/versions/2/ready",
        "/v2/no/such/route",
    ],
)
async def test_unknown_models_versions_and_routes_are_404_with_the_protocol_body(
    client: Client, url: str
) -> None:
    response = await client.get(url)
    assert response.status_code == 404 and v2_error(response)


# -- inference ----------------------------------------------------------------------------------------------
async def test_json_infer_echoes_id_and_matches_the_model(client: Client) -> None:
    rows = np.array([ROW, [0.9, 0.8, 0.1]])
    expected = small_model().predict(rows)
    response = await client.post(INFER, {"id": "req-1", "inputs": [tensor(rows.tolist(), shape=[2, 3])]})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"] == "req-1" and body["model_name"] == NAME and body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["predict"] == {
        "name": "predict",
        "shape": [2],
        "datatype": "INT64",
        "data": expected.labels.tolist(),
    }
    assert outputs["predict_proba"]["shape"] == [2, 2]
    assert np.allclose(outputs["predict_proba"]["data"], np.ravel(expected.probabilities))
    no_id = (await client.post(f"/v2/models/{NAME}/versions/1/infer", {"inputs": [tensor()]})).json()
    assert "id" not in no_id


async def test_requested_outputs_are_honoured(client: Client) -> None:
    only = await client.post(INFER, {"inputs": [tensor()], "outputs": [{"name": "predict_proba"}]})
    assert [o["name"] for o in only.json()["outputs"]] == ["predict_proba"]
    unknown = await client.post(INFER, {"inputs": [tensor()], "outputs": [{"name": "scores"}]})
    assert unknown.status_code == 400 and "scores" in v2_error(unknown)
    twice = await client.post(INFER, {"inputs": [tensor()], "outputs": [{"name": "predict"}] * 2})
    assert twice.status_code == 400


async def test_binary_tensors_in_and_out(client: Client) -> None:
    rows = np.array([ROW, [0.9, 0.8, 0.1]], dtype=np.float32)
    expected = small_model().predict(rows.astype(np.float64))
    content, headers = binary_request(
        [("input-0", rows, "FP32")], {"parameters": {"binary_data_output": True}}
    )
    response = await client.post(INFER, content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, chunks = split_binary(response)
    assert np.frombuffer(chunks["predict"], "<i8").tolist() == expected.labels.tolist()
    proba = np.frombuffer(chunks["predict_proba"], "<f8").reshape(2, 2)
    assert np.allclose(proba, expected.probabilities)
    # a requested output's binary_data overrides the request's default
    mixed = {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "predict", "parameters": {"binary_data": False}}, {"name": "predict_proba"}],
    }
    content, headers = binary_request([("input-0", rows, "FP32")], mixed)
    header, chunks = split_binary(await client.post(INFER, content=content, headers=headers))
    assert header["outputs"][0]["data"] == expected.labels.tolist() and set(chunks) == {"predict_proba"}


async def test_string_labels_are_bytes_tensors() -> None:
    async for client in client_for(make_app(model=small_model(classes=["no", "yes"]))):
        body = (await client.post(INFER, {"inputs": [tensor()]})).json()
        assert body["outputs"][0]["datatype"] == "BYTES" and body["outputs"][0]["data"][0] in ("no", "yes")
        request = {
            "inputs": [tensor()],
            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
        }
        _, chunks = split_binary(await client.post(INFER, request))
        (length,) = struct.unpack("<I", chunks["predict"][:4])
        assert chunks["predict"][4:].decode() in ("no", "yes") and length == len(chunks["predict"]) - 4


@pytest.mark.parametrize(
    ("datatype", "data", "ok"),
    [
        ("INT8", [1, 2, 127], True),
        ("INT8", [1, 2, 300], False),  # never wrapped to 44
        ("INT8", [1, 2, -129], False),
        ("UINT8", [1, 2, -1], False),
        ("INT32", [1, 2, 1.5], False),  # never truncated
        ("INT32", [1, 2, 3.0], True),
        ("INT64", [1, 2, 2**63], False),
        ("UINT64", [1, 2, 2**64 - 1], True),
        ("UINT64", [1, 2, 2**64], False),
        ("FP16", [1, 2, 70000.0], False),
        ("FP32", [1, 2, 1e39], False),
        ("FP64", [1, 2, True], False),
        ("FP64", [[0.1, 0.2, 0.3]], True),  # nested data is row-major
        ("FP64", [0.1, 0.2, "0.3"], False),
        ("FP64", [0.1, 0.2, None], False),
    ],
)
async def test_numeric_conversions_never_wrap_or_silently_cast(
    client: Client, datatype: str, data: list[Any], ok: bool
) -> None:
    response = await client.post(INFER, {"inputs": [tensor(data, datatype)]})
    if ok:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 422 and "inputs[0].data" in v2_error(response), response.text


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (
            b'{"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [0.1, 0.2, 1e400]}]}',
            422,
        ),
        (
            b'{"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [0.1, 0.2, '
            + b"9" * 5000
            + b"]}]}",
            422,
        ),
        (
            b'{"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [0.1, 0.2, NaN]}]}',
            422,
        ),
        (b'{"id": "\\ud800", "inputs": []}', 400),  # a lone surrogate could not be echoed
        (
            b'{"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": '
            + b"[" * 10_000
            + b"]" * 10_000
            + b"}]}",
            400,
        ),
        (
            b'{"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": '
            + b"[" * 500
            + b"1"
            + b"]" * 500
            + b"}]}",
            422,
        ),
        (
            # a value nested past Python's recursion limit (orjson reads it): named, not a 500 from its repr
            b'{"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, '
            + b'{"a": ' * 1000
            + b"1"
            + b"}" * 1000
            + b"]}]}",
            422,
        ),
        (b"{not json", 400),
    ],
)
async def test_hostile_json_is_a_clear_4xx(client: Client, content: bytes, status: int) -> None:
    response = await client.post(INFER, content=content)
    assert response.status_code == status, response.text
    v2_error(response)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"inputs": [tensor(datatype=5)]}, 422),  # TypeError before
        ({"inputs": [tensor(datatype=["FP64"])]}, 422),
        ({"inputs": [tensor(datatype="BYTES")]}, 422),
        ({"inputs": [tensor(datatype="FP8")]}, 422),
        ({"inputs": [tensor(shape=[1, 4])]}, 422),
        ({"inputs": [tensor(shape=[0, 3])]}, 422),
        ({"inputs": [tensor(shape=[True, 3])]}, 422),
        ({"inputs": [tensor(shape=[11, 3])]}, 413),
        ({"inputs": [tensor(data=[0.1, 0.2])]}, 422),
        ({"inputs": [{**tensor(), "name": "x"}]}, 400),
        ({"inputs": [{**tensor(), "name": 5}]}, 422),
        ({"inputs": [tensor(), tensor()]}, 422),
        ({"inputs": []}, 422),
        ({"inputs": "x"}, 422),
        ({"id": 5, "inputs": [tensor()]}, 422),
        ({"parameters": {"binary_data_output": "yes"}, "inputs": [tensor()]}, 422),
        ({"parameters": {"nested": {"a": 1}}, "inputs": [tensor()]}, 422),
        ({"inputs": [tensor(parameters={"shared_memory_region": "r"})]}, 400),
        ({"inputs": [tensor()], "outputs": [{"name": "predict", "parameters": {"classification": 2}}]}, 400),
        ({"inputs": [tensor()], "outputs": "predict"}, 422),
        ([tensor()], 422),
    ],
)
async def test_bad_requests_are_4xx_with_the_protocol_body(client: Client, body: Any, status: int) -> None:
    response = await client.post(INFER, body)
    assert response.status_code == status, response.text
    v2_error(response)


async def test_parameters_and_extra_fields_are_accepted(client: Client) -> None:
    # what the KServe client sends: model_name in the body, an id, custom parameters
    body = {
        "id": "k",
        "model_name": NAME,
        "parameters": {"priority": 1, "tag": "x", "flag": False},
        "inputs": [tensor()],
    }
    response = await client.post(INFER, body)
    assert response.status_code == 200 and response.json()["id"] == "k"


async def test_binary_framing_errors_are_400(client: Client) -> None:
    rows = np.array([ROW], dtype=np.float64)
    content, headers = binary_request([("input-0", rows, "FP64")])
    for bad in ("abc", "-1", str(len(content) + 1), "١٢".encode()):
        response = await client.post(
            INFER, content=content, headers={**headers, "Inference-Header-Content-Length": bad}
        )  # type: ignore[dict-item]
        assert response.status_code == 400 and "Inference-Header-Content-Length" in v2_error(response)
    no_header = await client.post(INFER, content=content)
    assert no_header.status_code == 400  # the JSON is followed by bytes: not JSON
    header_only = content[: int(headers["Inference-Header-Content-Length"])]
    missing = await client.post(INFER, content=header_only)
    assert missing.status_code == 400 and "Inference-Header-Content-Length" in v2_error(missing)
    short = await client.post(INFER, content=content[:-1], headers=headers)
    assert short.status_code == 400 and "binary_data_size" in v2_error(short)
    content, headers = binary_request([("input-0", rows, "FP64")], tail=b"\0")
    extra = await client.post(INFER, content=content, headers=headers)
    assert extra.status_code == 400 and "belong to no input" in v2_error(extra)
    wrong_size = np.array([ROW], dtype=np.float32)  # 12 bytes declared FP64: 24 expected
    content, headers = binary_request([("input-0", wrong_size, "FP64")])
    assert (await client.post(INFER, content=content, headers=headers)).status_code == 422
    nan = np.array([[0.1, np.nan, 0.3]])
    content, headers = binary_request([("input-0", nan, "FP64")])
    assert (await client.post(INFER, content=content, headers=headers)).status_code == 422


async def test_compressed_bodies_are_415_with_the_protocol_body(client: Client) -> None:
    response = await client.post(INFER, {"inputs": [tensor()]}, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 415 and "Content-Encoding" in v2_error(response)
