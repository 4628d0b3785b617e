"""Who may call what: the bearer token of a request, checked against the route's scope.

``HUB_API_TOKEN`` is the bootstrap admin (compared in constant time); every other token is a
scoped one from ``POST /v1/tokens`` (``hub.catalog.tokens``: looked up by its SHA-256, which
tells a timing observer nothing about any stored token). No or an unknown token: 401. A known
token whose scope is below the route's (``hub.web.scopes``): 403 naming the scope it needs.
"""

from __future__ import annotations

from aiohttp import web

from hub.catalog.tokens import Principal
from hub.web.scopes import ROUTE_SCOPE_TABLE, UNMATCHED
from hub.web.services import SERVICES
from hub.web.wire import ApiError, Handler, bearer, token_ok

BOOTSTRAP = Principal("HUB_API_TOKEN", "admin", bootstrap=True)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


def required_scope(request: web.Request) -> str | None:
    route = request.match_info.route
    if route.resource is None:  # no route: 404, 405 and the like
        return UNMATCHED
    method = "GET" if request.method == "HEAD" else request.method
    return request.app[ROUTE_SCOPE_TABLE].get((method, route.resource.canonical), UNMATCHED)


async def principal_of(request: web.Request) -> Principal | None:
    """The caller, or None (no token, or one that is neither the bootstrap nor a scoped one)."""
    given = bearer(request)
    if not given:
        return None
    svc = request.app[SERVICES]
    if token_ok(given, svc.settings.api_token):
        return BOOTSTRAP
    return await svc.tokens.lookup(given)


@web.middleware
async def require_scope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Inside ``hub.web.wire.errors_and_auth`` (which turns the ApiError into JSON)."""
    needed = required_scope(request)
    if needed is None:
        return await handler(request)
    principal = await principal_of(request)
    if principal is None:
        raise ApiError(401, "missing or wrong API token: send 'Authorization: Bearer <token>' with HUB_API_TOKEN "
                            "or a token from POST /v1/tokens")
    if not principal.allows(needed):
        raise ApiError(403, f"this needs a token with scope {needed!r} (or above); token {principal.name!r} has "
                            f"scope {principal.scope!r}",
                       [{"required_scope": needed, "scope": principal.scope}])
    request[PRINCIPAL] = principal
    return await handler(request)
