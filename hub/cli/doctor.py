"""``trigger-hub doctor``: the command a new user runs when something does not happen.

It checks a setup end to end in a few seconds, each check with what to fix when it fails: the
hub answers, the token is accepted, MongoDB, Kafka and S3 are reachable *from the hub* (its
``/readyz`` with a token: the hub's view is what matters, not the user's shell), its subscriptions
run, functions are sandboxed, and a throwaway function deploys, runs and is deleted again.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any, NoReturn

import click

from hub.cli.client import ApiError, Client
from hub.cli.options import Ctx

EXIT_FAILED, EXIT_UNAVAILABLE = 1, 3

_DEPENDENCY_FIX = {
    "mongodb": "the hub cannot use MongoDB: check HUB_MONGO_URL (user, password, replicaSet; the hub "
               "needs a replica set for change streams) and that mongod runs; the hub's log says more",
    "kafka": "the hub cannot reach Kafka: check HUB_KAFKA_BOOTSTRAP (host:port as the hub sees it) and "
             "that the broker runs",
    "s3": "the hub cannot reach the S3 server: check HUB_S3_ENDPOINT, HUB_S3_ACCESS_KEY and "
          "HUB_S3_SECRET_KEY, and that the server runs",
}
_DOCTOR_CODE = "def handler(event, context):\n    return {'pong': event['data']['ping']}\n"


class _Report:
    """The doctor's findings: each check ok, warn (works, but look) or fail, with what to do."""

    def __init__(self, c: Ctx) -> None:
        self.c = c
        self.checks: list[dict[str, Any]] = []

    def add(self, name: str, state: str, detail: str, fix: str | None = None) -> None:
        self.checks.append({"check": name, "state": state, "detail": detail, **({"fix": fix} if fix else {})})
        if not self.c.as_json:
            colour = {"ok": "green", "warn": "yellow", "fail": "red"}[state]
            click.echo(click.style(f"{state:<5}", fg=colour) + f" {name}: {detail}")
            if fix:
                click.echo(f"      fix: {fix}")

    @property
    def failed(self) -> bool:
        return any(ch["state"] == "fail" for ch in self.checks)


