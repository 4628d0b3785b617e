"""``trigger-hub``: run a hub, and work with one from the shell.

    trigger-hub serve                           run one hub instance from HUB_* settings
    trigger-hub deploy DIR [--dry-run]          a function directory -> function + triggers
    trigger-hub invoke NAME [--data JSON|@FILE] [--async] [--version V|--alias A]
    trigger-hub logs NAME [--follow] [--since 10m] [--status failed]
    trigger-hub functions|triggers|versions|invocations|dead-letters ...
    trigger-hub aliases NAME | alias set NAME ALIAS VERSION | alias delete NAME ALIAS
    trigger-hub version code NAME VERSION [-o FILE] | version delete NAME VERSION
    trigger-hub doctor                          check the setup end to end; say what to fix

Tables for people, ``--json`` for scripts (``--json``, ``--url`` and ``--token`` go before or after
the command: hub.cli.options). Exit codes: 0 done; 1 the function failed (invoke) or
what was asked for is not there; 2 bad usage or input the hub refused (4xx); 3 the hub could not
be reached or failed (5xx). The hub and its token come from --url/--token, HUB_URL/HUB_API_TOKEN,
or the .hub/dev.env that ./scripts/run writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import click

from hub.cli.client import ApiError
from hub.cli.options import SEGMENT, Ctx, HubGroup

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3


# -- plumbing -------------------------------------------------------------------------------
def fail(message: str, code: int) -> NoReturn:
    click.secho(message, fg="red", err=True)
    sys.exit(code)


def api_call(fn: Callable[[], Any]) -> Any:
    """Run one client call; an API error becomes a message and the exit code that fits."""
    try:
        return fn()
    except ApiError as exc:
        if exc.status == 0 or exc.status >= 500:
            fail(exc.message, EXIT_UNAVAILABLE)
        fail(exc.message, EXIT_FAILED if exc.status == 404 else EXIT_USAGE)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c not in (0x09, 0x0A)}
_CONTROL.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})  # C1 controls (CSI, OSC...)


def printable(text: str) -> str:
    """A function's output as a terminal may show it: control characters (an escape sequence can
    rewrite the screen, set the window title or worse) shown as \\xNN; tabs and newlines kept."""
    return text.translate(_CONTROL)


def table(rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    rows = [{c: _cell(r.get(c)) for c in columns} for r in rows]
    if not rows:
        click.echo("(none)")
        return
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        click.echo("  ".join(r[c].ljust(widths[c]) for c in columns).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))[:60]
    return str(value)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(cls=HubGroup, globals_here=False)
@click.option("--url", envvar="HUB_URL", help="the hub (default: HUB_URL or .hub/dev.env)")
@click.option("--token", envvar="HUB_API_TOKEN", help="the admin API token (HUB_API_TOKEN)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def main(ctx: click.Context, url: str | None, token: str | None, as_json: bool) -> None:
    """Trigger Hub: Lambda-style functions on S3, MongoDB, Kafka, HTTP and schedules."""
    ctx.obj = Ctx(url, token, as_json)


# -- serve ----------------------------------------------------------------------------------
@main.command()
def serve() -> None:
    """Serve the API and run every enabled trigger until SIGINT/SIGTERM."""
    from hub import logs
    from hub.settings import Settings

    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    asyncio.run(_serve(settings))


async def _serve(settings: Any) -> None:
    from hub.app import Hub
    from hub.sandbox.bwrap import SandboxUnavailable

    try:
        hub = Hub(settings)
    except ValueError as exc:  # a setting the hub refuses (a short token, ...): say it, no traceback
        click.secho(f"trigger-hub serve: {exc}", fg="red", err=True)
        raise SystemExit(EXIT_USAGE) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    try:
        await hub.start()
    except SandboxUnavailable as exc:  # bwrap cannot run and HUB_SANDBOX=process was not chosen
        click.secho(f"trigger-hub serve: {exc}", fg="red", err=True)
        await hub.stop()
        raise SystemExit(EXIT_UNAVAILABLE) from None
    # What start-up built lives as long as the process: collected once, then out of the
    # collector's sight, so a full collection under load pauses the event loop ~1 ms instead of
    # ~40 ms (measured behind function URLs, issue 21). Here, not in Hub.start: a test process
    # that starts many hubs would keep every earlier one's leftovers frozen.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
    finally:
        await hub.stop()


def _dump_tasks() -> None:
    """SIGUSR1: log every asyncio task with where it waits (py-spy sees threads, not tasks)."""
    import io

    import structlog

    log = structlog.get_logger("hub.cli.commands")
    tasks = asyncio.all_tasks()
    for task in tasks:
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        log.warning("task", name=task.get_name(), stack=out.getvalue())
    log.warning("task dump done", tasks=len(tasks))


# -- deploy ---------------------------------------------------------------------------------
@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="show what would change, change nothing")
@pass_ctx
def deploy(c: Ctx, directory: Path, dry_run: bool) -> None:
    """Deploy a function directory: its code (and requirements.txt) and function.toml's triggers."""
    from hub.cli.deploy import DeployError, apply, plan

    try:
        p = api_call(lambda: plan(c.client, directory))
        if dry_run:
            c.out({"function": p.name, "version": p.version, "changes": p.changes, "dry_run": True},
                  lambda: click.echo("\n".join(p.changes) or f"{p.name}: nothing to change"))
            return
        shown = api_call(lambda: apply(c.client, p))
    except DeployError as exc:
        fail(str(exc), EXIT_USAGE)

    def human() -> None:
        for line in p.changes or [f"function {p.name}: unchanged (version {shown['version']})"]:
            click.echo(line)
        for tname, t in shown["triggers"].items():
            if "token" in t:
                click.echo(f"trigger {tname}: token {t['token']} (shown this once; rotate with "
                           f"`trigger-hub triggers rotate-token {tname}`)")
        click.secho(f"deployed {p.name} version {shown['version']}", fg="green")

    c.out(shown, human)


