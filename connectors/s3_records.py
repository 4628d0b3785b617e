"""Turn S3 bucket-notification bodies into normalised ``Event``s (pure logic, no I/O).

One webhook endpoint receives notifications from several servers, each with its own dialect:

============  ===============  =======================  ======================================
server        eventSource      eventName                object key
============  ===============  =======================  ======================================
MinIO         ``minio:s3``     ``s3:ObjectCreated:Put``  ``url.QueryEscape``-d (``+`` = space)
Ceph RGW      ``ceph:s3``      ``ObjectCreated:Put``     raw
AWS S3        ``aws:s3``       ``ObjectCreated:Put``     URL-encoded, ``+`` = space
============  ===============  =======================  ======================================

AWS S3 may also arrive wrapped in an SNS envelope (``Type: Notification`` with the S3 document
as a JSON string in ``Message``); SNS first sends ``Type: SubscriptionConfirmation``, which we
surface as the ``SubscriptionConfirmation`` exception so the HTTP layer can answer it. S3's
``s3:TestEvent`` (sent when a notification is configured) yields no events.

Every record becomes one CloudEvent-shaped ``Event``:
``source = "s3://BUCKET"``, ``type = "s3:" + event name`` (no doubled prefix),
``subject`` = decoded key, ``time`` = eventTime, ``data`` = bucket, key, size, etag, version_id,
sequencer, event_name, event_source and the original record (``raw``).

Event ids, and why they look the way they do
--------------------------------------------
The dispatcher never re-runs a (trigger, event id) that already succeeded, so the id must be the
same every time the *same* change is delivered again, and differ between changes. It is
``"s3:" + sha256(json([...]))[:32]`` over:

1. bucket, decoded key, normalised event name, versionId, sequencer and eventTime, when the
   record has a versionId or a sequencer (AWS, MinIO and RGW all send a sequencer for object
   changes). eventTime is included because MinIO's sequencer is the object's mtime, which stays
   the same across events that do not rewrite the object (``s3:ObjectAccessed:Get``, tagging);
   without it, a second GET would look like a redelivery of the first. Every server serialises
   a record once and retries the stored record, so eventTime is stable across redeliveries.
2. else bucket, key, event name, ``eventId`` (RGW: ``"<secs>.<usecs>.<etag>"``) and eventTime;
3. else bucket, key, event name, ``responseElements.x-amz-request-id`` and eventTime;
4. else the whole record, canonically serialised: identical bytes are the best evidence left.

The decoded key (not the wire form) is hashed, so the same change yields the same id whether a
key arrived URL-encoded (webhook) or raw (MinIO's listen API). 128 bits of sha256 make accidental
collisions irrelevant at any realistic event volume.

SNS message signatures are not verified here: that needs network access to fetch the signing
certificate, which belongs to the HTTP layer (see ``is_aws_sns_url``).
"""

from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring as _json_text
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote_plus, urlsplit

from hub.events import Event, utc_now_iso
from hub.spec.describe import json_type, short_json

__all__ = [
    "NotificationError",
    "SubscriptionConfirmation",
    "event_matches_s3_source",
    "event_name_matches",
    "is_aws_sns_url",
    "normalise_event_name",
    "parse_notification",
    "record_to_event",
]

RAW_KEY_SOURCES: Final = frozenset({"ceph:s3"})
"""eventSource values whose object keys are sent as-is; every other source URL-encodes them."""

_SPACE_SEPARATED_TIME: Final = re.compile(r"^\d{4}-\d{2}-\d{2} \d")
_AWS_SNS_HOST: Final = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_MISSING: Final = object()


class NotificationError(ValueError):
    """The body is not an S3 notification we can read. The message says what is wrong and where."""


class SubscriptionConfirmation(Exception):
    """An SNS ``SubscriptionConfirmation``: the caller confirms by fetching ``subscribe_url``.

    Raised rather than returned so that a caller cannot mistake it for "no events" and answer 200
    without confirming (SNS would then never deliver). It is not a ``NotificationError``: the body
    is fine and deserves a 2xx once confirmed. Check ``is_aws_sns_url(subscribe_url)`` (or an
    allow-list) before fetching it, or the webhook becomes a way to make the hub GET any URL.
    """

    def __init__(self, subscribe_url: str, topic_arn: str | None, token: str | None) -> None:
        super().__init__(f"SNS subscription confirmation for topic {topic_arn}: GET {subscribe_url}")
        self.subscribe_url = subscribe_url
        self.topic_arn = topic_arn
        self.token = token


