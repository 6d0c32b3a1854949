"""The OpenAPI 3.1 document, built from the route table (``routes.OPS``) and the pydantic models."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from chronos_core import JobTypes

from .context import Op
from .problems import PROBLEMS
from .schemas import Problem

__all__ = ["build_openapi"]

_REF = "#/components/schemas/{model}"
_STATUS_TEXT = {400: "Malformed JSON", 401: "Missing or invalid token", 403: "Token not allowed to do this",
                404: "Not found", 409: "Conflict", 413: "Body too large", 415: "Body is not JSON",
                422: "Invalid input (one entry per field)", 503: "Store unavailable"}


def _problem_types(status: int) -> str:
    slugs = sorted({slug for s, slug, _ in PROBLEMS.values() if s == status})
    return ", ".join(slugs)


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def job_type_schemas(job_types: JobTypes, spec: dict[str, Any]) -> dict[str, Any]:
    """``JobSpec`` as a ``oneOf`` discriminated by ``type``: one variant per registered job type (plugins
    included), its ``type`` a constant and its ``payload`` the type's payload model. ``spec`` is the plain
    JobSpec schema. Returns the components to add (the variants, the payload models and their $defs,
    and ``JobSpec`` itself)."""
    out: dict[str, Any] = {}
    variants = {}
    for name in job_types.names:
        model = job_types.model(name)
        payload = model.model_json_schema(ref_template=_REF, mode="validation")
        out.update(payload.pop("$defs", {}))
        payload_key = f"{_camel(name)}Payload"
        if payload_key in out and out[payload_key] != payload:  # e.g. a plugin model named like a $def
            payload_key = f"{_camel(name)}JobPayload"
        out[payload_key] = payload
        variant = copy.deepcopy(spec)
        variant["title"] = f"{_camel(name)}Job"
        variant["description"] = (f"A job of type {name!r}. " + (model.__doc__ or "").strip()).strip()
        variant["properties"]["type"] = {"type": "string", "const": name, "title": "Type"}
        variant["properties"]["payload"] = {"$ref": _REF.format(model=payload_key)}
        variant["required"] = sorted({*variant.get("required", ()), "type"})
        out[variant["title"]] = variant
        variants[name] = _REF.format(model=variant["title"])
    out["JobSpec"] = {
        "title": "JobSpec",
        "description": spec.get("description", ""),
        "oneOf": [{"$ref": ref} for ref in variants.values()],
        "discriminator": {"propertyName": "type", "mapping": variants},
    }
    return out


def build_openapi(ops: Sequence[Op], *, title: str, version: str, auth: bool = True,
                  job_types: JobTypes | None = None) -> dict[str, Any]:
    inputs = {op.body for op in ops if op.body is not None}
    outputs = {op.response for op in ops if op.response is not None}
    outputs |= {m for op in ops for m, _ in op.extra_responses.values() if m is not None}
    outputs.add(Problem)
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = sorted(
        [(m, "validation") for m in inputs] + [(m, "serialization") for m in outputs],
        key=lambda p: (p[0].__name__, p[1]))
    refs, top = models_json_schema(pairs, ref_template=_REF)
    components: dict[str, Any] = dict(top.get("$defs", {}))
    if job_types is not None and "JobSpec" in components:
        components.update(job_type_schemas(job_types, components["JobSpec"]))

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    problem = {"application/problem+json": {"schema": ref(Problem, "serialization")}}
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for name in re.findall(r"{(\w+)}", op.path)]
        if op.query is not None:
            schema = op.query.model_json_schema(ref_template=_REF)
            required = set(schema.get("required", ()))
            for name, prop in schema["properties"].items():
                if name == "token" and not auth:
                    continue
                prop = dict(prop)
                description = prop.pop("description", None)
                param = {"name": name, "in": "query", "required": name in required, "schema": prop}
                if description:
                    param["description"] = description
                params.append(param)
        for name, description in op.request_headers.items():
            params.append({"name": name, "in": "header", "required": False, "description": description,
                           "schema": {"type": "string", "maxLength": 255}})
        if op.media_type == "text/event-stream":
            params.append({"name": "Last-Event-ID", "in": "header", "required": False,
                           "description": "resume after this event id", "schema": {"type": "string"}})

        ok: dict[str, Any] = {"description": op.summary}
        if op.response is not None:
            ok["content"] = {op.media_type: {"schema": ref(op.response, "serialization")}}
        elif op.status != 204:
            ok["content"] = {op.media_type: {"schema": {"type": "string"}}}
        if op.headers:
            ok["headers"] = {h: {"description": d, "schema": {"type": "string"}}
                             for h, d in op.headers.items()}
        if op.creates:
            ok["links"] = {
                f"{other.operation_id}": {"operationId": other.operation_id,
                                          "parameters": {op.creates: "$response.body#/id"}}
                for other in ops if "{" + op.creates + "}" in other.path
                and other.media_type != "text/event-stream"}
        responses: dict[str, Any] = {str(op.status): ok}
        for status, (model, description) in op.extra_responses.items():
            responses[str(status)] = {"description": description,
                                      "content": {op.media_type: {"schema": ref(model, "serialization")}}
                                      if model else {}}
        errors = set(op.errors)
        if not op.public and auth:
            errors |= {401, 403}
        if not op.public and op.path not in ("/metrics",):
            errors.add(503)
        for status in sorted(errors):
            responses[str(status)] = {"description": f"{_STATUS_TEXT.get(status, 'Error')} "
                                                     f"(problem types: {_problem_types(status)})",
                                      "content": problem}
        operation: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary,
                                     "tags": [op.tag], "parameters": params, "responses": responses}
        if op.description:
            operation["description"] = op.description
        if op.body is not None:
            body: dict[str, Any] = {"schema": ref(op.body, "validation")}
            if op.example is not None:
                body["example"] = op.example
            operation["requestBody"] = {"required": True, "content": {op.request_media_type: body}}
        if op.public or not auth:
            operation["security"] = []
        paths.setdefault(op.path, {})[op.method.lower()] = operation

    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Chronos job scheduler. Errors are RFC 9457 problem details."},
        "paths": paths,
        "components": {"schemas": components},
    }
    if auth:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "queryToken": {"type": "apiKey", "in": "query", "name": "token",
                           "description": "only on the /monitor streams (EventSource cannot send headers)"},
        }
        doc["security"] = [{"bearer": []}]
    return doc
