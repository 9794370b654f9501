"""Architecture guards over the source of ``vault/``, read with ``ast`` (nothing is imported).

- Dependencies between vault modules point one way: no import cycle.
- A module's underscore names are its own: no other module imports them.
- Each third-party library has one owning module (``OWNERS``); everything else goes through it.

An import counts wherever it is written, at module level or inside a function (a lazy import is
still a dependency). For cycles, imports under ``if TYPE_CHECKING:`` do not count: they never
run. For library owners they do: a library's types leaking out is the coupling that rule
prevents. ``from pkg import name`` where ``pkg/name.py`` exists imports that submodule; the
parent packages Python loads on the way are not counted as edges (``__init__`` modules that
import their own submodules are the normal layout, not a cycle). The underscore rule sees
``from m import _x`` and ``m._x`` on an imported vault module, not ``obj._x`` on an object.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "vault"

# Third-party top-level package -> the one vault module allowed to import it.
OWNERS: dict[str, str] = {
    "hvac": "vault/keys/transit.py",
    "aiobotocore": "vault/store/backends/s3.py",
    "botocore": "vault/store/backends/s3.py",
    "lmdb": "vault/index/lmdb.py",
    "psycopg": "vault/index/postgres.py",
    "nacl": "vault/keys/keyring.py",
    "pydicom": "vault/ingest/deid/dicom.py",
    "jwt": "vault/identity/oidc.py",
    "httpx": "vault/client/aio.py",
    "PIL": "vault/ingest/renditions.py",
    "pillow_heif": "vault/ingest/renditions.py",
    "cv2": "vault/ingest/shrink.py",
    "numpy": "vault/ingest/shrink.py",
}


@dataclass(frozen=True)
class Import:
    """One imported module (or name of a module), as written at ``line`` of the importing file."""

    module: str  # absolute dotted name: the module, or for `from m import n` m (or m.n if a module)
    names: tuple[str, ...]  # the names taken by `from m import ...`; () for `import m`
    line: int
    type_checking: bool  # under `if TYPE_CHECKING:`: never executed


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def module_name(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


@cache
def vault_modules() -> dict[str, Module]:
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        name, is_package = module_name(path)
        modules[name] = Module(name, path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(package) - 1:
        raise ValueError(f"relative import beyond the top-level package in {module}")
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imports_of(tree: ast.AST, module: str, is_package: bool, known: Iterable[str] = ()) -> list[Import]:
    """Every import in ``tree`` (any depth), with relative imports made absolute.

    ``from pkg import name`` where ``pkg.name`` is in ``known`` (a module) is an import of ``pkg.name``.
    """
    known = set(known)
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, (), node.lineno, type_checking))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, is_package, node.level, node.module) if node.level else node.module
            assert base is not None
            plain: list[str] = []
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    found.append(Import(f"{base}.{alias.name}", (), node.lineno, type_checking))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Import(base, tuple(plain), node.lineno, type_checking))
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(tree, False)
    return found


def _parse(module: Module) -> ast.Module:
    return ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))


@cache
def all_imports() -> dict[str, tuple[Import, ...]]:
    modules = vault_modules()
    return {
        name: tuple(imports_of(_parse(m), name, m.is_package, modules))
        for name, m in modules.items()
    }


def owning_module(dotted: str, known: Iterable[str]) -> str | None:
    """The longest prefix of ``dotted`` that is a known module (``import a.b.c`` imports ``a.b.c``)."""
    known = set(known)
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def import_graph() -> dict[str, dict[str, list[int]]]:
    """module -> {imported vault module -> lines}, for every import that executes."""
    modules = vault_modules()
    graph: dict[str, dict[str, list[int]]] = {name: {} for name in modules}
    for name, imports in all_imports().items():
        for imp in imports:
            if imp.type_checking:
                continue
            target = owning_module(imp.module, modules)
            if target is not None and target != name:
                graph[name].setdefault(target, []).append(imp.line)
    return graph


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one node or a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return sorted(found)


def shortest_cycle(graph: Mapping[str, Iterable[str]], through: str, within: set[str]) -> list[str]:
    """The shortest path ``through -> ... -> through`` using only nodes of ``within`` (BFS)."""
    parent: dict[str, str] = {}
    queue = deque([through])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in within:
                continue
            if child == through:
                path = [node]
                while path[-1] != through:
                    path.append(parent[path[-1]])
                return [*reversed(path), through]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise ValueError(f"{through} is on no cycle")


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """For every cyclic component, the shortest cycle through each of its modules (deduplicated)."""
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for component in strongly_connected(graph):
        members = set(component)
        for node in component:
            cycle = shortest_cycle(graph, node, members)
            ring = cycle[:-1]
            pivot = ring.index(min(ring))
            key = tuple(ring[pivot:] + ring[:pivot])
            if key not in seen:
                seen.add(key)
                found.append([*key, key[0]])
    return found


def describe_cycle(cycle: list[str], graph: Mapping[str, Mapping[str, list[int]]]) -> str:
    steps = [f"{a} (line {', '.join(map(str, graph[a][b]))})" for a, b in pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(tree: ast.AST, module: str, is_package: bool, known: Iterable[str]) -> list[str]:
    """``from vault.x import _y`` and ``vault.x._y`` / ``alias._y`` on an imported vault module."""
    known = set(known)
    problems: list[str] = []
    bound: dict[str, str] = {}  # local name -> the vault module it is bound to (file-wide approximation)
    for imp in imports_of(tree, module, is_package, known):
        target = owning_module(imp.module, known)
        if target is None:
            continue
        for name in imp.names:
            if _is_private(name):
                problems.append(f"{module} (line {imp.line}) imports {name} from {target}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != PACKAGE:
                    continue
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, is_package, node.level, node.module) if node.level else node.module
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"

    def dotted(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return bound.get(expr.id)
        if isinstance(expr, ast.Attribute):
            head = dotted(expr.value)
            return f"{head}.{expr.attr}" if head else None
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            target = dotted(node.value)
            if target in known and target != module:
                problems.append(f"{module} (line {node.lineno}) uses {target}.{node.attr}")
    return problems


# --- the guards ---------------------------------------------------------------------------------


def test_no_import_cycle_among_vault_modules():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (module (line of the import) -> imported module):\n" + "\n".join(
        describe_cycle(cycle, graph) for cycle in found
    )


def test_no_module_imports_another_modules_underscore_names():
    modules = vault_modules()
    problems = [
        problem
        for name, m in modules.items()
        for problem in private_imports(_parse(m), name, m.is_package, modules)
    ]
    assert not problems, "underscore names used across modules:\n" + "\n".join(problems)


def test_each_third_party_library_is_imported_only_by_its_owning_module():
    # Type-only imports count here: a library's types leaking out is the coupling this rule prevents.
    modules = vault_modules()
    problems = []
    for name, imports in all_imports().items():
        for imp in imports:
            library = imp.module.split(".")[0]
            owner = OWNERS.get(library)
            if owner is not None and modules[name].rel != owner:
                problems.append(f"{modules[name].rel} (line {imp.line}) imports {imp.module}; only {owner} may")
    assert not problems, "\n".join(problems)


# --- the guards can fail: the walker sees real imports, the cycle finder finds cycles -----------


def test_the_walker_finds_each_library_in_its_owning_module():
    modules = vault_modules()
    by_path = {m.rel: name for name, m in modules.items()}
    assert len(modules) > 40 and "vault.api.app" in modules
    for library, owner in OWNERS.items():
        assert owner in by_path, f"{owner} (owner of {library}) does not exist"
        imported = {imp.module.split(".")[0] for imp in all_imports()[by_path[owner]]}
        assert library in imported, f"{owner} does not import {library}: the owner table is stale"
    assert sum(len(targets) for targets in import_graph().values()) > 100


def test_the_walker_resolves_relative_lazy_submodule_and_type_checking_imports():
    source = """
