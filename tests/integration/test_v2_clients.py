"""The official Open Inference Protocol clients, unchanged and with their default settings, against a real
`modelops serve` process: Triton's `tritonclient.http` (sync and aio) and the KServe SDK's InferenceRESTClient.

Their defaults send binary tensors (`set_data_from_numpy`) and ask for binary outputs; their error paths read
`{"error": "<message>"}`. The KServe SDK pins libraries ours cannot share (protobuf < 7, pandas < 3), so it
runs in a virtualenv of its own, made here once and kept in .cache/tools (like checkov, see tests/tools.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import model_server, train_version
from tests.support import MlflowService, Service, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KSERVE = "kserve==0.21.0"
KSERVE_VENV = ROOT / ".cache" / "tools" / "kserve-0.21.0-venv"
X = load_breast_cancer().data
ROWS = X[:4]


class Served:
    def __init__(self, server: Service, name: str, reference: Any) -> None:
        self.server, self.name, self.reference = server, name, reference

    @property
    def url(self) -> str:
        return str(self.server.uri)  # type: ignore[attr-defined]

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")


@pytest.fixture(scope="module")
def served(tracking_server: MlflowService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import httpx

    name = f"clients-{uuid.uuid4().hex[:8]}"
    tracking_server.grant(name)
    train_version(tracking_server.uri, name)  # type: ignore[attr-defined]
    server = model_server(tmp_path_factory.mktemp("server"), tracking_server.uri, name).start()  # type: ignore[attr-defined]
    wait_for(lambda: httpx.get(f"{server.uri}/readyz").status_code == 200, 60, "the model to load")  # type: ignore[attr-defined]
    mlflow.set_tracking_uri(tracking_server.uri)  # type: ignore[attr-defined]
    reference = mlflow.sklearn.load_model(f"models:/{name}/1")
    yield Served(server, name, reference)
    server.stop()


# -- Triton ---------------------------------------------------------------------------------------------------
def test_triton_http_client_with_its_defaults(served: Served) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(served.host_port)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(served.name) and client.is_model_ready(served.name, "1")
    assert not client.is_model_ready(served.name, "9") and not client.is_model_ready("other")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    for meta in (client.get_model_metadata(served.name), client.get_model_metadata(served.name, "1")):
        assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}]

    tensor = triton.InferInput("input-0", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS)  # binary by default
    result = client.infer(served.name, [tensor], request_id="t-1")  # all outputs, binary by default
    assert result.get_response()["id"] == "t-1"
    assert result.as_numpy("predict").tolist() == served.reference.predict(ROWS).tolist()
    assert np.allclose(result.as_numpy("predict_proba"), served.reference.predict_proba(ROWS))

    rows32 = ROWS.astype(np.float32)
    tensor = triton.InferInput("input-0", list(rows32.shape), "FP32")
    tensor.set_data_from_numpy(rows32)
    only = client.infer(
        served.name, [tensor], model_version="1", outputs=[triton.InferRequestedOutput("predict")]
    )
    assert [o["name"] for o in only.get_response()["outputs"]] == ["predict"]
    assert only.as_numpy("predict").tolist() == served.reference.predict(rows32.astype(np.float64)).tolist()

    # errors are readable exceptions with the server's message, not a TypeError in the client
    with pytest.raises(InferenceServerException, match="not an output") as unknown:
        client.infer(served.name, [tensor], outputs=[triton.InferRequestedOutput("scores")])
    assert unknown.value.status() == "400"
    with pytest.raises(InferenceServerException, match="not served here") as other:
        client.get_model_metadata("other")
    assert other.value.status() == "404"
    ints = triton.InferInput("input-0", [1, 30], "INT8")
    ints.set_data_from_numpy(np.full((1, 30), 100, dtype=np.int8))
    assert client.infer(served.name, [ints]).as_numpy("predict").shape == (1,)
    client.close()


def test_triton_aio_client_with_its_defaults(served: Served) -> None:
    import tritonclient.http.aio as triton_aio
    from tritonclient.http import InferInput
    from tritonclient.utils import InferenceServerException

    async def main() -> None:
        client = triton_aio.InferenceServerClient(served.host_port)
        try:
            assert await client.is_server_ready() and await client.is_model_ready(served.name, "1")
            assert (await client.get_model_metadata(served.name, "1"))["versions"] == ["1"]
            tensor = InferInput("input-0", list(ROWS.shape), "FP64")
            tensor.set_data_from_numpy(ROWS)
            result = await client.infer(served.name, [tensor])
            assert result.as_numpy("predict").tolist() == served.reference.predict(ROWS).tolist()
            bad = InferInput("input-0", [1, 29], "FP64")
            bad.set_data_from_numpy(ROWS[:1, :29])
            with pytest.raises(InferenceServerException, match="the model expects 30") as error:
                await client.infer(served.name, [bad])
            assert error.value.status() == "422"
        finally:
            await client.close()

    asyncio.run(main())


# -- KServe -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """Python of a virtualenv with the KServe SDK (made on first use)."""
    python = KSERVE_VENV / "bin" / "python"
    if not (KSERVE_VENV / ".installed").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(KSERVE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", KSERVE], check=True, timeout=900)
        (KSERVE_VENV / ".installed").write_text(KSERVE)
    return python


KSERVE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    from kserve import InferenceRESTClient, RESTConfig, InferRequest, InferInput

    url, name, rows_file = sys.argv[1:4]
    rows = np.load(rows_file)

    async def main():
        # RESTConfig's defaults, except the protocol: its default is v1, another protocol
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        out = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, name),
        }
        tensor = InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)  # binary by default
        response = await client.infer(url, InferRequest(name, infer_inputs=[tensor], request_id="k-1"), model_name=name)
        out["id"] = response.id
        out["outputs"] = {o.name: o.as_numpy().tolist() for o in response.outputs}
        try:
            await client.infer(url, InferRequest("other", infer_inputs=[tensor]), model_name="other")
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        await client.close()
        print(json.dumps(out))

    asyncio.run(main())
    """
)


def test_kserve_rest_client_with_its_defaults(served: Served, kserve_python: Path, tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.npy"
    np.save(rows_file, ROWS)
    script = tmp_path / "kserve_client.py"
    script.write_text(KSERVE_SCRIPT)
    run = subprocess.run(
        [str(kserve_python), str(script), served.url, served.name, str(rows_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["live"] is True and out["ready"] is True and out["model_ready"] is True
    assert out["id"] == "k-1"
    assert out["outputs"]["predict"] == served.reference.predict(ROWS).tolist()
    assert np.allclose(out["outputs"]["predict_proba"], served.reference.predict_proba(ROWS))
    assert "HTTPStatusError" in out["error"] and "not served here" in out["error"] and "404" in out["error"]
