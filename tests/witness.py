"""Independent evidence for the delivery promises: what the function itself did, one request per run.

The hub's invocation records say what the hub believes ran; a test that counts only them trusts
the code under test to report on itself. Here the function under test (:meth:`Witness.function`)
reports every run of its own to :class:`Witness`, a small HTTP server the test runs on loopback,
before it does anything else: a run id it makes itself, the target (trigger, or ``invoke:<fn>``)
and attempt from its context, the event ids and the test's sequence ids it was given. It returns
the run id (a failing run puts it in its error message), so each record names the run it stands
for. The witness numbers the reports as they arrive, so "before" and "after" need no clock.

What the design promises (../shared/DESIGN.md, "Delivery semantics"), checked from both sides by
:func:`judge`:

- **Nothing lost**: every written sequence id ran (a report) and succeeded (a record).
- **A success never runs again**: at-least-once allows more than one run of an event -- a failed
  attempt, or a run whose record never became durable because the hub died between the run and the
  record -- but none once it has succeeded. For every (target, event id), the run its succeeded
  record names must be the event's last run; for every written sequence id (Kafka, MongoDB, S3:
  each written once), its first succeeded run must be its last (this also catches one upload run
  again under a second event id). A run that started after the succeeded one had started counts,
  even if it overlapped it: the faults these tests inject never let two runs of one event overlap
  legitimately (a killed instance is dead before its work is handed on, a stopping one finishes
  before it leaves, and within an instance duplicates wait for the running delivery's record).
- **Every success ran**: a succeeded record whose run the function never reported is a phantom.
- **Unrecorded runs** (a report, no record) can only come from a crash between a run and its
  record; :attr:`Judgement.unrecorded` lists them, and tests without a kill -9 assert there are none.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.hubfixtures import eventually

WITNESS_FUNCTION = '''\
import json
import time
import urllib.request
import uuid

WITNESS = {url!r}
SLEEP_S = {sleep}


def _value(event):
    source = event.get("source") or ""
    data = event.get("data") or {{}}
    if source.startswith("kafka://"):
        return data["value"]
    if source.startswith("mongodb://"):
        return data["fullDocument"]
    if source.startswith("s3://"):
        name = data["key"].rsplit("/", 1)[-1]
        return {{"seq": name.split(".", 1)[0], "fail": name.endswith(".fail")}}
    return data


def handler(event, context):
    run = uuid.uuid4().hex
    batch = event.get("type") == "hub.batch"
    records = event["records"] if batch else [event]
    values = [_value(r) for r in records]
    seqs = [v["seq"] for v in values]
    report = {{"run": run, "target": context.trigger or "invoke:" + context.function_name,
               "attempt": context.attempt, "event_ids": [r["id"] for r in records], "seqs": seqs}}
    request = urllib.request.Request(WITNESS, data=json.dumps(report).encode(),
                                     headers={{"Content-Type": "application/json"}})
    with urllib.request.urlopen(request, timeout=20) as answer:
        answer.read()
    if SLEEP_S:
        time.sleep(SLEEP_S)
    failing = [r["id"] for r, v in zip(records, values) if v.get("fail")]
    if failing and not batch:
        raise RuntimeError("asked to fail: %s (run %s)" % (seqs[0], run))
    result = {{"seqs": seqs, "run": run}}
    if batch:
        result["batchItemFailures"] = [{{"itemIdentifier": i}} for i in failing]
    return result
'''

RUN_IN_ERROR = re.compile(r"\(run ([0-9a-f]{32})\)")


@dataclass(frozen=True)
class Run:
    n: int  # arrival order at the witness
    run: str  # the id the function made for this run
    target: str
    attempt: int
    event_ids: tuple[str, ...]
    seqs: tuple[str, ...]


class Witness:
    """A loopback HTTP server in a thread of its own (so a test's busy event loop cannot slow the
    function down): every POST is one run of the function under test."""

    def __init__(self) -> None:
        self._runs: list[Run] = []
        self._lock = threading.Lock()
        witness = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                witness._add(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # bursts from several hubs' workers at once

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/runs"
        self._thread = threading.Thread(target=self._server.serve_forever, name="witness", daemon=True)
        self._thread.start()

    def _add(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._runs.append(Run(len(self._runs), str(body["run"]), str(body["target"]), int(body["attempt"]),
                                  tuple(body["event_ids"]), tuple(body["seqs"])))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what the function needs ------------------------------------------------------------
    @property
    def network(self) -> dict[str, Any]:
        """The function's ``network`` setting: this witness, and nothing else, on loopback."""
        return {"allow": [f"127.0.0.1:{self.port}"]}

    def function(self, sleep_s: float = 0.0) -> str:
        """The function under test: reports the run, sleeps ``sleep_s``, returns
        ``{"seqs": [...], "run": id}`` (so tests.chaos.outcome reads its records as before);
        events marked ``fail`` (an S3 key ending ``.fail``) fail: a single event raises, a batch
        reports them in ``batchItemFailures``."""
        return WITNESS_FUNCTION.format(url=self.url, sleep=sleep_s)

    # -- what it saw ------------------------------------------------------------------------
    @property
    def runs(self) -> list[Run]:
        with self._lock:
            return list(self._runs)

    def runs_of(self, seq: str) -> list[Run]:
        return [r for r in self.runs if seq in r.seqs]

    def seen(self, seqs: Iterable[str]) -> bool:
        ran = {s for r in self.runs for s in r.seqs}
        return all(s in ran for s in seqs)

    async def wait_seen(self, seqs: Iterable[str], timeout: float) -> None:
        """Until every one of ``seqs`` (end-of-stream markers, say) has run at least once."""
        wanted = list(seqs)

        async def ran() -> bool:
            return self.seen(wanted)

        try:
            await eventually(ran, timeout=timeout, interval=0.1)
        except AssertionError:
            missing = [s for s in wanted if not self.runs_of(s)]
            raise AssertionError(f"these never ran within {timeout}s: {missing}") from None