# -- invoke ---------------------------------------------------------------------------------
@main.command()
@click.argument("name", type=SEGMENT)
@click.option("--data", "-d", default=None, help="the event: JSON, or @FILE")
@click.option("--async", "is_async", is_flag=True, help="queue it and print the invocation id")
@click.option("--version", "version", default=None, help="run this version")
@click.option("--alias", default=None, help="run the version this alias points at")
@pass_ctx
def invoke(c: Ctx, name: str, data: str | None, is_async: bool, version: str | None, alias: str | None) -> None:
    """Run a function with an event and print its result, or its error and output."""
    if version and alias:
        fail("give --version or --alias, not both", EXIT_USAGE)
    body: bytes = b""
    if data is not None:
        try:
            text = Path(data[1:]).read_text() if data.startswith("@") else data
        except OSError as exc:
            fail(f"--data {data}: {exc.strerror or exc}", EXIT_USAGE)
        try:
            json.loads(text)
        except ValueError as exc:
            fail(f"--data is not JSON: {exc}", EXIT_USAGE)
        body = text.encode()
    query = {"mode": "async" if is_async else None, "version": version, "alias": alias}
    rec = api_call(lambda: c.client.call("POST", f"/v1/functions/{name}/invoke", raw=body, query=query))
    if is_async:
        c.out(rec, lambda: click.echo(rec["invocation_id"]))
        return

    def human() -> None:
        for stream in ("stdout", "stderr"):
            if rec.get(stream):
                click.echo(printable(rec[stream].rstrip("\n")), err=stream == "stderr")
        if rec["status"] == "succeeded":
            click.echo(json.dumps(rec.get("result"), indent=2))
        else:
            err = rec.get("error") or {}
            click.secho(printable(f"{rec['status']}: {err.get('type', '')}: {err.get('message', '')}"), fg="red",
                        err=True)
            if err.get("traceback"):
                click.echo(printable(err["traceback"].rstrip("\n")), err=True)

    c.out(rec, human)
    if rec["status"] != "succeeded":
        sys.exit(EXIT_FAILED)