def parse_notification(body: bytes | str | Mapping[str, Any], *, owned: bool = False,
                       json_ready: bool = False) -> list[Event]:
    """Parse a webhook POST body (raw bytes or already-decoded JSON) into one Event per record.

    Raises ``NotificationError`` for anything malformed (the whole body is refused, so that the
    sender retries it rather than losing part of it) and ``SubscriptionConfirmation`` for an SNS
    subscription handshake. Returns ``[]`` for ``s3:TestEvent`` and SNS unsubscribe notices.

    Each event keeps its record (``data.raw``) apart from the caller's document, copied, unless
    ``owned``: the caller parsed the document itself and hands it over (the webhook), or it was
    parsed here from bytes. The copy was a third of the parsing per notification.

    ``json_ready``: the caller's document came from orjson's parser (see ``Event.json_ready``);
    its S3 records' events are then written to the worker by orjson (not for SNS envelopes,
    whose Message is parsed here by the stdlib).
    """
    document = _load_document(body)
    if "Records" not in document and "Type" in document:
        return _parse_sns(document)
    return _parse_s3_document(document, "body", owned or not isinstance(body, Mapping),
                              json_ready and isinstance(body, Mapping))


def record_to_event(record: Mapping[str, Any], *, key_encoded: bool | None = None) -> Event:
    """Normalise one S3 event record.

    ``key_encoded`` says whether ``s3.object.key`` is URL-encoded; by default it is decided from
    ``eventSource`` (raw for Ceph RGW, encoded otherwise). Pass ``False`` for records from MinIO's
    ListenBucketNotification API, which sends raw keys with the same ``minio:s3`` source.
    """
    return _record_to_event(record, "record", key_encoded)


def normalise_event_name(name: str) -> str:
    """``ObjectCreated:Put`` (RGW, AWS) and ``s3:ObjectCreated:Put`` (MinIO) -> ``s3:ObjectCreated:Put``."""
    name = name.strip()
    return name if name.startswith("s3:") else "s3:" + name


def event_name_matches(pattern: str, event_type: str) -> bool:
    """S3 notification-configuration matching: exact, or a trailing ``*`` (``s3:ObjectCreated:*``)."""
    pattern = normalise_event_name(pattern)
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return event_type == pattern


def event_matches_s3_source(
    event: Event,
    bucket: str,
    events: Sequence[str],
    prefix: str = "",
    suffix: str = "",
) -> bool:
    """Whether ``event`` belongs to an s3 trigger source ``{bucket, events, prefix, suffix}``.

    Mirrors what S3 itself does with a notification configuration, so a trigger behaves the same
    whether the server filtered for us or not (one bucket notification can feed many triggers).
    ``events`` patterns may omit the ``s3:`` prefix; an empty list accepts every event name.
    ``prefix`` and ``suffix`` apply to the decoded key and are case-sensitive, as in S3.
    """
    if event.source != "s3://" + bucket:
        return False
    key = event.subject or ""
    if not key.startswith(prefix) or not key.endswith(suffix):
        return False
    if not events:
        return True
    return any(event_name_matches(pattern, event.type) for pattern in events)


