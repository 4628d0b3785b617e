"""Functions: validate code, store immutable versions, materialise them on disk for the pool.

A version is the hash of everything that decides how the code runs (files, handler, limits, env),
so re-sending the same definition is a no-op and any change makes a new version.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import os
import posixpath
import shutil
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from hub import codecheck
from hub.models import FunctionSpec
from hub.sandbox.base import FunctionRuntime
from hub.store import Store, now

MAX_CODE_BYTES = 8 * 1024 * 1024  # stays well inside MongoDB's 16 MB document limit
MAX_FILES = 1000
CODE_CHECK_TIMEOUT_S = 60.0


CodeError = codecheck.CodeError

class Conflict(Exception):
    pass


def _check_path(path: str) -> str:
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm.startswith("..") or norm in ("", ".") or "\\" in path or "\x00" in path:
        raise CodeError(f"bad file path {path!r}: paths must be relative and stay inside the function")
    return norm


def unpack_code(spec: FunctionSpec) -> dict[str, bytes]:
    """The function's files as {relative path: bytes}, from inline files or a zip."""
    files: dict[str, bytes] = {}
    if spec.code.files is not None:
        for path, text in spec.code.files.items():
            try:
                files[_check_path(path)] = text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise CodeError(f"{path} is not valid unicode text: {exc.reason}") from None
    else:
        try:
            raw = base64.b64decode(spec.code.zip_base64 or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CodeError(f"code.zip_base64 is not valid base64: {exc}") from None
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
                if len(infos) > MAX_FILES:
                    raise CodeError(f"zip holds {len(infos)} files; the limit is {MAX_FILES}")
                if sum(i.file_size for i in infos) > MAX_CODE_BYTES:
                    raise CodeError(f"code unpacks to more than {MAX_CODE_BYTES} bytes")
                for info in infos:
                    files[_check_path(info.filename)] = zf.read(info)
        except zipfile.BadZipFile as exc:
            raise CodeError(f"code.zip_base64 is not a zip file: {exc}") from None
        except (RuntimeError, NotImplementedError, zlib.error, EOFError, OSError) as exc:
            # encrypted members, unsupported compression, truncated or corrupt data
            raise CodeError(f"code.zip_base64 cannot be unpacked: {exc}") from None
    if not files:
        raise CodeError("the function has no files")
    if sum(len(b) for b in files.values()) > MAX_CODE_BYTES:
        raise CodeError(f"code is larger than {MAX_CODE_BYTES} bytes")
    return files


async def check_code(files: dict[str, bytes], handler: str) -> None:
    """Reject code that cannot possibly run (see ``hub.codecheck``), in a child process: compiling
    megabytes of Python holds the GIL for seconds, and hostile source can crash the compiler."""
    request = json.dumps({
        "handler": handler,
        "files": {p: base64.b64encode(d).decode() for p, d in files.items() if p.endswith(".py")},
    }).encode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", str(Path(codecheck.__file__)),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(request), CODE_CHECK_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CodeError(f"checking the code took longer than {CODE_CHECK_TIMEOUT_S:.0f}s") from None
    try:
        verdict = json.loads(out)
    except ValueError:
        raise CodeError(f"the code could not be checked (checker exit {proc.returncode}: "
                        f"{err.decode(errors='replace')[-300:]})") from None
    if verdict.get("error"):
        raise CodeError(verdict["error"])


def version_of(spec: FunctionSpec, files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    config = spec.model_dump(exclude={"code", "description"})
    h.update(json.dumps(config, sort_keys=True).encode())
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return h.hexdigest()[:16]


def public_function(head: dict[str, Any]) -> dict[str, Any]:
    doc = {k: v for k, v in head.items() if k != "_id"}
    return {"name": head["_id"], **doc}


class Registry:
    def __init__(self, store: Store, data_dir: Path) -> None:
        self.store = store
        self.code_root = data_dir / "code"

    async def put(self, name: str, spec: FunctionSpec) -> tuple[dict[str, Any], bool]:
        files = unpack_code(spec)
        await check_code(files, spec.handler)
        version = version_of(spec, files)
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
        created = await self.store.put_function(name, version_doc, head)
        return head, created

    async def runtime(self, name: str) -> FunctionRuntime | None:
        """The current version of a function, with its code on disk; None if there is no such function."""
        head = await self.store.get_function(name)
        if head is None:
            return None
        code_dir = self.code_root / name / head["version"]
        if not code_dir.is_dir():
            doc = await self.store.get_version(name, head["version"])
            if doc is None:
                return None
            await _materialise(code_dir, {c["path"]: bytes(c["data"]) for c in doc["code"]})
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
        )

    def forget(self, name: str) -> None:
        shutil.rmtree(self.code_root / name, ignore_errors=True)


async def _materialise(code_dir: Path, files: dict[str, bytes]) -> None:
    await asyncio.to_thread(_write_tree, code_dir, files)


def _write_tree(code_dir: Path, files: dict[str, bytes]) -> None:
    """Write to a temp dir and rename, so a half-written version is never seen."""
    code_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=code_dir.parent, prefix=".tmp-"))
    for path, data in files.items():
        target = tmp / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    # world-readable: sandboxed workers run as their own unprivileged uid
    os.chmod(tmp, 0o755)
    for root, dirs, fnames in os.walk(tmp):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in fnames:
            os.chmod(os.path.join(root, f), 0o644)
    try:
        tmp.rename(code_dir)
    except OSError:  # another task materialised it first
        shutil.rmtree(tmp, ignore_errors=True)