# -- logs -----------------------------------------------------------------------------------
def _since(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1] in units and value[:-1].isdigit():
        return dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since {value!r}: give e.g. 10m, 2h, 1d or an ISO time", EXIT_USAGE)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _log_line(rec: dict[str, Any]) -> str:
    warm = "cold" if rec.get("cold_start") else "warm"
    dur = f"{rec.get('duration_ms') or 0:.1f}ms"
    events = rec.get("event_ids") or [rec.get("event_id")]
    what = events[0] if len(events) == 1 else f"{len(events)} events"
    return (f"{rec.get('finished_at') or rec.get('started_at')}  {rec['status']:<13} {dur:>9}  {warm}  "
            f"{rec.get('trigger') or '(invoke)'}  {what}")


def _print_record(c: Ctx, rec: dict[str, Any]) -> None:
    """One invocation: a summary line, then its output indented (a JSON line with --json)."""
    if c.as_json:
        click.echo(json.dumps(rec, default=str))
        return
    click.secho(_log_line(rec), fg=None if rec.get("status") == "succeeded" else "red")
    for stream in ("stdout", "stderr"):
        for line in (rec.get(stream) or "").splitlines():
            click.echo(f"    {printable(line)}")
    if rec.get("error"):
        click.echo(printable(f"    {rec['error'].get('type')}: {rec['error'].get('message')}"))


@main.command()
@click.argument("name", type=SEGMENT)
@click.option("--follow", "-f", is_flag=True, help="keep printing new invocations as they finish")
@click.option("--since", default=None, help="only newer than this: 10m, 2h, 1d or an ISO time")
@click.option("--status", default=None, help="only this status (succeeded, failed, timeout, ...; "
                                             "several with commas)")
@click.option("--limit", default=50, show_default=True, help="at most this many to start with")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="with --follow: stop following after this many seconds (exit 0)")
@pass_ctx
def logs(c: Ctx, name: str, follow: bool, since: str | None, status: str | None, limit: int,
         timeout_s: float | None) -> None:
    """A function's invocations with their output, newest last; --follow for new ones."""
    after = _since(since)
    start = after.isoformat() if after else None
    limit = max(1, limit)
    if timeout_s is not None and not follow:
        fail("--timeout bounds --follow; give both (or neither)", EXIT_USAGE)
    if follow:
        try:
            _follow_logs(c, name, start, status, limit, timeout_s)
        except KeyboardInterrupt:
            sys.exit(130)
        return
    if api_call(lambda: c.client.get_or_none(f"/v1/functions/{name}")) is None:
        fail(f"no function {name!r}", EXIT_FAILED)
    recs: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(recs) < limit:  # the newest first, a page at a time
        query = {"function": name, "status": status, "from": start, "include": "output",
                 "limit": min(limit - len(recs), 1000), "cursor": cursor}
        page = api_call(lambda: c.client.call("GET", "/v1/invocations", query=query))
        recs += page["invocations"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    for rec in reversed(recs):
        _print_record(c, rec)


def _follow_logs(c: Ctx, name: str, start: str | None, status: str | None, limit: int,
                 timeout_s: float | None = None) -> None:
    """Read GET /v1/functions/NAME/logs?follow=true; when the stream ends (the hub restarted),
    reconnect from the last invocation printed (one that started before it and finished while
    disconnected is missed). With ``timeout_s`` the hub ends the stream then (its ``max_s``) and
    this returns: a script or a pasted README block goes on to its next line."""
    import http.client
    from collections import OrderedDict

    seen: OrderedDict[str, None] = OrderedDict()
    delay = 1.0
    first = True
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    while True:
        left = deadline - time.monotonic() if deadline is not None else None
        if left is not None and left <= 0:
            return
        query = {"follow": "true", "since": start, "status": status, "limit": limit if first else 1000,
                 "max_s": f"{left:.3f}" if left is not None else None}
        try:
            for line in c.client.stream(f"/v1/functions/{name}/logs", query):
                if not line.strip():
                    continue  # heartbeat
                rec = json.loads(line)
                if "invocation_id" not in rec:
                    click.secho(f"(log stream: {rec.get('error', rec)})", fg="yellow", err=True)
                    break
                first, delay = False, 1.0
                start = rec.get("started_at") or start
                if rec["invocation_id"] in seen:
                    continue
                seen[rec["invocation_id"]] = None
                if len(seen) > 10000:
                    seen.popitem(last=False)
                _print_record(c, rec)
        except ApiError as exc:
            if exc.status != 0 and exc.status < 500:  # no such function, bad --status: no retry
                fail(exc.message, EXIT_FAILED if exc.status == 404 else EXIT_USAGE)
            click.secho(f"({exc.message}; retrying in {delay:.0f}s)", fg="yellow", err=True)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            click.secho(f"(log stream interrupted: {type(exc).__name__}; reconnecting)", fg="yellow", err=True)
        else:
            if deadline is not None and time.monotonic() >= deadline - 0.05:
                return  # the hub ended it at max_s, as asked
            click.secho("(log stream ended; reconnecting)", fg="yellow", err=True)
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - time.monotonic()))
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


