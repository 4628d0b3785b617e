"""``event_format: "aws"``: Lambda's sample events, through the hub's own parsers and back.

Each sample (tests/data/aws/, the shapes AWS and Powertools document) is turned into the hub's
events the way its source does (S3 notification parser, Kafka ``message_event``, change-stream
``change_event``), then rendered with :mod:`hub.spec.aws_events`: what comes out must be the
sample again. Where the hub cannot know a value (an EventBridge event's id) the test says so.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from bson import json_util

from connectors.kafka import message_event
from connectors.mongodb import change_event
from connectors.s3_records import parse_notification, record_to_event
from hub.delivery import batches
from hub.events import Event
from hub.spec import aws_events
from hub.spec.aws_events import AwsEnvironment

DATA = Path(__file__).parent / "data" / "aws"


def sample(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def kafka_events(doc: dict[str, Any]) -> list[Event]:
    events = []
    for records in doc["records"].values():
        for r in records:
            key = base64.b64decode(r["key"]) if "key" in r else None
            value = base64.b64decode(r["value"]) if r.get("value") is not None else None
            headers = [(k, bytes(v)) for h in r["headers"] for k, v in h.items()]
            events.append(message_event(ConsumerRecord(
                r["topic"], r["partition"], r["offset"], r["timestamp"],
                1 if r["timestampType"] == "LOG_APPEND_TIME" else 0, key, value, None,
                len(key or b""), len(value or b""), headers)))
    return events


# --------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", ["s3_put.json", "s3_two_records.json"])
def test_s3_samples_round_trip(name: str) -> None:
    doc = sample(name)
    events = parse_notification(json.dumps(doc))
    trigger = doc["Records"][0]["s3"]["configurationId"]
    assert aws_events.render(events, AwsEnvironment(), trigger) == doc


def test_s3_record_from_rgw_is_lambda_shaped() -> None:
    """Ceph RGW sends raw keys, ``ceph:s3`` and an empty region: the handler still gets AWS's form."""
    rgw = {"eventVersion": "2.2", "eventSource": "ceph:s3", "awsRegion": "", "eventTime": "2024-05-01T10:00:00.5Z",
           "eventName": "ObjectCreated:Put", "userIdentity": {"principalId": "hub"},
           "requestParameters": {"sourceIPAddress": ""}, "responseElements": {"x-amz-request-id": "r1",
                                                                               "x-amz-id-2": "z"},
           "s3": {"s3SchemaVersion": "1.0", "configurationId": "rgw-notif",
                  "bucket": {"name": "photos", "ownerIdentity": {"principalId": "hub"}, "arn": "arn:aws:s3:::photos"},
                  "object": {"key": "in/red flower (2).jpg", "size": 7, "eTag": "abc", "sequencer": "0000AB"}},
           "eventId": "1.2.3"}
    event = record_to_event(rgw)
    out = aws_events.render([event], AwsEnvironment(region="eu-west-1"), "on-photo")["Records"][0]
    assert out["eventSource"] == "aws:s3" and out["eventVersion"] == "2.1"
    assert out["awsRegion"] == "eu-west-1"  # RGW's empty region -> the hub's
    assert out["eventName"] == "ObjectCreated:Put" and out["eventTime"] == "2024-05-01T10:00:00.500Z"
    assert out["s3"]["configurationId"] == "on-photo"
    assert out["s3"]["bucket"] == {"name": "photos", "ownerIdentity": {"principalId": "hub"},
                                   "arn": "arn:aws:s3:::photos"}
    assert out["s3"]["object"] == {"key": "in/red+flower+%282%29.jpg", "size": 7, "eTag": "abc",
                                   "sequencer": "0000AB"}


def test_s3_reconciled_event_gets_every_field() -> None:
    from connectors.s3_scan import ListedObject, scan_event
    import datetime as dt
    listed = ListedObject(key="a b.txt", etag="e1", size=3, last_modified=dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc),
                          version_id=None, storage_class="STANDARD")
    out = aws_events.render([scan_event("bkt", listed)], AwsEnvironment(), "t")["Records"][0]
    assert out["eventName"] == "ObjectCreated:Put"
    assert out["s3"]["object"]["key"] == "a+b.txt" and out["s3"]["object"]["eTag"] == "e1"
    assert len(out["s3"]["object"]["sequencer"]) == 18  # made up, stable per change
    assert {"userIdentity", "requestParameters", "responseElements", "eventTime"} <= set(out)


