"""Scoped API tokens: ``read`` < ``invoke`` < ``deploy`` < ``admin``, each allowing what the ones
before it allow (the route table in ``hub.web.scopes`` says what each route needs).

A token is 32 random bytes shown once; MongoDB keeps only its SHA-256. A slow hash (bcrypt,
scrypt) protects low-entropy passwords from guessing; a 256-bit random token cannot be guessed
from its hash, and a fast hash lets every request be checked in microseconds.

Lookups are served from memory, but only while the config watch (``hub.catalog.watch``) follows
the ``tokens`` collection: any change there other than a last-use stamp empties every instance's
cache, so a revoked token is refused by every instance as soon as the deletion reaches its change
stream (milliseconds); while the stream is down, every request reads MongoDB. The ``DELETE``
that revokes answers once every live instance has acknowledged the deletion
(``hub.catalog.credentials``).

Last use is written at most once a minute per token and instance, in the background: a token
used a thousand times a second costs one write a minute, not a write a request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import DuplicateKeyError

from hub.catalog.credentials import WatchedCredentials
from hub.spec.models import NAME_MAX, NAME_RE
from hub.store import now

log = structlog.get_logger("hub.catalog.tokens")

SCOPES = ("read", "invoke", "deploy", "admin")
Scope = Literal["read", "invoke", "deploy", "admin"]
PREFIX = "thk_"
TOKEN_RE = re.compile(r"thk_[A-Za-z0-9_-]{43}")  # 32 bytes, URL-safe base64 without padding
RESERVED = {"self"}  # GET /v1/tokens/self is the caller's own token


def rank(scope: str) -> int:
    return SCOPES.index(scope)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenSpec(BaseModel):
    """``POST /v1/tokens``."""

    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [{"name": "ci-deployer", "scope": "deploy"}]})
    name: str = Field(pattern=NAME_RE, max_length=NAME_MAX,
                      description="a name to list and revoke it by (\"self\" is reserved)")
    scope: Scope = Field(description="read: every GET but secrets; invoke: + invoking and dead-letter replay; "
                                     "deploy: + functions, triggers, aliases, secrets; admin: + tokens")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a named token and its scope (the bootstrap token is ``HUB_API_TOKEN``)."""

    name: str
    scope: str
    bootstrap: bool = False

    def allows(self, needed: str) -> bool:
        return rank(self.scope) >= rank(needed)


class TokenExists(Exception):
    pass


class TokenNotFound(Exception):
    pass


class Tokens(WatchedCredentials[Principal]):
    """The ``tokens`` collection and the cached view of it that requests are checked against
    (``hub.catalog.credentials``: invalidated by the config watch, revoked at once)."""

    collection = "tokens"
    kind = "token"

    async def init(self) -> None:
        await self.coll.create_index("hash", unique=True)

    # -- checking a request -----------------------------------------------------------------
    async def lookup(self, token: str) -> Principal | None:
        """The principal of a scoped token, None for anything else (no MongoDB read for a string
        that cannot be a token)."""
        if not TOKEN_RE.fullmatch(token):
            return None
        digest = token_hash(token)

        async def load() -> Principal | None:
            doc = await self.coll.find_one({"hash": digest}, {"scope": 1, "hash": 1})
            # the index found it by equality; the constant-time comparison is belt and braces
            ok = doc is not None and hmac.compare_digest(str(doc["hash"]), digest)
            return Principal(str(doc["_id"]), str(doc["scope"])) if ok and doc else None

        principal = await self._cached(digest, load)
        if principal is not None:
            self.touch(principal.name)
        return principal

    # -- the API's operations ---------------------------------------------------------------
    async def create(self, name: str, scope: str) -> dict[str, Any]:
        if name in RESERVED:
            raise TokenExists(f"the token name {name!r} is reserved; pick another")
        token = PREFIX + secrets.token_urlsafe(32)
        t = now()
        try:
            await self.coll.insert_one({"_id": name, "scope": scope, "hash": token_hash(token),
                                             "created_at": t, "last_used_at": None})
        except DuplicateKeyError:
            raise TokenExists(f"a token named {name!r} exists; revoke it first (DELETE /v1/tokens/{name}) "
                              f"or pick another name") from None
        self._forget()
        return {"name": name, "scope": scope, "token": token, "created_at": t}

    async def list_all(self) -> list[dict[str, Any]]:
        docs = await self.coll.find({}, {"hash": 0}).sort("_id", 1).to_list(None)
        return [_view(d) for d in docs]

    async def delete(self, name: str) -> dict[str, Any]:
        """Revoke at once, on every instance (``WatchedCredentials._revoke``)."""
        doc = await self._revoke(name, {"hash": 0})
        if doc is None:
            raise TokenNotFound(f"no token {name!r}")
        return _view(doc)


def _view(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": doc["_id"], "scope": doc["scope"], "created_at": doc.get("created_at"),
            "last_used_at": doc.get("last_used_at")}