# -- doctor ---------------------------------------------------------------------------------
@main.command()
@click.option("--keep", is_flag=True, help="keep the throwaway test function (to look at its record)")
@pass_ctx
def doctor(c: Ctx, keep: bool) -> None:
    """Check a setup end to end in a few seconds and say what to fix.

    The hub answers, the token is accepted, MongoDB, Kafka and S3 are reachable from the hub
    (/readyz), its subscriptions run, functions are sandboxed, and a throwaway function deploys,
    runs and is deleted. Exit 0 when nothing failed, 1 when a check failed, 3 when the hub cannot
    be reached at all.
    """
    from hub.cli import doctor as checks

    checks.run(c, keep)


# -- listing --------------------------------------------------------------------------------
@main.command()
@click.argument("name", required=False, type=SEGMENT)
@pass_ctx
def functions(c: Ctx, name: str | None) -> None:
    """List functions, or show one."""
    if name:
        doc = api_call(lambda: c.client.call("GET", f"/v1/functions/{name}"))
        c.out(doc, lambda: click.echo(json.dumps(doc, indent=2, default=str)))
        return
    docs = api_call(lambda: c.client.call("GET", "/v1/functions"))["functions"]
    c.out(docs, lambda: table(docs, ["name", "version", "handler", "timeout_s", "memory_mb",
                                     "max_concurrency", "updated_at"]))


@main.command()
@click.argument("name", type=SEGMENT)
@pass_ctx
def versions(c: Ctx, name: str) -> None:
    """A function's versions, newest first."""
    doc = api_call(lambda: c.client.call("GET", f"/v1/functions/{name}"))
    rows = [{**v, "current": "*" if v["version"] == doc["version"] else "",
             "aliases": ",".join(v.get("aliases") or []) or None} for v in doc.get("versions", [])]
    c.out(rows, lambda: table(rows, ["version", "created_at", "code_size", "current", "aliases"]))


# -- versions and aliases -------------------------------------------------------------------
@main.command()
@click.argument("name", type=SEGMENT)
@pass_ctx
def aliases(c: Ctx, name: str) -> None:
    """A function's aliases (and its current version, which NAME and NAME:latest run)."""
    doc = api_call(lambda: c.client.call("GET", f"/v1/functions/{name}/aliases"))

    def human() -> None:
        click.echo(f"latest -> {doc['latest']}")
        table(doc["aliases"], ["name", "version", "description", "updated_at"])

    c.out(doc, human)


@main.group()
def alias() -> None:
    """Point an alias at a version (moving it is a rollback), or delete it."""


