"""The admin listener's aiohttp application: every route of the HTTP API in one table, the
error-and-auth middleware, the collaborators the handlers use (:class:`Services`). The
function-URL listener (``/fn/...`` only, on its own port, so that no function's answer shares an
origin with the console or the admin API) has no application: :mod:`hub.web.fn_server`.

``hub.app`` builds the :class:`~hub.web.services.Services` and calls :func:`make_app`; nothing
here knows the ``Hub`` itself.
"""

from __future__ import annotations

from aiohttp import web

from hub.web import admin_access_keys as akeys
from hub.web import admin_functions as fn
from hub.web import lambda_api
from hub.web import admin_secrets as sec
from hub.web import admin_tokens as tok
from hub.web import admin_history as hist
from hub.web import admin_triggers as trg
from hub.web import health, static
from hub.web.admin_history import LOG_STREAMS, stop_log_streams
from hub.web.logstream import LogStreams
from hub.web.auth import require_scope
from hub.web.s3_webhook import s3_webhook
from hub.web.scopes import ROUTE_SCOPE_TABLE, check_routes, effective
from hub.web.services import SERVICES, Services
from hub.web.wire import MAX_BODY, MAX_REQUEST_LINE, errors_and_auth


async def _nosniff(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer of the hub: a browser never guesses a type the hub did not send."""
    response.headers["X-Content-Type-Options"] = "nosniff"


def make_app(services: Services) -> web.Application:
    # aiohttp answers a request line over max_line_size with a plain-text 400 from its protocol
    # layer, which has no hook for the body; raising the limit lets URLs up to 64 KB reach the
    # middleware, which answers a JSON 414 for anything over MAX_URL_BYTES.
    # each route's scope: hub.web.scopes (require_scope runs inside errors_and_auth, which
    # answers its 401 and 403 as JSON)
    app = web.Application(middlewares=[errors_and_auth, require_scope], client_max_size=MAX_BODY,
                          handler_args={"max_line_size": MAX_REQUEST_LINE})
    app[SERVICES] = services
    app[ROUTE_SCOPE_TABLE] = effective(services.settings.metrics_public)
    app.on_response_prepare.append(_nosniff)
    app[LOG_STREAMS] = LogStreams()
    app.on_shutdown.append(stop_log_streams)
    r = app.router
    r.add_put("/v1/functions/{name}", fn.put_function)
    r.add_get("/v1/functions", fn.list_functions)
    r.add_get("/v1/functions/{name}", fn.get_function)
    r.add_delete("/v1/functions/{name}", fn.delete_function)
    r.add_post("/v1/functions/{name}/invoke", fn.invoke_function)
    r.add_get("/v1/functions/{name}/versions", fn.list_versions)
    r.add_delete("/v1/functions/{name}/versions/{version}", fn.delete_version)
    r.add_get("/v1/functions/{name}/versions/{version}/code", fn.version_code)
    r.add_get("/v1/functions/{name}/aliases", fn.list_aliases)
    r.add_get("/v1/functions/{name}/aliases/{alias}", fn.get_alias)
    r.add_put("/v1/functions/{name}/aliases/{alias}", fn.put_alias)
    r.add_delete("/v1/functions/{name}/aliases/{alias}", fn.delete_alias)
    r.add_put("/v1/triggers/{name}", trg.put_trigger)
    r.add_get("/v1/triggers", trg.list_triggers)
    r.add_get("/v1/triggers/{name}", trg.get_trigger)
    r.add_delete("/v1/triggers/{name}", trg.delete_trigger)
    r.add_post("/v1/triggers/{name}/token", trg.rotate_trigger_token)
    r.add_get("/v1/invocations", hist.list_invocations)
    r.add_get("/v1/invocations/{id}", hist.get_invocation)
    r.add_get("/v1/functions/{name}/logs", hist.function_logs)
    r.add_get("/v1/dead-letters", hist.list_dead_letters)
    r.add_get("/v1/usage", hist.get_usage)
    r.add_delete("/v1/dead-letters", hist.purge_dead_letters)
    # before /{id}: "replay" is not an id (an OPTIONS or GET on it names POST alone in Allow)
    r.add_post("/v1/dead-letters/replay", hist.replay_dead_letters)
    r.add_get("/v1/dead-letters/{id}", hist.get_dead_letter)
    r.add_post("/v1/dead-letters/{id}/replay", hist.replay_dead_letter)
    r.add_delete("/v1/dead-letters/{id}", hist.delete_dead_letter)
    r.add_post("/v1/sources/s3/events", s3_webhook)
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    r.add_get("/metrics", health.metrics)
    r.add_get("/v1/openapi.json", health.openapi)
    r.add_get("/", static.console_index)  # the web console (no token: the page holds no data)
    r.add_get("/console/{file}", static.console_file)
    r.add_get("/v1/secrets", sec.list_secrets)
    r.add_get("/v1/secrets/{name}", sec.get_secret)
    r.add_put("/v1/secrets/{name}", sec.put_secret)
    r.add_delete("/v1/secrets/{name}", sec.delete_secret)
    r.add_get("/v1/tokens/self", tok.token_self)  # before {name}: "self" is no token's name
    r.add_get("/v1/tokens", tok.list_tokens)
    r.add_post("/v1/tokens", tok.create_token)
    r.add_delete("/v1/tokens/{name}", tok.delete_token)
    r.add_get("/v1/access-keys", akeys.list_access_keys)
    r.add_post("/v1/access-keys", akeys.create_access_key)
    r.add_delete("/v1/access-keys/{name}", akeys.delete_access_key)
    # the Lambda API, AWS's paths (botocore's ListFunctions has no trailing slash; older ones had)
    r.add_post(lambda_api.PREFIX + "/{name}/invocations", lambda_api.invoke)
    r.add_get(lambda_api.PREFIX + "/{name}", lambda_api.get_function)
    r.add_get(lambda_api.PREFIX, lambda_api.list_functions)
    r.add_get(lambda_api.PREFIX + "/", lambda_api.list_functions)
    check_routes(app)
    return app
