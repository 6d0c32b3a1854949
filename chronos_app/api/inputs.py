"""Reading requests: JSON bodies (media type, size limit, syntax) and query parameters (pydantic)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from chronos_core.errors import InvalidJob

from .problems import BodyTooLarge, InvalidParameters, MalformedJson, UnsupportedMediaType

__all__ = ["parse_query", "read_json"]

M = TypeVar("M", bound=BaseModel)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# one decoder for every body: json.loads with an option builds a new one per call (its scanner included)
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _loads(raw: bytes) -> Any:
    """``json.loads(raw, parse_constant=_no_constants)``: the same decoding of the bytes (UTF-8, or the
    UTF-16/32 it detects), the same errors."""
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON: 415 unless it says it is JSON, 413 past ``limit`` bytes, 400 if unparsable."""
    if not _is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType("send the body as JSON with 'Content-Type: application/json'")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = _loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc}") from None
    _check_document(data)
    return data


MAX_DEPTH = 64


def _check_document(data: Any) -> None:
    """Refuse documents nested deeper than ``MAX_DEPTH`` (nothing legitimate is; pydantic cannot
    serialize them) and strings with lone UTF-16 surrogates (``"\\ud800"`` is valid JSON syntax but no
    text: it could be neither stored nor sent back)."""
    level: list[Any] = [data]
    for _ in range(MAX_DEPTH + 1):
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(item.keys())
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
            elif isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise MalformedJson("the body contains a lone UTF-16 surrogate (\\ud800-\\udfff), "
                                        "which is not text") from None
        if not nxt:
            return
        level = nxt
    raise InvalidJob.single((), f"the JSON body is nested deeper than {MAX_DEPTH} levels")


def parse_query(request: Request, model: type[M], **extra: Any) -> M:
    """The query string validated by ``model`` (repeated parameters: the last wins)."""
    data: dict[str, Any] = {k: v for k, v in request.query_params.items() if k in model.model_fields}
    data.update(extra)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidParameters.from_validation(exc) from None
