"""OpenAPI 3.1 description of the HTTP API; request schemas come straight from the pydantic models."""

from __future__ import annotations

from typing import Any

from hub.models import FunctionSpec, TriggerSpec

_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _op(summary: str, body: str | None = None, ok: str = "200", **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {ok: {"description": "ok"}, "4XX": _ERR}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
    op.update(extra)
    return op


def _param(name: str, where: str = "path") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": {"type": "string"}}


def openapi_spec() -> dict[str, Any]:
    name = [_param("name")]
    ident = [_param("id")]
    schemas: dict[str, Any] = {
        "FunctionSpec": FunctionSpec.model_json_schema(ref_template="#/components/schemas/{model}"),
        "TriggerSpec": TriggerSpec.model_json_schema(ref_template="#/components/schemas/{model}"),
        "Error": {"type": "object", "properties": {"error": {"type": "string"}, "details": {"type": "array"}}},
    }
    for spec in (schemas["FunctionSpec"], schemas["TriggerSpec"]):
        schemas.update(spec.pop("$defs", {}))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Trigger Hub", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/functions": {"get": _op("List functions")},
            "/v1/functions/{name}": {
                "parameters": name,
                "put": _op("Create or update a function (a new immutable version when anything changed)", "FunctionSpec"),
                "get": _op("A function with its versions and triggers"),
                "delete": _op("Delete a function (409 while triggers use it)"),
            },
            "/v1/functions/{name}/invoke": {
                "parameters": [*name, _param("mode", "query")],
                "post": _op("Invoke: sync returns the result; mode=async answers 202 with an invocation_id"),
            },
            "/v1/triggers": {"get": _op("List triggers")},
            "/v1/triggers/{name}": {
                "parameters": name,
                "put": _op("Create or update a trigger; takes effect at once", "TriggerSpec"),
                "get": _op("A trigger and its subscription state"),
                "delete": _op("Delete a trigger; its events stop running"),
            },
            "/v1/invocations": {
                "parameters": [_param(p, "query") for p in ("function", "trigger", "status", "limit")],
                "get": _op("Recent invocations, newest first"),
            },
            "/v1/invocations/{id}": {"parameters": ident, "get": _op("One invocation with its output")},
            "/v1/dead-letters": {
                "parameters": [_param(p, "query") for p in ("trigger", "function", "limit", "all")],
                "get": _op("Dead letters"),
                "delete": _op("Purge dead letters of a trigger or function (or all=true)"),
            },
            "/v1/dead-letters/{id}": {
                "parameters": ident,
                "get": _op("One dead letter with every attempt's error"),
                "delete": _op("Delete a dead letter"),
            },
            "/v1/dead-letters/{id}/replay": {"parameters": ident, "post": _op("Run the event again", ok="202")},
            "/v1/sources/s3/events": {
                "post": _op("Webhook for MinIO / Ceph RGW / AWS SNS S3 notifications (token in header or ?token=)",
                            security=[]),
            },
            "/healthz": {"get": _op("Liveness", security=[])},
            "/readyz": {"get": _op("Readiness: MongoDB, each subscription, sandbox isolation", security=[])},
            "/metrics": {"get": _op("Prometheus metrics", security=[])},
        },
    }