def test_kafka_sample_round_trips() -> None:
    """Byte for byte, except one thing: AWS's documented key ``abcDEFghiJKLmnoPQRstuVWXyz1234==``
    is not canonical base64 (its last character carries bits the decoder drops), so the same
    bytes come back as ``...123w==``."""
    doc = sample("kafka_self_managed.json")
    events = kafka_events(doc)
    env = AwsEnvironment(kafka_bootstrap=doc["bootstrapServers"])
    out = aws_events.render(events, env, "t")
    odd = out["records"]["mytopic-0"][1]
    assert base64.b64decode(odd["key"]) == base64.b64decode(doc["records"]["mytopic-0"][1]["key"])
    assert odd["key"] == "abcDEFghiJKLmnoPQRstuVWXyz123w=="
    odd["key"] = doc["records"]["mytopic-0"][1]["key"]
    assert out == doc


def test_kafka_json_value_keeps_its_bytes() -> None:
    """The hub keeps a JSON value's own bytes (Event.value_json): they come back as they were,
    spacing included (only a replayed dead letter, which has the parsed value alone, gets the
    compact re-serialisation: tests/test_kafka_connector.py)."""
    msg = ConsumerRecord("t", 2, 9, 1700000000000, 0, None, b'{"a": 1,  "b": [1, 2]}', None, 0, 0, [])
    out = aws_events.render([message_event(msg)], AwsEnvironment(), "t")
    rec = out["records"]["t-2"][0]
    assert base64.b64decode(rec["value"]) == b'{"a": 1,  "b": [1, 2]}'
    assert "key" not in rec and rec["headers"] == []


def test_docdb_sample_round_trips() -> None:
    doc = sample("docdb.json")
    change = json_util.loads(json.dumps(doc["events"][0]["event"]))
    event = change_event(change, "test_database", "test_collection")
    env = AwsEnvironment(account="123456789012")
    assert aws_events.render([event], env, "canaryclusterb2a659a2-qo5tcmqkcl03") == doc


def test_docdb_numbers_and_dates_are_canonical() -> None:
    import datetime as dt
    from bson import ObjectId, Timestamp
    change = {"_id": {"_data": "82"}, "operationType": "update", "clusterTime": Timestamp(1700000000, 1),
              "wallTime": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
              "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": ObjectId("63eeb6e7d418cd98afb1c1d7")},
              "updateDescription": {"updatedFields": {"n": 5, "x": 1.5, "big": 2 ** 40}, "removedFields": []}}
    out = aws_events.render([change_event(change, "d", "c")], AwsEnvironment(), "t")["events"][0]["event"]
    assert out["updateDescription"]["updatedFields"] == {"n": {"$numberInt": "5"}, "x": {"$numberDouble": "1.5"},
                                                         "big": {"$numberLong": str(2 ** 40)}}
    assert out["wallTime"] == {"$date": {"$numberLong": "1704067200000"}}
    assert out["_id"] == {"_data": "82"} and out["clusterTime"] == {"$timestamp": {"t": 1700000000, "i": 1}}


def test_scheduled_event_matches_the_sample_but_its_id() -> None:
    doc = sample("eventbridge_scheduled.json")
    tick = Event(id="schedule:my-scheduled-rule:1:2015-10-08T16:53:06Z", source="schedule://my-scheduled-rule",
                 type="hub.schedule", subject="2015-10-08T16:53:06Z", time="2015-10-08T16:53:06Z",
                 data={"trigger": "my-scheduled-rule", "scheduled_time": "2015-10-08T16:53:06Z"})
    out = aws_events.render([tick], AwsEnvironment(account="123456789012"), "my-scheduled-rule")
    assert {k: v for k, v in out.items() if k != "id"} == {k: v for k, v in doc.items() if k != "id"}
    again = aws_events.render([tick], AwsEnvironment(account="123456789012"), "my-scheduled-rule")
    assert out["id"] == again["id"]  # a UUID made from the tick: stable on retries