@alias.command("set")
@click.argument("name", type=SEGMENT)
@click.argument("alias_name", metavar="ALIAS", type=SEGMENT)
@click.argument("version")
@click.option("--description", default="", help="what the alias is for")
@pass_ctx
def alias_set(c: Ctx, name: str, alias_name: str, version: str, description: str) -> None:
    """Create or move ALIAS to VERSION (a version, or latest: the current one, pinned now)."""
    if version == "latest":
        version = api_call(lambda: c.client.call("GET", f"/v1/functions/{name}"))["version"]
    body = {"version": version, "description": description}
    doc = api_call(lambda: c.client.call("PUT", f"/v1/functions/{name}/aliases/{alias_name}", body))
    before = doc.get("previous_version")
    c.out(doc, lambda: click.echo(f"{name}:{alias_name} -> {doc['version']}" +
                                  (f" (was {before})" if before and before != doc["version"] else
                                   "" if before else " (created)")))


@alias.command("delete")
@click.argument("name", type=SEGMENT)
@click.argument("alias_name", metavar="ALIAS", type=SEGMENT)
@pass_ctx
def alias_delete(c: Ctx, name: str, alias_name: str) -> None:
    """Delete an alias (refused while a trigger uses it)."""
    doc = api_call(lambda: c.client.call("DELETE", f"/v1/functions/{name}/aliases/{alias_name}"))
    c.out(doc, lambda: click.echo(f"deleted alias {name}:{alias_name} (was {doc['version']})"))


@main.group()
def version() -> None:
    """Download or delete one version of a function."""


@version.command("code")
@click.argument("name", type=SEGMENT)
@click.argument("version_id", metavar="VERSION", type=SEGMENT)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the zip here (default: NAME-VERSION.zip)")
@pass_ctx
def version_code(c: Ctx, name: str, version_id: str, output: Path | None) -> None:
    """Save a version's code (exactly what runs) as a zip."""
    data = api_call(lambda: c.client.call("GET", f"/v1/functions/{name}/versions/{version_id}/code"))
    out = output or Path(f"{name}-{version_id}.zip")
    out.write_bytes(data)
    c.out({"file": str(out), "bytes": len(data)}, lambda: click.echo(f"wrote {out} ({len(data)} bytes)"))


@version.command("delete")
@click.argument("name", type=SEGMENT)
@click.argument("version_id", metavar="VERSION", type=SEGMENT)
@pass_ctx
def version_delete(c: Ctx, name: str, version_id: str) -> None:
    """Delete a version (refused while it is the current one, or an alias or trigger uses it)."""
    doc = api_call(lambda: c.client.call("DELETE", f"/v1/functions/{name}/versions/{version_id}"))
    c.out(doc, lambda: click.echo(f"deleted version {version_id} of {name}"))


@main.group(invoke_without_command=True)
@click.pass_context
def triggers(ctx: click.Context) -> None:
    """List triggers; show, enable, disable, rotate-token."""
    if ctx.invoked_subcommand is not None:
        return
    c: Ctx = ctx.obj
    docs = api_call(lambda: c.client.call("GET", "/v1/triggers"))["triggers"]
    rows = [{**d, "type": d["source"]["type"], "on": _describe_source(d["source"])} for d in docs]
    c.out(docs, lambda: table(rows, ["name", "function", "type", "on", "enabled", "state"]))


@triggers.command("show")
@click.argument("name", type=SEGMENT)
@pass_ctx
def triggers_show(c: Ctx, name: str) -> None:
    """One trigger, with its state (and next fire time for a schedule)."""
    doc = api_call(lambda: c.client.call("GET", f"/v1/triggers/{name}"))
    c.out(doc, lambda: click.echo(json.dumps(doc, indent=2, default=str)))


def _describe_source(src: dict[str, Any]) -> str:
    t = src["type"]
    return {"s3": lambda: f"s3://{src['bucket']}/{src.get('prefix', '')}",
            "mongodb": lambda: f"{src['database']}.{src['collection']}",
            "kafka": lambda: src["topic"],
            "http": lambda: f"/fn{src['path']}",
            "schedule": lambda: src.get("cron") or f"rate {src.get('rate')}"}.get(t, lambda: t)()


