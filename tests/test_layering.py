"""The house rules of ``hub/`` and ``connectors/``, read from the source with ``ast`` (no imports run).

Dependencies run one way, along the event's way and down to the leaves:

    cli -> app -> web -> intake -> delivery -> catalog -> store | connectors -> sandbox | spec -> leaves

where the leaves are ``events``, ``driver``, ``settings``, ``metrics`` and ``logs``. A module may
import from its own package or from a package of a lower layer; two packages on one layer (store
and connectors, sandbox and spec) do not import each other. Every import counts, those under
``TYPE_CHECKING`` and inside functions too: a circle that only a deferred import hides is still a
circle. This file is the guard for the features still to come: keep it green, do not loosen it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hub", "connectors")

# Layer of each package (higher imports lower, never the other way).
LAYERS: dict[str, int] = {
    "hub.cli": 8,
    "hub.__main__": 9,  # python -m hub: the CLI
    "hub.app": 7,
    "hub.web": 6,
    "hub.intake": 5,
    "hub.delivery": 4,
    "hub.catalog": 3,
    "hub.store": 2,
    "connectors": 2,
    "hub.sandbox": 1,
    "hub.spec": 1,
    "hub.tracing": 1,  # OpenTelemetry: above the events it decorates, below everything that traces
    "hub.events": 0,
    "hub.driver": 0,
    "hub.settings": 0,
    "hub.metrics": 0,
    "hub.logs": 0,
    "hub": 0,  # hub/__init__.py: a docstring
}
MAX_TOP_LEVEL_MODULES = 12
MAX_MODULE_LINES = 700


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``name`` imports (``from pkg import mod`` resolves to the module)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                # the longest known module that is the target or contains it
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer_key(module: str) -> str:
    parts = module.split(".")
    for n in (2, 1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key
    raise KeyError(module)


def test_every_module_has_a_layer() -> None:
    missing = []
    for module in _graph():
        try:
            _layer_key(module)
        except KeyError:
            missing.append(module)
    assert not missing, f"modules outside every layer (add their package to LAYERS): {missing}"


def test_no_import_circle() -> None:
    graph = _graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                circles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_imports_run_down_the_layers() -> None:
    bad = []
    for module, deps in _graph().items():
        mine = _layer_key(module)
        for dep in deps:
            theirs = _layer_key(dep)
            if theirs == mine:
                continue  # within one package
            if LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"{module} ({mine}, layer {LAYERS[mine]}) imports {dep} ({theirs}, layer {LAYERS[theirs]})")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_nothing_imports_the_hub_but_the_cli() -> None:
    users = sorted(m for m, deps in _graph().items() if "hub.app" in deps and not m.startswith("hub.cli"))
    assert not users, f"only hub.cli builds a Hub; these import hub.app: {users}"


def test_connectors_import_only_events_driver_and_spec() -> None:
    allowed = ("connectors", "hub.events", "hub.driver", "hub.spec")
    bad = sorted(f"{m} -> {d}" for m, deps in _graph().items() if m.startswith("connectors")
                 for d in deps if not d.startswith(allowed))
    assert not bad, f"connectors reach past their seam: {bad}"


def test_worker_runtime_imports_only_the_standard_library() -> None:
    import sys

    path = ROOT / "hub" / "sandbox" / "runtime.py"
    outside = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for name in names:
            top = name.split(".")[0]
            if top and top not in sys.stdlib_module_names and top != "__future__":
                outside.add(name)
    assert not outside, f"the sandbox runtime must import only the standard library: {sorted(outside)}"


def test_only_the_store_and_the_record_owners_touch_the_database() -> None:
    """``store.db`` and ``store.client`` stay inside the store; the composition root hands the
    few collection owners (records, usage, the config watch, the S3 reconciler) their database,
    and the users' own collections go through ``store.users_client``."""
    owners = {"hub/store.py", "hub/app.py"}
    bad = []
    for path in sorted((ROOT / "hub").rglob("*.py")) + sorted((ROOT / "connectors").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel in owners:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("db", "client")
                    and (isinstance(node.value, ast.Attribute) and node.value.attr == "store"
                         or isinstance(node.value, ast.Name) and node.value.id == "store")):
                bad.append(f"{rel}:{node.lineno}")
    assert not bad, f"store.db / store.client used outside the store: {bad}"


def test_hub_top_level_is_small_and_modules_are_short() -> None:
    top = sorted(p.name for p in (ROOT / "hub").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"hub/ has {len(top)} top-level modules: {top}"
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {long}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_module_says_why_it_exists(module: str) -> None:
    path = _modules()[module]
    if path.name in ("__main__.py",):
        return
    tree = ast.parse(path.read_text())
    if path.name == "__init__.py" and not tree.body:
        return
    assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} has no module docstring"
