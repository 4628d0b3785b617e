"""``GET /readyz``: what this instance can do right now, answered within a second whatever is down.

Each check has its own short timeout and they run together: MongoDB (a ping under PyMongo's own
timeout, never a cancel from outside), the Kafka bootstrap servers and the S3 endpoint (a TCP
connect) when triggers use them, and every subscription. A subscription that is starting does
not make the hub unready (a new trigger takes a few seconds to join its group); one that has
been failing for longer than ``ERROR_GRACE_S`` does. Change streams read by another instance
(each has a single reader) are listed as such.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlparse

from hub.driver import retrieve, shielded
from hub.intake.inbox import Inbox
from hub.intake.router import Router
from hub.intake.s3_reconcile import S3Reconciler
from hub.intake.scheduler import Scheduler
from hub.intake.sources import Sources
from hub.sandbox.base import WorkerPool
from hub.settings import Settings
from hub.store import Store

CHECK_TIMEOUT_S = 0.8
# PyMongo's own timeout overshoots by up to its 0.5 s wake-up granularity, so the driver gets
# less than the check and the check waits (never cancels) for at most CHECK_TIMEOUT_S.
DRIVER_TIMEOUT_S = 0.5
ERROR_GRACE_S = 30.0


async def _tcp(host: str, port: int) -> None:
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CHECK_TIMEOUT_S)
    writer.close()


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"//{address}")
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


class Readiness:
    def __init__(self, settings: Settings, instance_id: str, store: Store, router: Router, sources: Sources,
                 inbox: Inbox, scheduler: Scheduler, s3_reconciler: S3Reconciler, pool: WorkerPool) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self.store = store
        self.router = router
        self.sources = sources
        self.inbox = inbox
        self.scheduler = scheduler
        self.s3_reconciler = s3_reconciler
        self.pool = pool

    async def report(self) -> dict[str, Any]:
        types = {t.source_type for t in self.router.triggers.values() if t.enabled}
        checks: dict[str, Any] = {"mongodb": self._mongodb()}
        if "kafka" in types:
            checks["kafka"] = self._kafka()
        if "s3" in types and self.settings.s3_endpoint:
            checks["s3"] = self._s3()
        results = await asyncio.gather(*checks.values())
        checks = dict(zip(checks, results))
        holders = await self._stream_holders() if checks["mongodb"] == "ok" else {}
        subs = self._subscriptions(holders)
        failing = [n for n, s in subs.items() if s["state"].startswith("error") and s["for_s"] > ERROR_GRACE_S]
        report: dict[str, Any] = {
            "ready": all(v == "ok" for v in checks.values()) and not failing,
            "instance": self.instance_id,
            "checks": checks,
            "subscriptions": subs,
            "inbox": self.inbox.stats(),
            "sandbox": self._sandbox(),
            "pool": self.pool.stats(),
            "s3_reconcile": self.s3_reconciler.status(),
        }
        if self.scheduler.status():
            report["schedules"] = self.scheduler.status()
        return report

    def _sandbox(self) -> dict[str, Any]:
        sandboxed = self.pool.isolation == "bwrap"
        out: dict[str, Any] = {"isolation": self.pool.isolation, "sandboxed": sandboxed}
        if not sandboxed:  # the operator chose HUB_SANDBOX=process: say it where it is looked at
            out["warning"] = "functions are NOT isolated (HUB_SANDBOX=process)"
        return out

    async def _mongodb(self) -> str:
        ping = asyncio.ensure_future(shielded(self.store.ping(DRIVER_TIMEOUT_S)))
        ping.add_done_callback(retrieve)  # it may end after this check gave up on it
        done, _ = await asyncio.wait([ping], timeout=CHECK_TIMEOUT_S)
        if not done:
            return f"error: no answer within {CHECK_TIMEOUT_S}s"
        exc = ping.exception()
        if exc is not None:
            return f"error: {type(exc).__name__}: {str(exc)[:300]}"
        return "ok"

    async def _kafka(self) -> str:
        servers = [s for s in self.settings.kafka_bootstrap.split(",") if s.strip()]
        errors = []
        for server in servers:
            try:
                await _tcp(*_host_port(server.strip(), 9092))
                return "ok"  # one reachable bootstrap server is enough
            except (OSError, TimeoutError) as exc:
                errors.append(f"{server}: {type(exc).__name__} {exc}".strip())
        return "error: Kafka unreachable: " + "; ".join(errors)

    async def _s3(self) -> str:
        endpoint = self.settings.s3_endpoint
        default = 443 if endpoint.startswith("https") else 80
        try:
            await _tcp(*_host_port(endpoint, default))
            return "ok"
        except (OSError, TimeoutError) as exc:
            return f"error: S3 endpoint {endpoint} unreachable: {type(exc).__name__} {exc}".strip()

    async def _stream_holders(self) -> dict[str, Any]:
        query = asyncio.ensure_future(shielded(self.store.lease_holders("stream:", DRIVER_TIMEOUT_S)))
        query.add_done_callback(retrieve)
        done, _ = await asyncio.wait([query], timeout=CHECK_TIMEOUT_S)
        if not done or query.exception() is not None:
            return {}
        return query.result()

    def _subscriptions(self, holders: dict[str, Any]) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for name, (_, sub) in self.sources.running.items():
            out[name] = {"state": sub.state, "for_s": round(now - sub.state_since, 1), "progress": sub.progress()}
        for name in self.sources.held_elsewhere:
            holder = holders.get(f"stream:{name}", {}).get("owner", "another instance")
            out[name] = {"state": f"held by {holder}", "for_s": 0.0, "progress": {}}
        return out
