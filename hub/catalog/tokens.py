"""Scoped API tokens: ``read`` < ``invoke`` < ``deploy`` < ``admin``, each allowing what the ones
before it allow (the route table in ``hub.web.scopes`` says what each route needs).

A token is 32 random bytes shown once; MongoDB keeps only its SHA-256. A slow hash (bcrypt,
scrypt) protects low-entropy passwords from guessing; a 256-bit random token cannot be guessed
from its hash, and a fast hash lets every request be checked in microseconds.

Lookups are served from memory, but only while the config watch (``hub.catalog.watch``) follows
the ``tokens`` collection: any change there other than a last-use stamp empties every instance's
cache, so a revoked token is refused by every instance as soon as the deletion reaches its change
stream (milliseconds); while the stream is down, every request reads MongoDB. The ``DELETE``
that revokes waits until this instance's stream has seen the deletion before it answers.

Last use is written at most once a minute per token and instance, in the background: a token
used a thousand times a second costs one write a minute, not a write a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from hub.spec.models import NAME_MAX, NAME_RE
from hub.store import now

log = structlog.get_logger("hub.catalog.tokens")

SCOPES = ("read", "invoke", "deploy", "admin")
Scope = Literal["read", "invoke", "deploy", "admin"]
PREFIX = "thk_"
TOKEN_RE = re.compile(r"thk_[A-Za-z0-9_-]{43}")  # 32 bytes, URL-safe base64 without padding
LAST_USE_EVERY_S = 60.0
NEGATIVE_CACHE_MAX = 10_000  # unknown tokens remembered (a flood of wrong ones costs no MongoDB reads)
RESERVED = {"self"}  # GET /v1/tokens/self is the caller's own token
REVOKE_WAIT_S = 2.0


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


class Tokens:
    """The ``tokens`` collection and the in-memory view of it that requests are checked against."""

    collection = "tokens"  # what the config watch follows for this listener

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.db = db
        self._cache: dict[str, Principal | None] = {}  # sha256 -> principal (None: no such token)
        self._negatives = 0
        self._generation = 0
        self.cache_enabled = False
        self._last_use: dict[str, float] = {}  # name -> monotonic time of the last stamp written
        self._revoked: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def init(self) -> None:
        await self.db.tokens.create_index("hash", unique=True)

    # -- the config watch's listener --------------------------------------------------------
    def following(self, yes: bool) -> None:
        self.cache_enabled = yes
        self._forget()

    def changed(self, change: Mapping[str, Any]) -> None:
        fields = set(((change.get("updateDescription") or {}).get("updatedFields") or {}))
        if change.get("operationType") == "update" and fields and fields <= {"last_used_at"}:
            return  # a last-use stamp: nothing anyone is allowed to do changed
        self._forget()
        name = (change.get("documentKey") or {}).get("_id")
        if change.get("operationType") == "delete" and isinstance(name, str) and name in self._revoked:
            self._revoked[name].set()

    def _forget(self) -> None:
        self._generation += 1
        self._cache.clear()
        self._negatives = 0

    # -- checking a request -----------------------------------------------------------------
    async def lookup(self, token: str) -> Principal | None:
        """The principal of a scoped token, None for anything else (no MongoDB read for a string
        that cannot be a token)."""
        if not TOKEN_RE.fullmatch(token):
            return None
        digest = token_hash(token)
        if self.cache_enabled and digest in self._cache:
            principal = self._cache[digest]
        else:
            generation = self._generation
            doc = await self.db.tokens.find_one({"hash": digest}, {"scope": 1, "hash": 1})
            # the index found it by equality; the constant-time comparison is belt and braces
            ok = doc is not None and hmac.compare_digest(str(doc["hash"]), digest)
            principal = Principal(str(doc["_id"]), str(doc["scope"])) if ok and doc else None
            if self.cache_enabled and generation == self._generation:
                if principal is None:
                    self._negatives += 1
                    if self._negatives > NEGATIVE_CACHE_MAX:
                        self._forget()
                self._cache[digest] = principal
        if principal is not None:
            self._touch(principal.name)
        return principal

    def _touch(self, name: str) -> None:
        t = time.monotonic()
        if t - self._last_use.get(name, -LAST_USE_EVERY_S) < LAST_USE_EVERY_S:
            return
        self._last_use[name] = t
        task = asyncio.create_task(self._stamp(name), name="token-last-use")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stamp(self, name: str) -> None:
        try:
            await self.db.tokens.update_one({"_id": name}, {"$set": {"last_used_at": now()}})
        except Exception as exc:  # a missed stamp is only a stale "last used"
            log.debug("writing a token's last use failed", token=name, error=str(exc))

    # -- the API's operations ---------------------------------------------------------------
    async def create(self, name: str, scope: str) -> dict[str, Any]:
        if name in RESERVED:
            raise TokenExists(f"the token name {name!r} is reserved; pick another")
        token = PREFIX + secrets.token_urlsafe(32)
        t = now()
        try:
            await self.db.tokens.insert_one({"_id": name, "scope": scope, "hash": token_hash(token),
                                             "created_at": t, "last_used_at": None})
        except DuplicateKeyError:
            raise TokenExists(f"a token named {name!r} exists; revoke it first (DELETE /v1/tokens/{name}) "
                              f"or pick another name") from None
        self._forget()
        return {"name": name, "scope": scope, "token": token, "created_at": t}

    async def list_all(self) -> list[dict[str, Any]]:
        docs = await self.db.tokens.find({}, {"hash": 0}).sort("_id", 1).to_list(None)
        return [_view(d) for d in docs]

    async def delete(self, name: str) -> dict[str, Any]:
        """Revoke; returns once this instance's change stream has seen it (every instance follows
        the same stream, so theirs have too, give or take milliseconds)."""
        seen = self._revoked.setdefault(name, asyncio.Event())
        try:
            doc = await self.db.tokens.find_one_and_delete({"_id": name}, {"hash": 0})
            if doc is None:
                raise TokenNotFound(f"no token {name!r}")
            self._forget()
            if self.cache_enabled:
                try:
                    await asyncio.wait_for(seen.wait(), REVOKE_WAIT_S)
                except TimeoutError:
                    log.warning("the token's deletion has not come through the change stream yet", token=name)
            return _view(doc)
        finally:
            self._revoked.pop(name, None)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


def _view(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": doc["_id"], "scope": doc["scope"], "created_at": doc.get("created_at"),
            "last_used_at": doc.get("last_used_at")}
