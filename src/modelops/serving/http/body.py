"""Reading request bodies: size limit, Content-Encoding, and JSON that never turns into a 500."""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi import Request

from modelops.errors import PayloadTooLarge
from modelops.serving.http.errors import MalformedJSON, UnsupportedMediaType
from modelops.serving.schemas import parse_json_int

# Integers longer than this are parsed as floats, like orjson does past 64 bits: a 5,000-digit integer is then
# +-inf (refused as non-finite, as 1e400 is) instead of tripping Python's int-to-str digit limit.


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes without reading it all, and any Content-Encoding
    (we decode none: a compressed body could inflate far past the limit)."""
    headers = request.headers
    encoding = headers.get("content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the body uncompressed",
            field="Content-Encoding",
        )
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def load_json(raw: bytes) -> Any:
    """Parse a JSON body; MalformedJSON (400) when it is not JSON we can answer.

    orjson does the work. What it refuses but many clients write (NaN, Infinity from Python's json, numbers
    that overflow to infinity such as 1e999 or a 5,000-digit integer) is parsed leniently so that validation
    can name the non-finite field (422). Everything else it refuses stays refused: nesting past its depth
    limit (Python's parser would raise RecursionError) and lone surrogates (they could not be encoded in
    the answer, after the prediction ran)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        error = exc
    try:
        # decoded as UTF-8 here: json.loads would guess UTF-16 or UTF-32 from bytes, whose `true` (t\0r\0...) no
        # boolean check on the raw body finds, so it would be read as 1 (JSON over HTTP is UTF-8, RFC 8259)
        value = json.loads(raw.decode("utf-8-sig"), parse_int=parse_json_int)  # a BOM is skipped, as before
        orjson.dumps(value)  # refuses lone surrogates in strings and keys, and nesting past 254 levels
    # UnicodeDecodeError is a ValueError, orjson's encode error a TypeError
    except (ValueError, TypeError, RecursionError):
        raise MalformedJSON(f"malformed JSON: {error}", field="body") from None
    return value