# -- the verdict -----------------------------------------------------------------------------
@dataclass
class Judgement:
    problems: list[str] = field(default_factory=list)
    unrecorded: list[Run] = field(default_factory=list)  # a report, no record: a crash in between
    runs: int = 0
    records: int = 0
    extra_runs: int = 0  # runs of written sequence ids beyond one each (failed attempts, crashes)

    def summary(self) -> str:
        return (f"{self.runs} runs reported by the function, {self.records} records; "
                f"{self.extra_runs} extra runs (retries and re-runs before a success), "
                f"{len(self.unrecorded)} runs with no record")


async def judge(db: Any, witness: Witness, written: Iterable[str], *, seq_prefixes: str = "kms") -> Judgement:
    """Read the hub's records in ``db`` and check them against the witness's runs (see the module
    docstring). ``written``: every sequence id the test wrote and was acknowledged; those whose
    prefix is in ``seq_prefixes`` were each written exactly once (async invokes, "a-", are not:
    a client retrying an ambiguous 503 queues a second event)."""
    written = list(written)
    runs = witness.runs
    by_id = {r.run: r for r in runs}
    verdict = Judgement(runs=len(runs))
    recorded: dict[Any, str] = {}  # record id -> the run it names
    # (target, event id) -> the runs that finished it: its succeeded run, or the last attempt
    # of its dead letter (a dead-lettered event must not run again either)
    success_of_event: dict[tuple[str, str], list[int]] = defaultdict(list)
    phantoms: list[str] = []
    async for doc in db.invocations.find({}, {"status": 1, "done": 1, "result": 1, "error": 1}):
        verdict.records += 1
        result, error = doc.get("result"), doc.get("error") or {}
        run_id = result.get("run") if isinstance(result, dict) else None
        if run_id is None:
            found = RUN_IN_ERROR.search(str(error.get("message") or ""))
            run_id = found.group(1) if found else None
        if run_id is not None:
            recorded[doc["_id"]] = run_id
        if not doc.get("done"):
            continue
        run = by_id.get(run_id) if run_id else None
        if run is None:
            phantoms.append(f"{doc['_id']} ({doc.get('status')}, run {run_id})")
            continue
        for key in doc["done"]:
            target, _, event_id = str(key).partition("|")
            success_of_event[(target, event_id)].append(run.n)
    async for dead in db.dead_letters.find({}, {"trigger": 1, "function": 1, "event.id": 1, "attempts": 1}):
        last_run = by_id.get(recorded.get(((dead.get("attempts") or [{}])[-1]).get("invocation_id"), ""))
        target = dead.get("trigger") or f"invoke:{dead.get('function')}"
        if last_run is None:
            phantoms.append(f"dead letter {dead['_id']} (its last attempt's run is unknown)")
        else:
            success_of_event[(target, str(dead["event"]["id"]))].append(last_run.n)
    if phantoms:
        verdict.problems.append(f"FINISHED WITHOUT A RUN: {len(phantoms)} records say succeeded (or dead letters "
                                f"say failed) but the function never reported that run, e.g. {phantoms[:5]}")

    # a (target, event id) run again after its succeeded run
    again: list[str] = []
    for run in runs:
        for event_id in run.event_ids:
            first = min(success_of_event.get((run.target, event_id), [run.n]))
            if run.n > first:
                again.append(f"{run.target}|{event_id} (run #{run.n}, after the finishing run #{first}, "
                             f"attempt {run.attempt})")
    if again:
        verdict.problems.append(f"RAN AGAIN AFTER ITS SUCCESS OR DEAD LETTER (same event id): {len(again)} runs, "
                                f"e.g. {again[:6]}")

    # a written sequence id: ran at all, succeeded, and not run again after its first success
    runs_of_seq: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        for seq in run.seqs:
            runs_of_seq[seq].append(run)
    finished_in_run: dict[int, set[tuple[str, str]]] = defaultdict(set)  # run -> (target, event id)s
    for key, ns in success_of_event.items():
        for n in ns:
            finished_in_run[n].add(key)
    never_ran, never_succeeded, seq_again = [], [], []
    for seq in written:
        mine = runs_of_seq.get(seq, [])
        verdict.extra_runs += max(0, len(mine) - 1)
        if not mine:
            never_ran.append(seq)
            continue
        wins = [r.n for r in mine if (r.target, r.event_ids[r.seqs.index(seq)]) in finished_in_run[r.n]]
        if not wins:
            never_succeeded.append(seq)
        elif seq[0] in seq_prefixes and max(r.n for r in mine) > min(wins):
            seq_again.append(f"{seq}: runs {[(r.n, r.event_ids) for r in mine]}, first finished by #{min(wins)}")
    if never_ran:
        verdict.problems.append(f"LOST (the function never ran them): {len(never_ran)} of {len(written)}, "
                                f"e.g. {never_ran[:8]}")
    if never_succeeded:
        verdict.problems.append(f"NOT FINISHED (ran, but no succeeded run nor dead letter): {len(never_succeeded)}, "
                                f"e.g. {never_succeeded[:8]}")
    if seq_again:
        verdict.problems.append(f"ONE WRITE RAN AGAIN AFTER ITS SUCCESS OR DEAD LETTER: {len(seq_again)}, "
                                f"e.g. {seq_again[:5]}")
    named = set(recorded.values())
    verdict.unrecorded = [r for r in runs if r.run not in named]
    return verdict


async def wait_judged_clean(db: Any, witness: Witness, written: Iterable[str], timeout: float,
                            **kw: Any) -> Judgement:
    """``judge`` until it finds no problem (records trail the runs by a group commit)."""
    written = list(written)
    last: list[Judgement] = []

    async def clean() -> bool:
        last[:] = [await judge(db, witness, written, **kw)]
        return not last[0].problems

    try:
        await eventually(clean, timeout=timeout, interval=0.5)
    except AssertionError:
        raise AssertionError("\n".join(last[0].problems if last else ["(not judged)"])) from None
    return last[0]

