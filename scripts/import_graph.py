"""Import cycles and function-level imports inside src/lorakit (the architecture rules in docs/architecture.md).

    python scripts/import_graph.py            # prints cycles (strongly connected groups) and hidden imports
    python scripts/import_graph.py --check    # exit 1 if any cycle or any function-level lorakit import remains

Every import counts for cycles, function-level ones included (imports under `if TYPE_CHECKING:` do not; nor do
lorakit/cli/'s, which sit at the top of the graph). A function-level import of a lorakit module outside
lorakit/cli/ is "hidden": still a dependency, just one a reader cannot see at the top.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def scan(path: Path, modules: set[str]) -> tuple[set[str], list[tuple[int, str]]]:
    """(module-level lorakit imports, [(line, hidden import)])."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    hidden: list[tuple[int, str]] = []

    def targets(node) -> list[str]:
        return [t for t in resolve(name, node, is_package) if t in modules]

    def walk(nodes, in_function: bool) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found = targets(node)
                if in_function:
                    hidden.extend((node.lineno, t) for t in found[:1])
                else:
                    top.update(found)
            elif isinstance(node, ast.If) and is_type_checking(node):
                continue
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(node.body, True)
            elif hasattr(node, "body"):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    walk(getattr(node, field, []) or [], in_function)
    walk(tree.body, False)
    top.discard(name)
    return top, hidden


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    files = sorted((ROOT / "lorakit").rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    hidden_all: list[str] = []
    for path in files:
        name = module_name(path)
        top, hidden = scan(path, modules)
        graph[name] = {t for t in top if t != name}
        if "/cli/" not in str(path):  # an import hidden inside a function is still a dependency: it closes cycles
            graph[name] |= {t for _, t in hidden if t != name}
        if "/cli/" not in str(path):
            hidden_all.extend(f"{path.relative_to(ROOT.parent)}:{line}: {target}" for line, target in hidden)
    cycles = strongly_connected(graph)
    print(f"import cycles: {len(cycles)}")
    for group in cycles:
        print("  " + " <-> ".join(group))
    print(f"function-level lorakit imports outside cli/: {len(hidden_all)}")
    for line in hidden_all:
        print("  " + line)
    return 1 if args.check and (cycles or hidden_all) else 0


if __name__ == "__main__":
    sys.exit(main())
