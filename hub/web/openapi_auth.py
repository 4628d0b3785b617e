"""The OpenAPI side of secrets, tokens and scopes: their operations and response shapes, and each
operation's ``x-required-scope`` (from the one table in ``hub.web.scopes``) with its 403.

Kept beside ``hub.web.openapi`` (which merges it in) so that module stays about the older routes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hub.catalog.tokens import TokenSpec
from hub.catalog.secrets import SecretSpec
from hub.spec.models import NAME_MAX, NAME_RE
from hub.web.scopes import METRICS, ROUTE_SCOPES

Op = Callable[..., dict[str, Any]]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class SecretUser(_Open):
    function: str
    versions: list[str] = Field(description="the stored versions whose env refers to the secret")


class Secret(_Open):
    """A secret's metadata; the value is never in an answer."""

    name: str
    version: int = Field(description="1 when created, +1 at each change of the value")
    created_at: dt.datetime
    updated_at: dt.datetime
    used_by: list[SecretUser] = Field(description="the functions whose env refers to it")


class SecretList(_Open):
    secrets: list[Secret]


class Token(_Open):
    name: str
    scope: str
    created_at: dt.datetime | None = None
    last_used_at: dt.datetime | None = Field(default=None, description="updated at most once a minute")


class TokenCreated(Token):
    token: str = Field(description="the token: shown in this answer only (the hub keeps its SHA-256)")


class TokenList(_Open):
    tokens: list[Token]


class TokenSelf(_Open):
    name: str = Field(description="the token's name (HUB_API_TOKEN for the bootstrap token)")
    scope: str
    bootstrap: bool
    scopes: list[str] = Field(description="every scope this token has (scopes are cumulative)")


MODELS: tuple[type[BaseModel], ...] = (SecretSpec, TokenSpec, Secret, SecretList, Token, TokenCreated, TokenList,
                                       TokenSelf)
REASON_403 = "the token's scope is below what the operation needs (x-required-scope); the message names it"


def paths(op: Op, param: Callable[..., dict[str, Any]], json_body: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    name = param("name", "path", {"type": "string", "pattern": NAME_RE, "maxLength": NAME_MAX})
    return {
        "/v1/secrets": {
            "get": op("Secrets' metadata: name, version, times, the functions that use each (never values)",
                      {"200": "SecretList"}, "503"),
        },
        "/v1/secrets/{name}": {
            "parameters": [name],
            "put": op("Create (201) or replace (200) a secret's value; warm workers of the functions using it "
                      "restart with the new value at their next start (the same value again changes nothing)",
                      {"200": "Secret", "201": "Secret"}, "400 413 503", json_body("SecretSpec")),
            "get": op("A secret's metadata (never its value)", {"200": "Secret"}, "400 404 503"),
            "delete": op("Delete a secret (409 naming the functions whose env refers to it)",
                         {"200": "Deleted"}, "400 404 409 503"),
        },
        "/v1/tokens": {
            "get": op("API tokens: names, scopes, created and last use (never the tokens)", {"200": "TokenList"},
                      "503"),
            "post": op("Create a token of a scope (read < invoke < deploy < admin); the token is in this answer "
                       "only", {"201": "TokenCreated"}, "400 409 413 503", json_body("TokenSpec")),
        },
        "/v1/tokens/self": {
            "get": op("The calling token's name and scope (any token)", {"200": "TokenSelf"}, "503"),
        },
        "/v1/tokens/{name}": {
            "parameters": [name],
            "delete": op("Revoke a token: refused on every instance from the next request on (answers once every "
                         "live instance has acknowledged the deletion, or after 5 s)",
                         {"200": "Deleted"}, "400 404 503"),
        },
    }


def annotate(doc: dict[str, Any]) -> None:
    """Every operation gets ``x-required-scope`` (null: public) and, where a token is needed, 401
    and 403; ``/metrics`` needs a read token unless the hub runs with HUB_METRICS_PUBLIC=true."""
    doc["components"]["responses"]["E403"] = {"description": REASON_403,
                                              "content": {"application/json": {"schema": {
                                                  "$ref": "#/components/schemas/Error"}}}}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters" or (method.upper(), path) not in ROUTE_SCOPES:
                continue
            scope = ROUTE_SCOPES[(method.upper(), path)]
            op["x-required-scope"] = scope
            if scope is None:
                continue
            op.pop("security", None)
            op["responses"]["401"] = {"$ref": "#/components/responses/E401"}
            op["responses"]["403"] = {"$ref": "#/components/responses/E403"}
            op["summary"] = f"{op['summary']} [scope: {scope}]"
    metrics = doc["paths"]["/metrics"]["get"]
    metrics["description"] = "needs a read token, unless the hub runs with HUB_METRICS_PUBLIC=true"
    assert METRICS == ("GET", "/metrics")
    readyz = doc["paths"]["/readyz"]["get"]
    readyz["description"] = ("public: without a token (or with a wrong one) only {\"ready\": true|false}; "
                             "with any valid token (read or above) the detail")
