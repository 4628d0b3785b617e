"""S3 triggers catch up by themselves: a reconciling scan of each watched bucket, and one dedup
that the scan and the webhook share.

Why: S3 notifications can be late or lost. A Ceph RGW persistent topic sends its queue in order,
and a push that was in flight when the hub was killed stays pending inside radosgw, holding the
queue behind it for many minutes; AWS documents late notifications; a MinIO webhook target can
drop them. So every ``s3_reconcile_interval_s`` the hub lists the watched part of each bucket that
an enabled s3 trigger names and feeds what no notification brought into the inbox (the same
``Inbox.put_events`` the webhook uses, hence the same matching, filters, retries and dead letters).
A notification that arrives after the scan queued its object is dropped, and the other way round.

Observations and the claim rule
-------------------------------
A notification (bucket, key, eTag, eventTime) and a listing entry (bucket, key, ETag,
LastModified) name the same change when bucket, key and ETag are equal and the two times lie
within ``slack_s`` (default 2 s; on Ceph RGW eventTime and LastModified differ by < 5 ms,
multipart uploads included). ``s3_seen`` holds one document per (bucket, key, ETag) with a short
list ``obs`` of the change times seen, so the same bytes uploaded twice at different times are two
changes. Claiming an observation at time t is one atomic upsert:

    filter  {_id, obs: {$not: {$elemMatch: {t: {$gte: t - slack, $lte: t + slack}}}}}
    update  {$push: {obs: {t, state: "pending", tok, at, event}}}, upsert

If a matching time exists the filter misses, the upsert tries to insert an existing ``_id`` and
fails with a duplicate-key error: a duplicate. MongoDB re-evaluates the filter after a write
conflict, so of two concurrent observers (scan on instance A, late notification on instance B)
exactly one wins. The ETag, not the version id, keys the document because a plain listing has no
version ids while a notification from a versioned bucket has them. ``obs`` keeps the newest 32
entries (a claim still pending could only be pushed out by 31 newer uploads of the same bytes to the
same key within seconds); documents expire ``s3_seen_ttl_s`` after their last change (a
notification later than that would run once more).

Claim, queue, confirm
---------------------
A claim is written *pending* and carries the event itself; the caller then queues the event in the
inbox and confirms the claim (drops the event, state "queued"). Should the hub die or the queueing
fail between claim and confirm, the pending claim is still durable storage of the event: claims
pending for longer than ``pending_ttl_s`` are taken over by a reconciler (atomically, one instance)
and their *stored* event is queued again. A stored event keeps its id, so if the first queueing did
succeed (only the confirm was lost) the dispatcher's "never run a succeeded (trigger, event id)
again" rule absorbs it. (A failed scan pass withdraws its claims instead, as it does not save its
position and the next pass lists the same keys again; the webhook never withdraws, since a retry of
the same notification may meanwhile have been answered "duplicate".) A pending claim counts as seen, so the other path never queues a second,
differently-identified event for it. The webhook therefore still answers 2xx only once what must
run is stored: in the inbox, or in a pending claim that recovery is bound to queue.

What the scan takes, and when
-----------------------------
- Watched: every bucket of an enabled s3 trigger, listing only the triggers' prefixes.
- Overdue: an object whose LastModified is more than ``grace_s`` (default 15 s, more than RGW's
  ~6 s persistent delivery) in the past and that no notification has claimed. Overdue objects are
  claimed and queued at once; this is also what the first pass after a restart finds for uploads
  made while the hub was down. Younger unseen objects are left to their notification and re-checked
  in memory when they become overdue (no second listing needed). So after a restart every upload
  made while the hub was down is queued within about ``grace_s`` of the first pass, and an upload
  behind a stalled queue runs between ``grace_s`` and about one interval after it was made.
- Triggers' time: the scan queues an object only if a trigger matching it was last written
  (``updated_at``) before the object changed (within the slack): a new trigger does not run on the
  bucket's old objects, as with notifications.
- Bounded and cheap when idle: a pass lists at most ``max_keys`` keys and continues after the last
  one on the next pass (a *cycle* is the run of passes that gets through every watched prefix).
  Only objects changed after the bucket's *watermark* minus ``margin_s`` (clock skew) are checked
  against MongoDB, in batches. After a full cycle that started listing at time C, every object
  changed before C - grace was seen by it while overdue, so the watermark moves to C - grace.
  An idle pass is one LIST request per 1,000 keys, a read of the trigger list and two state
  writes.
- Scheduling across instances: the per-bucket state (``s3_reconcile``: watermark, position,
  ``next_pass_at``) is shared; an instance takes a pass with one conditional update on
  ``next_pass_at``, so N instances do not list a bucket N times. Each instance goes for the turn
  a random moment (up to a tenth of the interval, at most 1 s) after it is due: with all waking
  at the same instant, the instance whose loop was quickest won every turn, and a slower one
  never scanned. The first pass after an instance starts ignores the schedule. The state write
  at the end of a pass is conditional on its token, so a pass that was overtaken cannot move the
  position back.
- Failures (S3 down, bucket gone, bad credentials, MongoDB down) are logged as structured warnings,
  shown in ``/readyz`` and retried on the next pass; they never stop the hub.

What it cannot do: a scan sees what a bucket holds now, so deletions (``ObjectRemoved``) are not
reconciled, a version overwritten before any pass saw it is not, and Put, Copy and Post are not
told apart (scan events say ``s3:ObjectCreated:Put``, or ``...:CompleteMultipartUpload`` for a
multipart ETag, with ``data.reconciled = true``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import random
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from connectors.s3_scan import BucketLister, ListedObject, iso_millis, scan_event
from hub.events import Event
from hub.intake.group_commit import GroupCommit
from hub.intake.s3_seen import Observation, Put, SeenObjects, observation_of, parse_time, utcnow

if TYPE_CHECKING:
    from hub.intake.inbox import Inbox
    from hub.metrics import Metrics
    from hub.intake.router import Router, Trigger
    from hub.settings import Settings
    from hub.store import Store

log = structlog.get_logger("hub.intake.s3_reconcile")

STATE = "s3_reconcile"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# Under a steady flow of POSTs a batch of admissions waits up to this long for the senders the
# last batch answered (hub.intake.group_commit): three round trips per batch, shared by twice as
# many notifications.
ADMIT_LINGER_S = 0.005


def _scan_observation(bucket: str, obj: ListedObject) -> Observation:
    return Observation(bucket, obj.key, obj.etag, obj.last_modified, scan_event(bucket, obj))


class S3Reconciler:
    """Runs the scan for every watched bucket and deduplicates the webhook against it."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        db: AsyncDatabase[dict[str, Any]],
        router: Router,
        inbox: Inbox,
        metrics: Metrics,
        *,
        owner: str = "",
        margin_s: float | None = None,
        pending_ttl_s: float = 30.0,
        max_deferred: int = 10_000,
    ) -> None:
        self.store = store
        self.router = router
        self.inbox = inbox
        self.owner = owner
        self.interval_s = float(settings.s3_reconcile_interval_s)
        self.grace_s = float(settings.s3_reconcile_grace_s)
        self.max_keys = max(1, int(settings.s3_reconcile_max_keys))
        self.slack_s = float(settings.s3_reconcile_slack_s)
        self.margin_s = float(margin_s if margin_s is not None else max(60.0, 2 * self.grace_s))
        self.turn_jitter_s = min(1.0, self.interval_s / 10)  # see "Scheduling across instances"
        self.pending_ttl_s, self.max_deferred = pending_ttl_s, max_deferred
        self.enabled = self.interval_s > 0 and bool(settings.s3_endpoint)
        self.disabled_reason = None if self.enabled else (
            "HUB_S3_RECONCILE_INTERVAL_S is 0" if self.interval_s <= 0 else "HUB_S3_ENDPOINT is not set")
        # this reconciler owns two collections of the hub's database (handed in by hub.app):
        # the seen objects (the dedup claims) and the per-bucket scan state
        self.seen = SeenObjects(db, slack_s=self.slack_s, pending_ttl_s=pending_ttl_s,
                                ttl_s=settings.s3_seen_ttl_s)
        self.states = db[STATE]
        self._settings = settings
        self._lister: BucketLister | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._next_due: dict[str, dt.datetime] = {}
        self._started: set[str] = set()  # buckets whose first pass since start has run
        self._deferred: list[tuple[dt.datetime, int, Observation]] = []
        self._seq = itertools.count()
        self._last_recovery = EPOCH
        self._status: dict[str, dict[str, Any]] = {}
        self.recovered = 0
        self._admits: dict[Put, GroupCommit[Event, bool]] = {}
        self._unconfirmed: list[tuple[Observation, str]] = []
        self._confirming: asyncio.Task[None] | None = None
        self.queued_metric = Counter(
            "hub_s3_reconciled_events_total", "Events queued by the S3 reconciling scan (their "
            "notifications were late or lost)", ["bucket"], registry=metrics.registry)
        self.error_metric = Counter(
            "hub_s3_reconcile_errors_total", "Failed S3 reconcile passes", ["bucket"], registry=metrics.registry)
        self.duplicate_metric = Counter(
            "hub_s3_notification_duplicates_total", "S3 notifications dropped because the scan (or an "
            "earlier copy) had queued their change already", registry=metrics.registry)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.enabled:
            log.info("s3 reconciling scan disabled", reason=self.disabled_reason)
            return
        await self.seen.init()
        s = self._settings
        self._lister = BucketLister(s.s3_endpoint, s.s3_access_key, s.s3_secret_key, s.s3_region)
        self._task = asyncio.create_task(self._loop(), name="s3-reconcile")

    async def stop(self) -> None:
        """Let a running pass finish (up to a few seconds) rather than cancel it inside PyMongo."""
        for group in self._admits.values():
            await group.drain()
        if self._confirming is not None:
            await asyncio.wait({self._confirming}, timeout=5.0)
        if self._task:
            self._stopping.set()
            done, _ = await asyncio.wait({self._task}, timeout=5.0)
            if not done:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def status(self) -> dict[str, Any]:
        """For /readyz: no I/O, so it answers at once even when MongoDB or S3 is down."""
        if not self.enabled:
            return {"enabled": False, "reason": self.disabled_reason}
        return {
            "enabled": True,
            "interval_s": self.interval_s,
            "grace_s": self.grace_s,
            "max_keys_per_pass": self.max_keys,
            "deferred": len(self._deferred),
            "recovered_claims": self.recovered,
            "buckets": {b: dict(s) for b, s in sorted(self._status.items())},
        }

    # -- the webhook's side -------------------------------------------------------------------
    async def admit(self, events: list[Event], put: Put) -> tuple[int, int]:
        """Queue ``events`` with ``put`` minus the ObjectCreated changes already claimed (by the
        scan, another instance or an earlier copy of this notification). Claim, then queue, then
        confirm; if ``put`` fails the claims stay pending with their events and are re-queued by
        recovery (see the module docstring), and the error propagates so the sender retries.
        Concurrent calls are claimed and queued together (hub.intake.group_commit); each returns
        once its own events are stored. Returns (queued, duplicates)."""
        if not events:
            return 0, 0
        group = self._admits.get(put)
        if group is None:
            group = self._admits[put] = GroupCommit(lambda batch: self._admit_batch(batch, put), name="s3-admit",
                                                    linger_s=ADMIT_LINGER_S)
        queued = sum(await group.submit(events))
        return queued, len(events) - queued

    async def _admit_batch(self, events: list[Event], put: Put) -> list[bool]:
        """One claim (a bulk upsert) and one ``put`` for every event of the batch: queued or not."""
        if not self.enabled:
            await put(events)
            return [True] * len(events)
        observed = [(e, observation_of(e)) for e in events]
        # the confirms of earlier batches ride along with this claim: one round trip fewer
        confirms, self._unconfirmed = self._unconfirmed, []
        try:
            tokens = iter(await self.seen.claim([o for _, o in observed if o is not None], "notification", confirms))
        except BaseException:
            self._unconfirmed = confirms + self._unconfirmed
            raise
        won = [(e, o, next(tokens) if o is not None else "") for e, o in observed]
        fresh = [e for e, _, tok in won if tok is not None]
        if len(fresh) < len(events):
            self.duplicate_metric.inc(len(events) - len(fresh))
        # No withdrawal if this fails: a retry of this notification may meanwhile have been told
        # "duplicate"; the pending claims hold the events and recovery queues them.
        await put(fresh)
        # Queued. The confirm (dropping the stored copies) need not hold up the answer: it goes
        # with the next batch's claim, or on its own after a moment without one; a lost one is
        # only a re-check by recovery.
        self._unconfirmed += [(o, tok) for _, o, tok in won if o is not None and tok is not None]
        if self._unconfirmed and (self._confirming is None or self._confirming.done()):
            self._confirming = asyncio.create_task(self._confirm_loop(), name="s3-confirm")
        return [tok is not None for _, _, tok in won]

    async def _confirm_loop(self) -> None:
        while self._unconfirmed:
            if not self._stopping.is_set():
                await asyncio.sleep(0.05)  # a batch coming meanwhile takes them along
            batch, self._unconfirmed = self._unconfirmed[:1000], self._unconfirmed[1000:]
            try:
                await self.seen.confirm(batch)
            except Exception as exc:  # queued already; recovery re-queues the same ids, which are skipped
                log.warning("confirming s3 claims failed; recovery will re-check them", error=str(exc))

    # -- the scan -----------------------------------------------------------------------------
    def watched(self) -> dict[str, list[Trigger]]:
        out: dict[str, list[Trigger]] = {}
        for t in self.router.of_type("s3"):
            out.setdefault(str(t.source["bucket"]), []).append(t)
        return out

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await self.tick()
                if failures:
                    log.info("s3 reconcile rounds work again", failed_rounds=failures)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. MongoDB down: back off, say so once
                failures += 1
                if failures == 1:
                    log.warning("s3 reconcile round failed; retrying", error=f"{type(exc).__name__}: {exc}")
            delay = min(2.0 ** failures, 30.0) if failures else self._sleep_s()
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except TimeoutError:
                pass

    def _sleep_s(self) -> float:
        t = utcnow()
        due = [*self._next_due.values()]
        if self._deferred:
            due.append(self._deferred[0][0])
        soonest = min(due, default=t + dt.timedelta(seconds=1))
        # at most 1 s: a new s3 trigger (an in-memory router change) gets its first pass promptly
        return min(1.0, max(0.05, (soonest - t).total_seconds()))

    async def tick(self) -> None:
        """One round: the passes that are due, the deferred re-checks, pending-claim recovery."""
        t = utcnow()
        watched = self.watched()
        for bucket in list(self._status):
            if bucket not in watched:
                self._status.pop(bucket, None)
                self._next_due.pop(bucket, None)
                self._started.discard(bucket)
        due = [b for b in sorted(watched) if self._next_due.get(b, EPOCH) <= t]
        if due:
            since = await self._trigger_since()
            for bucket in due:
                if self._stopping.is_set():
                    return
                await self._guarded_pass(bucket, watched[bucket], since)
        await self._recheck_deferred()
        if (t - self._last_recovery).total_seconds() >= min(self.interval_s, self.pending_ttl_s / 3):
            self._last_recovery = t
            self.recovered += await self.seen.recover_stale(self.inbox.put_events)

    async def _trigger_since(self) -> dict[str, dt.datetime]:
        """When each s3 trigger was last written: it is fed no object changed before that."""
        out: dict[str, dt.datetime] = {}
        for doc in await self.store.list_triggers():
            when = doc.get("updated_at") or doc.get("created_at")
            if isinstance(when, dt.datetime):
                out[doc["_id"]] = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
        return out

    def _bucket_status(self, bucket: str) -> dict[str, Any]:
        return self._status.setdefault(bucket, {
            "state": "starting", "passes": 0, "queued": 0, "errors": 0, "last_error": None,
            "last_error_at": None, "last_pass_at": None, "last_pass_s": None, "last_listed": None,
            "watermark": None, "position": None, "next_pass_at": None,
        })

    async def _guarded_pass(self, bucket: str, triggers: list[Trigger], since: dict[str, dt.datetime]) -> None:
        status = self._bucket_status(bucket)
        try:
            await self._pass(bucket, triggers, since)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            t = utcnow()
            message = f"{type(exc).__name__}: {exc}"
            status.update(state="error", last_error=message[:500], last_error_at=_iso(t))
            status["errors"] += 1
            self.error_metric.labels(bucket).inc()
            self._next_due[bucket] = self._turn_at(t + dt.timedelta(seconds=self.interval_s))
            status["next_pass_at"] = _iso(self._next_due[bucket])
            log.warning("s3 reconcile pass failed; retrying next pass", bucket=bucket, error=message[:500])

    def _turn_at(self, due: dt.datetime) -> dt.datetime:
        """When this instance goes for a turn due at ``due``: a random moment after it, so the
        instances sharing a bucket take its turns by chance, not by whose loop is quickest."""
        return due + dt.timedelta(seconds=random.uniform(0.0, self.turn_jitter_s))

    async def _pass(self, bucket: str, triggers: list[Trigger], since: dict[str, dt.datetime]) -> None:
        assert self._lister is not None
        status = self._bucket_status(bucket)
        t0 = utcnow()
        token = uuid.uuid4().hex
        interval = dt.timedelta(seconds=self.interval_s)
        take: dict[str, Any] = {"_id": bucket}
        if bucket in self._started:
            take["$or"] = [{"next_pass_at": {"$lte": t0}}, {"next_pass_at": None}]
        try:
            state = await self.states.find_one_and_update(
                take,
                {"$set": {"next_pass_at": t0 + interval, "pass_token": token, "pass_owner": self.owner,
                          "pass_started_at": t0}},
                upsert=True, return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # not due: another instance made this pass
            other = await self.states.find_one({"_id": bucket}) or {}
            self._next_due[bucket] = self._turn_at(other.get("next_pass_at") or t0 + interval)
            status.update(next_pass_at=_iso(self._next_due[bucket]), watermark=_iso(other.get("watermark")),
                          last_pass_at=_iso(other.get("last_pass_at")), state="ok (passed by another instance)")
            return
        self._started.add(bucket)
        try:
            await self._scan(bucket, triggers, since, state or {}, token, t0)
        except Exception as exc:
            # Hand the turn back at once: another instance (whose S3 access may work) can take it.
            try:
                await self.states.update_one({"_id": bucket, "pass_token": token}, {"$set": {
                    "next_pass_at": utcnow(), "last_error": f"{type(exc).__name__}: {exc}"[:500],
                    "last_error_at": utcnow(), "last_error_owner": self.owner}})
            except Exception:
                pass
            raise

    async def _scan(
        self, bucket: str, triggers: list[Trigger], since: dict[str, dt.datetime], state: dict[str, Any],
        token: str, t0: dt.datetime,
    ) -> None:
        """The pass proper, once this instance has the turn: list, claim, queue, save the position."""
        assert self._lister is not None
        status = self._bucket_status(bucket)
        interval = dt.timedelta(seconds=self.interval_s)
        watermark: dt.datetime | None = state.get("watermark")
        start_after: str | None = state.get("start_after")
        cycle_started: dt.datetime | None = state.get("cycle_started_at")

        listing_started = utcnow()
        page = await asyncio.to_thread(
            self._lister.list_page, bucket, [t.source.get("prefix") or "" for t in triggers],
            start_after, self.max_keys,
        )
        if start_after is None or cycle_started is None:
            cycle_started = listing_started
        slack = dt.timedelta(seconds=self.slack_s)
        if watermark is not None:
            lower = watermark - dt.timedelta(seconds=self.margin_s)
        else:  # never scanned: from when the bucket's earliest trigger was written
            lower = min((since[t.name] for t in triggers if t.name in since), default=t0) - slack
        candidates: list[Observation] = []
        for obj in page.objects:
            if obj.last_modified < lower:
                continue
            obs = _scan_observation(bucket, obj)
            if self._wanted(obs, since):
                candidates.append(obs)
        queued = deferred = 0
        for chunk in _chunks(candidates, 500):
            q, d = await self._claim_and_queue(chunk)
            queued += q
            deferred += d

        t1 = utcnow()
        duration = (t1 - t0).total_seconds()
        complete = page.next_start_after is None
        fields: dict[str, Any] = {
            "last_pass_at": t1, "last_pass_s": duration, "last_listed": len(page.objects),
            "last_queued": queued, "last_owner": self.owner,
        }
        if complete:
            new_mark = cycle_started - dt.timedelta(seconds=self.grace_s)
            fields.update(watermark=max(watermark, new_mark) if watermark else new_mark,
                          start_after=None, cycle_started_at=None, last_cycle_at=t1)
            next_at = t1 + interval
        else:
            fields.update(start_after=page.next_start_after, cycle_started_at=cycle_started)
            # a long cycle continues soon, at no more than about half the time spent listing
            next_at = t1 + min(interval, dt.timedelta(seconds=max(0.5, duration)))
        fields["next_pass_at"] = next_at
        res = await self.states.update_one(
            {"_id": bucket, "pass_token": token}, {"$set": fields, "$inc": {"queued_total": queued}})
        self._next_due[bucket] = self._turn_at(next_at)
        status.update(
            state="ok", last_error=None, last_pass_at=_iso(t1), last_pass_s=round(duration, 3),
            last_listed=len(page.objects),
            watermark=_iso(fields.get("watermark", watermark)), position=fields["start_after"],
            next_pass_at=_iso(next_at), prefixes=page.prefixes,
        )
        status["passes"] += 1
        if res.matched_count == 0:
            log.info("s3 reconcile pass overtaken by another instance; its position not saved", bucket=bucket)
        if queued:
            log.info("s3 reconcile queued objects whose notifications had not come", bucket=bucket,
                     queued=queued, listed=len(page.objects), deferred=deferred)

    def _wanted(self, obs: Observation, since: dict[str, dt.datetime]) -> bool:
        """Some trigger wants it, and was written before the object changed."""
        slack = dt.timedelta(seconds=self.slack_s)
        return any(
            t.name in since and obs.time >= since[t.name] - slack for t in self.router.match_s3(obs.event)
        )

    async def _claim_and_queue(self, candidates: list[Observation]) -> tuple[int, int]:
        """Claim and queue what is unseen and overdue; remember what is unseen and young."""
        unseen = await self.seen.filter_unseen(candidates)
        t = utcnow()
        grace = dt.timedelta(seconds=self.grace_s)
        overdue = [o for o in unseen if t - o.time > grace]
        young = [o for o in unseen if t - o.time <= grace]
        for obs in young:
            if len(self._deferred) >= self.max_deferred:
                break  # the next cycle covers the rest: they are above the next watermark
            heapq.heappush(self._deferred, (obs.time + grace, next(self._seq), obs))
        return await self._queue(overdue), len(young)

    async def _queue(self, observations: list[Observation]) -> int:
        tokens = await self.seen.claim(observations, via="scan")
        won = [(o, tok) for o, tok in zip(observations, tokens) if tok is not None]
        if not won:
            return 0
        await self._put_or_release([o.event for o, _ in won], won, self.inbox.put_events)
        for obs, _ in won:
            self.queued_metric.labels(obs.bucket).inc()
            self._bucket_status(obs.bucket)["queued"] += 1
        try:
            await self.seen.confirm(won)
        except Exception as exc:
            log.warning("confirming s3 claims failed; recovery will re-check them", error=str(exc))
        return len(won)

    async def _put_or_release(self, events: list[Event], claimed: list[tuple[Observation, str]], put: Put) -> None:
        try:
            await put(events)
        except BaseException:
            try:
                await asyncio.shield(self.seen.release(claimed))
            except BaseException:  # still pending: recovery queues the stored events later
                pass
            raise

    async def _recheck_deferred(self) -> None:
        """Objects that were too young at their pass: claim them now unless a notification did."""
        t = utcnow()
        ready: list[Observation] = []
        while self._deferred and self._deferred[0][0] < t:
            ready.append(heapq.heappop(self._deferred)[2])
        if not ready:
            return
        watched = self.watched()
        ready = [o for o in ready if o.bucket in watched and self.router.match_s3(o.event)]
        try:
            for chunk in _chunks(ready, 500):
                queued = await self._queue(await self.seen.filter_unseen(chunk))
                if queued:
                    log.info("s3 reconcile queued objects whose notifications had not come",
                             queued=queued, deferred=True)
        except Exception as exc:  # the next cycle covers them: they are above the next watermark
            log.warning("s3 reconcile re-check failed; the next pass covers it", error=str(exc))


def _chunks(items: list[Observation], size: int) -> list[list[Observation]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _iso(value: Any) -> str | None:
    return iso_millis(value) if isinstance(value, dt.datetime) else None


__all__ = ["Observation", "S3Reconciler", "SeenObjects", "observation_of", "parse_time"]
