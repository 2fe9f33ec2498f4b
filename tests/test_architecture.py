"""The package layout is the data flow: every import goes to an earlier part (or the shared base), never back.

files -> data -> fingerprints -> search -> decision (its store alone touches SQLite) -> faces.
Parsed from the source (every import, also those inside functions), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vdc_torch"

#: The parts in data-flow order; a module may import its own part, an earlier one or the shared base.
PARTS = ("data", "fingerprints", "search", "decision", "faces")
BASE = ("errors", "progress", "names", "cores", "collective")
#: The old flat module paths, kept one release as aliases of the moved modules (not part of the graph).
ALIASES = ("decode", "fingerprint", "hashes", "metrics", "features", "align", "encoder", "index", "mih",
           "_mih_numba", "matching", "gate", "manifest", "stored", "cache", "cli", "report", "hooks", "compat")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports (``from X import Y`` counts as X.Y where X.Y is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def part_of(module: str) -> str | None:
    pieces = module.split(".")
    if len(pieces) < 2:
        return None  # the package facade
    return pieces[1]


def rank(module: str) -> int:
    part = part_of(module)
    if part in BASE:
        return -1
    return PARTS.index(part) if part in PARTS else len(PARTS)


def graph() -> dict[str, set[str]]:
    modules = package_modules()
    skip = {"vdc_torch", "vdc_torch.__main__"} | {f"vdc_torch.{a}" for a in ALIASES}
    return {m: {t for t in imports_of(p, modules) if t not in skip} for m, p in modules.items() if m not in skip}


def test_every_module_belongs_to_a_part_or_the_base() -> None:
    strays = [m for m in graph() if part_of(m) not in (*PARTS, *BASE)]
    assert not strays, f"modules outside data/fingerprints/search/decision/faces and the shared base: {strays}"


def test_no_import_goes_against_the_data_flow() -> None:
    upward = sorted(f"{m} -> {t}" for m, targets in graph().items() for t in targets if rank(t) > rank(m))
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_the_base_imports_no_part() -> None:
    bad = sorted(f"{m} -> {t}" for m, targets in graph().items() if rank(m) < 0 for t in targets if rank(t) >= 0)
    assert not bad, bad


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_the_store_touches_sqlite() -> None:
    users = []
    for module, path in package_modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "sqlite3" for n in names):
                users.append(module)
    outside = sorted({m for m in users if not m.startswith("vdc_torch.decision.store")})
    assert users and not outside, f"sqlite3 imported outside vdc_torch.decision.store: {outside}"


@pytest.mark.parametrize("alias", ALIASES)
def test_old_module_paths_are_the_moved_modules_with_a_warning(alias: str) -> None:
    import importlib
    import sys
    import warnings

    sys.modules.pop(f"vdc_torch.{alias}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module(f"vdc_torch.{alias}")
    assert any(issubclass(w.category, DeprecationWarning) and "moved to" in str(w.message) for w in caught)
    assert old.__name__.startswith("vdc_torch.") and old.__name__.count(".") >= 2  # the module in its part
