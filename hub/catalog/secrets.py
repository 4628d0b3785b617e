"""Secrets: named values stored encrypted, handed to a function's worker through its ``env``.

A function refers to a secret by name (``"env": {"DB_PASSWORD": {"secret": "db-password"}}``); the
function's documents keep only that reference. The value is decrypted when the registry builds the
function's runtime (``hub.catalog.registry``), lives in the worker's environment and in this
process's memory, and nowhere else: not in MongoDB (only AES-GCM ciphertext), not in the API's
answers, not in records (``hub.delivery.dispatch`` masks it out of recorded output with
:func:`mask`), not in the log.

Encryption: AES-256-GCM with a random 96-bit nonce per encryption, and the secret's name and
version as associated data, so a ciphertext copied onto another secret's document, or an older
version's ciphertext put back, fails to decrypt instead of handing out the wrong value. The key is
``HUB_SECRETS_KEY`` (base64 of 32 bytes) or one generated into ``DATA_DIR/secrets.key`` (0600) at
first use; each document carries the key's id (a hash prefix, not the key), so an instance with
another key says so instead of failing obscurely.

Rotation: every change of the ``secrets`` collection reaches every instance through the config
watch (``hub.catalog.watch``): cached runtimes are dropped and the warm workers of the functions
that use the secret are retired, so their next worker starts with the new value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import secrets as _random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from hub.store import now

log = structlog.get_logger("hub.catalog.secrets")

KEY_FILE = "secrets.key"
VALUE_MAX = 4096  # bytes (UTF-8): Lambda's whole environment is 4 KB
MASK = "***"
CAS_ATTEMPTS = 20
_AAD_PREFIX = b"trigger-hub secret\x00"


class SecretSpec(BaseModel):
    """``PUT /v1/secrets/{name}``: the value (never shown back)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"value": "s3cr3t-pa55"}]})
    value: str = Field(min_length=1, max_length=VALUE_MAX,
                       description=f"the secret, 1 to {VALUE_MAX} bytes of UTF-8 text without NUL; "
                                   "write-only: no answer ever contains it")

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("a secret cannot contain NUL characters (it is handed over as an environment variable)")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("a secret must be valid unicode text (no lone surrogates)") from None
        if size > VALUE_MAX:
            raise ValueError(f"a secret is at most {VALUE_MAX} bytes of UTF-8 (this one is {size})")
        return value


class SecretUnavailable(Exception):
    """A function's secret cannot be handed over: deleted, or encrypted with another key."""


class SecretNotFound(Exception):
    pass


class SecretInUse(Exception):
    def __init__(self, name: str, users: list[dict[str, Any]]) -> None:
        names = [u["function"] for u in users]
        super().__init__(f"secret {name!r} is used by functions {names} (their env refers to it); "
                         f"change or delete those functions (and their older versions) first")
        self.users = users


def load_key(configured: str, data_dir: Path) -> bytes:
    """The AES-256 key: ``HUB_SECRETS_KEY`` (base64, 32 bytes), else the key file in the data dir,
    created (0600, exclusively: two processes starting at once agree) when missing."""
    if configured:
        try:
            key = base64.b64decode(configured.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("HUB_SECRETS_KEY is not base64; make one with: "
                             "python -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())'") from None
        if len(key) != 32:
            raise ValueError(f"HUB_SECRETS_KEY must be base64 of 32 bytes (it is {len(key)} bytes)")
        return key
    path = data_dir / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = base64.b64decode(path.read_text().strip())
        if len(key) != 32:
            raise ValueError(f"the secrets key file {path} does not hold base64 of 32 bytes") from None
        return key
    key = os.urandom(32)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode() + "\n")
    log.warning("generated a secrets key (set HUB_SECRETS_KEY to the same value on every instance that "
                "shares this database)", file=str(path))
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"trigger-hub key id\x00" + key).hexdigest()[:16]


def refs(env: Mapping[str, Any] | None) -> dict[str, str]:
    """Variable -> secret name, for the entries of a stored ``env`` that refer to a secret."""
    return {k: str(v["secret"]) for k, v in (env or {}).items() if isinstance(v, dict) and "secret" in v}


def _variants(value: str) -> set[str]:
    """The forms a printed value takes: as is, JSON-escaped, repr-escaped."""
    return {value, json.dumps(value)[1:-1], repr(value)[1:-1]}


