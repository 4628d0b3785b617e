"""Static checks of submitted function code: syntax errors (file, line) and a missing handler.

Standard library only: the registry runs this file as ``python -I -S codecheck.py`` in a child
process with the code as JSON on stdin, so a huge or hostile file cannot stall or crash the hub.
"""

from __future__ import annotations

import ast
import base64
import json
import resource
import sys


class CodeError(ValueError):
    """The submitted code cannot run: says which file and line."""


def check_code(files: dict[str, bytes], handler: str) -> None:
    """Reject code that cannot possibly run: syntax errors (with file:line) and a missing handler."""
    for path, data in sorted(files.items()):
        if not path.endswith(".py"):
            continue
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CodeError(f"{path} is not UTF-8 text") from None
        try:
            compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            col = f", column {exc.offset}" if exc.offset else ""
            raise CodeError(f"syntax error in {path}, line {exc.lineno}{col}: {exc.msg}") from None
    module, _, attr = handler.rpartition(".")
    rel = module.replace(".", "/")
    candidates = [f"{rel}.py", f"{rel}/__init__.py"]
    found = next((c for c in candidates if c in files), None)
    if found is None:
        raise CodeError(f"handler {handler!r}: no file {candidates[0]} in the code")
    tree = ast.parse(files[found].decode("utf-8"), found)
    if attr not in _top_level_names(tree):
        raise CodeError(f"handler {handler!r}: {found} defines no top-level {attr!r}")


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)):
            names.update(_top_level_names(ast.Module(body=node.body, type_ignores=[])))
    return names



def main() -> None:
    # Bounds for the checker itself: compiling hostile source must not eat the machine.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
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
