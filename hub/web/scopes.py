"""What each route of the admin listener needs: the one table of scopes.

Scopes are cumulative (``read`` < ``invoke`` < ``deploy`` < ``admin``, ``hub.catalog.tokens``);
``None`` is a public route (each such route says why). ``hub.web.routes.make_app`` refuses to
build an application with a route missing here, ``hub.web.auth`` enforces the table, and
``hub.web.openapi`` shows it as each operation's ``x-required-scope``. A request that matches no
route (a 404 or 405, ``//v1/...``, a trailing slash) needs a token of any scope: nothing is public
by accident.
"""

from __future__ import annotations

from aiohttp import web

READ, INVOKE, DEPLOY, ADMIN = "read", "invoke", "deploy", "admin"
UNMATCHED = READ  # any valid token: a caller without one learns nothing, not even a 404
METRICS = ("GET", "/metrics")  # public only with HUB_METRICS_PUBLIC=true

ROUTE_SCOPES: dict[tuple[str, str], str | None] = {
    # functions, versions, aliases
    ("GET", "/v1/functions"): READ,
    ("PUT", "/v1/functions/{name}"): DEPLOY,
    ("GET", "/v1/functions/{name}"): READ,
    ("DELETE", "/v1/functions/{name}"): DEPLOY,
    ("POST", "/v1/functions/{name}/invoke"): INVOKE,
    ("GET", "/v1/functions/{name}/versions"): READ,
    ("DELETE", "/v1/functions/{name}/versions/{version}"): DEPLOY,
    ("GET", "/v1/functions/{name}/versions/{version}/code"): READ,
    ("GET", "/v1/functions/{name}/aliases"): READ,
    ("GET", "/v1/functions/{name}/aliases/{alias}"): READ,
    ("PUT", "/v1/functions/{name}/aliases/{alias}"): DEPLOY,
    ("DELETE", "/v1/functions/{name}/aliases/{alias}"): DEPLOY,
    ("GET", "/v1/functions/{name}/logs"): READ,
    # triggers
    ("GET", "/v1/triggers"): READ,
    ("PUT", "/v1/triggers/{name}"): DEPLOY,
    ("GET", "/v1/triggers/{name}"): READ,
    ("DELETE", "/v1/triggers/{name}"): DEPLOY,
    ("POST", "/v1/triggers/{name}/token"): DEPLOY,
    # history
    ("GET", "/v1/invocations"): READ,
    ("GET", "/v1/invocations/{id}"): READ,
    ("GET", "/v1/usage"): READ,
    ("GET", "/v1/dead-letters"): READ,
    ("GET", "/v1/dead-letters/{id}"): READ,
    ("POST", "/v1/dead-letters/{id}/replay"): INVOKE,
    ("POST", "/v1/dead-letters/replay"): INVOKE,
    ("DELETE", "/v1/dead-letters/{id}"): DEPLOY,
    ("DELETE", "/v1/dead-letters"): DEPLOY,
    # secrets: even their metadata (names, who uses them) is for deploy
    ("GET", "/v1/secrets"): DEPLOY,
    ("GET", "/v1/secrets/{name}"): DEPLOY,
    ("PUT", "/v1/secrets/{name}"): DEPLOY,
    ("DELETE", "/v1/secrets/{name}"): DEPLOY,
    # tokens
    ("GET", "/v1/tokens/self"): READ,  # any token: what it may do (the console hides the rest)
    ("GET", "/v1/tokens"): ADMIN,
    ("POST", "/v1/tokens"): ADMIN,
    ("DELETE", "/v1/tokens/{name}"): ADMIN,
    # the Lambda API's access key pairs (hub.catalog.access_keys)
    ("GET", "/v1/access-keys"): ADMIN,
    ("POST", "/v1/access-keys"): ADMIN,
    ("DELETE", "/v1/access-keys/{name}"): ADMIN,
    # the Lambda API (hub.web.lambda_api): no bearer token; each handler verifies an AWS
    # Signature V4 by a hub-issued access key pair, which acts with scope invoke
    ("POST", "/2015-03-31/functions/{name}/invocations"): None,
    ("GET", "/2015-03-31/functions/{name}"): None,
    ("GET", "/2015-03-31/functions"): None,
    ("GET", "/2015-03-31/functions/"): None,
    # public: the S3 webhook checks its own token; health for probes; the document and the
    # console's static files hold no data (the console's data comes from /v1 with a token)
    ("POST", "/v1/sources/s3/events"): None,
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,  # without a read token: only {"ready": ...}
    METRICS: READ,
    ("GET", "/v1/openapi.json"): None,
    ("GET", "/"): None,
    ("GET", "/console/{file}"): None,
}

ROUTE_SCOPE_TABLE: web.AppKey[dict[tuple[str, str], str | None]] = web.AppKey("route_scopes", dict)


def effective(metrics_public: bool) -> dict[tuple[str, str], str | None]:
    """The table as one instance applies it."""
    table = dict(ROUTE_SCOPES)
    if metrics_public:
        table[METRICS] = None
    return table


def check_routes(app: web.Application) -> None:
    """Every route the application has must be in the table (a new route without a scope fails
    every start, and so every test)."""
    missing = sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                      if r.resource is not None and r.method != "HEAD"} - set(ROUTE_SCOPES))
    if missing:
        raise RuntimeError(f"routes without a scope in hub.web.scopes.ROUTE_SCOPES: {missing}")
