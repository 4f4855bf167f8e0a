"""The architecture, checked: which package may import which, no cycles, small modules.

The rule (docs/internals.md): data flows parse -> IR -> plan -> artifact ->
engine -> targets, and the command line sits apart. Each package may import
only the packages listed for it in ``ALLOWED``; nothing imports ``amic.cli``;
the import graph of ``compiler/amic`` has no cycle (lazy imports inside
functions count: a cycle through one still couples the two modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "compiler" / "amic"

BASE = {"amic", "amic.diagnostics", "amic.errors", "amic.contract", "amic.fsutil", "amic.gcpause",
        "amic.safeopen", "amic.project"}
ALLOWED: dict[str, set[str]] = {
    "base": BASE,
    "amifile": BASE | {"amifile"},
    "compile": BASE | {"amifile", "compile"},
    "lint": BASE | {"amifile", "lint"},
    "targets": BASE | {"targets"},
    "engine": BASE | {"amifile", "compile", "engine", "targets.base"},
    "cli": None,   # the command line may import anything
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = ("amic", *path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in BASE:
        return "base"
    return module.split(".")[1]


def imports(path: Path) -> set[str]:
    """Every amic module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "amic"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "amic":
            # ``from amic.targets import base`` is an import of amic.targets.base (the
            # package's __init__ runs too, but it is the submodule that is used)
            subs = {f"{node.module}.{a.name}" for a in node.names
                    if (PKG.joinpath(*node.module.split(".")[1:], a.name + ".py")).exists()
                    or PKG.joinpath(*node.module.split(".")[1:], a.name).is_dir()}
            found |= subs if len(subs) == len(node.names) else subs | {node.module}
    return found


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}
GRAPH = {name: imports(path) & set(MODULES) for name, path in MODULES.items()}


def allowed(importer: str, imported: str) -> bool:
    rule = ALLOWED[layer_of(importer)]
    if rule is None:
        return True
    if imported in rule or layer_of(imported) == "base":
        return True
    rest = imported.removeprefix("amic.")
    return any(rest == r or rest.startswith(r + ".") for r in rule if not r.startswith("amic"))


def test_every_import_follows_the_layer_rule():
    wrong = sorted(f"{a} imports {b}" for a, deps in GRAPH.items() for b in deps
                   if not allowed(a, b) and not b == "amic")
    assert wrong == []


def test_nothing_in_the_library_imports_the_cli():
    assert sorted(a for a, deps in GRAPH.items()
                  if layer_of(a) != "cli" and any(d.startswith("amic.cli") for d in deps)) == []


def test_no_import_cycle():
    # A package's __init__ importing its own submodules is not a cycle of design.
    edges = {a: {b for b in deps if not (a == b or b.startswith(a + ".") or a.startswith(b + ".")
                                         and MODULES[b].name == "__init__.py")}
             for a, deps in GRAPH.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_the_rule_sees_a_violation():
    # The checker itself must be able to fail: a target importing the parser is caught.
    assert not allowed("amic.targets.ec2.target", "amic.amifile.parser")
    assert not allowed("amic.engine.build", "amic.cli.common")
    assert not allowed("amic.engine.build", "amic.targets.ec2.target")
    assert allowed("amic.engine.build", "amic.targets.base")
    assert allowed("amic.cli.build", "amic.targets.ec2.target")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines"


def test_no_private_name_used_outside_its_module():
    used = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("amic"):
                used += [f"{name} imports {node.module}.{a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__")]
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                  and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                  and node.value.id not in ("self", "cls")):
                used.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert used == []


def long_functions(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_long_function():
    assert [f for p in MODULES.values() for f in long_functions(p)] == []
