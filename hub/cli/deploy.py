"""``trigger-hub deploy DIR``: a function directory (code, optional requirements.txt, optional
``function.toml``) to a function and its triggers.

``function.toml`` (every key optional)::

    name = "resize"                 # default: the directory's name
    handler = "main.handler"        # the default
    timeout_s = 30
    memory_mb = 256
    max_concurrency = 4
    network = false
    description = "thumbnails for uploads"
    [env]
    SIZE = "128"

    [[triggers]]
    name = "resize-on-upload"       # default: the function's name (then NAME-2, NAME-3, ...)
    source = { type = "s3", bucket = "uploads", prefix = "in/" }
    batch = { size = 10, window_ms = 500 }
    retry = { max_attempts = 5 }

Every file of the directory except the manifest, hidden files and caches goes into the code (as
a zip, so binary files travel too); a ``requirements.txt`` among them declares dependencies.
The plan is computed before anything is sent, so ``--dry-run`` shows exactly what would change.
"""

from __future__ import annotations

import base64
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.cli.client import ApiError, Client

MANIFEST = "function.toml"
SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache", ".hub"}
SPEC_KEYS = ("function", "source", "filter", "retry", "batch", "ordering", "enabled", "description")


class DeployError(Exception):
    """The directory or its manifest cannot be deployed; the message says why."""


@dataclass
class Plan:
    name: str
    function: dict[str, Any]  # the PUT /v1/functions body
    triggers: dict[str, dict[str, Any]]  # name -> the PUT /v1/triggers body
    files: dict[str, bytes]
    changes: list[str] = field(default_factory=list)
    version: str | None = None  # the version the code and settings make
    current_version: str | None = None


def load(directory: Path) -> Plan:
    directory = directory.resolve()
    if not directory.is_dir():
        raise DeployError(f"{directory} is not a directory")
    manifest: dict[str, Any] = {}
    path = directory / MANIFEST
    if path.is_file():
        try:
            manifest = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise DeployError(f"{path}: {exc}") from None
    name = str(manifest.pop("name", directory.name))
    raw_triggers = manifest.pop("triggers", [])
    if not isinstance(raw_triggers, list):
        raise DeployError(f"{MANIFEST}: 'triggers' must be a list of tables ([[triggers]])")
    files = _files(directory)
    if not files:
        raise DeployError(f"{directory} holds no files to deploy")
    body = {"handler": "main.handler", **manifest, "code": {"zip_base64": _zip(files)}}
    triggers: dict[str, dict[str, Any]] = {}
    for i, trig in enumerate(raw_triggers, start=1):
        if not isinstance(trig, dict):
            raise DeployError(f"{MANIFEST}: triggers[{i - 1}] must be a table")
        trig = dict(trig)
        tname = str(trig.pop("name", name if i == 1 else f"{name}-{i}"))
        if tname in triggers:
            raise DeployError(f"{MANIFEST}: two triggers are named {tname!r}")
        triggers[tname] = {"function": name, **trig}
    return Plan(name, body, triggers, files)


def _files(directory: Path) -> dict[str, bytes]:
    """The files to deploy. A symlink that leads outside the directory is refused: deploying must
    never upload what the directory only points at (~/.ssh, /etc, another project's secrets)."""
    out: dict[str, bytes] = {}
    root = directory.resolve()
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise DeployError(f"{rel.as_posix()} is a symlink to a place outside {directory}: not deployed "
                              f"(copy the file in, or remove the link)")
        if path.is_file() and rel.as_posix() != MANIFEST and path.suffix not in (".pyc", ".pyo"):
            out[rel.as_posix()] = path.read_bytes()
    return out


def _zip(files: dict[str, bytes]) -> str:
    from hub.catalog.registry import code_zip  # the hub's own deterministic zip (imported late: the CLI starts fast)

    return base64.b64encode(code_zip(files)).decode()


def plan(client: Client, directory: Path) -> Plan:
    """What deploying ``directory`` would change (nothing is sent but reads)."""
    from pydantic import ValidationError

    from hub.catalog.code import CodeError, unpack_code
    from hub.spec.models import FunctionSpec, TriggerSpec
    from hub.catalog.registry import version_of

    p = load(directory)
    try:
        spec = FunctionSpec.model_validate(p.function)
        p.version = version_of(spec, unpack_code(spec))
    except ValidationError as exc:
        raise DeployError(f"function {p.name!r}: {_first_errors(exc)}") from None
    except CodeError as exc:
        raise DeployError(f"function {p.name!r}: {exc}") from None
    current = client.get_or_none(f"/v1/functions/{p.name}")
    p.current_version = current["version"] if current else None
    if current is None:
        p.changes.append(f"function {p.name}: create (version {p.version})")
    elif current["version"] != p.version:
        stored = {v.get("version"): v for v in current.get("versions") or [] if isinstance(v, dict)}
        if p.version in stored:  # old code again: the head moves back to a version that exists
            when = stored[p.version].get("created_at")
            p.changes.append(f"function {p.name}: back to existing version {p.version}"
                             f"{f' (made {when})' if when else ''}, was {current['version']}")
        else:
            p.changes.append(f"function {p.name}: new version {p.version} (was {current['version']})")
    for tname, body in p.triggers.items():
        try:
            wanted = TriggerSpec.model_validate(body).model_dump()
        except ValidationError as exc:
            raise DeployError(f"trigger {tname!r}: {_first_errors(exc)}") from None
        existing = client.get_or_none(f"/v1/triggers/{tname}")
        if existing is None:
            p.changes.append(f"trigger {tname}: create ({wanted['source']['type']})")
            continue
        changed = [k for k in SPEC_KEYS if _norm(existing.get(k)) != _norm(wanted.get(k))]
        if changed:
            p.changes.append(f"trigger {tname}: update {', '.join(changed)}")
    return p


def apply(client: Client, p: Plan) -> dict[str, Any]:
    """Send the plan: the function first (a new version if anything changed), then its triggers."""
    head = client.call("PUT", f"/v1/functions/{p.name}", p.function)
    if head.get("new_version") is False and p.version and any(f"new version {p.version}" in c for c in p.changes):
        # stored meanwhile (another deploy of the same code): say what the hub did
        p.changes = [c.replace(f"new version {p.version}", f"existing version {p.version}") for c in p.changes]
    shown: dict[str, Any] = {"function": p.name, "version": head["version"], "new_version": head.get("new_version"),
                             "previous_version": p.current_version, "triggers": {}, "changes": p.changes}
    for tname, body in p.triggers.items():
        try:
            doc = client.call("PUT", f"/v1/triggers/{tname}", body)
        except ApiError as exc:
            raise DeployError(f"function {p.name} is at version {head['version']}, but trigger {tname} "
                              f"failed: {exc.message}") from None
        shown["triggers"][tname] = {k: doc[k] for k in ("source", "enabled") if k in doc}
        if "token" in doc:  # an http trigger's token is shown this once
            shown["triggers"][tname]["token"] = doc["token"]
    return shown


def _norm(value: Any) -> Any:
    return value if value is not None else {}


def _first_errors(exc: Any) -> str:
    """The hub's own wording for what is wrong (the API's 400s say the same)."""
    from hub.spec.models import error_field, error_message

    return "; ".join(f"{error_field(e['loc'])}: {error_message(e)}" for e in exc.errors(include_url=False)[:5])
