"""Function dependencies: resolve them with pip, build each distinct set once, share it read-only.

A function declares dependencies as PEP 508 requirement strings, in a ``requirements.txt`` at
the root of its code or in the ``requirements`` field of its definition (not both). At
``PUT /v1/functions/{name}``, before anything is stored:

1. **Check.** Every line must be a plain PEP 508 requirement (``name[extras] specifier ; marker``).
   pip options (``-r``, ``-e``, ``--index-url``, ...), URLs, paths, ``name @ url`` and names that
   pip would take for a file are refused: a function must not make the hub fetch from arbitrary
   places or read the host's files. Lines reach pip as separate arguments rebuilt from the parsed
   requirement, never as a requirements file of the user's, so no pip file syntax applies.
2. **Resolve.** ``pip install --dry-run --ignore-installed --only-binary=:all: --report`` gives
   the full pinned set (wheels only: no package's ``setup.py`` ever runs on the hub) with each
   wheel's sha256.
3. **Hash.** The set's key is the sha256 of the sorted ``name==version`` list plus this
   interpreter's implementation, version and first wheel tag (ABI and platform). Functions and
   versions whose requirements resolve to the same set share one directory, whatever their
   requirement text.
4. **Build** (only if ``DATA_DIR/deps/<key>`` is missing): ``pip install --only-binary=:all:
   --no-deps --require-hashes --target TMP`` of exactly the pins, then TMP is renamed into place.
   One build per key at a time in this process (a lock per key); another process building the
   same key at once loses the rename and discards its copy. The set is recorded in MongoDB
   (``deps`` collection: pins with wheel hashes, size, build time, build count), and the version
   gets ``deps: {hash, packages, size_bytes, build_s}``.

Any failure (no wheel for this platform, an unknown package, a conflict, pip timing out) is a
``DepsError``: the PUT answers 400 with what pip said, shortened, explained and without host
paths, and nothing is stored. A version's resolution is fixed when it is first stored: sending
the same definition again reuses its pins (no resolve), so ``requests>=2`` means whatever it
resolved to then; change the requirements to move.

On a host where a version's directory is missing (another hub instance, a wiped data dir), the
first use rebuilds it from the recorded pins and hashes, under the same key (``ensure``); a
failure there is ``DepsUnavailable`` (the invocation fails with the reason, like unwritable code).

pip runs as a child process of the hub's own interpreter (``sys.executable``: a venv's python is
the very binary the sandbox runs, see ``hub.sandbox.bwrap.interpreter``, so markers and wheel
tags are the sandbox's), with a timeout, bounded output, its own cache and temp dirs under
``DATA_DIR/deps``, and an environment holding only PATH, HOME, LANG and the operator's index,
proxy and certificate settings: never a ``HUB_*`` secret. The operator's pip configuration
(``pip.conf``, ``PIP_INDEX_URL`` etc.) chooses the index; a function cannot.

The sandbox mounts the directory read-only at ``/opt/python`` (the path of Lambda's layers)
and the runtime adds it to ``sys.path`` after the code with ``site.addsitedir`` (so ``.pth``
files work).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from hub.catalog.code import REQUIREMENTS_FILE, CodeError, CodeUnavailable, requirements_text
from hub.spec.requirements import MAX_REQUIREMENTS, check_pin, check_requirement, file_lines
from hub.driver import shielded
from hub.store import Store, now

log = structlog.get_logger("hub.catalog.deps")

MAX_RESOLVED = 500  # packages in a resolved set
MAX_DEPS_BYTES = 512 * 1024 * 1024  # one installed set (Lambda: 250 MB for code + layers, unzipped)
MAX_CONCURRENT_BUILDS = 2  # pip processes at once (resolving or installing), per hub
OUTPUT_LIMIT = 64 * 1024  # the tail of pip's output kept for the error message
REPORT_LIMIT = 16 * 1024 * 1024  # pip's --report file
MESSAGE_LIMIT = 2000  # characters of pip's explanation in a 400
STALE_BUILD_S = 3600.0  # a leftover .build-* dir older than this (or twice the timeout) is removed


def _timeout_from_env() -> float:
    try:
        return max(1.0, float(os.environ.get("HUB_DEPS_BUILD_TIMEOUT_S", "300")))
    except ValueError:
        return 300.0


# One pip run (a resolve or an install) may take this long. HUB_DEPS_BUILD_TIMEOUT_S.
BUILD_TIMEOUT_S = _timeout_from_env()

# The operator's pip settings that a build may use: where to find packages and how to get there.
_PASSED_ENV = (
    "HOME", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_TRUSTED_HOST",
    "PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT", "PIP_TIMEOUT", "PIP_RETRIES",
    "PIP_CONSTRAINT", "PIP_CONFIG_FILE", "PIP_KEYRING_PROVIDER",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
)
_KEY_RE = re.compile(r"^[0-9a-f]{32}$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # a canonical project name
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DepsError(CodeError):
    """The dependencies cannot be used (bad requirement, or pip could not resolve or install
    them): a 400 at PUT. The message is for the user and holds no host path."""


class DepsUnavailable(CodeUnavailable):
    """A stored version's dependencies could not be rebuilt on this host (index unreachable,
    disk full, ...). Not the user's fault at that point: the invocation fails with this."""