def _set_enabled(c: Ctx, name: str, enabled: bool) -> None:
    doc = api_call(lambda: c.client.call("GET", f"/v1/triggers/{name}"))
    keys = ("function", "source", "filter", "retry", "batch", "ordering", "description")
    body = {k: doc[k] for k in keys if k in doc}
    body["enabled"] = enabled
    out = api_call(lambda: c.client.call("PUT", f"/v1/triggers/{name}", body))
    c.out(out, lambda: click.echo(f"trigger {name}: {'enabled' if enabled else 'disabled'}"))


@triggers.command("enable")
@click.argument("name", type=SEGMENT)
@pass_ctx
def triggers_enable(c: Ctx, name: str) -> None:
    """Start a trigger again."""
    _set_enabled(c, name, True)


@triggers.command("disable")
@click.argument("name", type=SEGMENT)
@pass_ctx
def triggers_disable(c: Ctx, name: str) -> None:
    """Stop a trigger without deleting it (its position is kept)."""
    _set_enabled(c, name, False)


@triggers.command("rotate-token")
@click.argument("name", type=SEGMENT)
@pass_ctx
def triggers_rotate(c: Ctx, name: str) -> None:
    """A new token for an http trigger (auth token); the old one stops working."""
    doc = api_call(lambda: c.client.call("POST", f"/v1/triggers/{name}/token"))
    c.out(doc, lambda: click.echo(doc["token"]))


@main.command()
@click.option("--function", "function", default=None)
@click.option("--trigger", default=None)
@click.option("--status", default=None)
@click.option("--event-id", default=None)
@click.option("--since", default=None, help="only newer than this: 10m, 2h, 1d or an ISO time")
@click.option("--limit", default=50, show_default=True)
@pass_ctx
def invocations(c: Ctx, function: str | None, trigger: str | None, status: str | None,
                event_id: str | None, since: str | None, limit: int) -> None:
    """Recent invocations, newest first."""
    after = _since(since)
    query = {"function": function, "trigger": trigger, "status": status, "event_id": event_id, "limit": limit,
             "from": after.isoformat() if after else None}
    docs = api_call(lambda: c.client.call("GET", "/v1/invocations", query=query))["invocations"]
    c.out(docs, lambda: table(docs, ["invocation_id", "function", "trigger", "status", "attempt",
                                     "duration_ms", "cold_start", "finished_at"]))


@main.group("dead-letters", invoke_without_command=True)
@click.option("--trigger", default=None)
@click.option("--function", "function", default=None)
@click.pass_context
def dead_letters(ctx: click.Context, trigger: str | None, function: str | None) -> None:
    """List dead letters (of --trigger / --function); show, replay, purge."""
    if ctx.invoked_subcommand is not None:
        return
    c: Ctx = ctx.obj
    docs = _dead_letters(c, trigger, function)
    rows = [{**d, "event_id": (d.get("event") or {}).get("id"), "attempts": len(d.get("attempts") or []),
             "error": (d.get("last_error") or {}).get("message")} for d in docs]
    c.out(docs, lambda: table(rows, ["id", "trigger", "function", "event_id", "attempts", "error", "created_at"]))


@dead_letters.command("show")
@click.argument("dead_letter_id", type=SEGMENT)
@pass_ctx
def dead_letters_show(c: Ctx, dead_letter_id: str) -> None:
    """One dead letter: its event and every attempt's error."""
    doc = api_call(lambda: c.client.call("GET", f"/v1/dead-letters/{dead_letter_id}"))
    c.out(doc, lambda: click.echo(json.dumps(doc, indent=2, default=str)))


def _dead_letters(c: Ctx, trigger: str | None, function: str | None) -> list[dict[str, Any]]:
    query = {"trigger": trigger, "function": function, "limit": 1000}
    return list(api_call(lambda: c.client.call("GET", "/v1/dead-letters", query=query))["dead_letters"])