from typing import TYPE_CHECKING
from . import sibling
from .. import other, not_a_module
from .sibling import _private
import vault.deep.mod as alias

if TYPE_CHECKING:
    from vault.typed import Thing
else:
    import vault.runtime

def lazy():
    from vault.late import thing
    return alias._hidden, vault.runtime._also
"""
    known = {"vault", "vault.pkg", "vault.pkg.mod", "vault.pkg.sibling", "vault.other", "vault.deep.mod",
             "vault.typed", "vault.runtime", "vault.late"}
    tree = ast.parse(source)
    found = {(imp.module, imp.names, imp.type_checking) for imp in imports_of(tree, "vault.pkg.mod", False, known)}
    assert found == {
        ("typing", ("TYPE_CHECKING",), False),
        ("vault.pkg.sibling", (), False),
        ("vault.other", (), False),
        ("vault", ("not_a_module",), False),
        ("vault.pkg.sibling", ("_private",), False),
        ("vault.deep.mod", (), False),
        ("vault.typed", ("Thing",), True),
        ("vault.runtime", (), False),
        ("vault.late", ("thing",), False),
    }
    assert private_imports(tree, "vault.pkg.mod", False, known) == [
        "vault.pkg.mod (line 5) imports _private from vault.pkg.sibling",
        "vault.pkg.mod (line 15) uses vault.deep.mod._hidden",
        "vault.pkg.mod (line 15) uses vault.runtime._also",
    ]
    # In a package's __init__, one dot is the package itself.
    package_imports = imports_of(ast.parse("from .mod import x"), "vault.pkg", True, known)
    assert [imp.module for imp in package_imports] == ["vault.pkg.mod"]


def test_the_cycle_finder_finds_cycles():
    graph = {
        "a": {"b"}, "b": {"c"}, "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"}, "e": {"d"},  # d <-> e
        "f": {"f"},  # a module importing itself
        "g": {"a"}, "h": set(),  # acyclic
    }
    assert strongly_connected(graph) == [["a", "b", "c"], ["d", "e"], ["f"]]
    assert cycles(graph) == [["a", "b", "c", "a"], ["d", "e", "d"], ["f", "f"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert describe_cycle(["x", "y", "x"], {"x": {"y": [3]}, "y": {"x": [7, 9]}}) == "x (line 3) -> y (line 7, 9) -> x"