def test_invoke_and_http_hand_the_data_itself() -> None:
    body = {"any": ["json", 1]}
    ev = Event(id="invoke:1", source="invoke://f", type="hub.invoke", data=body)
    assert aws_events.render([ev], AwsEnvironment(), None) == body
    url = {"version": "2.0", "rawPath": "/x"}
    assert aws_events.render([Event(id="r", source="http://t", type="http.request", data=url)],
                             AwsEnvironment(), "t") == url
    # a batch of single-event sources: a list of them
    assert aws_events.render([ev, ev], AwsEnvironment(), None, batch=True) == [body, body]


def test_function_arn() -> None:
    env = AwsEnvironment(region="eu-central-1", account="111122223333")
    assert env.function_arn("f") == "arn:aws:lambda:eu-central-1:111122223333:function:f"
    assert env.function_arn("f", "latest") == "arn:aws:lambda:eu-central-1:111122223333:function:f"
    assert env.function_arn("f", "prod") == "arn:aws:lambda:eu-central-1:111122223333:function:f:prod"


# ------------------------------------------------------------------------ batchItemFailures

def _failed(result: Any, events: list[Event]) -> set[str]:
    return batches.reported_failures(result, [e.id for e in events], aws_events.identifiers(events))


def test_kafka_item_failures_both_forms() -> None:
    events = kafka_events(sample("kafka_self_managed.json"))
    by_offset = {e.data["offset"]: e.id for e in events}
    powertools = {"batchItemFailures": [{"itemIdentifier": {"partition": "mytopic-0", "offset": 16}}]}
    assert _failed(powertools, events) == {by_offset[16]}
    as_text = {"batchItemFailures": [{"itemIdentifier": "mytopic-1-3"}, {"itemIdentifier": events[0].id}]}
    assert _failed(as_text, events) == {by_offset[3], by_offset[15]}


def test_s3_and_docdb_item_failures() -> None:
    s3 = parse_notification(json.dumps(sample("s3_two_records.json")))
    assert _failed({"batchItemFailures": [{"itemIdentifier": "0A1B2C3D4E5F678902"}]}, s3) == {s3[1].id}
    doc = sample("docdb.json")
    ev = change_event(json_util.loads(json.dumps(doc["events"][0]["event"])), "d", "c")
    assert _failed({"batchItemFailures": [{"itemIdentifier": "0163eeb6e7000000090100000009000041e1"}]}, [ev]) == {ev.id}


@pytest.mark.parametrize("result", [{"batchItemFailures": []}, {"batchItemFailures": None}, None, {}, "ok"])
def test_empty_or_null_is_success(result: Any) -> None:
    events = kafka_events(sample("kafka_self_managed.json"))
    assert _failed(result, events) == set()


@pytest.mark.parametrize("ident", ["mytopic-0-99", "", {"partition": "mytopic-0"}, {"partition": "mytopic-0", "offset": True},
                                   17, None])
def test_an_identifier_that_names_nothing_fails_the_batch(ident: Any) -> None:
    events = kafka_events(sample("kafka_self_managed.json"))
    with pytest.raises(batches.BadItemFailures):
        _failed({"batchItemFailures": [{"itemIdentifier": ident}]}, events)


def test_cloudevents_mode_reads_only_event_ids() -> None:
    events = kafka_events(sample("kafka_self_managed.json"))
    with pytest.raises(batches.BadItemFailures):
        batches.reported_failures({"batchItemFailures": [{"itemIdentifier": "mytopic-0-15"}]}, [e.id for e in events])


def test_lambda_error_document() -> None:
    err = {"type": "ValueError", "message": "bad", "traceback":
           'Traceback (most recent call last):\n  File "/var/task/main.py", line 2, in handler\n'
           '    raise ValueError("bad")\nValueError: bad\n'}
    doc = aws_events.lambda_error(err)
    assert doc["errorMessage"] == "bad" and doc["errorType"] == "ValueError"
    assert doc["stackTrace"] == ['  File "/var/task/main.py", line 2, in handler\n', '    raise ValueError("bad")\n']
    given = aws_events.lambda_error({**err, "stackTrace": ["x"]})
    assert given["stackTrace"] == ["x"]
    assert copy.deepcopy(doc) == doc
