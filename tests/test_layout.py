"""The code's shape: `sega/` never imports the WebUI, no module of ours imports itself back
through others (imports inside functions count too), and the host is chosen in one place."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sega", "sega_webui")


def _modules() -> dict[str, Path]:
    return {f"{pkg}.{path.stem}": path for pkg in PACKAGES for path in sorted((ROOT / pkg).glob("*.py"))
            if path.stem != "__init__"}


def _imports(path: Path, known: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in known:
                out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
    return out


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    done, stack = set(), []

    def visit(name):
        if name in stack:
            raise AssertionError("import circle: " + " → ".join(stack[stack.index(name):] + [name]))
        if name in done:
            return
        stack.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        stack.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_the_library_is_host_free():
    for name, path in _modules().items():
        if name.startswith("sega."):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom | ast.Import):
                    names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                    assert not any(n and n.split(".")[0] in ("modules", "backend", "ldm_patched") for n in names), name


# Each fork's own packages, and the one module of ours that may use them (inside its
# functions: they exist only in that host).
_FORK_PACKAGES = {"backend": "sega_webui.forge", "ldm_patched": "sega_webui.reforge", "modules_forge": "sega_webui.reforge"}


def test_the_host_is_detected_in_one_place():
    for name, path in _modules().items():
        if name == "sega_webui.hosts":
            continue
        tree = ast.parse(path.read_text())
        assert "find_spec" not in path.read_text() and "importlib" not in path.read_text(), name
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for n in filter(None, names):
                    owner = _FORK_PACKAGES.get(n.split(".")[0])
                    if owner is not None:
                        assert name == owner, f"{name} imports {n}: only {owner} may"
                        assert id(node) not in top_level, f"{name} imports {n} at import time"
