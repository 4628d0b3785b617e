"""Static checks of submitted function code: syntax errors (file, line) and a missing handler.

Standard library only: the registry runs this file as ``python -I -S codecheck.py`` in a child
process with the code as JSON on stdin, so a huge or hostile file cannot stall or crash the hub.
"""

from __future__ import annotations

import base64
import dis
import json
import resource
import sys
import types


class CodeError(ValueError):
    """The submitted code cannot run: says which file and line."""


def check_code(files: dict[str, bytes], handler: str) -> None:
    """Reject code that cannot possibly run: syntax errors (with file:line) and a missing handler.

    Each file is compiled once; the handler's module is then read from its code object rather
    than parsed again into an ``ast`` tree, which costs more than the compile itself.
    """
    module, _, attr = handler.rpartition(".")
    rel = module.replace(".", "/")
    candidates = [f"{rel}.py", f"{rel}/__init__.py"]
    found = next((c for c in candidates if c in files), None)
    if found is None:
        raise CodeError(f"handler {handler!r}: no file {candidates[0]} in the code")
    compiled: dict[str, types.CodeType] = {}
    for path, data in sorted(files.items()):
        if not path.endswith(".py"):
            continue
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CodeError(f"{path} is not UTF-8 text") from None
        try:
            code = compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            col = f", column {exc.offset}" if exc.offset else ""
            raise CodeError(f"syntax error in {path}, line {exc.lineno}{col}: {exc.msg}") from None
        if path == found:
            compiled[path] = code
    names = _top_level_names(compiled[found])
    if names is not None and attr not in names:
        raise CodeError(f"handler {handler!r}: {found} defines no top-level {attr!r}")


def _top_level_names(code: types.CodeType) -> set[str] | None:
    """Names a module binds at top level (def, class, assignment, import, for, with, ... at any
    nesting of if/try), or None when it does ``from x import *`` and so cannot be known."""
    names: set[str] = set()
    for ins in dis.get_instructions(code):
        if ins.opname in ("STORE_NAME", "STORE_GLOBAL"):
            names.add(ins.argval)
        elif ins.opname == "IMPORT_STAR" or ins.argrepr == "INTRINSIC_IMPORT_STAR":
            return None
    return names


def main() -> None:
    # Bounds for the checker itself: compiling hostile source must not eat the machine. The hub
    # sends at most 4 MB of source (hub.catalog.code), which compiles in a few seconds at worst.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (20, 20))
    sys.setrecursionlimit(10_000)
    request = json.loads(sys.stdin.buffer.read())
    files = {path: base64.b64decode(data) for path, data in request["files"].items()}
    try:
        check_code(files, request["handler"])
        verdict: dict[str, str | None] = {"error": None}
    except CodeError as exc:
        verdict = {"error": str(exc)}
    except (RecursionError, MemoryError, ValueError) as exc:
        verdict = {"error": f"the code cannot be compiled: {type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(verdict))


if __name__ == "__main__":
    main()
