"""Unit tests for connectors.s3_records: MinIO / Ceph RGW / AWS (direct and via SNS) bodies."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from connectors.s3_records import (
    NotificationError,
    _event_id,
    SubscriptionConfirmation,
    event_matches_s3_source,
    event_name_matches,
    is_aws_sns_url,
    normalise_event_name,
    parse_notification,
    record_to_event,
)
from hub.events import Event
from hub.spec.filters import matches

DATA = Path(__file__).parent / "data" / "s3"
ID_FORMAT = re.compile(r"^s3:[0-9a-f]{32}$")


def raw(name: str) -> bytes:
    return (DATA / name).read_bytes()


def doc(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(raw(name))
    return loaded


def only(events: list[Event]) -> Event:
    assert len(events) == 1
    return events[0]


# ---------------------------------------------------------------------------------------------
# The four dialects
# ---------------------------------------------------------------------------------------------


def test_minio_put() -> None:
    event = only(parse_notification(raw("minio_put.json")))
    assert event.source == "s3://media"
    assert event.type == "s3:ObjectCreated:Put"
    assert event.subject == "photos/2024/My Photo+1 é.jpg"  # QueryEscape: '+' = space, %2B = '+'
    assert event.time == "2024-05-14T09:21:07.512Z"
    assert ID_FORMAT.match(event.id)
    assert event.data == {
        "bucket": "media",
        "key": "photos/2024/My Photo+1 é.jpg",
        "size": 284113,
        "etag": "0f343b0931126a20f133d67c2b018a3b",
        "version_id": None,
        "sequencer": "17CF1B3C5B9E4F61",
        "event_name": "s3:ObjectCreated:Put",
        "event_source": "minio:s3",
        "raw": doc("minio_put.json")["Records"][0],
    }


def test_minio_delete_has_no_size_or_etag() -> None:
    event = only(parse_notification(raw("minio_delete.json")))
    assert event.type == "s3:ObjectRemoved:Delete"
    assert event.subject == "photos/2024/My Photo+1 é.jpg"
    assert event.data["size"] is None
    assert event.data["etag"] is None
    assert event.data["sequencer"] == "17CF1B7C0E5D3A90"


def test_rgw_put_keeps_raw_key_and_adds_s3_prefix() -> None:
    event = only(parse_notification(raw("rgw_put.json")))
    assert event.source == "s3://uploads"
    assert event.type == "s3:ObjectCreated:Put"
    assert event.subject == "reports/Q1 results+final 100%.csv"  # raw: '+' and '%' are literal
    assert event.time == "2024-05-14T09:21:07.512330Z"
    assert event.data["event_name"] == "s3:ObjectCreated:Put"
    assert event.data["event_source"] == "ceph:s3"
    assert event.data["size"] == 5120
    assert event.data["version_id"] is None  # RGW sends "" for unversioned buckets
    assert event.data["sequencer"] == "2B5D4366F8C1A917"
    assert event.data["raw"]["eventId"] == "1715678467.512330.9b2cf535f27731c974343645a3985328"


def test_rgw_versioned_multipart_and_delete_marker() -> None:
    upload, marker = parse_notification(raw("rgw_versioned.json"))
    assert upload.type == "s3:ObjectCreated:CompleteMultipartUpload"
    assert upload.subject == "backups/db dump 2024-05-14.tar.gz"
    assert upload.data["size"] == 73400320  # sent as a string by this RGW
    assert upload.data["version_id"] == "Zx9kQm3b1pG6yY0Xq2tR8fH5nW7uJ4aL"
    assert upload.data["etag"] == "e1f4a1f1d0b6e7f3b0c7b3c6a7c1d9e2-14"
    assert marker.type == "s3:ObjectRemoved:DeleteMarkerCreated"
    assert marker.data["etag"] is None
    assert marker.data["version_id"] == "Hq2wE8rT5yU1iO9pA3sD6fG4hJ7kL0zX"
    assert upload.id != marker.id


def test_aws_direct_decodes_plus_and_percent_escapes() -> None:
    put, copied = parse_notification(raw("aws_put.json"))
    assert put.source == "s3://amzn-s3-demo-bucket"
    assert put.type == "s3:ObjectCreated:Put"
    assert put.subject == "incoming/my file (1)+copy €.txt"
    assert put.data["version_id"] == "096fKKXTRTtl3on89fVO.nfljtsv6qko"
    assert put.data["sequencer"] == "0055AED6DCD90281E5"
    assert put.data["size"] == 1305107
    assert put.data["event_source"] == "aws:s3"
    assert copied.type == "s3:ObjectCreated:Copy"
    assert copied.subject == "incoming/ünïcødé/日本語.txt"
    assert copied.data["key"] == copied.subject
    assert put.id != copied.id


def test_aws_via_sns_notification() -> None:
    event = only(parse_notification(raw("aws_sns_notification.json")))
    assert event.type == "s3:ObjectRemoved:Delete"
    assert event.source == "s3://amzn-s3-demo-bucket"
    assert event.subject == "incoming/my file (1)+copy €.txt"
    assert event.data["version_id"] == "096fKKXTRTtl3on89fVO.nfljtsv6qko"
    assert event.data["size"] is None


def test_sns_and_direct_delivery_give_the_same_event() -> None:
    via_sns = only(parse_notification(raw("aws_sns_notification.json")))
    direct = only(parse_notification(doc("aws_sns_notification.json")["Message"]))
    assert via_sns == direct


def test_sns_subscription_confirmation_raises_with_details() -> None:
    with pytest.raises(SubscriptionConfirmation) as raised:
        parse_notification(raw("aws_sns_subscription_confirmation.json"))
    confirmation = raised.value
    assert confirmation.subscribe_url.startswith(
        "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn="
    )
    assert confirmation.topic_arn == "arn:aws:sns:eu-west-1:123456789012:hub-s3-events"
    assert confirmation.token is not None and confirmation.token.startswith("2336412f")
    assert is_aws_sns_url(confirmation.subscribe_url)
    assert not isinstance(confirmation, NotificationError)


def test_sns_unsubscribe_confirmation_yields_nothing() -> None:
    body = {"Type": "UnsubscribeConfirmation", "TopicArn": "arn:aws:sns:eu-west-1:1:t"}
    assert parse_notification(body) == []


@pytest.mark.parametrize("name", ["aws_test_event.json", "aws_sns_test_event.json"])
def test_s3_test_event_yields_nothing(name: str) -> None:
    assert parse_notification(raw(name)) == []


@pytest.mark.parametrize(
    "name",
    [
        "minio_put.json",
        "minio_delete.json",
        "rgw_put.json",
        "rgw_versioned.json",
        "aws_put.json",
        "aws_sns_notification.json",
    ],
)
def test_every_sample_gives_valid_json_cloudevents(name: str) -> None:
    events = parse_notification(raw(name))
    assert events
    for event in events:
        assert ID_FORMAT.match(event.id)
        envelope = json.loads(json.dumps(event.to_cloudevent()))
        assert envelope["specversion"] == "1.0"
        assert envelope["source"].startswith("s3://")
        assert envelope["type"].startswith("s3:") and not envelope["type"].startswith("s3:s3:")
        assert envelope["subject"] == envelope["data"]["key"]
        assert Event.from_cloudevent(envelope) == event


def test_bytes_str_and_dict_bodies_are_equivalent() -> None:
    from_bytes = parse_notification(raw("aws_put.json"))
    from_str = parse_notification(raw("aws_put.json").decode("utf-8"))
    from_dict = parse_notification(doc("aws_put.json"))
    assert from_bytes == from_str == from_dict


def test_utf8_bom_is_accepted() -> None:
    assert parse_notification(b"\xef\xbb\xbf" + raw("rgw_put.json"))


def test_empty_records_list_yields_nothing() -> None:
    assert parse_notification(b'{"Records": []}') == []


def test_raw_record_is_a_copy() -> None:
    body = doc("rgw_put.json")
    event = only(parse_notification(body))
    body["Records"][0]["s3"]["object"]["key"] = "changed"
    assert event.data["raw"]["s3"]["object"]["key"] == "reports/Q1 results+final 100%.csv"


# ---------------------------------------------------------------------------------------------
# Normalisation details
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("ObjectCreated:Put", "s3:ObjectCreated:Put"),
        ("s3:ObjectCreated:Put", "s3:ObjectCreated:Put"),
        ("ObjectRemoved:Delete", "s3:ObjectRemoved:Delete"),
        ("ObjectRemoved:DeleteMarkerCreated", "s3:ObjectRemoved:DeleteMarkerCreated"),
        ("ObjectLifecycle:Expiration:Current", "s3:ObjectLifecycle:Expiration:Current"),
        (" s3:ObjectAccessed:Get ", "s3:ObjectAccessed:Get"),
    ],
)
def test_normalise_event_name(name: str, normalised: str) -> None:
    assert normalise_event_name(name) == normalised


@pytest.mark.parametrize(
    ("source", "wire_key", "key"),
    [
        ("minio:s3", "a+b%2Bc%2Fd", "a b+c/d"),
        ("aws:s3", "dir/file+name%28v2%29.txt", "dir/file name(v2).txt"),
        ("aws:s3", "caf%C3%A9/%F0%9F%98%80.png", "café/😀.png"),
        ("ceph:s3", "dir/file+name%28v2%29.txt", "dir/file+name%28v2%29.txt"),
        ("ceph:s3", "café/😀 x.png", "café/😀 x.png"),
        (None, "a+b%20c", "a b c"),  # unknown servers are assumed to follow AWS
        ("garage:s3", "a+b", "a b"),
    ],
)
def test_key_decoding_depends_on_event_source(source: str | None, wire_key: str, key: str) -> None:
    record = make_record(key=wire_key, source=source)
    assert record_to_event(record).subject == key


def test_key_encoding_can_be_overridden_for_minio_listen() -> None:
    webhook = make_record(key="dir/My+File%2B1.txt", source="minio:s3")
    listen = make_record(key="dir/My File+1.txt", source="minio:s3")
    from_webhook = record_to_event(webhook)
    from_listen = record_to_event(listen, key_encoded=False)
    assert from_listen.subject == from_webhook.subject == "dir/My File+1.txt"
    assert from_listen.id == from_webhook.id
    assert record_to_event(make_record(key="a%2Bb", source="ceph:s3"), key_encoded=True).subject == "a+b"


def test_space_separated_rgw_time_becomes_rfc3339() -> None:
    record = make_record(time="2021-04-29 03:44:09.933439Z", source="ceph:s3")
    assert record_to_event(record).time == "2021-04-29T03:44:09.933439Z"


def test_missing_event_time_gets_a_current_time() -> None:
    record = make_record()
    del record["eventTime"]
    assert re.match(r"^\d{4}-\d{2}-\d{2}T", record_to_event(record).time)


@pytest.mark.parametrize(
    ("size", "expected"),
    [(10, 10), ("2048", 2048), (7.0, 7), (None, None), ("big", None), (True, None), (-1, -1)],
)
def test_size_parsing(size: object, expected: int | None) -> None:
    record = make_record()
    record["s3"]["object"]["size"] = size
    assert record_to_event(record).data["size"] == expected


def test_etag_quotes_are_stripped() -> None:
    record = make_record()
    record["s3"]["object"]["eTag"] = '"9b2cf535f27731c974343645a3985328"'
    assert record_to_event(record).data["etag"] == "9b2cf535f27731c974343645a3985328"


# ---------------------------------------------------------------------------------------------
# Event ids: stable across redeliveries, distinct between changes
# ---------------------------------------------------------------------------------------------


def make_record(
    *,
    name: str = "ObjectCreated:Put",
    bucket: str = "uploads",
    key: str = "dir/file.txt",
    source: str | None = "ceph:s3",
    version: str = "",
    sequencer: str = "2B5D4366F8C1A917",
    event_id: str = "",
    request_id: str = "",
    time: str = "2024-05-14T09:21:07.512330Z",
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "eventVersion": "2.2",
        "eventTime": time,
        "eventName": name,
        "responseElements": {"x-amz-request-id": request_id},
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 3, "eTag": "abc", "versionId": version, "sequencer": sequencer},
        },
        "eventId": event_id,
    }
    if source is not None:
        record["eventSource"] = source
    return record


def test_ids_are_stable_across_redeliveries() -> None:
    for name in ("minio_put.json", "rgw_versioned.json", "aws_put.json", "aws_sns_notification.json"):
        first = [e.id for e in parse_notification(raw(name))]
        again = [e.id for e in parse_notification(raw(name))]
        reformatted = [e.id for e in parse_notification(json.dumps(doc(name), indent=None))]
        assert first == again == reformatted


def test_ids_do_not_depend_on_irrelevant_fields() -> None:
    base = make_record()
    other = copy.deepcopy(base)
    other["s3"]["configurationId"] = "another-notification"
    other["opaqueData"] = "x"
    other["s3"]["object"]["size"] = 999
    assert record_to_event(base).id == record_to_event(other).id


@pytest.mark.parametrize(
    "change",
    [
        {"name": "ObjectRemoved:Delete"},
        {"bucket": "other"},
        {"key": "dir/file2.txt"},
        {"version": "v2"},
        {"sequencer": "2B5D4366F8C1A918"},
        {"time": "2024-05-14T09:21:08.000000Z"},  # e.g. a second GET of an unchanged object
    ],
)
def test_ids_differ_between_changes(change: dict[str, str]) -> None:
    assert record_to_event(make_record()).id != record_to_event(make_record(**change)).id


def test_same_change_same_id_whatever_the_event_name_spelling() -> None:
    rgw = make_record(name="ObjectCreated:Put")
    minio_style = make_record(name="s3:ObjectCreated:Put")
    assert record_to_event(rgw).id == record_to_event(minio_style).id


def test_id_falls_back_to_event_id_then_request_id_then_record() -> None:
    by_event_id = make_record(sequencer="", event_id="1715678467.512330.abc")
    other_event_id = make_record(sequencer="", event_id="1715678467.612330.abc")
    assert record_to_event(by_event_id).id != record_to_event(other_event_id).id
    # the request id is ignored while an eventId is present
    assert (
        record_to_event(by_event_id).id
        == record_to_event({**by_event_id, "responseElements": {"x-amz-request-id": "R2"}}).id
    )

    by_request = make_record(sequencer="", request_id="C3D13FE58DE4C810")
    other_request = make_record(sequencer="", request_id="C3D13FE58DE4C811")
    assert record_to_event(by_request).id != record_to_event(other_request).id

    bare = make_record(sequencer="")
    bare_again = json.loads(json.dumps(bare))
    changed = {**bare, "userIdentity": {"principalId": "someone-else"}}
    assert record_to_event(bare).id == record_to_event(bare_again).id
    assert record_to_event(bare).id != record_to_event(changed).id
    for record in (by_event_id, by_request, bare):
        assert ID_FORMAT.match(record_to_event(record).id)


def test_all_sample_ids_are_distinct() -> None:
    ids = [
        event.id
        for name in ("minio_put.json", "minio_delete.json", "rgw_put.json", "rgw_versioned.json", "aws_put.json")
        for event in parse_notification(raw(name))
    ]
    assert len(ids) == len(set(ids)) == 7


# ---------------------------------------------------------------------------------------------
# Malformed bodies
# ---------------------------------------------------------------------------------------------


def with_record(change: Any) -> dict[str, Any]:
    body = doc("rgw_put.json")
    change(body["Records"][0])
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body is empty"),
        (b"   \n", "body is empty"),
        (b"not json", "body is not valid JSON"),
        (b'{"Records": [', "body is not valid JSON"),
        (b"\xff\xfe\xfa", "body is not"),
        (b"[1, 2]", "body must be a JSON object, got array"),
        (b'"Records"', "body must be a JSON object, got string"),
        (b"{}", "body: no 'Records'"),
        (b'{"EventName": "s3:ObjectCreated:Put", "Key": "b/k"}', "no 'Records'"),
        (b'{"Records": {"eventName": "x"}}', "body: 'Records' must be an array, got object"),
        (b'{"Records": [null]}', "Records[0]: must be an object, got null"),
        (b'{"Records": [{}]}', "Records[0]: eventName is missing"),
        (with_record(lambda r: r.pop("eventName")), "Records[0]: eventName is missing"),
        (with_record(lambda r: r.update(eventName="")), "Records[0]: eventName must be a non-empty string"),
        (with_record(lambda r: r.update(eventName=5)), "eventName must be a non-empty string, got number 5"),
        (with_record(lambda r: r.pop("s3")), "Records[0]: s3 must be an object, got missing (need s3.bucket.name)"),
        (with_record(lambda r: r.update(s3="x")), "Records[0]: s3 must be an object, got string"),
        (with_record(lambda r: r["s3"].pop("bucket")), "Records[0]: s3.bucket must be an object, got missing"),
        (with_record(lambda r: r["s3"]["bucket"].pop("name")), "Records[0]: s3.bucket.name is missing"),
        (with_record(lambda r: r["s3"]["bucket"].update(name=None)), "s3.bucket.name must be a non-empty string, got null"),
        (with_record(lambda r: r["s3"].pop("object")), "Records[0]: s3.object must be an object, got missing"),
        (with_record(lambda r: r["s3"]["object"].pop("key")), "Records[0]: s3.object.key is missing"),
        (with_record(lambda r: r["s3"]["object"].update(key="")), "s3.object.key must be a non-empty string"),
        (with_record(lambda r: r["s3"]["object"].update(key=["a"])), "s3.object.key must be a non-empty string, got array"),
        (
            {"Records": [make_record(), make_record(source="aws:s3", key="bad%FFkey")]},
            'Records[1]: s3.object.key "bad%FFkey" does not URL-decode to UTF-8 text',
        ),
        ({"Type": "Notification"}, "SNS Notification: Message must be a string holding the S3 event JSON, got null"),
        ({"Type": "Notification", "Message": {"Records": []}}, "Message must be a string holding the S3 event JSON, got object"),
        ({"Type": "Notification", "Message": "nope"}, "SNS Notification: Message is not valid JSON"),
        ({"Type": "Notification", "Message": "[]"}, "SNS Notification: Message must hold a JSON object, got array"),
        ({"Type": "Notification", "Message": "{}"}, "SNS Message: no 'Records'"),
        (
            {"Type": "Notification", "Message": json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]})},
            "SNS Message: Records[0]: s3 must be an object",
        ),
        ({"Type": "SubscriptionConfirmation"}, "SNS SubscriptionConfirmation has no SubscribeURL"),
        ({"Type": "Bogus"}, 'SNS message Type "Bogus" is not supported'),
    ],
)
def test_malformed_bodies(body: bytes | dict[str, Any], message: str) -> None:
    with pytest.raises(NotificationError) as raised:
        parse_notification(body)
    assert message in str(raised.value)


def test_non_body_types_are_refused() -> None:
    with pytest.raises(NotificationError, match="body must be bytes, str or a JSON object, got int"):
        parse_notification(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Trigger sources and filters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("s3:ObjectCreated:*", "s3:ObjectCreated:Put", True),
        ("s3:ObjectCreated:*", "s3:ObjectCreated:CompleteMultipartUpload", True),
        ("s3:ObjectCreated:*", "s3:ObjectRemoved:Delete", False),
        ("s3:ObjectCreated:Put", "s3:ObjectCreated:Put", True),
        ("s3:ObjectCreated:Put", "s3:ObjectCreated:Post", False),
        ("ObjectRemoved:*", "s3:ObjectRemoved:DeleteMarkerCreated", True),
        ("s3:*", "s3:ObjectAccessed:Get", True),
        ("s3:ObjectCreated", "s3:ObjectCreated:Put", False),
    ],
)
def test_event_name_matches(pattern: str, event_type: str, expected: bool) -> None:
    assert event_name_matches(pattern, event_type) is expected


def test_event_matches_s3_source() -> None:
    event = only(parse_notification(raw("minio_put.json")))  # media / photos/2024/My Photo+1 é.jpg
    assert event_matches_s3_source(event, "media", ["s3:ObjectCreated:*"], "", "")
    assert event_matches_s3_source(event, "media", ["s3:ObjectRemoved:*", "s3:ObjectCreated:Put"], "", "")
    assert event_matches_s3_source(event, "media", [], "photos/2024/My Photo", " é.jpg")
    assert not event_matches_s3_source(event, "other", ["s3:ObjectCreated:*"], "", "")
    assert not event_matches_s3_source(event, "media", ["s3:ObjectRemoved:*"], "", "")
    assert not event_matches_s3_source(event, "media", ["s3:ObjectCreated:*"], "photos%2F", "")
    assert not event_matches_s3_source(event, "media", ["s3:ObjectCreated:*"], "", ".JPG")
    assert not event_matches_s3_source(event, "med", ["s3:ObjectCreated:*"])


def test_rgw_events_match_s3_style_trigger_patterns() -> None:
    upload, marker = parse_notification(raw("rgw_versioned.json"))
    assert event_matches_s3_source(upload, "uploads", ["s3:ObjectCreated:*"], "backups/", ".tar.gz")
    assert not event_matches_s3_source(marker, "uploads", ["s3:ObjectCreated:*"], "backups/", ".tar.gz")
    assert event_matches_s3_source(marker, "uploads", ["s3:ObjectRemoved:DeleteMarkerCreated"])


def test_content_filter_on_normalised_events() -> None:
    pattern = {
        "type": [{"prefix": "s3:ObjectCreated:"}],
        "subject": [{"suffix": ".tar.gz"}],
        "data": {"size": [{"numeric": [">", 1_000_000]}], "version_id": [{"exists": True}]},
    }
    upload, marker = parse_notification(raw("rgw_versioned.json"))
    assert matches(pattern, upload.to_cloudevent())
    assert not matches(pattern, marker.to_cloudevent())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=x", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/?Action=ConfirmSubscription", True),
        ("https://SNS.us-east-1.AMAZONAWS.com/?x=1", True),
        ("http://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription", False),
        ("https://sns.eu-west-1.amazonaws.com.evil.example/", False),
        ("https://evil.example/sns.eu-west-1.amazonaws.com", False),
        ("https://sns.eu-west-1.amazonaws.com:8443/", False),
        ("https://user@169.254.169.254/", False),
        ("not a url", False),
        ("https://[::1/", False),
    ],
)
def test_is_aws_sns_url(url: str, expected: bool) -> None:
    assert is_aws_sns_url(url) is expected


def test_event_ids_are_the_ones_made_before() -> None:
    """An event id is the hash of ``json.dumps(basis, ensure_ascii=False)``, now written out by
    hand: ids must not change between versions (the duplicate check knows a redelivery by its
    id), odd characters included."""
    rnd = random.Random(21)
    alphabet = ['a', '"', '\\', '\n', '\x00', '\x1f', 'é', '\u2028', '😀', ' ', '/', '\t', '\x7f', '%', '+']
    for _ in range(2000):
        bucket, key, name, version, sequencer, at = (
            ''.join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 6))) for _ in range(6))
        basis = ["object", bucket, key, name, version, sequencer, at]
        before = "s3:" + hashlib.sha256(json.dumps(basis, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]
        assert _event_id(bucket=bucket, key=key, event_name=name, version_id=version, sequencer=sequencer,
                         event_time=at, record={}) == before


@pytest.mark.parametrize("field", [("s3", "object", "key"), ("s3", "bucket", "name"), ("eventTime",)])
def test_a_lone_surrogate_in_what_names_the_change_is_a_clear_error(field: tuple[str, ...]) -> None:
    """Such a field cannot be hashed into an event id (it is not Unicode text); it used to escape
    as a UnicodeEncodeError, a 500 that the sender retries for ever."""
    body = json.loads(raw("rgw_put.json"))
    node = body["Records"][0]
    for part in field[:-1]:
        node = node[part]
    node[field[-1]] = "a\ud800"
    with pytest.raises(NotificationError, match="lone surrogate"):
        parse_notification(json.dumps(body).encode())


# -- events the worker gets through orjson (Event.json_ready) ---------------------------------

@pytest.mark.parametrize("name", ["aws_put.json", "minio_put.json", "rgw_put.json", "rgw_versioned.json",
                                  "minio_delete.json"])
def test_a_body_orjson_read_gives_events_orjson_writes_as_the_stdlib_would(name: str) -> None:
    """The webhook's fast path: a body orjson parsed gives json_ready events; the batch envelope
    the pool then writes with orjson reads back as the very value the stdlib encoder's did."""
    import orjson

    from hub.delivery.batches import envelope, payload
    from hub.events import Prepared

    events = parse_notification(orjson.loads(raw(name)), owned=True, json_ready=True)
    assert events and all(e.json_ready for e in events)
    fast = envelope(events, None, "t")
    assert type(fast) is Prepared
    slow = {"type": fast["type"], "source": fast["source"], "trigger": "t",
            "records": [e.to_cloudevent() for e in events]}
    assert json.loads(orjson.dumps(fast)) == json.loads(json.dumps(slow))
    one = payload(events[0])
    assert type(one) is Prepared and json.loads(orjson.dumps(one)) == json.loads(json.dumps(events[0].to_cloudevent()))
    # stored and read back (an inbox item keeps the mark): still a Prepared record
    again = Event.from_cloudevent(json.loads(json.dumps(events[0].to_cloudevent())), json_ready=True)
    assert again.prepared_record() is not None


def test_events_orjson_could_not_write_are_not_json_ready() -> None:
    """Unless the body came from orjson, and not when a size given as digits is beyond 64 bits
    (orjson refuses such integers); a size in other digits than ASCII's is no size at all (it
    raised ValueError: a 500 the sender would retry for ever)."""
    body = doc("rgw_put.json")
    assert not any(e.json_ready for e in parse_notification(copy.deepcopy(body), owned=True))
    huge = copy.deepcopy(body)
    huge["Records"][0]["s3"]["object"]["size"] = "99999999999999999999999"
    (event,) = parse_notification(huge, owned=True, json_ready=True)
    assert event.data["size"] == 99999999999999999999999 and not event.json_ready
    assert event.prepared_record() is None
    odd = copy.deepcopy(body)
    odd["Records"][0]["s3"]["object"]["size"] = "²"
    (event,) = parse_notification(odd, owned=True, json_ready=True)
    assert event.data["size"] is None and event.json_ready
