"""The OpenAPI side of the Lambda API (``hub.web.lambda_api``) and its access key pairs.

Kept beside ``hub.web.openapi`` (which merges it in). The ``/2015-03-31`` operations are public to
the bearer-token check (``x-required-scope: null``) and say so honestly: their security is the
``sigv4`` scheme (API Gateway's ``awsSigv4`` marker), and without a valid signature they answer
403 in AWS's error form, never 401. Their errors are AWS's JSON (``AwsError``), except what the
hub's own middleware answers before them (a URL over 8 KB: 414; a path that matches no route).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hub.catalog.access_keys import AccessKeySpec
from hub.spec.models import NAME_MAX, NAME_RE

Op = Callable[..., dict[str, Any]]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class AccessKey(_Open):
    name: str
    access_key_id: str = Field(description="AWS_ACCESS_KEY_ID: 20 characters starting AKTH")
    scope: str = Field(description="always invoke: invoke and read functions through the Lambda API")
    created_at: dt.datetime | None = None
    last_used_at: dt.datetime | None = Field(default=None, description="updated at most once a minute")


class AccessKeyCreated(AccessKey):
    secret_access_key: str = Field(description="AWS_SECRET_ACCESS_KEY: shown in this answer only (stored "
                                               "encrypted, as verifying a signature needs it)")


class AccessKeyList(_Open):
    access_keys: list[AccessKey]


class AwsError(_Open):
    """AWS's error body; the error's name is in the ``x-amzn-ErrorType`` header."""

    Type: str | None = Field(default=None, description="User or Service")
    message: str


MODELS: tuple[type[BaseModel], ...] = (AccessKeySpec, AccessKey, AccessKeyCreated, AccessKeyList, AwsError)
SECURITY_SCHEME = {
    "type": "apiKey", "in": "header", "name": "Authorization", "x-amazon-apigateway-authtype": "awsSigv4",
    "description": "AWS Signature Version 4 (service lambda, region HUB_AWS_REGION) by an access key pair "
                   "from POST /v1/access-keys; what boto3 and the aws CLI send",
}
_AWS_ERRORS = {
    "400": "InvalidParameterValueException or InvalidRequestContentException",
    "403": "MissingAuthenticationTokenException, IncompleteSignatureException, InvalidSignatureException "
           "(wrong signature, a date more than 15 minutes off, another region) or UnrecognizedClientException "
           "(unknown or revoked access key)",
    "404": "ResourceNotFoundException (or, for a path that matches no route, the hub's own 404)",
    "408": "InvalidRequestContentException: the body came too slowly",
    "413": "RequestTooLargeException: over 6 MB (RequestResponse), 1 MB (Event), any body on a GET",
    "429": "TooManyRequestsException: the function's queue is full (Retry-After)",
    "503": "ServiceException: MongoDB is unavailable, or too many request bodies at once (Retry-After)",
}


def _aws_responses(codes: str) -> dict[str, Any]:
    error = {"application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/AwsError"},
                                                       {"$ref": "#/components/schemas/Error"}]}}}
    out: dict[str, Any] = {code: {"description": _AWS_ERRORS[code], "content": error} for code in codes.split()}
    out["414"] = {"$ref": "#/components/responses/E414"}
    return out


def _lambda_op(summary: str, ok: dict[str, Any], errors: str, **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "security": [{"sigv4": []}], "responses": {**ok, **_aws_responses(errors)}, **extra}


def paths(op: Op, param: Callable[..., dict[str, Any]], json_body: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    name = param("name", "path", {"type": "string", "pattern": NAME_RE, "maxLength": NAME_MAX})
    fn_name = param("name", "path", {"type": "string", "minLength": 1, "maxLength": 170},
                    "FunctionName: NAME, NAME:QUALIFIER, or its ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)")
    qualifier = param("Qualifier", "query", {"type": "string", "minLength": 1, "maxLength": 128},
                      "a version (16 hex digits), an alias, or $LATEST")
    json_any: dict[str, Any] = {"application/json": {"schema": {}}}
    listing = _lambda_op(
        "ListFunctions: every function's configuration, at most 50 a page (NextMarker) [SigV4]",
        {"200": {"description": "{Functions: [FunctionConfiguration], NextMarker}",
                 "content": {"application/json": {"schema": {"type": "object"}}}}},
        "400 403 408 413 503",
        parameters=[param("Marker", "query", {"type": "string", "pattern": NAME_RE, "maxLength": NAME_MAX}),
                    param("MaxItems", "query", {"type": "integer", "minimum": 1, "maximum": 10000}),
                    param("FunctionVersion", "query", {"type": "string", "enum": ["ALL"]},
                          "accepted; the hub lists each function's current version only")])
    return {
        "/v1/access-keys": {
            "get": op("Access key pairs for the Lambda API: names, ids, created and last use (never the secret)",
                      {"200": "AccessKeyList"}, "503"),
            "post": op("Create an access key pair (scope invoke) for boto3 / the aws CLI; the secret is in this "
                       "answer only", {"201": "AccessKeyCreated"}, "400 409 413 503", json_body("AccessKeySpec")),
        },
        "/v1/access-keys/{name}": {
            "parameters": [name],
            "delete": op("Delete an access key pair: refused on every instance from the next request on "
                         "(answers once every live instance has acknowledged the deletion, or after 5 s)",
                         {"200": "Deleted"}, "400 404 503"),
        },
        "/2015-03-31/functions/{name}/invocations": {
            "parameters": [
                fn_name, qualifier,
                param("X-Amz-Invocation-Type", "header", {"type": "string",
                                                          "enum": ["RequestResponse", "Event", "DryRun"]}),
                param("X-Amz-Log-Type", "header", {"type": "string", "enum": ["None", "Tail"]},
                      "Tail: X-Amz-Log-Result is base64 of the last 4 KB of the run's stdout and stderr"),
            ],
            "post": _lambda_op(
                "Invoke (AWS Lambda API): RequestResponse runs once and answers the result (a failed run: "
                "X-Amz-Function-Error: Unhandled and Lambda's error document); Event queues it (202); DryRun "
                "checks (204) [SigV4]",
                {"200": {"description": "the function's result as JSON, or its error document",
                         "content": json_any},
                 "202": {"description": "queued (x-hub-request-id: GET /v1/invocations?request_id=)"},
                 "204": {"description": "DryRun: the function exists and the key may invoke it"}},
                "400 403 404 408 413 429 503",
                requestBody={"required": False, "description": "the event (JSON; empty means {})",
                             "content": json_any}),
        },
        "/2015-03-31/functions/{name}": {
            "parameters": [fn_name, qualifier],
            "get": _lambda_op(
                "GetFunction (AWS Lambda API): Configuration (secret-backed variables left out) and Code "
                "(the hub's URL of the version's zip) [SigV4]",
                {"200": {"description": "{Configuration, Code}",
                         "content": {"application/json": {"schema": {"type": "object"}}}}},
                "400 403 404 408 413 503"),
        },
        "/2015-03-31/functions": {"get": listing},
        "/2015-03-31/functions/": {"get": listing},
    }
