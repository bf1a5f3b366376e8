"""The library's house rules, read from its source: imports go one way and public functions
say what they do.

The import graph is read with :mod:`ast` (every ``import`` of a ``twinkles`` module, at the top
of a module or inside a function; ``if TYPE_CHECKING:`` blocks excepted), so a circle hidden
behind a function-level import is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"

#: The command line imports each command's modules when that command runs, so that
#: ``twinkles --help`` and a status query do not load the science stack.
LAZY_IMPORTERS = {"twinkles.cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIB).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted((LIB / "twinkles").rglob("*.py"))}


def _owner(name: str) -> str | None:
    """The twinkles module that ``name`` (a module or a name inside one) refers to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, str, bool, int]]:
    """``(target module, imported name, inside a function, line)`` of each twinkles import."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = _owner(alias.name)
                    if target:
                        found.append((target, "", in_function, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for alias in child.names:
                    target = _owner(f"{source}.{alias.name}")
                    if target and target.startswith("twinkles"):
                        name = "" if target == f"{source}.{alias.name}" else alias.name
                        found.append((target, name, in_function, child.lineno))
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return [f for f in found if f[0] != module]


IMPORTS = {m: _imports(m) for m in MODULES}


def _domain(module: str) -> str:
    """A subpackage (``twinkles.psf``) or a top-level module (``twinkles.butler``)."""
    return ".".join(module.split(".")[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def test_the_import_graph_is_read():
    """The checks below would pass on an empty graph: make sure they see real imports."""
    assert ("twinkles.image.exposure", "", False) in {
        (t, n, f) for t, n, f, _ in IMPORTS["twinkles.psf.determine"]
    } or any(t == "twinkles.image" for t, *_ in IMPORTS["twinkles.psf.determine"])
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert sum(len(v) for v in IMPORTS.values()) > 300


def test_no_import_cycle_among_modules():
    graph = {m: {t for t, *_ in imports} for m, imports in IMPORTS.items()}
    # a package's __init__ importing its own modules is how a package is built, not a cycle
    for m in graph:
        graph[m] = {
            t for t in graph[m] if not (MODULES[m].name == "__init__.py" and t.startswith(m + "."))
        }
    assert _cycles(graph) == []


def test_no_import_cycle_among_domains():
    graph: dict[str, set[str]] = {}
    for m, imports in IMPORTS.items():
        graph.setdefault(_domain(m), set()).update(
            _domain(t) for t, *_ in imports if _domain(t) != _domain(m)
        )
    assert _cycles(graph) == []


def test_no_function_level_import_across_domains():
    hidden = [
        f"{m}:{line} imports {t}"
        for m, imports in IMPORTS.items()
        if m not in LAZY_IMPORTERS
        for t, _, in_function, line in imports
        if in_function and _domain(t) != _domain(m)
    ]
    assert hidden == []


def test_no_private_name_imported_from_another_module():
    private = [
        f"{m}:{line} imports {t}.{name}"
        for m, imports in IMPORTS.items()
        for t, name, _, line in imports
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def _public_callables() -> list[tuple[str, object]]:
    """``(qualified name, object)`` of every public function, method and property that a
    ``twinkles`` module defines (not what it imports)."""
    import importlib
    import inspect

    found: list[tuple[str, object]] = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            if inspect.isfunction(obj):
                found.append((f"{module_name}.{name}", obj))
            elif inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    # a function stored under another name (a dataclass field's default
                    # lambda) is data, not a method
                    method = inspect.isfunction(member) and member.__name__ == attr
                    if method or isinstance(member, property):
                        # getattr, so that an override inherits its base's docstring
                        found.append((f"{module_name}.{name}.{attr}", getattr(obj, attr)))
    return found


def test_every_public_function_has_a_docstring():
    import inspect

    callables = _public_callables()
    assert len(callables) > 300  # the walk found the library
    missing = [name for name, obj in callables if not (inspect.getdoc(obj) or "").strip()]
    assert not missing, "public functions without a docstring:\n" + "\n".join(missing)


def test_every_task_run_documents_its_parameters_and_result():
    """A step's ``run`` is what a recipe calls: its docstring names what it takes and returns."""
    import inspect

    runs = [
        (name, obj)
        for name, obj in _public_callables()
        if name.endswith("Task.run") and inspect.isfunction(obj)
    ]
    assert len(runs) >= 10
    incomplete = []
    for name, run in runs:
        doc = inspect.getdoc(run) or ""
        takes_arguments = len(inspect.signature(run).parameters) > 1
        if "Returns\n-------" not in doc or (
            takes_arguments and "Parameters\n----------" not in doc
        ):
            incomplete.append(name)
    assert not incomplete, "Task.run without Parameters/Returns sections:\n" + "\n".join(incomplete)
