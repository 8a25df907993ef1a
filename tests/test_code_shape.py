"""The package's shape, as the code-shape issue set it: no import cycle, no long function,
package ``__init__`` files that only re-export. Read from the source with ``ast``; nothing runs."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pcn"
MAX_FUNCTION_LINES = 120


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The pcn modules ``name`` imports anywhere in its file (function-level imports too;
    not those under ``if TYPE_CHECKING``), each resolved to the module that defines it."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            targets |= {f"{base}.{a.name}" for a in node.names}
    found = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target.startswith("pcn") and target != name:
            found.add(target)
    return found


def test_no_import_cycle_among_pcn_modules():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # a package's __init__ runs when a submodule is imported: an edge into a package is not
    # a cycle through it unless the package's own file imports back
    done, on_path, cycles = set(), [], []

    def visit(node: str) -> None:
        on_path.append(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                cycles.append(on_path[on_path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt)
        on_path.pop()
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_function_over_120_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_package_inits_only_reexport():
    """A package's ``__init__`` holds its docstring, imports, ``__all__`` and ``__version__``: no logic."""
    for init in sorted(PACKAGE.rglob("__init__.py")):
        for node in ast.parse(init.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the docstring
            names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            assert isinstance(node, ast.Assign) and set(names) <= {"__all__", "__version__"}, (
                f"{init.relative_to(ROOT)}:{node.lineno}: {type(node).__name__} in a package __init__"
            )


MAX_MODULE_LINES = 500
LONG_MODULES_ALLOWED = {"pcn/models/patchconvnet.py"}  # the model family file, read top to bottom


def test_no_module_over_500_lines_but_the_model_family_file():
    long = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
        and str(path.relative_to(ROOT)) not in LONG_MODULES_ALLOWED
    ]
    assert not long, long


def test_the_folders_show_the_layers():
    """pcn/ holds few loose modules (the rest sit in packages named for their job), pcn/data/
    holds loading (demo generation and augmentation in their own folders), and every package
    says its job in its docstring."""
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 8, loose
    data = sorted(p.name for p in (PACKAGE / "data").glob("*.py"))
    assert len(data) <= 12, data
    for init in sorted(PACKAGE.rglob("__init__.py")):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)} has no docstring"


# The layers, top down (docs/architecture.md): a module imports only its own layer or lower ones.
LAYERS = {
    "cli": 6,
    "steps": 5,
    "dag": 4,
    "train": 3,
    "transfer": 3,
    "analysis": 3,
    "eval": 3,
    "tracking": 2,
    "data": 2,
    "models": 2,
    "config": 1,
    "machine": 1,
    "io": 0,
    "errors": 0,
}
# The params schema checks two values against what they name (the demo's shapes, the
# RandAugment ops FFCV can batch) when params.yaml is loaded, not an hour into a job.
UPWARD_ALLOWED = {
    ("pcn.config.data", "pcn.data.demo.shapes"),
    ("pcn.config.params", "pcn.data.augment.randaugment_policy"),
}


def test_no_layer_imports_one_above_it():
    modules = _modules()

    def layer(name: str) -> int | None:
        parts = name.split(".")
        return LAYERS.get(parts[1]) if len(parts) > 1 else None

    assert {n.split(".")[1] for n in modules if n.count(".")} <= set(LAYERS), "a new package needs its layer"
    upward = {
        (name, target)
        for name, path in modules.items()
        for target in _imports(name, path, modules)
        if layer(name) is not None and layer(target) is not None and layer(target) > layer(name)
    }
    assert upward <= UPWARD_ALLOWED, sorted(upward - UPWARD_ALLOWED)
