"""Admin handlers for the Lambda API's access key pairs (``hub.catalog.access_keys``): create
(the secret is in this one answer only), list (never a secret), delete (refused on every instance
from the next request on)."""

from __future__ import annotations

from aiohttp import web

from hub.catalog.access_keys import AccessKeyExists, AccessKeyNotFound, AccessKeySpec
from hub.web.services import SERVICES
from hub.web.wire import ApiError, path_name, read_json, reply, validate


async def create_access_key(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    spec = validate(AccessKeySpec, await read_json(request, 4096, max_depth=2))
    try:
        created = await svc.access_keys.create(spec.name)
    except AccessKeyExists as exc:
        raise ApiError(409, str(exc)) from None
    return reply(created, 201)


async def list_access_keys(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    return reply({"access_keys": await svc.access_keys.list_all()})


async def delete_access_key(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    try:
        return reply({"deleted": name, **await svc.access_keys.delete(name)})
    except AccessKeyNotFound as exc:
        raise ApiError(404, str(exc)) from None