# ---------------------------------------------------------------------------- requirements


def requirements_of(field: list[str] | None, files: dict[str, bytes]) -> list[str]:
    """The function's requirements (normalised), from ``requirements.txt`` or the field; [] for
    none. ``DepsError`` for both at once or a line that is not a plain requirement."""
    text = requirements_text(files)
    if text is not None and field is not None:
        raise DepsError(f"requirements: give the dependencies either as {REQUIREMENTS_FILE} in the code or "
                        f"as the 'requirements' field, not both")
    if text is None:
        lines = list(enumerate(field or [], 1))
        where = "requirements[{}]"
    else:
        lines = file_lines(text)
        where = REQUIREMENTS_FILE + " line {}"
    if len(lines) > MAX_REQUIREMENTS:
        raise DepsError(f"requirements: {len(lines)} requirements; the limit is {MAX_REQUIREMENTS}")
    out = []
    for number, line in lines:
        try:
            out.append(check_requirement(line))
        except ValueError as exc:
            raise DepsError(f"{where.format(number)}: {exc}") from None
    return out


# ---------------------------------------------------------------------------- the resolved set


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    sha256: str | None = None  # of the wheel pip chose when the set was resolved

    def spec(self) -> str:
        return f"{self.name}=={self.version}"


def environment() -> dict[str, str]:
    """What a built set is bound to: the interpreter, its ABI and the newest platform tag it
    accepts (``manylinux_2_36_x86_64`` says the glibc too)."""
    tags = list(sys_tags())
    first = tags[0]
    platforms = [t.platform for t in tags if (t.interpreter, t.abi) == (first.interpreter, first.abi)]
    platform = next((p for p in platforms if p.startswith(("manylinux_", "musllinux_"))), first.platform)
    return {
        "python": f"{sys.implementation.name}-{sys.version_info.major}.{sys.version_info.minor}",
        "tag": f"{first.interpreter}-{first.abi}-{platform}",
    }


def set_key(pins: list[Pin], env: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"packages": sorted(p.spec() for p in pins), "python": env["python"],
                         "tag": env["tag"]}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def _pins_from_report(report: dict[str, Any]) -> list[Pin]:
    pins: dict[str, Pin] = {}
    for item in report.get("install") or []:
        meta = item.get("metadata") or {}
        name = canonicalize_name(str(meta.get("name", "")))
        try:
            version = str(Version(str(meta.get("version", ""))))
        except InvalidVersion:
            raise DepsError(f"requirements: pip resolved {name!r} to an invalid version") from None
        if not _NAME_RE.match(name):
            raise DepsError(f"requirements: pip resolved an invalid package name {name[:80]!r}")
        info = item.get("download_info") or {}
        url = str(info.get("url", ""))
        if not url.split("#")[0].endswith(".whl"):
            raise DepsError(f"requirements: {name}=={version} would be installed from a source distribution; "
                            f"the hub installs wheels only")
        sha = ((info.get("archive_info") or {}).get("hashes") or {}).get("sha256")
        pins[name] = Pin(name, version, sha if isinstance(sha, str) and _SHA256_RE.match(sha) else None)
    if len(pins) > MAX_RESOLVED:
        raise DepsError(f"requirements: they resolve to {len(pins)} packages; the limit is {MAX_RESOLVED}")
    return sorted(pins.values(), key=lambda p: p.name)


def public_deps(record: dict[str, Any]) -> dict[str, Any]:
    """What a function version shows of its set."""
    return {
        "hash": record["_id"],
        "packages": [f"{p['name']}=={p['version']}" for p in record.get("packages", [])],
        "size_bytes": int(record.get("size_bytes", 0)),
        "build_s": float(record.get("build_s", 0.0)),
    }