def is_aws_sns_url(url: str) -> bool:
    """True for ``https://sns.<region>.amazonaws.com[.cn]/...``: the only SubscribeURLs AWS sends."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and parts.port in (None, 443) and bool(_AWS_SNS_HOST.match(host))


# --------------------------------------------------------------------------------------------
# Documents and envelopes
# --------------------------------------------------------------------------------------------


def _load_document(body: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        document: object = body
    else:
        if not isinstance(body, (bytes, bytearray, str)):
            raise NotificationError(
                f"body must be bytes, str or a JSON object, got {type(body).__name__}"
            )
        if not body.strip():
            raise NotificationError("body is empty; expected a JSON S3 event notification")
        try:
            document = json.loads(body)
        except UnicodeDecodeError as exc:
            raise NotificationError(f"body is not UTF-8 text: {exc}") from None
        except ValueError as exc:
            raise NotificationError(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, Mapping):
        raise NotificationError(f"body must be a JSON object, got {json_type(document)}")
    return document


def _parse_sns(envelope: Mapping[str, Any]) -> list[Event]:
    kind = envelope.get("Type")
    if kind == "SubscriptionConfirmation":
        url = envelope.get("SubscribeURL")
        if not isinstance(url, str) or not url:
            raise NotificationError("SNS SubscriptionConfirmation has no SubscribeURL string")
        raise SubscriptionConfirmation(
            url, _text_or_none(envelope.get("TopicArn")), _text_or_none(envelope.get("Token"))
        )
    if kind == "UnsubscribeConfirmation":
        return []
    if kind != "Notification":
        raise NotificationError(
            f"SNS message Type {short_json(kind)} is not supported; expected Notification, "
            f"SubscriptionConfirmation or UnsubscribeConfirmation"
        )
    message = envelope.get("Message")
    if not isinstance(message, str):
        raise NotificationError(
            f"SNS Notification: Message must be a string holding the S3 event JSON, "
            f"got {json_type(message)}"
        )
    try:
        inner = json.loads(message)
    except ValueError as exc:
        raise NotificationError(f"SNS Notification: Message is not valid JSON: {exc}") from None
    if not isinstance(inner, dict):
        raise NotificationError(
            f"SNS Notification: Message must hold a JSON object, got {json_type(inner)}"
        )
    return _parse_s3_document(inner, "SNS Message", True)  # parsed here: nobody else holds it


def _parse_s3_document(document: Mapping[str, Any], where: str, owned: bool = False,
                       json_ready: bool = False) -> list[Event]:
    if document.get("Event") == "s3:TestEvent":
        return []
    if "Records" not in document:
        raise NotificationError(
            f"{where}: no 'Records'; expected an S3 event notification (MinIO, Ceph RGW or AWS), "
            f"an SNS envelope or an s3:TestEvent"
        )
    records = document["Records"]
    if not isinstance(records, list):
        raise NotificationError(f"{where}: 'Records' must be an array, got {json_type(records)}")
    prefix = "" if where == "body" else f"{where}: "
    return [
        _record_to_event(record, f"{prefix}Records[{index}]", None, owned, json_ready)
        for index, record in enumerate(records)
    ]


# --------------------------------------------------------------------------------------------
# One record
# --------------------------------------------------------------------------------------------


def _record_to_event(record: object, where: str, key_encoded: bool | None, owned: bool = False,
                     json_ready: bool = False) -> Event:
    if not isinstance(record, Mapping):
        raise NotificationError(f"{where}: must be an object, got {json_type(record)}")
    event_name = normalise_event_name(_required_text(record, ("eventName",), where))
    bucket = _required_text(record, ("s3", "bucket", "name"), where)
    wire_key = _required_text(record, ("s3", "object", "key"), where)
    event_source = _text_or_none(record.get("eventSource"))
    if key_encoded is None:
        key_encoded = event_source not in RAW_KEY_SOURCES
    key = _decode_key(wire_key, where) if key_encoded else wire_key

    obj = _dig(record, ("s3", "object"))
    assert isinstance(obj, Mapping)  # checked by _required_text above
    version_id = _text_or_none(obj.get("versionId"))
    sequencer = _text_or_none(obj.get("sequencer"))
    etag = _text_or_none(obj.get("eTag", obj.get("etag")))
    raw_time = _text_or_none(record.get("eventTime"))

    try:
        event_id = _event_id(
            bucket=bucket,
            key=key,
            event_name=event_name,
            version_id=version_id,
            sequencer=sequencer,
            event_time=raw_time or "",
            record=record,
        )
    except UnicodeEncodeError:  # a JSON \ud800-\udfff escape left alone: was an uncaught 500
        raise NotificationError(f"{where}: its bucket, key, event name, version, sequencer or time holds a "
                                "lone surrogate (\\ud800-\\udfff), which is not Unicode text") from None
    size = _size(obj.get("size"))
    data = {
        "bucket": bucket,
        "key": key,
        "size": size,
        "etag": etag.strip('"') if etag else None,
        "version_id": version_id,
        "sequencer": sequencer,
        "event_name": event_name,
        "event_source": event_source,
        # an owned record is this event's alone (see parse_notification): no copy needed
        "raw": dict(record) if owned else _json_copy(dict(record)),
    }
    return Event(
        id=event_id,
        source="s3://" + bucket,
        type=event_name,
        subject=key,
        time=_cloudevent_time(raw_time),
        data=data,
        # a size from digits in a string may be beyond 64 bits: orjson would refuse to write it
        json_ready=json_ready and (size is None or -(2**63) <= size < 2**63),
    )


def _json_copy(value: Any) -> Any:
    """A copy of a JSON value's lists and objects (the record is kept apart from the caller's
    document); several times cheaper than ``copy.deepcopy``, which this was: a third of the
    webhook's parsing per notification."""
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value


