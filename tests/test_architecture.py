"""The shape of the code: layers as folders, no import cycle at any level, small modules.

Every import counts: module level, inside functions and under ``TYPE_CHECKING`` alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "models", "generation", "app", "frontends"]
# what each layer may import besides itself (the README's Layout section says the same)
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "generation": {"core", "models"},
    "app": {"core", "models", "generation"},
    "frontends": {"core", "app"},
}
HEAVY = {"torch", "diffusers", "transformers", "accelerate", "safetensors"}
NO_THIRD_PARTY = {"core": HEAVY | {"gradio", "fastapi"}, "frontends": HEAVY}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    files = sorted((ROOT / "modules").rglob("*.py")) + [ROOT / "webui.py"]
    return {module_name(p): p for p in files}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module `path` imports (the most specific known module for each name), at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return out


def graph() -> dict[str, set[str]]:
    src = sources()
    known = set(src)
    return {name: imports(path, name, known) for name, path in src.items()}


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "modules" and len(parts) > 1 else None


def test_every_layer_imports_only_the_layers_it_may():
    wrong = []
    for name, deps in graph().items():
        own = layer(name)
        if own is None:
            continue
        for dep in deps:
            other = layer(dep)
            if other is not None and other != own and other not in ALLOWED[own]:
                wrong.append(f"{name} -> {dep}")
            if dep.split(".")[0] in NO_THIRD_PARTY.get(own, set()):
                wrong.append(f"{name} -> {dep} (third-party library not for the {own} layer)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle_counting_function_level_imports():
    g = {name: {d for d in deps if d in sources()} for name, deps in graph().items()}
    # a module importing its own package's __init__ is how Python resolves submodules, not a cycle of ours
    g = {n: {d for d in deps if not (n.startswith(d + ".") and d != "modules")} for n, deps in g.items()}
    cycles = [c for c in strongly_connected(g) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)


def strongly_connected(g: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm (iterative enough for a few hundred modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_check_finds_a_cycle():
    assert {"a", "b"} in strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}})


def test_no_module_of_the_application_is_over_400_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in sources().items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}


def test_each_layer_says_what_it_is_and_what_it_may_import():
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / "modules" / name / "__init__.py").read_text()))
        assert doc and "May import" in doc, name