# ---------------------------------------------------------------------------- pip's messages

_ABS_PATH_RE = re.compile(r"(?<![\w:/.~-])/(?:[\w.+@%=,-]+/)*[\w.+@%=,-]*")


def _scrub(text: str, known: list[str]) -> str:
    for path in sorted((p for p in known if p and p != "/"), key=len, reverse=True):
        text = text.replace(path, "<dir>")
    return _ABS_PATH_RE.sub("<path>", text)


def explain(output: str, env: dict[str, str], known_paths: list[str]) -> str:
    """What pip's output says went wrong, in a few lines a user can act on."""
    lines = output.splitlines()
    said: list[str] = []
    explained: set[str] = set()
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line.startswith("ERROR:"):
            continue
        msg = line[len("ERROR:"):].strip()
        m = re.match(r"Could not find a version that satisfies the requirement (.+?) \(from versions: (.*)\)$", msg)
        if m:
            req, versions = m.group(1), m.group(2).strip()
            explained.add(req)
            if versions == "none":
                said.append(f"{req}: no wheel found for this Python and platform ({env['tag']}): either no "
                            f"such package exists on the package index, or it publishes no wheel for "
                            f"{env['python']} on this platform (the hub installs wheels only; it never builds "
                            f"source distributions)")
            else:
                shown = versions.split(", ")
                tail = ", ".join(shown[-12:]) + (" (and older)" if len(shown) > 12 else "")
                said.append(f"{req}: no release matches; releases with a wheel for this platform: {tail}")
            continue
        m = re.match(r"No matching distribution found for (.+)$", msg)
        if m and m.group(1) in explained:
            continue
        if msg.startswith("ResolutionImpossible"):
            continue
        if "conflicting dependencies" in msg:
            causes: list[str] = []
            for follow in lines[i + 1:]:
                if follow.strip().startswith("The conflict is caused by"):
                    continue
                if causes and not follow.strip():
                    break
                if follow.startswith(" ") and follow.strip():
                    causes.append(follow.strip())
            said.append("the requirements conflict: " + msg + (" (" + "; ".join(causes) + ")" if causes else ""))
            continue
        said.append(msg)
    if not said:
        said = [ln.strip() for ln in lines if ln.strip() and "is ignored" not in ln][-5:] or ["pip failed"]
    retried = [ln.strip() for ln in lines if "Retrying" in ln and "WARNING" in ln]
    if retried:
        said.append("pip could not reach the package index: " + retried[-1].removeprefix("WARNING: "))
    text = _scrub("; ".join(said), known_paths)
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + "..."


# ---------------------------------------------------------------------------- builder


