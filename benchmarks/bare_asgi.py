"""A bare ASGI app: reads the whole request body and answers a constant JSON object.

No framework, no parsing, no model: the ceiling of the HTTP server (uvicorn + httptools + uvloop) on this machine,
which the benchmark divides our /predict throughput by ("% of bare ASGI").
"""

from __future__ import annotations

from typing import Any

BODY = b'{"prediction":0}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: accept startup and shutdown
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
