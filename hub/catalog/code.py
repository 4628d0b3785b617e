"""Function code: unpack it (inline files or a zip), check it, and write a version to disk.

``unpack_code`` and ``check_code`` run at ``PUT /v1/functions/{name}``, before anything is stored,
so code that could never run is refused with a 4xx that says why. Cheap bounds (sizes, paths,
collisions) come first: a hostile upload is refused in milliseconds instead of after seconds of
compiling. ``write_tree`` runs when a version first runs on a host.

Messages name paths inside the function only, never the hub's data directory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
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

import structlog

from hub.catalog import codecheck
from hub.spec.models import FunctionSpec

log = structlog.get_logger("hub.catalog.code")

# Lambda caps inline code too (3 MB in its editor, 50 MB zipped uploads); ours is stored in one
# MongoDB document (16 MB), and every .py file is compiled once by the checker (~0.75 s per MB of
# the worst shapes), hence the separate, smaller bounds on source.
MAX_CODE_BYTES = 8 * 1024 * 1024  # all files, unpacked
MAX_SOURCE_FILE_BYTES = 1024 * 1024  # one .py file
MAX_SOURCE_BYTES = 4 * 1024 * 1024  # all .py files together
MAX_FILES = 1000
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255  # one path component (NAME_MAX of Linux file systems)
CODE_CHECK_TIMEOUT_S = 20.0  # the checker also has a CPU rlimit of the same size

CodeError = codecheck.CodeError

# Dependencies (hub.catalog.deps): a requirements.txt at the root of the code, one PEP 508 requirement a line.
REQUIREMENTS_FILE = "requirements.txt"


class CodeTooLarge(CodeError):
    """The code is over one of the size bounds (answered with 413)."""


class CodeUnavailable(RuntimeError):
    """A stored version could not be written to this host's disk (full, permissions, ...).

    Not the user's fault, so not a ``CodeError``; the message names the file inside the function
    and the OS reason, never the host path.
    """


def _shown(path: str) -> str:
    return repr(path if len(path) <= 120 else path[:120] + "...")


def _check_path(path: str) -> str:
    """The normalised relative path, or ``CodeError`` for one that could escape the function's
    directory or that no file system can hold."""
    bad = f"bad file path {_shown(path)}: paths must be relative and stay inside the function"
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise CodeError(bad)
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise CodeError(f"file path {_shown(path)} is not valid unicode") from None
    norm = posixpath.normpath(path)
    if norm in ("", ".", "..") or norm.startswith("../"):
        raise CodeError(bad)
    if size > MAX_PATH_BYTES:
        raise CodeError(f"file path {_shown(path)} is longer than {MAX_PATH_BYTES} bytes")
    for part in norm.split("/"):
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise CodeError(f"file path {_shown(path)}: a name in it is longer than {MAX_NAME_BYTES} bytes")
    return norm


def _check_sizes(path: str, size: int, total: int, source_total: int) -> None:
    if total > MAX_CODE_BYTES:
        raise CodeTooLarge(f"code is larger than {MAX_CODE_BYTES} bytes unpacked")
    if path.endswith(".py"):
        if size > MAX_SOURCE_FILE_BYTES:
            raise CodeTooLarge(f"{_shown(path)} is {size} bytes; a .py file may have at most "
                               f"{MAX_SOURCE_FILE_BYTES} bytes")
        if source_total > MAX_SOURCE_BYTES:
            raise CodeTooLarge(f"the .py files hold more than {MAX_SOURCE_BYTES} bytes together")


def _check_collisions(files: dict[str, bytes]) -> None:
    """A path cannot be a file and a directory at once (``x`` and ``x/y.py``): refuse it here, or
    writing the version to disk fails at every invoke."""
    for path in sorted(files):
        parent = posixpath.dirname(path)
        while parent:
            if parent in files:
                raise CodeError(f"file paths collide: {_shown(parent)} is a file, and {_shown(path)} "
                                f"needs a directory of that name")
            parent = posixpath.dirname(parent)


class _Collector:
    """Adds files one by one, refusing duplicates and keeping running size totals."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.origin: dict[str, str] = {}
        self.total = 0
        self.source_total = 0

    def add(self, path: str, data: bytes, size: int | None = None) -> None:
        """``size`` (default ``len(data)``) is what counts against the bounds: for a zip, the
        declared size, checked before anything is inflated."""
        size = len(data) if size is None else size
        norm = _check_path(path)
        if norm in self.files:
            raise CodeError(f"file paths {_shown(self.origin[norm])} and {_shown(path)} name the same file")
        total = self.total + size
        source_total = self.source_total + (size if norm.endswith(".py") else 0)
        _check_sizes(norm, size, total, source_total)
        self.files[norm] = data
        self.origin[norm] = path
        self.total, self.source_total = total, source_total


