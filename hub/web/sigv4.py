"""AWS Signature Version 4, verified: what lets unmodified boto3 and the aws CLI call the hub.

Why botocore and not our own HMACs: the canonical request (path normalisation and encoding,
query ordering, header trimming, the signing-key chain) is where hand-written verifiers go wrong,
and botocore is what signs the requests in the first place. So the request is rebuilt as an
``AWSRequest`` from what was received (method, raw path and query, the headers the client says it
signed, the body), signed again by ``botocore.auth.SigV4Auth`` with the stored secret at the
request's own ``X-Amz-Date``, and the two signatures are compared in constant time.

What is refused, beyond a wrong signature: a date more than 15 minutes off (a captured request
cannot be replayed later), a credential scope for another region or service, an ``x-amz-*`` header
or ``host`` left out of the signature (an unsigned ``X-Amz-Invocation-Type`` could be changed by
anyone on the way), an ``X-Amz-Content-SHA256`` that is not the body's hash (botocore trusts that
header over the body, so a signature over one body must not carry another), session tokens (the
hub issues none), and presigned query-string signatures. The access key is looked up before the
body is read: an unknown key costs no body.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hub.catalog.access_keys import AccessKey, AccessKeys

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "lambda"
MAX_SKEW = dt.timedelta(minutes=15)
_AUTH_RE = re.compile(
    ALGORITHM + r" +Credential=(?P<key>[^/,\s]{1,128})/(?P<date>[0-9]{8})/(?P<region>[a-z0-9-]{1,32})/"
    r"(?P<service>[a-z0-9-]{1,32})/aws4_request *, *SignedHeaders=(?P<headers>[a-z0-9;_.-]{1,2048}) *, *"
    r"Signature=(?P<signature>[0-9a-f]{64})")
_DATE_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")


class SignatureRefused(Exception):
    """403 in AWS's words: ``code`` is what botocore raises as (``x-amzn-ErrorType``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> SignatureRefused:
    return SignatureRefused("InvalidSignatureException", message)


