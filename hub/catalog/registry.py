"""Functions: validate code, store immutable versions, materialise them on disk for the pool.

A version is the hash of everything that decides how the code runs (files, handler, limits, env),
so re-sending the same definition is a no-op and any change makes a new version.

Versions and aliases. Every stored version stays invocable: callers name what to run with a
*reference*, ``NAME`` or ``NAME:QUALIFIER`` where the qualifier is ``latest`` (the head, the
default), an alias or a version. Aliases live inside the function's head document (``aliases``,
a list of {name, version, description, created_at, updated_at}), so one read resolves any
reference, and any change of the head or its aliases is a change of that one document: the
change stream in ``hub.catalog.watch`` sees it and drops every cached runtime of the function on every
instance. Writes to the head are compare-and-set on its ``rev`` counter, so a deploy, an alias
move and a version deletion racing each other never lose one another's change, and a version is
never deleted while something points at it (see ``delete_version``).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.catalog.code import CodeError, CodeUnavailable, check_code, unpack_code
from hub.catalog.code import write_tree as _write_tree
from hub.catalog.deps import Deps, requirements_of
from hub.catalog.secrets import Secrets, SecretUnavailable, refs
from hub.spec.aws_events import AwsEnvironment, lambda_env
from hub.spec.models import LATEST, NAME_RE, VERSION_RE, FunctionSpec
from hub.spec.network import network_setting
from hub.driver import shielded
from hub.sandbox.base import FunctionRuntime, NetworkPolicy
from hub.store import Store, now

# Unpacking, checking and writing code live in hub.catalog.code; CodeError is re-exported from here.
__all__ = ["CodeError", "Conflict", "NotFound", "Registry", "VersionRuntime", "public_function",
           "split_ref", "version_of"]

CAS_ATTEMPTS = 20  # compare-and-set rounds on a function's head before giving up (409)


class Conflict(Exception):
    """The change would break something that uses it (a 409); ``users`` says what, for scripts."""

    def __init__(self, message: str, users: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.users = users or []


class NotFound(Exception):
    """No such function, version or alias (a 404); the message names it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class VersionRuntime(FunctionRuntime):
    """A runtime as the registry resolves it: which qualifier was asked for, and which versions of
    the function are live (the head and every alias target) when it was read. The pool keeps warm
    workers per version and, when the live set changes, stops idle workers of versions that left it."""

    qualifier: str = LATEST
    live_versions: frozenset[str] = field(default_factory=frozenset)
    # the plain values of the secrets in ``env``, in every form masked out of recorded output
    # (hub.delivery.dispatch); empty for a function without secrets, which so pays nothing
    secret_values: tuple[str, ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        # env names only: a traceback that shows locals, or a debug line, never shows a value
        return (f"VersionRuntime(name={self.name!r}, version={self.version!r}, qualifier={self.qualifier!r}, "
                f"env names={sorted(self.env)})")


def split_ref(ref: str) -> tuple[str, str]:
    """"NAME" / "NAME:QUALIFIER" -> (NAME, QUALIFIER); the qualifier defaults to "latest"."""
    name, _, qualifier = ref.partition(":")
    return name, qualifier or LATEST


def is_version(qualifier: str) -> bool:
    return re.fullmatch(VERSION_RE, qualifier) is not None


def find_alias(head: dict[str, Any], alias: str) -> dict[str, Any] | None:
    return next((a for a in head.get("aliases") or [] if a.get("name") == alias), None)


def resolve(head: dict[str, Any], qualifier: str) -> str | None:
    """The version ``qualifier`` names in this head: latest, an alias, or a version's own hash
    (whose existence the caller checks); None for an unknown alias."""
    if qualifier == LATEST:
        return str(head["version"])
    alias = find_alias(head, qualifier)
    if alias is not None:
        return str(alias["version"])
    return qualifier if is_version(qualifier) else None


def live_versions(head: dict[str, Any]) -> frozenset[str]:
    return frozenset({head["version"], *(a["version"] for a in head.get("aliases") or [])})


def code_zip(files: dict[str, bytes]) -> bytes:
    """A version's code as a zip: the stored files byte for byte, sorted, with fixed times and
    modes, so the same version always gives the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in sorted(files.items()):
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def version_of(spec: FunctionSpec, files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    # exclude_none: an unset optional field (e.g. requirements) leaves older versions' hashes alone
    config = spec.model_dump(exclude={"code", "description"}, exclude_none=True)
    if config.get("event_format") == "cloudevents":  # the default: older versions' hashes stay
        del config["event_format"]
    h.update(json.dumps(config, sort_keys=True).encode())
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return h.hexdigest()[:16]


def public_function(head: dict[str, Any]) -> dict[str, Any]:
    doc = {k: v for k, v in head.items() if k not in ("_id", "rev")}
    return {"name": head["_id"], **doc, "aliases": head.get("aliases") or []}


class Registry:
    """Functions by name. ``runtime`` is on the hot path (every invocation), so it is cached per
    (name, qualifier), but only while ``hub.catalog.watch`` follows the functions collection and can drop
    every entry of a function the moment any instance changes its head or its aliases (one
    document); without that watch every call reads MongoDB."""

    def __init__(self, store: Store, data_dir: Path, secrets: Secrets | None = None,
                 aws: AwsEnvironment | None = None) -> None:
        self.store = store
        self.aws = aws or AwsEnvironment()  # event_format "aws": the Lambda variables' region
        # env values from secrets are decrypted when a runtime is built, never stored with it;
        # a changed secret drops the cached runtimes (hub.catalog.secrets)
        self.secrets = secrets
        if secrets is not None:
            secrets.forget_cached = self.invalidate
            secrets.on_change(self._secret_changed)
        self.code_root = data_dir / "code"
        self.deps = Deps(store, data_dir / "deps")  # function dependencies (hub.catalog.deps)
        self._cache: dict[str, dict[str, VersionRuntime]] = {}  # name -> qualifier -> runtime
        self._generation = 0  # bumped by every invalidation: a read that straddles one is not cached
        self.cache_enabled = False

    def invalidate(self, name: str | None = None) -> None:
        """Forget the cached runtimes of ``name``, every qualifier (None: of every function)."""
        self._generation += 1
        if name is None:
            self._cache.clear()
        else:
            self._cache.pop(name, None)

    async def _secret_changed(self, name: str) -> None:
        self.invalidate(name)

    def enable_cache(self, enabled: bool) -> None:
        self.cache_enabled = enabled
        self.invalidate()

    async def put(self, name: str, spec: FunctionSpec) -> tuple[dict[str, Any], bool]:
        files = unpack_code(spec)
        await check_code(files, spec.handler)
        version = version_of(spec, files)
        # Dependencies: resolved and built before anything is stored (DepsError: a 400). Sending a
        # stored version again reuses its pins.
        requirements = requirements_of(spec.requirements, files)
        known = await self.store.get_version(name, version, code=False) if requirements else None
        deps = known.get("deps") if known else None
        if requirements and not deps:
            deps = await self.deps.prepare(requirements)
        t = now()
        config = spec.model_dump(exclude={"code"})
        # which secrets this version's env refers to: an indexed field, so "who uses secret X"
        # (its 409 on delete, and whose workers a rotation restarts) is one query
        used = sorted(set(refs(config.get("env")).values()))
        if used:
            config["secrets"] = used
        version_doc = {
            "_id": f"{name}:{version}",
            "name": name,
            "version": version,
            **config,
            "code": [{"path": p, "data": d} for p, d in sorted(files.items())],
            "code_size": sum(len(d) for d in files.values()),
            "created_at": t,
        }
        if deps:
            version_doc["deps"] = deps
        created = False
        for _ in range(CAS_ATTEMPTS):
            stored = await self.store.put_version(version_doc)
            if stored is None:
                continue  # a deletion took it away just now: store it again
            created = created or stored
            old = await self.store.get_function(name)
            head = {
                "_id": name,
                "version": version,
                **config,
                "code_size": version_doc["code_size"],
                "created_at": old["created_at"] if old else t,
                "updated_at": t if not old or old["version"] != version else old["updated_at"],
                "aliases": (old or {}).get("aliases") or [],
                "rev": int((old or {}).get("rev") or 0) + 1,
            }
            if deps:
                head["deps"] = deps
            if old is not None and all(old.get(k) == v for k, v in head.items() if k != "rev") \
                    and set(old) <= set(head):
                return old, created  # the same definition again: nothing to write
            if await self.store.replace_head(head, old):
                break
        else:
            raise Conflict(f"function {name!r} kept changing while this version was deployed; try again")
        self.invalidate(name)
        return head, created

    async def runtime(self, ref: str) -> VersionRuntime | None:
        """What ``ref`` (NAME, or NAME:QUALIFIER with latest, an alias or a version) resolves to
        *now*, with its code on disk; None if there is no such function, alias or version."""
        name, qualifier = split_ref(ref)
        if self.cache_enabled:
            by_name = self._cache.get(name)
            cached = by_name.get(qualifier) if by_name else None
            if cached is not None and (cached.deps_dir is None or cached.deps_dir.is_dir()):
                return cached  # (a deps dir gone from this host is rebuilt by _load)
        generation = self._generation
        runtime = await self._load(name, qualifier)
        if runtime is not None and self.cache_enabled and generation == self._generation:
            self._cache.setdefault(name, {})[qualifier] = runtime
        return runtime

    async def _load(self, name: str, qualifier: str) -> VersionRuntime | None:
        head = await shielded(self.store.get_function(name))
        if head is None:
            return None
        version = resolve(head, qualifier)
        if version is None:
            return None
        config: dict[str, Any] = head  # the head holds its version's config: one read for latest
        if version != head["version"]:
            doc = await shielded(self.store.get_version(name, version, code=False))
            if doc is None:
                return None
            config = doc
        if not is_version(version) or not re.fullmatch(NAME_RE, name):
            # both end up in a host path: what MongoDB says is checked like a request would be
            raise CodeUnavailable(f"function {name[:80]!r} has a stored version id that is not valid")
        code_dir = self.code_root / name / version
        if not code_dir.is_dir():
            full = await shielded(self.store.get_version(name, version))
            if full is None:
                return None
            await _materialise(code_dir, {c["path"]: bytes(c["data"]) for c in full["code"]})
        deps_dir = await self.deps.ensure(config.get("deps"))  # rebuilt here if missing on this host
        env: dict[str, str] = {k: v for k, v in (config.get("env") or {}).items() if isinstance(v, str)}
        secret_values: tuple[str, ...] = ()
        if refs(config.get("env")):
            if self.secrets is None:
                raise SecretUnavailable("this hub has no secrets store")
            env, secret_values = await shielded(self.secrets.resolve(config.get("env")))
        if config.get("event_format") == "aws":
            env = {**env, **lambda_env(name, version, config["memory_mb"], self.aws)}
        return VersionRuntime(
            name=name,
            version=version,
            handler=config["handler"],
            code_dir=code_dir,
            timeout_s=config["timeout_s"],
            memory_mb=config["memory_mb"],
            max_concurrency=config["max_concurrency"],
            env=env,
            # checked again: it came back from MongoDB
            network=NetworkPolicy.from_setting(network_setting(config.get("network"))),
            deps_dir=deps_dir,
            event_format=config.get("event_format") or "cloudevents",
            qualifier=qualifier,
            live_versions=live_versions(head),
            secret_values=secret_values,
        )

    # -- versions and aliases ---------------------------------------------------------------
    async def head(self, name: str) -> dict[str, Any]:
        """The function's head document; NotFound (a 404 at the API) when there is none."""
        head = await self.store.get_function(name)
        if head is None:
            raise NotFound(f"no function {name!r}")
        return head

    async def versions(self, name: str) -> list[dict[str, Any]]:
        """A function's versions, newest first, each with the aliases that point at it."""
        head = await self.head(name)
        out = []
        for v in await self.store.list_versions(name):
            row: dict[str, Any] = {k: v[k] for k in ("version", "created_at", "code_size", "handler", "description")
                                   if k in v}
            if v.get("deps"):
                row["deps"] = v["deps"]
            row["latest"] = v["version"] == head["version"]
            row["aliases"] = [a["name"] for a in head.get("aliases") or [] if a["version"] == v["version"]]
            out.append(row)
        return out

    async def version_code(self, name: str, version: str) -> bytes:
        """The stored code of a version as a zip (``code_zip``)."""
        await self.head(name)
        doc = await self.store.get_version(name, version) if is_version(version) else None
        if doc is None:
            raise NotFound(f"function {name!r} has no version {version!r}")
        files = {c["path"]: bytes(c["data"]) for c in doc["code"]}
        return await asyncio.to_thread(code_zip, files)

    async def alias(self, name: str, alias: str) -> dict[str, Any]:
        found = find_alias(await self.head(name), alias)
        if found is None:
            raise NotFound(f"function {name!r} has no alias {alias!r}")
        return found

    async def set_alias(self, name: str, alias: str, version: str,
                        description: str = "") -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Create or move an alias; returns it and what it was before (None: it is new).

        The version is checked after the head is read and the write is conditional on that head,
        so a version deletion (which bumps the head when it commits) cannot slip in between."""
        for _ in range(CAS_ATTEMPTS):
            head = await self.head(name)
            doc = await self.store.get_version(name, version, code=False)
            if doc is None:
                raise NotFound(f"function {name!r} has no version {version!r}")
            if doc.get("deleting"):
                raise Conflict(f"version {version!r} of function {name!r} is being deleted")
            old = find_alias(head, alias)
            if old is not None and old["version"] == version and old.get("description", "") == description:
                return old, old
            t = now()
            entry = {"name": alias, "version": version, "description": description,
                     "created_at": old["created_at"] if old else t, "updated_at": t}
            aliases = sorted([a for a in head.get("aliases") or [] if a["name"] != alias] + [entry],
                             key=lambda a: str(a["name"]))
            if await self.store.update_head(head, {"aliases": aliases}):
                self.invalidate(name)
                return entry, old
        raise Conflict(f"function {name!r} kept changing; try again")

    async def delete_alias(self, name: str, alias: str) -> dict[str, Any]:
        """Delete an alias no trigger uses (``Conflict`` naming the triggers otherwise)."""
        await self.alias(name, alias)
        users = [t["_id"] for t in await self.store.list_triggers(function=f"{name}:{alias}")]
        if users:
            raise Conflict(f"alias {alias!r} of function {name!r} is used by triggers {users}; point them "
                           f"elsewhere or delete them first", [{"kind": "trigger", "name": u} for u in users])
        for _ in range(CAS_ATTEMPTS):
            head = await self.head(name)
            old = find_alias(head, alias)
            if old is None:
                raise NotFound(f"function {name!r} has no alias {alias!r}")
            if await self.store.update_head(head, {"aliases": [a for a in head.get("aliases") or []
                                                               if a["name"] != alias]}):
                self.invalidate(name)
                return old
        raise Conflict(f"function {name!r} kept changing; try again")

    async def delete_version(self, name: str, version: str) -> None:
        """Delete a version nothing uses: not the head, no alias, no trigger on NAME:VERSION.

        The version is first marked (a new alias or trigger on it is refused from then on), then
        the head is checked and bumped in one conditional write (an alias set meanwhile makes that
        write fail and the check run again), then the version is deleted unless a deploy of the
        same code took it back. A failed check removes the mark."""
        await self.head(name)
        if not is_version(version) or await self.store.get_version(name, version, code=False) is None:
            raise NotFound(f"function {name!r} has no version {version!r}")
        token = uuid.uuid4().hex
        if not await self.store.mark_version_deleting(name, version, token):
            if await self.store.get_version(name, version, code=False) is None:
                raise NotFound(f"function {name!r} has no version {version!r}")
            raise Conflict(f"version {version!r} of function {name!r} is being deleted")
        try:
            triggers = [t["_id"] for t in await self.store.list_triggers(function=f"{name}:{version}")]
            for _ in range(CAS_ATTEMPTS):
                head = await self.head(name)
                users = [{"kind": "latest", "name": LATEST}] if head["version"] == version else []
                users += [{"kind": "alias", "name": a["name"]} for a in head.get("aliases") or []
                          if a["version"] == version]
                users += [{"kind": "trigger", "name": t} for t in triggers]
                if users:
                    raise Conflict(_in_use(name, version, users), users)
                if await self.store.update_head(head, {}):
                    break
            else:
                raise Conflict(f"function {name!r} kept changing; try again")
        except BaseException:
            await shielded(self.store.unmark_version_deleting(name, version, token))
            raise
        if not await self.store.delete_version(name, version, token):
            raise Conflict(f"version {version!r} of function {name!r} was deployed again meanwhile; not deleted")
        self.invalidate(name)
        await asyncio.to_thread(shutil.rmtree, self.code_root / name / version, True)

    def forget(self, name: str) -> None:
        self.invalidate(name)
        shutil.rmtree(self.code_root / name, ignore_errors=True)


def _in_use(name: str, version: str, users: list[dict[str, str]]) -> str:
    parts = []
    if any(u["kind"] == "latest" for u in users):
        parts.append("it is the current version (latest); deploy another one first")
    aliases = [u["name"] for u in users if u["kind"] == "alias"]
    if aliases:
        parts.append(f"aliases {aliases} point at it; move or delete them first")
    triggers = [u["name"] for u in users if u["kind"] == "trigger"]
    if triggers:
        parts.append(f"triggers {triggers} run it; point them elsewhere or delete them first")
    return f"version {version!r} of function {name!r} is in use: " + "; ".join(parts)


async def qualifier_problem(store: Store, ref: str) -> str | None:
    """Why a trigger cannot point at ``ref`` (NAME[:QUALIFIER]) now; None if it can."""
    name, qualifier = split_ref(ref)
    head = await store.get_function(name)
    if head is None:
        return f"unknown function {name!r}: create it with PUT /v1/functions/{name} first"
    if qualifier == LATEST or find_alias(head, qualifier) is not None:
        return None
    if is_version(qualifier):
        doc = await store.get_version(name, qualifier, code=False)
        if doc is not None and not doc.get("deleting"):
            return None
        return f"function {name!r} has no version {qualifier!r}"
    return f"function {name!r} has no alias {qualifier!r} (GET /v1/functions/{name}/aliases lists them)"


async def _materialise(code_dir: Path, files: dict[str, bytes]) -> None:
    await asyncio.to_thread(_write_tree, code_dir, files)