def mask_text(text: str, values: Iterable[str]) -> str:
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def mask(data: Any, values: tuple[str, ...]) -> Any:
    """``data`` (text, or JSON-like) with every occurrence of ``values`` replaced by ``***``;
    ``values`` longest first (:func:`mask_values`), so a secret inside another goes whole."""
    if isinstance(data, str):
        return mask_text(data, values)
    if isinstance(data, dict):
        return {mask_text(k, values) if isinstance(k, str) else k: mask(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [mask(v, values) for v in data]
    return data


def mask_values(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({v for value in values for v in _variants(value) if v}, key=len, reverse=True))


class Secrets:
    """The ``secrets`` collection: encrypted values, versions, and who uses them."""

    collection = "secrets"  # what the config watch follows for this listener

    def __init__(self, db: AsyncDatabase[dict[str, Any]], key_source: Callable[[], bytes]) -> None:
        self.db = db
        self._key_source = key_source
        self._key: bytes | None = None
        self._on_change: list[Callable[[str], Awaitable[None]]] = []
        # drops every cached runtime at once (the registry sets it): runs on the watch's reader,
        # before the functions that use the secret are looked up
        self.forget_cached: Callable[[], None] = lambda: None
        self._tasks: set[asyncio.Task[None]] = set()

    async def init(self) -> None:
        self.key  # noqa: B018 -- a bad HUB_SECRETS_KEY or key file fails the start, not the first deploy
        await self.db.function_versions.create_index("secrets", sparse=True)

    # -- the config watch's listener --------------------------------------------------------
    def following(self, yes: bool) -> None:
        """Nothing to do: the registry caches runtimes only while the same stream is followed."""

    def changed(self, change: Mapping[str, Any]) -> None:
        name = (change.get("documentKey") or {}).get("_id")
        self.forget_cached()
        if isinstance(name, str):
            self.changed_soon(name)

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = self._key_source()
        return self._key

    def on_change(self, callback: Callable[[str], Awaitable[None]]) -> None:
        """``callback(function)`` for each function using a secret that changed: its cached
        runtimes and warm workers hold the old value."""
        self._on_change.append(callback)

    # -- encryption -------------------------------------------------------------------------
    @staticmethod
    def _aad(name: str, version: int) -> bytes:
        return _AAD_PREFIX + name.encode() + b"\x00" + str(version).encode()

    def seal(self, name: str, version: int, value: str) -> dict[str, Any]:
        nonce = os.urandom(12)
        sealed = AESGCM(self.key).encrypt(nonce, value.encode(), self._aad(name, version))
        return {"nonce": nonce, "ciphertext": sealed, "key_id": key_id(self.key)}

    def open(self, doc: Mapping[str, Any]) -> str:
        name = str(doc["_id"])
        if doc.get("key_id") != key_id(self.key):
            raise SecretUnavailable(f"secret {name!r} was encrypted with another key than this hub's "
                                    f"(key id {doc.get('key_id')}): give every instance the same HUB_SECRETS_KEY")
        try:
            plain = AESGCM(self.key).decrypt(bytes(doc["nonce"]), bytes(doc["ciphertext"]),
                                             self._aad(name, int(doc["version"])))
        except InvalidTag:
            raise SecretUnavailable(f"secret {name!r} does not decrypt: its stored document was altered") from None
        return plain.decode()

    # -- the API's operations ---------------------------------------------------------------
    async def put(self, name: str, value: str) -> tuple[dict[str, Any], bool]:
        """Create or replace; returns the metadata and whether it was created. The same value
        again changes nothing (no new version, no worker restarted)."""
        for _ in range(CAS_ATTEMPTS):
            old = await self.db.secrets.find_one({"_id": name})
            t = now()
            if old is None:
                doc = {"_id": name, "version": 1, **self.seal(name, 1, value), "created_at": t, "updated_at": t}
                try:
                    await self.db.secrets.insert_one(doc)
                except DuplicateKeyError:
                    continue
                return await self.view(doc), True
            try:
                same = _random.compare_digest(self.open(old).encode(), value.encode())
            except SecretUnavailable:
                same = False  # another key or a damaged document: the new value replaces it
            if same:
                return await self.view(old), False
            version = int(old["version"]) + 1
            fields = {"version": version, **self.seal(name, version, value), "updated_at": t}
            res = await self.db.secrets.update_one({"_id": name, "version": old["version"]}, {"$set": fields})
            if res.matched_count:
                await self.rotated(name)
                return await self.view({**old, **fields}), False
        raise RuntimeError(f"secret {name!r} kept changing; try again")

    async def get(self, name: str) -> dict[str, Any]:
        doc = await self.db.secrets.find_one({"_id": name}, {"ciphertext": 0, "nonce": 0})
        if doc is None:
            raise SecretNotFound(f"no secret {name!r}")
        return await self.view(doc)

    async def list_all(self) -> list[dict[str, Any]]:
        docs = await self.db.secrets.find({}, {"ciphertext": 0, "nonce": 0}).sort("_id", 1).to_list(None)
        used = await self._users_of([str(d["_id"]) for d in docs])
        return [_view(d, used.get(str(d["_id"]), [])) for d in docs]

    async def delete(self, name: str) -> None:
        users = (await self._users_of([name])).get(name, [])
        if users:
            raise SecretInUse(name, users)
        res = await self.db.secrets.delete_one({"_id": name})
        if not res.deleted_count:
            raise SecretNotFound(f"no secret {name!r}")

    async def missing(self, names: Iterable[str]) -> list[str]:
        """The names in ``names`` that are no secret (a function may not refer to those)."""
        wanted = sorted(set(names))
        if not wanted:
            return []
        found = {d["_id"] for d in await self.db.secrets.find({"_id": {"$in": wanted}}, {"_id": 1}).to_list(None)}
        return [n for n in wanted if n not in found]

    async def view(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        name = str(doc["_id"])
        return _view(doc, (await self._users_of([name])).get(name, []))

    async def _users_of(self, names: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Secret -> [{function, versions}] over every stored version (each stays invocable)."""
        if not names:
            return {}
        out: dict[str, dict[str, list[str]]] = {}
        cursor = self.db.function_versions.find({"secrets": {"$in": names}}, {"name": 1, "version": 1, "secrets": 1})
        async for v in cursor:
            for s in v.get("secrets") or []:
                if s in names:
                    out.setdefault(s, {}).setdefault(str(v["name"]), []).append(str(v["version"]))
        return {s: [{"function": f, "versions": sorted(vs)} for f, vs in sorted(fns.items())]
                for s, fns in out.items()}

    # -- runtime ----------------------------------------------------------------------------
    async def resolve(self, env: Mapping[str, Any] | None) -> tuple[dict[str, str], tuple[str, ...]]:
        """A stored ``env`` as the worker gets it, and the plain secret values it holds (for
        masking). ``SecretUnavailable`` names what is missing."""
        wanted = refs(env)
        plain = {k: str(v) for k, v in (env or {}).items() if k not in wanted}
        if not wanted:
            return plain, ()
        docs = {d["_id"]: d for d in await self.db.secrets.find({"_id": {"$in": sorted(set(wanted.values()))}})
                .to_list(None)}
        values: list[str] = []
        for var, name in wanted.items():
            doc = docs.get(name)
            if doc is None:
                raise SecretUnavailable(f"env {var} refers to secret {name!r}, which does not exist "
                                        f"(create it with PUT /v1/secrets/{name})")
            plain[var] = self.open(doc)
            values.append(plain[var])
        return plain, mask_values(values)

    async def functions_using(self, name: str) -> list[str]:
        return [u["function"] for u in (await self._users_of([name])).get(name, [])]

    async def rotated(self, name: str) -> None:
        """A secret's value changed (here, or on another instance: the config watch)."""
        self.forget_cached()
        for function in await self.functions_using(name):
            for callback in self._on_change:
                await callback(function)

    def changed_soon(self, name: str) -> None:
        """:meth:`rotated` in the background (the config watch's reader must not wait on MongoDB)."""
        task = asyncio.create_task(self.rotated(name), name=f"secret-changed-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("retiring the workers of a changed secret's functions failed; they keep the old value "
                    "until their idle timeout", error=str(task.exception()))


def _view(doc: Mapping[str, Any], users: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": doc["_id"], "version": doc["version"], "created_at": doc["created_at"],
            "updated_at": doc["updated_at"], "used_by": users}
