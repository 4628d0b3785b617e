"""The listing side of the S3 reconciling scan: which objects a watched bucket holds right now.

Notifications can be late or lost (a Ceph RGW persistent topic stalls behind a push that was in
flight when the hub died; AWS documents delays; a MinIO webhook target can drop events). The hub
therefore lists the watched parts of each bucket now and then (``hub.intake.s3_reconcile`` decides what
to do with the result). This module only knows the S3 server: a bounded, resumable listing, and
the ``Event`` a listed object becomes.

- Listing uses ListObjectsV2 through the ``minio`` client, which is blocking: call
  ``BucketLister.list_page`` in a thread (``asyncio.to_thread``). Timeouts and retries are short,
  so a dead server fails a pass in about a second instead of hanging it for minutes.
- Only the triggers' prefixes are listed (``covering_prefixes``): a trigger on ``in/`` does not
  pay for listing the rest of the bucket.
- A pass lists at most ``max_keys`` keys and says where to continue (``start_after``), so one pass
  over a huge bucket stays bounded; the next pass picks up from there.

S3 lists keys in UTF-8 byte order, which for valid text is the same as Python's code-point order,
so ``start_after`` and the prefix ranges can be compared in Python.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlparse

from hub.events import Event

SCAN_EVENT_SOURCE: Final = "trigger-hub:s3-scan"
"""``data.event_source`` of events found by the scan (notifications carry the server's, e.g. ``ceph:s3``)."""


@dataclass(frozen=True)
class ListedObject:
    key: str
    etag: str  # without quotes; "<md5>-<parts>" for multipart uploads
    size: int | None
    last_modified: dt.datetime  # timezone-aware UTC (S3 lists it to the millisecond)
    version_id: str | None = None
    storage_class: str | None = None


@dataclass(frozen=True)
class ListingPage:
    objects: list[ListedObject]
    # Where the next pass continues; None when the listing reached the end of every prefix.
    next_start_after: str | None
    prefixes: list[str]


def covering_prefixes(prefixes: Iterable[str]) -> list[str]:
    """The fewest prefixes whose listings cover all of ``prefixes``, sorted: ``["a/", "a/b/", "c"]``
    becomes ``["a/", "c"]``; any empty prefix means the whole bucket (``[""]``). The result's key
    ranges are disjoint and in listing order, so one ``start_after`` key walks all of them."""
    out: list[str] = []
    for p in sorted(set(prefixes)):
        if not any(p.startswith(q) for q in out):
            out.append(p)
    return out


def _range_before(prefix: str, start_after: str) -> bool:
    """True when every key starting with ``prefix`` sorts at or before ``start_after``."""
    return start_after > prefix and not start_after.startswith(prefix)


class BucketLister:
    """Lists objects with a ``minio`` client (works with MinIO, Ceph RGW and AWS S3). Blocking."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        region: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        import certifi
        import urllib3
        from minio import Minio

        url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=4,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            # a dead server fails the pass quickly; the next pass retries anyway
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self.endpoint = endpoint
        self._client = Minio(
            url.netloc, access_key=access_key, secret_key=secret_key,
            secure=url.scheme == "https", region=region or None, http_client=http,
        )

    def list_page(
        self, bucket: str, prefixes: Iterable[str], start_after: str | None, max_keys: int
    ) -> ListingPage:
        """Up to ``max_keys`` objects under ``prefixes`` after ``start_after``, in key order."""
        covering = covering_prefixes(prefixes)
        objects: list[ListedObject] = []
        for prefix in covering:
            if start_after is not None and _range_before(prefix, start_after):
                continue
            listing = self._client.list_objects(
                bucket, prefix=prefix or None, recursive=True, start_after=start_after or None
            )
            for obj in listing:
                if obj.is_dir or obj.is_delete_marker or obj.object_name is None:
                    continue
                objects.append(_listed(obj))
                if len(objects) >= max_keys:
                    # Stop consuming: the client fetches pages lazily, so no more requests are sent.
                    return ListingPage(objects, objects[-1].key, covering)
        return ListingPage(objects, None, covering)


def _listed(obj: Any) -> ListedObject:
    modified = obj.last_modified
    if modified is None:  # not seen from S3 servers; treat as "just now" so it waits for grace
        modified = dt.datetime.now(dt.timezone.utc)
    elif modified.tzinfo is None:
        modified = modified.replace(tzinfo=dt.timezone.utc)
    return ListedObject(
        key=obj.object_name,
        etag=(obj.etag or "").strip('"'),
        size=obj.size,
        last_modified=modified,
        version_id=obj.version_id or None,
        storage_class=obj.storage_class,
    )


def iso_millis(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scan_event_name(etag: str) -> str:
    """A listing cannot tell Put from Copy or Post; an ETag of the form ``<md5>-<parts>`` is only
    ever made by a multipart upload (MinIO, Ceph RGW and AWS alike), so that much is known."""
    return "s3:ObjectCreated:CompleteMultipartUpload" if "-" in etag else "s3:ObjectCreated:Put"


def scan_event(bucket: str, obj: ListedObject) -> Event:
    """The event a listed object becomes: shaped like a notification's (``connectors.s3_records``),
    with ``data.reconciled = true``, ``data.event_source = "trigger-hub:s3-scan"``, no sequencer,
    and ``data.raw`` holding the listing entry. Its id is stable for this object version (bucket,
    key, ETag, LastModified), so queueing it twice can never run it twice."""
    modified = iso_millis(obj.last_modified)
    name = scan_event_name(obj.etag)
    basis = ["scan", bucket, obj.key, obj.etag, modified]
    digest = hashlib.sha256(json.dumps(basis, ensure_ascii=False).encode("utf-8")).hexdigest()
    raw = {
        "listing": "ListObjectsV2",
        "Key": obj.key,
        "ETag": obj.etag,
        "Size": obj.size,
        "LastModified": modified,
        "VersionId": obj.version_id,
        "StorageClass": obj.storage_class,
    }
    return Event(
        id="s3:" + digest[:32],
        source="s3://" + bucket,
        type=name,
        subject=obj.key,
        time=modified,
        data={
            "bucket": bucket,
            "key": obj.key,
            "size": obj.size,
            "etag": obj.etag,
            "version_id": obj.version_id,
            "sequencer": None,
            "event_name": name,
            "event_source": SCAN_EVENT_SOURCE,
            "reconciled": True,
            "raw": raw,
        },
    )
