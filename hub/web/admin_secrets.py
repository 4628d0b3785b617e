"""Admin handlers for secrets: create or replace, read metadata, delete (``hub.catalog.secrets``).

No answer ever holds a value: a secret is written here and read only by the registry when it
builds a worker's environment. Its name is a path segment checked against the function-name
pattern (no ``/``, no ``..``, nothing a URL could normalise into another secret).
"""

from __future__ import annotations

from aiohttp import web

from hub.catalog.secrets import SecretInUse, SecretNotFound, SecretSpec
from hub.web.services import SERVICES
from hub.web.wire import ApiError, path_name, read_json, reply, validate

MAX_SECRET_BODY = 16 * 1024  # a 4 KB value, JSON-escaped


async def put_secret(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    spec = validate(SecretSpec, await read_json(request, MAX_SECRET_BODY, max_depth=2))
    view, created = await svc.secrets.put(name, spec.value)
    return reply(view, 201 if created else 200)


async def list_secrets(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    return reply({"secrets": await svc.secrets.list_all()})


async def get_secret(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    try:
        return reply(await svc.secrets.get(name))
    except SecretNotFound as exc:
        raise ApiError(404, str(exc)) from None


async def delete_secret(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    name = path_name(request)
    try:
        await svc.secrets.delete(name)
    except SecretNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except SecretInUse as exc:
        raise ApiError(409, str(exc), exc.users) from None
    return reply({"deleted": name})
