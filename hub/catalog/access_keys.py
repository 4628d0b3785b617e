"""Access key pairs for the Lambda Invoke API (``/2015-03-31/...``, ``hub.web.lambda_api``).

Why a second kind of credential: boto3, the aws CLI and every AWS SDK sign their requests with
Signature Version 4 and an access key pair; they cannot send a bearer token. So the hub issues key
pairs (``POST /v1/access-keys``) and verifies their signatures (``hub.web.sigv4``). A key acts with
scope ``invoke``: it may invoke functions and read them, nothing else.

Unlike an API token, the secret cannot be kept as a hash: verifying a signature means computing
it again, which needs the secret itself. So it is stored encrypted, with the same AES-256-GCM key
and helpers as the secrets (``hub.catalog.secrets``), its associated data naming the key pair (a
ciphertext copied onto another key's document does not decrypt), and shown once, at creation.

Lookups are served from memory only while the config watch (``hub.catalog.watch``) follows the
``access_keys`` collection, exactly as ``hub.catalog.tokens`` does: any change but a last-use
stamp empties every instance's cache, so a deleted key is refused by every instance as soon as
its deletion reaches their change streams; the ``DELETE`` waits until this instance's has.
"""

from __future__ import annotations

import re
import secrets as _random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from hub.catalog.credentials import WatchedCredentials
from hub.catalog.secrets import Secrets, SecretUnavailable
from hub.spec.models import NAME_MAX, NAME_RE
from hub.store import now

log = structlog.get_logger("hub.catalog.access_keys")

KEY_ID_PREFIX = "AKTH"  # AWS's own ids start AKIA/ASIA: this one says "issued by a hub"
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
KEY_ID_RE = re.compile(KEY_ID_PREFIX + "[A-Z2-7]{16}")  # 20 characters, as AWS's
SCOPE = "invoke"
_AAD_NAME = "access-key\x00{name}\x00{key_id}"  # NUL: no secret's name (NAME_RE) can be this


class AccessKeySpec(BaseModel):
    """``POST /v1/access-keys``."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"name": "ci-invoker"}]})
    name: str = Field(pattern=NAME_RE, max_length=NAME_MAX, description="a name to list and delete the key pair by")


@dataclass(frozen=True)
class AccessKey:
    """A verified-to-exist key pair: what a signature is checked against."""

    name: str
    access_key_id: str
    secret: str = field(repr=False)


class AccessKeyExists(Exception):
    pass


class AccessKeyNotFound(Exception):
    pass


class AccessKeys(WatchedCredentials[AccessKey]):
    """The ``access_keys`` collection and the cached view that requests are checked against
    (``hub.catalog.credentials``: invalidated by the config watch, revoked at once)."""

    collection = "access_keys"
    kind = "access key"

    def __init__(self, db: AsyncDatabase[dict[str, Any]], secrets: Secrets) -> None:
        super().__init__(db)
        self.secrets = secrets  # its AES-GCM key and helpers seal the secret access keys

    async def init(self) -> None:
        await self.coll.create_index("access_key_id", unique=True)

    # -- sealing (hub.catalog.secrets' AES-GCM, another associated data) ---------------------
    def _sealed(self, name: str, key_id: str, secret: str) -> dict[str, Any]:
        return self.secrets.seal(_AAD_NAME.format(name=name, key_id=key_id), 1, secret)

    def _opened(self, doc: Mapping[str, Any]) -> str:
        aad_name = _AAD_NAME.format(name=doc["_id"], key_id=doc["access_key_id"])
        return self.secrets.open({**doc, "_id": aad_name, "version": 1})

    # -- checking a request -----------------------------------------------------------------
    async def lookup(self, key_id: str) -> AccessKey | None:
        """The key pair with this id, None for anything else (no MongoDB read for a string that
        cannot be an id; None, logged, for a key sealed with another HUB_SECRETS_KEY)."""
        if not KEY_ID_RE.fullmatch(key_id):
            return None

        async def load() -> AccessKey | None:
            doc = await self.coll.find_one({"access_key_id": key_id})
            if doc is None:
                return None
            try:
                return AccessKey(str(doc["_id"]), key_id, self._opened(doc))
            except SecretUnavailable as exc:
                log.warning("an access key cannot be used on this instance", access_key=str(doc["_id"]),
                            error=str(exc))
                return None

        return await self._cached(key_id, load)

    def used(self, name: str) -> None:
        """A request signed with this key was verified: stamp its last use."""
        self.touch(name)

    # -- the API's operations ---------------------------------------------------------------
    async def create(self, name: str) -> dict[str, Any]:
        key_id = KEY_ID_PREFIX + "".join(_random.choice(_BASE32) for _ in range(16))
        secret = _random.token_urlsafe(30)  # 40 characters, as AWS's secret access keys
        t = now()
        doc = {"_id": name, "access_key_id": key_id, **self._sealed(name, key_id, secret),
               "scope": SCOPE, "created_at": t, "last_used_at": None}
        try:
            await self.coll.insert_one(doc)
        except DuplicateKeyError:
            raise AccessKeyExists(f"an access key named {name!r} exists; delete it first "
                                  f"(DELETE /v1/access-keys/{name}) or pick another name") from None
        self._forget()
        return {"name": name, "access_key_id": key_id, "secret_access_key": secret, "scope": SCOPE, "created_at": t}

    async def list_all(self) -> list[dict[str, Any]]:
        docs = await self.coll.find({}, {"ciphertext": 0, "nonce": 0}).sort("_id", 1).to_list(None)
        return [_view(d) for d in docs]

    async def delete(self, name: str) -> dict[str, Any]:
        """Revoke at once, on every instance (``WatchedCredentials._revoke``)."""
        doc = await self._revoke(name, {"ciphertext": 0, "nonce": 0})
        if doc is None:
            raise AccessKeyNotFound(f"no access key {name!r}")
        return _view(doc)


def _view(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": doc["_id"], "access_key_id": doc["access_key_id"], "scope": doc.get("scope", SCOPE),
            "created_at": doc.get("created_at"), "last_used_at": doc.get("last_used_at")}
