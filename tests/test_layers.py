"""The layers of the code base, read from the source with `ast` (imports inside functions included).

Each layer may import only from itself and the layers below it; no module may take part in an import circle.
`LAYERS` is the one place the order is written (docs/architecture.md draws it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("skinscan", "conversion", "jobs")

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("skinscan", "skinscan.errors", "skinscan.data.taxonomy")),  # version, typed errors, class names
    ("config", ("skinscan.config",)),
    ("data", ("skinscan.data",)),
    ("models", ("skinscan.models",)),
    ("runtime", ("skinscan.runtime",)),
    ("explain", ("skinscan.explain",)),
    ("conversion", ("conversion",)),
    ("evaluation", ("skinscan.evaluation",)),
    ("training", ("skinscan.training",)),
    ("screening", ("skinscan.screening",)),
    ("apps", ("skinscan.bench", "skinscan.demo", "skinscan.submission")),
    ("cli", ("skinscan.cli",)),
    ("jobs", ("jobs",)),
]
"""Bottom to top. A module belongs to the layer of its longest matching prefix."""


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files(root: Path) -> dict[str, Path]:
    return {
        module_name(p, root): p
        for pkg in PACKAGES
        for p in sorted((root / pkg).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def import_graph(root: Path) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported project module, line)], every import statement anywhere in the file."""
    files = source_files(root)
    graph: dict[str, list[tuple[str, int]]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        edges = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join([*pkg, *([node.module] if node.module else [])])
                # `from pkg import submodule` imports the submodule; `from mod import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            edges += [(t, node.lineno) for t in targets if t.split(".")[0] in PACKAGES and t != mod]
        graph[mod] = edges
    return graph


def layer_of(module: str) -> int:
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, index = len(p), i
    if index is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return index


def upward_imports(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    out = []
    for mod, edges in graph.items():
        for target, line in edges:
            if layer_of(target) > layer_of(mod):
                out.append(
                    f"{mod}:{line} imports {target} ({LAYERS[layer_of(mod)][0]} -> {LAYERS[layer_of(target)][0]})"
                )
    return out


def circles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    adj = {m: sorted({t for t, _ in e if t in graph}) for m, e in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for mod in source_files(ROOT):
        layer_of(mod)


def test_no_upward_imports():
    bad = upward_imports(import_graph(ROOT))
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_no_import_circles():
    found = circles(import_graph(ROOT))
    assert not found, f"import circles: {found}"


def test_jobs_never_import_the_cli():
    bad = [f"{m}:{line} imports {t}" for m, e in import_graph(ROOT).items() if m.startswith("jobs") for t, line in e]
    assert not [b for b in bad if " imports skinscan.cli" in b], bad


def test_nothing_edits_sys_path():
    for mod, path in source_files(ROOT).items():
        assert "sys.path" not in path.read_text(), f"{mod} edits sys.path"


@pytest.fixture
def toy_tree(tmp_path):
    """A copy-sized model of the project: data/storage imports upward (screening) and two modules import each other."""
    files = {
        "skinscan/__init__.py": "",
        "skinscan/errors.py": "",
        "skinscan/data/__init__.py": "",
        "skinscan/data/storage.py": "def f():\n    from skinscan.screening import pipeline\n",
        "skinscan/screening/__init__.py": "",
        "skinscan/screening/pipeline.py": "from skinscan.data import storage\nfrom skinscan.screening import writer\n",
        "skinscan/screening/writer.py": "import skinscan.screening.pipeline\n",
        "conversion/__init__.py": "",
        "jobs/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_checker_catches_an_upward_import_inside_a_function_and_a_circle(toy_tree):
    graph = import_graph(toy_tree)
    assert upward_imports(graph) == ["skinscan.data.storage:2 imports skinscan.screening.pipeline (data -> screening)"]
    assert circles(graph) == [["skinscan.data.storage", "skinscan.screening.pipeline", "skinscan.screening.writer"]]