def unpack_code(spec: FunctionSpec) -> dict[str, bytes]:
    """The function's files as {normalised relative path: bytes}, from inline files or a zip."""
    out = _Collector()
    if spec.code.files is not None:
        if len(spec.code.files) > MAX_FILES:
            raise CodeError(f"code holds {len(spec.code.files)} files; the limit is {MAX_FILES}")
        for path, text in spec.code.files.items():
            if len(text) > MAX_CODE_BYTES:  # before encoding megabytes: chars <= bytes
                raise CodeTooLarge(f"{_shown(path)} is larger than {MAX_CODE_BYTES} bytes")
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise CodeError(f"{path} is not valid unicode text: {exc.reason}") from None
            out.add(path, data)
    else:
        _unpack_zip(spec.code.zip_base64 or "", out)
    if not out.files:
        raise CodeError("the function has no files")
    _check_collisions(out.files)
    return out.files


def _unpack_zip(zip_base64: str, out: _Collector) -> None:
    try:
        raw = base64.b64decode(zip_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CodeError(f"code.zip_base64 is not valid base64: {exc}") from None
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > MAX_FILES:
                raise CodeError(f"zip holds {len(infos)} files; the limit is {MAX_FILES}")
            # Declared sizes first (zipfile never returns more than the declared size), so a zip
            # bomb is refused before anything is inflated.
            declared = _Collector()
            for info in infos:
                declared.add(info.filename, b"", info.file_size)
            for info in infos:
                out.add(info.filename, zf.read(info))
    except zipfile.BadZipFile as exc:
        raise CodeError(f"code.zip_base64 is not a zip file: {exc}") from None
    except (RuntimeError, NotImplementedError, zlib.error, EOFError, OSError) as exc:
        # encrypted members, unsupported compression, truncated or corrupt data
        raise CodeError(f"code.zip_base64 cannot be unpacked: {exc}") from None


def requirements_text(files: dict[str, bytes]) -> str | None:
    """The code's ``requirements.txt`` as text (None if it has none); built by ``hub.catalog.deps``."""
    data = files.get(REQUIREMENTS_FILE)
    if data is None:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CodeError(f"{REQUIREMENTS_FILE} is not UTF-8 text") from None


async def check_code(files: dict[str, bytes], handler: str) -> None:
    """Reject code that cannot possibly run (see ``hub.catalog.codecheck``), in a child process: compiling
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
        # The checker's stderr names host paths: it goes to the log, not to the client.
        log.warning("code checker failed", exit_code=proc.returncode, stderr=err.decode(errors="replace")[-2000:])
        raise CodeError(f"the code could not be checked (the checker exited with {proc.returncode}; "
                        f"it may need more than the checker's memory or CPU limits)") from None
    if verdict.get("error"):
        raise CodeError(verdict["error"])


def write_tree(code_dir: Path, files: dict[str, bytes]) -> None:
    """Write to a temp dir and rename, so a half-written version is never seen. On failure the
    temp dir is removed and ``CodeUnavailable`` says which file and why, without host paths."""
    current = "(the version's directory)"
    tmp: Path | None = None
    try:
        code_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=code_dir.parent, prefix=".tmp-"))
        for path, data in files.items():
            # read back from MongoDB: checked again, as if it came from a request (a path
            # rewritten in storage must not write outside the version's directory)
            try:
                current = _check_path(path)
            except CodeError as exc:
                raise CodeUnavailable(f"the stored code is not usable: {exc}") from None
            target = tmp / current
            if not target.resolve().is_relative_to(tmp.resolve()):
                raise CodeUnavailable(f"the stored code is not usable: {_shown(path)} leaves the function")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        current = "(permissions)"
        # world-readable: sandboxed workers run as their own unprivileged uid
        os.chmod(tmp, 0o755)
        for root, dirs, fnames in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in fnames:
                os.chmod(os.path.join(root, f), 0o644)
        current = "(the version's directory)"
        try:
            tmp.rename(code_dir)
            tmp = None
        except OSError:
            if not code_dir.is_dir():
                raise
            # another task materialised it first; ours is removed below
    except OSError as exc:
        raise CodeUnavailable(f"the function's code cannot be written on this host: {current}: "
                              f"{exc.strerror or type(exc).__name__}") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