def _event_id(
    *,
    bucket: str,
    key: str,
    event_name: str,
    version_id: str | None,
    sequencer: str | None,
    event_time: str,
    record: Mapping[str, Any],
) -> str:
    """Stable per change, distinct between changes; see the module docstring for the tiers."""
    basis: list[str]
    if version_id or sequencer:
        basis = ["object", bucket, key, event_name, version_id or "", sequencer or "", event_time]
    elif (server_id := _text_or_none(record.get("eventId"))) is not None:
        basis = ["eventId", bucket, key, event_name, server_id, event_time]
    elif (request_id := _text_or_none(_dig(record, ("responseElements", "x-amz-request-id")))):
        basis = ["request", bucket, key, event_name, request_id, event_time]
    else:
        basis = ["record", json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)]
    # json.dumps(basis, ensure_ascii=False) written out: the same text (the ids must not change:
    # the duplicate check knows a redelivery by them), without an encoder built per call
    text = "[" + ", ".join(map(_json_text, basis)) + "]"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return "s3:" + digest[:32]


def _decode_key(wire_key: str, where: str) -> str:
    """Undo S3/MinIO key encoding (``%XX`` escapes, ``+`` for space) strictly as UTF-8."""
    try:
        return unquote_plus(wire_key, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise NotificationError(
            f"{where}: s3.object.key {short_json(wire_key)} does not URL-decode to UTF-8 text"
        ) from None


def _size(value: object) -> int | None:
    """Object size in bytes. RGW has sent it as a string in some releases; deletes omit it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and value.isascii():  # int("²") raises
        return int(value.strip())
    return None


def _cloudevent_time(raw_time: str | None) -> str:
    """RFC 3339 time for the envelope; older RGW releases write ``2021-04-29 03:44:09.93Z``."""
    if not raw_time:
        return utc_now_iso()
    if _SPACE_SEPARATED_TIME.match(raw_time):
        return raw_time[:10] + "T" + raw_time[11:]
    return raw_time


def _required_text(record: Mapping[str, Any], path: tuple[str, ...], where: str) -> str:
    node: object = record
    for part in path:  # the usual case first: plain dicts from JSON, the text present
        if type(node) is not dict or part not in node:
            break
        node = node[part]
    else:
        if type(node) is str and node:
            return node
    for depth in range(1, len(path)):
        parent = _dig(record, path[:depth])
        if not isinstance(parent, Mapping):
            dotted = ".".join(path[:depth])
            found = "missing" if parent is _MISSING else json_type(parent)
            raise NotificationError(
                f"{where}: {dotted} must be an object, got {found} (need {'.'.join(path)})"
            )
    value = _dig(record, path)
    dotted = ".".join(path)
    if value is _MISSING:
        raise NotificationError(f"{where}: {dotted} is missing")
    if not isinstance(value, str) or not value:
        raise NotificationError(
            f"{where}: {dotted} must be a non-empty string, got {json_type(value)} {short_json(value)}"
        )
    return value


def _dig(document: Mapping[str, Any], path: tuple[str, ...]) -> object:
    node: object = document
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _text_or_none(value: object) -> str | None:
    """Servers send ``""`` for "not applicable" (e.g. versionId when unversioned): map it to None."""
    return value if isinstance(value, str) and value else None