@dead_letters.command("replay")
@click.argument("dead_letter_id", required=False, type=SEGMENT)
@click.option("--all", "replay_all", is_flag=True, help="every dead letter of --trigger / --function")
@click.option("--trigger", default=None)
@click.option("--function", "function", default=None)
@pass_ctx
def dead_letters_replay(c: Ctx, dead_letter_id: str | None, replay_all: bool, trigger: str | None,
                        function: str | None) -> None:
    """Run dead-lettered events again (one by id, or --all of a trigger or function)."""
    if bool(dead_letter_id) == replay_all:
        fail("give a dead letter id, or --all with --trigger or --function", EXIT_USAGE)
    if replay_all and not (trigger or function):
        fail("--all needs --trigger or --function", EXIT_USAGE)
    if dead_letter_id:
        path = f"/v1/dead-letters/{dead_letter_id}/replay"
        api_call(lambda: c.client.call("POST", path))
        c.out({"replayed": [dead_letter_id]}, lambda: click.echo("queued 1 dead letter for replay"))
        return
    query = {k: v for k, v in (("trigger", trigger), ("function", function)) if v}
    done = api_call(lambda: c.client.call("POST", "/v1/dead-letters/replay", query=query))
    c.out(done, lambda: click.echo(f"queued {done['queued']} dead letter(s) for replay"
                                   + (f" ({done['skipped']} of deleted triggers skipped)" if done["skipped"] else "")))


@dead_letters.command("purge")
@click.option("--trigger", default=None)
@click.option("--function", "function", default=None)
@click.option("--all", "purge_all", is_flag=True)
@pass_ctx
def dead_letters_purge(c: Ctx, trigger: str | None, function: str | None, purge_all: bool) -> None:
    """Delete the dead letters of a trigger or function (or --all)."""
    if not (trigger or function or purge_all):
        fail("say which: --trigger, --function or --all", EXIT_USAGE)
    query = {"trigger": trigger, "function": function, "all": "true" if purge_all else None}
    out = api_call(lambda: c.client.call("DELETE", "/v1/dead-letters", query=query))
    c.out(out, lambda: click.echo(f"deleted {out['deleted']} dead letter(s)"))


# -- secrets --------------------------------------------------------------------------------
@main.group("secrets", invoke_without_command=True)
@click.pass_context
def secrets_group(ctx: click.Context) -> None:
    """Secrets for functions' env ({"secret": NAME}): put, list, delete. Values are never shown."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(secrets_list)


@secrets_group.command("put")
@click.argument("name")
@click.option("--from-file", "from_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="read the value from this file (else from standard input); a trailing newline is dropped")
@pass_ctx
def secrets_put(c: Ctx, name: str, from_file: Path | None) -> None:
    """Create or replace a secret. The value comes from stdin or --from-file, never an argument
    (arguments end up in shell history and in every process listing)."""
    if from_file is not None:
        try:
            value = from_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {from_file}: {exc}", EXIT_USAGE)
    else:
        if sys.stdin.isatty():
            click.echo(f"value of secret {name} (end with Ctrl-D):", err=True)
        value = sys.stdin.read()
    value = value[:-1] if value.endswith("\n") else value
    value = value[:-1] if value.endswith("\r") else value
    if not value:
        fail("the value is empty: give it on standard input or with --from-file", EXIT_USAGE)
    doc = api_call(lambda: c.client.call("PUT", f"/v1/secrets/{name}", {"value": value}))
    c.out(doc, lambda: click.echo(f"secret {doc['name']} is at version {doc['version']}"))


@secrets_group.command("list")
@pass_ctx
def secrets_list(c: Ctx) -> None:
    """Secrets: name, version, when changed, which functions use each."""
    docs = api_call(lambda: c.client.call("GET", "/v1/secrets"))["secrets"]
    rows = [{**d, "used_by": ", ".join(u["function"] for u in d.get("used_by") or []) or None} for d in docs]
    c.out(docs, lambda: table(rows, ["name", "version", "updated_at", "used_by"]))


@secrets_group.command("delete")
@click.argument("name")
@pass_ctx
def secrets_delete(c: Ctx, name: str) -> None:
    """Delete a secret no function uses."""
    out = api_call(lambda: c.client.call("DELETE", f"/v1/secrets/{name}"))
    c.out(out, lambda: click.echo(f"deleted secret {name}"))


if __name__ == "__main__":
    main()