def run(c: Ctx, keep: bool) -> NoReturn:
    """Run every check in order, print each (or, with --json, all at the end) and exit: 0 when
    nothing failed, 1 when a check failed, 3 when the hub cannot be reached at all. Later checks
    need the earlier ones (no token, no readiness report), so a failure there ends the run."""
    report = _Report(c)
    client = Client(c.client.url, c.client.token, timeout=15.0)

    def finish(code: int) -> NoReturn:
        if c.as_json:
            click.echo(json.dumps({"ok": not report.failed, "url": client.url, "checks": report.checks}, indent=2))
        sys.exit(code)

    # 1. the hub answers
    started = time.monotonic()
    try:
        client.call("GET", "/healthz", timeout=5.0)
        report.add("hub", "ok", f"{client.url} answers ({(time.monotonic() - started) * 1000:.0f} ms)")
    except ApiError as exc:
        report.add("hub", "fail", exc.message if exc.status == 0 else f"{client.url}/healthz: {exc.message}",
                   "start it (./scripts/run, or trigger-hub serve), or point the CLI at it: --url, HUB_URL "
                   "or the .hub/dev.env that ./scripts/run writes")
        finish(EXIT_UNAVAILABLE)

    # 2. the token
    if not client.token:
        report.add("token", "fail", "no token given",
                   "set HUB_API_TOKEN or pass --token (./scripts/run writes it to .hub/dev.env)")
        finish(EXIT_FAILED)
    try:
        client.call("GET", "/v1/functions")
        report.add("token", "ok", "accepted by the admin API")
    except ApiError as exc:
        if exc.status in (401, 403):
            report.add("token", "fail", f"refused ({exc.status}): {exc.message}",
                       "use the hub's token (HUB_API_TOKEN in .hub/dev.env, or the hub's HUB_DATA_DIR/api-token), "
                       "or a token whose scopes include read, invoke and deploy")
        else:
            report.add("token", "fail", exc.message, "the hub answered with an error; its log says why")
        finish(EXIT_FAILED)

    # 3. what the hub reaches, its subscriptions and its sandbox (/readyz with a token)
    try:
        ready = client.call("GET", "/readyz")
    except ApiError as exc:  # 503 when not ready still carries the report
        ready = exc.body if isinstance(exc.body, dict) else None
        if ready is None:
            report.add("readiness", "fail", exc.message, "the hub's log says why")
    if isinstance(ready, dict):
        checks = ready.get("checks") or {}
        for dep in ("mongodb", "kafka", "s3"):
            state = checks.get(dep)
            if state is None:
                report.add(dep, "ok", f"not checked: no enabled {dep} trigger uses it")
            elif state == "ok":
                report.add(dep, "ok", "reachable from the hub")
            else:
                report.add(dep, "fail", str(state), _DEPENDENCY_FIX[dep])
        subs = ready.get("subscriptions") or {}
        broken = {n: s for n, s in subs.items() if not str(s.get("state", "")).startswith(("running", "idle"))}
        if not broken:
            report.add("triggers", "ok", f"{len(subs)} subscription(s) running")
        for name, sub in broken.items():
            last = (sub.get("progress") or {}).get("last_error") or sub.get("error")
            state = str(sub.get("state"))
            report.add(f"trigger {name}", "fail" if state.startswith("error") else "warn",
                       f"{state} for {sub.get('for_s', '?')} s" + (f": {last}" if last else ""),
                       f"trigger-hub triggers show {name} shows its source; the hub's log has the error")
        isolation = (ready.get("sandbox") or {}).get("isolation") or (ready.get("pool") or {}).get("isolation")
        if isolation == "bwrap":
            report.add("sandbox", "ok", "functions run under bubblewrap (namespaces, no network unless asked)")
        else:
            report.add("sandbox", "warn", f"isolation {isolation!r}: functions run as plain rlimited processes, "
                                          "not isolated from the hub's host",
                       "install bubblewrap (apt-get install bubblewrap) and allow unprivileged user "
                       "namespaces, then restart the hub (HUB_SANDBOX=auto or bwrap)")

    # 4. a throwaway function: deploy, invoke, delete
    name = f"doctor-{uuid.uuid4().hex[:10]}"
    body = {"handler": "main.handler", "timeout_s": 10, "memory_mb": 128,
            "description": "trigger-hub doctor's test function (deleted after the check)",
            "code": {"files": {"main.py": _DOCTOR_CODE}}}
    try:
        t0 = time.monotonic()
        client.call("PUT", f"/v1/functions/{name}", body)
        deployed_ms = (time.monotonic() - t0) * 1000
        t0 = time.monotonic()
        rec = client.call("POST", f"/v1/functions/{name}/invoke", {"ping": name})
        ran_ms = (time.monotonic() - t0) * 1000
        if rec.get("status") == "succeeded" and rec.get("result") == {"pong": name}:
            report.add("invoke", "ok", f"a test function deployed ({deployed_ms:.0f} ms) and ran "
                                       f"({ran_ms:.0f} ms, {'cold' if rec.get('cold_start') else 'warm'})")
        elif rec.get("status") == "succeeded":
            report.add("invoke", "fail", f"the test function answered {json.dumps(rec.get('result'))[:200]}, "
                                         f"not {{\"pong\": \"{name}\"}}", "the hub's log says more")
        else:
            err = rec.get("error") or {}
            report.add("invoke", "fail", f"the test function ended {rec.get('status')}: "
                                         f"{err.get('type', '')}: {err.get('message', '')}".rstrip(": "),
                       "the hub's log and GET /v1/invocations/" + str(rec.get("invocation_id")) + " say why "
                       "(a sandbox that cannot start: see the sandbox line above)")
    except ApiError as exc:
        fix = ("the token may not deploy or invoke: use one with the deploy and invoke scopes"
               if exc.status in (401, 403) else "the hub's log says why")
        report.add("invoke", "fail", exc.message, fix)
    finally:
        if not keep:
            try:
                client.call("DELETE", f"/v1/functions/{name}")
            except ApiError as exc:
                if exc.status != 404:
                    report.add("cleanup", "warn", f"could not delete the test function {name}: {exc.message}",
                               f"delete it: curl -X DELETE $HUB_URL/v1/functions/{name} -H 'Authorization: Bearer ...'")
    finish(EXIT_FAILED if report.failed else 0)