@dataclass(frozen=True)
class Authorization:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header."""

    key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(request: web.Request) -> Authorization:
    values = request.headers.getall("Authorization", [])
    if not values:
        if "X-Amz-Signature" in request.query or "X-Amz-Credential" in request.query:
            raise SignatureRefused("IncompleteSignatureException",
                                   "presigned (query string) signatures are not accepted here; sign the "
                                   "Authorization header")
        raise SignatureRefused("MissingAuthenticationTokenException", "Missing Authentication Token")
    if len(values) > 1:
        raise SignatureRefused("IncompleteSignatureException", "more than one Authorization header")
    found = _AUTH_RE.fullmatch(values[0].strip())
    if found is None:
        raise SignatureRefused("IncompleteSignatureException",
                               f"Authorization header requires the form '{ALGORITHM} Credential=KEY/DATE/REGION/"
                               f"{SERVICE}/aws4_request, SignedHeaders=..., Signature=...'")
    headers = tuple(found["headers"].split(";"))
    return Authorization(found["key"], found["date"], found["region"], found["service"], headers,
                         found["signature"])


def check_scope(auth: Authorization, request: web.Request, region: str, now: dt.datetime) -> str:
    """The request's X-Amz-Date after checking it, the credential scope and the signed header
    list; raises :class:`SignatureRefused`."""
    if auth.service != SERVICE:
        raise _invalid(f"Credential should be scoped to correct service: '{SERVICE}'.")
    if auth.region != region:
        raise _invalid(f"Credential should be scoped to a valid region: this hub is '{region}' (HUB_AWS_REGION).")
    dates = request.headers.getall("X-Amz-Date", [])
    if len(dates) != 1 or not _DATE_RE.fullmatch(dates[0]):
        raise SignatureRefused("IncompleteSignatureException", "the request needs one X-Amz-Date header "
                                                               "(YYYYMMDDTHHMMSSZ)")
    amz_date = dates[0]
    try:
        when = dt.datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=dt.UTC)
    except ValueError:
        raise SignatureRefused("IncompleteSignatureException", "X-Amz-Date is not a date") from None
    if amz_date[:8] != auth.date:
        raise _invalid("the credential scope's date is not the date of X-Amz-Date")
    if when < now - MAX_SKEW:
        raise _invalid(f"Signature expired: {amz_date} is now earlier than "
                       f"{(now - MAX_SKEW).strftime(SIGV4_TIMESTAMP)} ({now.strftime(SIGV4_TIMESTAMP)} - 15 min.)")
    if when > now + MAX_SKEW:
        raise _invalid(f"Signature not yet current: {amz_date} is still later than "
                       f"{(now + MAX_SKEW).strftime(SIGV4_TIMESTAMP)} ({now.strftime(SIGV4_TIMESTAMP)} + 15 min.)")
    signed = set(auth.signed_headers)
    if list(auth.signed_headers) != sorted(signed):
        raise _invalid("SignedHeaders must be lower case, sorted and without repeats")
    present = {name.lower() for name in request.headers}
    unsigned = sorted(n for n in present if (n.startswith("x-amz-") or n == "host") and n not in signed)
    if unsigned or "host" not in signed or "x-amz-date" not in signed:
        raise _invalid(f"these headers must be signed: {', '.join(unsigned) or 'host, x-amz-date'}")
    missing = sorted(signed - present)
    if missing:
        raise _invalid(f"signed headers missing from the request: {', '.join(missing)}")
    if "X-Amz-Security-Token" in request.headers:
        raise SignatureRefused("UnrecognizedClientException",
                               "The security token included in the request is invalid: this hub issues no "
                               "session tokens (use an access key pair from POST /v1/access-keys)")
    return amz_date


def expected_signature(method: str, raw_path: str, headers: Iterable[tuple[str, str]], body: bytes,
                       auth: Authorization, amz_date: str, secret: str) -> str:
    """What botocore signs for this request with ``secret``: only the headers in SignedHeaders,
    over the raw path and query as received (an ``http://`` URL: botocore then always hashes the
    body, never ``UNSIGNED-PAYLOAD``)."""
    signer = SigV4Auth(Credentials(auth.key_id, secret), auth.service, auth.region)
    rebuilt = AWSRequest(method=method, url="http://hub" + raw_path, data=body)
    wanted = set(auth.signed_headers)
    for name, value in headers:
        if name.lower() in wanted:
            rebuilt.headers[name] = value  # botocore's HTTPHeaders keeps repeats (joined with ',')
    rebuilt.context["timestamp"] = amz_date
    if signer.signed_headers(signer.headers_to_sign(rebuilt)) != ";".join(auth.signed_headers):
        raise _invalid("SignedHeaders names a header that is never signed (e.g. user-agent or expect)")
    canonical = signer.canonical_request(rebuilt)
    return str(signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt))


def check_body(request: web.Request, auth: Authorization, body: bytes) -> None:
    """botocore signs ``X-Amz-Content-SHA256`` instead of the body when the header is there: it
    must then be the body's hash."""
    if "x-amz-content-sha256" in auth.signed_headers:
        claimed = request.headers.get("X-Amz-Content-SHA256", "")
        if not hmac.compare_digest(claimed.encode(), hashlib.sha256(body).hexdigest().encode()):
            raise _invalid("X-Amz-Content-SHA256 is not the SHA-256 of the body")


class Verifier:
    """Checks a request's signature against the hub's access keys."""

    def __init__(self, keys: AccessKeys, region: str) -> None:
        self.keys = keys
        self.region = region

    async def key_of(self, request: web.Request, now: dt.datetime | None = None) -> tuple[Authorization, str, AccessKey]:
        """Everything that can be checked before the body: the header, the date, the key."""
        auth = parse_authorization(request)
        amz_date = check_scope(auth, request, self.region, now or dt.datetime.now(dt.UTC))
        key = await self.keys.lookup(auth.key_id)
        if key is None:
            raise SignatureRefused("UnrecognizedClientException", "The security token included in the request is "
                                                                  "invalid.")
        return auth, amz_date, key

    def verify(self, request: web.Request, auth: Authorization, amz_date: str, key: AccessKey, body: bytes) -> None:
        check_body(request, auth, body)
        expected = expected_signature(request.method, request.raw_path, request.headers.items(), body, auth,
                                      amz_date, key.secret)
        if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
            raise _invalid("The request signature we calculated does not match the signature you provided. "
                           "Check your AWS Secret Access Key and signing method.")
        self.keys.used(key.name)
