"""Which function requirements the hub accepts: one PEP 508 requirement a line, from the package
index the operator chose, never a pip option, URL or path.

Pure rules, no I/O: the API models check each requirement with them at PUT, the dependency
builder (``hub.catalog.deps``) checks a requirements.txt with them, and again checks the pins it
reads back from MongoDB before pip sees them. One place, so the limits have one name.
"""

from __future__ import annotations

import re

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

_PIN_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # a canonical project name
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_REQUIREMENTS = 100  # lines of requirements (comments and blank lines not counted)
MAX_REQUIREMENT_CHARS = 200  # one requirement
# pip takes a requirement whose name ends like this for a local archive file.
_ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz",
                     ".tlz", ".tar.lz", ".tar.lzma")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")


def check_requirement(line: str) -> str:
    """One requirement, normalised (``packaging``'s spelling), or ``ValueError`` saying why not."""
    text = line.strip()
    if not text:
        raise ValueError("a requirement cannot be empty")
    if len(text) > MAX_REQUIREMENT_CHARS:
        raise ValueError(f"requirement {_shown(text)} is longer than {MAX_REQUIREMENT_CHARS} characters")
    if text.startswith("-"):
        raise ValueError(f"{_shown(text)}: pip options (-r, -e, -c, --index-url, --find-links, ...) are not "
                         f"allowed; give one requirement per line, like 'requests==2.32.3' (the hub's operator "
                         f"chooses the package index)")
    if "://" in text or text.startswith((".", "/", "~")) or "\\" in text:
        raise ValueError(f"{_shown(text)}: URLs and paths are not allowed; give a package name and version "
                         f"from the package index, like 'requests==2.32.3'")
    if "$" in text or "\x00" in text:
        raise ValueError(f"{_shown(text)}: '$' and NUL are not allowed in a requirement")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        first = str(exc).splitlines()[0] if str(exc) else "cannot be parsed"
        raise ValueError(f"{_shown(text)} is not a PEP 508 requirement ({first[:160]}); expected e.g. "
                         f"'requests', 'requests==2.32.3' or 'requests[socks]>=2.31; python_version>=\"3.8\"'"
                         ) from None
    if req.url:
        raise ValueError(f"{_shown(text)}: direct references ('name @ URL') are not allowed; give a version "
                         f"from the package index instead")
    if req.name.lower().endswith(_ARCHIVE_SUFFIXES):
        raise ValueError(f"{_shown(text)}: looks like a file name; give a package name from the package index")
    return str(req)


def file_lines(text: str) -> list[tuple[int, str]]:
    """(line number, requirement) from a requirements.txt: comments (``#`` at the start or after
    a space) and blank lines dropped, ``\\`` continuations joined, as pip reads them."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw)
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        if line.strip():
            out.append((start, line))
    if pending.strip():
        out.append((start, pending))
    return out


def check_pin(name: object, version: object, sha256: object = None) -> tuple[str, str, str | None]:
    """A resolved pin read back from storage, checked again before pip sees it: a canonical
    project name, a PEP 440 version in its normal spelling and a sha256 (or none). Anything else
    (an option, a URL, a space) is ``ValueError``: stored data is not trusted more than input."""
    if not isinstance(name, str) or not _PIN_NAME_RE.match(name):
        raise ValueError(f"stored package name {_shown(str(name))} is not a canonical project name")
    try:
        normal = str(Version(str(version)))
    except InvalidVersion:
        raise ValueError(f"stored version {_shown(str(version))} of {name} is not a PEP 440 version") from None
    if not isinstance(version, str) or normal != version:
        raise ValueError(f"stored version {_shown(str(version))} of {name} is not in its normal spelling")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256_RE.match(sha256)):
        raise ValueError(f"stored hash of {name} is not a sha256")
    return name, version, sha256
