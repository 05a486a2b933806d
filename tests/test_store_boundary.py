"""The store's boundary (DESIGN.md): outside a backend's package, code sees a store only
through webhookd.store.interface; it imports no backend (the composition root picks one
through webhookd.store.open_store), and touches no private name of a store."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "webhookd"
STORE = PACKAGE / "store"
# Modules of webhookd/store/ itself that are not backends: the interface, its models and
# the codecs every backend shares, and the factory.
NEUTRAL = {"__init__.py", "interface.py", "models.py", "codec.py", "console.py"}
BACKENDS = ("webhookd.store.sqlite", "webhookd.store.postgres")


def _outside_backends() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if not p.is_relative_to(STORE) or (p.parent == STORE and p.name in NEUTRAL)
    ]


def _imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _is_store(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "store") or (
        isinstance(node, ast.Attribute) and node.attr == "store"
    )


def test_no_module_outside_a_backend_imports_one() -> None:
    found = []
    for path in _outside_backends():
        rel = path.relative_to(PACKAGE.parent)
        for name in _imports(ast.parse(path.read_text(), str(path))):
            if name.startswith(BACKENDS) and str(rel) != "webhookd/store/__init__.py":
                found.append(f"{rel}: {name}")
            if name.startswith("webhookd.store.models") and path.parent != STORE:
                found.append(f"{rel}: {name} (use webhookd.store.interface)")
    assert not found, found


def test_no_module_outside_a_backend_touches_a_private_name_of_the_store() -> None:
    found = []
    for path in _outside_backends():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and _is_store(node.value)
                and (node.attr.startswith("_") or node.attr in ("offers", "writer"))
            ):
                rel = path.relative_to(PACKAGE.parent)
                found.append(f"{rel}:{node.lineno} store.{node.attr}")
    assert not found, found
