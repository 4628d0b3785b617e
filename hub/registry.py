"""Functions: validate code, store immutable versions, materialise them on disk for the pool.

A version is the hash of everything that decides how the code runs (files, handler, limits, env),
so re-sending the same definition is a no-op and any change makes a new version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from hub.code import CodeError, check_code, unpack_code
from hub.code import write_tree as _write_tree
from hub.deps import Deps, requirements_of
from hub.models import FunctionSpec
from hub.records import shielded
from hub.sandbox.base import FunctionRuntime
from hub.store import Store, now

# Unpacking, checking and writing code live in hub.code; CodeError is re-exported from here.
__all__ = ["CodeError", "Conflict", "Registry", "public_function", "version_of"]


class Conflict(Exception):
    pass


def version_of(spec: FunctionSpec, files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    # exclude_none: an unset optional field (e.g. requirements) leaves older versions' hashes alone
    config = spec.model_dump(exclude={"code", "description"}, exclude_none=True)
    h.update(json.dumps(config, sort_keys=True).encode())
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return h.hexdigest()[:16]


def public_function(head: dict[str, Any]) -> dict[str, Any]:
    doc = {k: v for k, v in head.items() if k != "_id"}
    return {"name": head["_id"], **doc}


class Registry:
    """Functions by name. ``runtime`` is on the hot path (every invocation), so it is cached,
    but only while ``hub.watch`` follows the functions collection and can drop an entry the
    moment any instance writes a new version; without that watch every call reads MongoDB."""

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.store = store
        self.code_root = data_dir / "code"
        self.deps = Deps(store, data_dir / "deps")  # function dependencies (hub.deps)
        self._cache: dict[str, FunctionRuntime] = {}
        self._generation = 0  # bumped by every invalidation: a read that straddles one is not cached
        self.cache_enabled = False

    def invalidate(self, name: str | None = None) -> None:
        """Forget the cached runtime of ``name`` (None: of every function)."""
        self._generation += 1
        if name is None:
            self._cache.clear()
        else:
            self._cache.pop(name, None)

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
        known = await self.store.get_version(name, version) if requirements else None
        deps = known.get("deps") if known else None
        if requirements and not deps:
            deps = await self.deps.prepare(requirements)
        t = now()
        config = spec.model_dump(exclude={"code"})
        version_doc = {
            "_id": f"{name}:{version}",
            "name": name,
            "version": version,
            **config,
            "code": [{"path": p, "data": d} for p, d in sorted(files.items())],
            "code_size": sum(len(d) for d in files.values()),
            "created_at": t,
        }
        old = await self.store.get_function(name)
        head = {
            "_id": name,
            "version": version,
            **config,
            "code_size": version_doc["code_size"],
            "created_at": old["created_at"] if old else t,
            "updated_at": t if not old or old["version"] != version else old["updated_at"],
        }
        if deps:
            version_doc["deps"] = head["deps"] = deps
        created = await self.store.put_function(name, version_doc, head)
        self.invalidate(name)
        return head, created

    async def runtime(self, name: str) -> FunctionRuntime | None:
        """The current version of a function, with its code on disk; None if there is no such function."""
        cached = self._cache.get(name) if self.cache_enabled else None
        if cached is not None and (cached.deps_dir is None or cached.deps_dir.is_dir()):
            return cached  # (a deps dir gone from this host is rebuilt by _load)
        generation = self._generation
        runtime = await self._load(name)
        if runtime is not None and self.cache_enabled and generation == self._generation:
            self._cache[name] = runtime
        return runtime

    async def _load(self, name: str) -> FunctionRuntime | None:
        head = await shielded(self.store.get_function(name))
        if head is None:
            return None
        code_dir = self.code_root / name / head["version"]
        if not code_dir.is_dir():
            doc = await shielded(self.store.get_version(name, head["version"]))
            if doc is None:
                return None
            await _materialise(code_dir, {c["path"]: bytes(c["data"]) for c in doc["code"]})
        deps_dir = await self.deps.ensure(head.get("deps"))  # rebuilt here if missing on this host
        return FunctionRuntime(
            name=name,
            version=head["version"],
            handler=head["handler"],
            code_dir=code_dir,
            timeout_s=head["timeout_s"],
            memory_mb=head["memory_mb"],
            max_concurrency=head["max_concurrency"],
            env=dict(head.get("env") or {}),
            network=bool(head.get("network")),
            deps_dir=deps_dir,
        )

    def forget(self, name: str) -> None:
        self.invalidate(name)
        shutil.rmtree(self.code_root / name, ignore_errors=True)


async def _materialise(code_dir: Path, files: dict[str, bytes]) -> None:
    await asyncio.to_thread(_write_tree, code_dir, files)