class Deps:
    """Builds and finds dependency sets under ``root`` (``DATA_DIR/deps``); records them in the
    store's ``deps`` collection."""

    def __init__(self, store: Store, root: Path, *, timeout_s: float = BUILD_TIMEOUT_S,
                 python: str | None = None) -> None:
        self.store = store
        self.root = Path(root).absolute()
        self.timeout_s = timeout_s
        self.python = python or sys.executable  # a venv's python: the sandbox's binary, with pip
        self.env = environment()
        self._locks: dict[str, asyncio.Lock] = {}
        self._slots: asyncio.Semaphore | None = None
        self._swept = False

    def path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise ValueError(f"not a dependency set key: {key[:40]!r}")
        return self.root / key

    # -- PUT ------------------------------------------------------------------------------------
    async def prepare(self, requirements: list[str]) -> dict[str, Any] | None:
        """Resolve ``requirements``, build the set unless this host has it, record it; the
        version's ``deps`` (None when nothing is to be installed). ``DepsError`` for failures."""
        if not requirements:
            return None
        t0 = time.perf_counter()
        pins = await self._resolve(requirements)
        if not pins:
            return None
        key = set_key(pins, self.env)
        resolve_s = time.perf_counter() - t0
        record = await self._build(key, pins, rebuild=False)
        log.info("dependencies ready", hash=key, packages=len(pins), resolve_s=round(resolve_s, 2),
                 built=record.get("_built_now", False))
        return public_deps(record)

    # -- runtime ----------------------------------------------------------------------------------
    async def ensure(self, deps: dict[str, Any] | None) -> Path | None:
        """The directory of a version's set on this host, rebuilt from its recorded pins when
        missing; None without dependencies. ``DepsUnavailable`` if it cannot be rebuilt."""
        if not deps:
            return None
        key = str(deps.get("hash", ""))
        try:
            path = self.path(key)
        except ValueError as exc:
            raise DepsUnavailable(f"the function's dependencies cannot be used: {exc}") from None
        if path.is_dir():
            return path
        record = await shielded(self.store.get_deps(key))
        try:
            pins = self._stored_pins(deps, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DepsUnavailable(f"the function's recorded dependencies are not usable: {exc}") from None
        log.warning("dependency set missing on this host: rebuilding it", hash=key, packages=len(pins))
        try:
            await self._build(key, pins, rebuild=True)
        except DepsError as exc:
            raise DepsUnavailable(f"the function's dependencies could not be rebuilt on this host: "
                                  f"{str(exc).removeprefix('requirements: ')}") from None
        return path

    def _stored_pins(self, deps: dict[str, Any], record: dict[str, Any] | None) -> list[Pin]:
        """The pins a missing set is rebuilt from, read back from MongoDB and checked again
        (``check_pin``): what pip is given never comes unchecked from storage."""
        if record is not None:
            pins = [Pin(*check_pin(p["name"], p["version"], p.get("sha256"))) for p in record.get("packages", [])]
            if record.get("env") != self.env:
                # Another platform resolved it: same versions, but its wheels may not fit here.
                log.warning("dependency set built for another platform; rebuilding from versions only",
                            hash=deps.get("hash"), recorded=record.get("env"), here=self.env)
                pins = [Pin(p.name, p.version) for p in pins]
        else:
            pins = []
            for spec in deps.get("packages") or []:
                name, _, version = str(spec).partition("==")
                pins.append(Pin(*check_pin(name, version)))
        return pins

    # -- building -----------------------------------------------------------------------------------
    async def _build(self, key: str, pins: list[Pin], *, rebuild: bool) -> dict[str, Any]:
        path = self.path(key)
        # One lock per set, kept (a few bytes per distinct set this hub has seen).
        async with self._locks.setdefault(key, asyncio.Lock()):
            built = False
            if not path.is_dir():
                t0 = time.perf_counter()
                size = await self._install(key, pins)
                build_s = round(time.perf_counter() - t0, 3)
                built = True
                log.info("dependencies built", hash=key, packages=len(pins), size_bytes=size,
                         build_s=build_s, rebuild=rebuild)
            else:
                size, build_s = -1, 0.0
            record = await self._record(key, pins, size, build_s, built)
        record["_built_now"] = built
        return record

    async def _record(self, key: str, pins: list[Pin], size: int, build_s: float,
                      built: bool) -> dict[str, Any]:
        if not built:
            record = await shielded(self.store.get_deps(key))
            if record is not None:
                return dict(record)
            # The directory is here but the record is not (a fresh database): record what is here.
            size = await asyncio.to_thread(_tree_size, self.path(key))
        update: dict[str, Any] = {
            "$setOnInsert": {"packages": [{"name": p.name, "version": p.version, "sha256": p.sha256}
                                          for p in pins],
                             "env": self.env, "created_at": now()},
            "$set": {"size_bytes": size},
        }
        if built:
            update["$set"].update({"build_s": build_s, "built_at": now()})
            update["$inc"] = {"builds": 1}
        else:
            update["$setOnInsert"].update({"build_s": build_s, "builds": 0})
        return await shielded(self.store.record_deps(key, update))

    async def _resolve(self, requirements: list[str]) -> list[Pin]:
        work = await self._workdir()
        tmp = Path(tempfile.mkdtemp(dir=work, prefix=".resolve-"))
        try:
            report = tmp / "report.json"
            args = ["install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--report", str(report),
                    "--progress-bar", "off", "--no-input", "--disable-pip-version-check", *requirements]
            code, output = await self._pip(args, tmp, "resolving the dependencies")
            if code != 0:
                raise DepsError("requirements: " + explain(output, self.env, self._known_paths(tmp)))
            try:
                if report.stat().st_size > REPORT_LIMIT:
                    raise DepsError("requirements: pip's resolution report is too large")
                data = json.loads(await asyncio.to_thread(report.read_bytes))
            except (OSError, ValueError) as exc:
                raise DepsError(f"requirements: pip gave no usable resolution ({type(exc).__name__})") from None
            return _pins_from_report(data)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)

    async def _install(self, key: str, pins: list[Pin]) -> int:
        """Install exactly ``pins`` into a temp dir and rename it to ``root/key``; its size."""
        work = await self._workdir()
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".build-{key[:12]}-"))
        try:
            target = tmp / "python"
            hashed = all(p.sha256 for p in pins)
            reqs = tmp / "pins.txt"
            reqs.write_text("".join(p.spec() + (f" --hash=sha256:{p.sha256}" if hashed else "") + "\n"
                                    for p in pins))
            args = ["install", "--only-binary=:all:", "--no-deps", "--ignore-installed", "--target", str(target),
                    "--progress-bar", "off", "--no-input", "--disable-pip-version-check",
                    "--no-warn-script-location", "-r", str(reqs)]
            if hashed:
                args.append("--require-hashes")
            code, output = await self._pip(args, tmp, "installing the dependencies")
            if code != 0:
                raise DepsError("requirements: " + explain(output, self.env, self._known_paths(tmp, work)))
            size = await asyncio.to_thread(_finish_tree, target)
            if size > MAX_DEPS_BYTES:
                raise DepsError(f"requirements: the dependencies take {size / 2**20:.0f} MB installed; the "
                                f"limit is {MAX_DEPS_BYTES // 2**20} MB")
            final = self.path(key)
            try:
                os.rename(target, final)
            except OSError:
                if not final.is_dir():
                    raise
                # another process built the same set first: ours is discarded below
            return size
        except OSError as exc:
            raise DepsUnavailable(f"the dependencies cannot be written on this host: "
                                  f"{exc.strerror or type(exc).__name__}") from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)

    async def _workdir(self) -> Path:
        """``root`` with pip's cache and temp dirs; leftovers of crashed builds swept once."""
        for d in (self.root, self.root / ".cache", self.root / ".tmp"):
            d.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            await asyncio.to_thread(_sweep, self.root, max(STALE_BUILD_S, 2 * self.timeout_s))
        return self.root

    def _known_paths(self, *extra: Path) -> list[str]:
        return [str(p) for p in (*extra, self.root, Path(self.python).parent.parent)] + [
            sys.prefix, sys.base_prefix, os.environ.get("HOME", ""), os.getcwd()]

    def _pip_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in _PASSED_ENV}
        env.update({
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "PIP_CACHE_DIR": str(self.root / ".cache"), "TMPDIR": str(self.root / ".tmp"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONUNBUFFERED": "1",
        })
        return env

    async def _pip(self, args: list[str], cwd: Path, what: str) -> tuple[int, str]:
        """Run ``python -m pip ARGS`` in ``cwd``: (exit code, the tail of its output)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_CONCURRENT_BUILDS)
        async with self._slots:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "pip", *args, cwd=str(cwd), env=self._pip_env(),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            tail = bytearray()

            async def read() -> None:
                assert proc.stdout is not None
                while chunk := await proc.stdout.read(65536):
                    tail.extend(chunk)
                    if len(tail) > OUTPUT_LIMIT:
                        del tail[:len(tail) - OUTPUT_LIMIT]

            try:
                await asyncio.wait_for(asyncio.gather(read(), proc.wait()), self.timeout_s)
            except TimeoutError:
                raise DepsError(f"requirements: {what} took longer than {self.timeout_s:.0f} s "
                                f"(HUB_DEPS_BUILD_TIMEOUT_S); try fewer or smaller packages") from None
            finally:
                if proc.returncode is None:  # timed out or cancelled: pip and anything it started
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    await asyncio.shield(proc.wait())
            return proc.returncode or 0, tail.decode("utf-8", "replace")


def _finish_tree(target: Path) -> int:
    """World-readable (sandboxed workers run as their own uid), nothing writable but by the hub;
    the size in bytes."""
    size = 0
    os.chmod(target, 0o755)
    for root, dirs, files in os.walk(target):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            p = os.path.join(root, f)
            st = os.lstat(p)
            if not os.path.islink(p):
                os.chmod(p, (st.st_mode | 0o444) & 0o755)
            size += st.st_size
    return size


def _tree_size(path: Path) -> int:
    size = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                size += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return size


def _sweep(root: Path, age_s: float) -> None:
    """Remove what killed or crashed builds left behind (pip's temp dirs included)."""
    cutoff = time.time() - age_s
    entries = [e for e in root.iterdir() if e.name.startswith((".build-", ".resolve-"))]
    entries += list((root / ".tmp").iterdir())
    for entry in entries:
        try:
            if entry.lstat().st_mtime < cutoff:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
        except OSError:
            pass
