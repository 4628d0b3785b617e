"""Admin handlers for scoped API tokens (``hub.catalog.tokens``): create (the token is in this
one answer only), list, revoke, and ``self`` (what the calling token may do: the console asks it
to hide what it cannot use)."""

from __future__ import annotations

from aiohttp import web

from hub.catalog.tokens import RESERVED, SCOPES, TokenExists, TokenNotFound, TokenSpec, rank
from hub.web.auth import PRINCIPAL
from hub.web.services import SERVICES
from hub.web.wire import ApiError, path_name, read_json, reply, validate


async def create_token(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    spec = validate(TokenSpec, await read_json(request, 4096, max_depth=2))
    if spec.name in RESERVED:
        raise ApiError(400, f"invalid TokenSpec: name: {spec.name!r} is reserved; pick another name")
    try:
        created = await svc.tokens.create(spec.name, spec.scope)
    except TokenExists as exc:
        raise ApiError(409, str(exc)) from None
    return reply(created, 201)


async def list_tokens(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    return reply({"tokens": await svc.tokens.list_all()})


async def delete_token(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    try:
        return reply({"deleted": name, **await svc.tokens.delete(name)})
    except TokenNotFound as exc:
        raise ApiError(404, str(exc)) from None


async def token_self(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    return reply({"name": principal.name, "scope": principal.scope, "bootstrap": principal.bootstrap,
                  "scopes": [s for s in SCOPES if rank(s) <= rank(principal.scope)]})
