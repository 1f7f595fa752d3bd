"""The package's structure (issues 20 and 33): no import cycle among its modules, counting the imports inside functions and
in `if __name__ == "__main__":` blocks. Every submodule implies the package itself, so edges to the package root are
left out."""
import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "training_pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set) -> set:
    "The package's modules that `path` imports anywhere: module level, inside functions, in a __main__ block."
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    def visit(node):
        targets = []
        if isinstance(node, ast.Import): targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t and t not in modules: t = t.rpartition(".")[0]
            if t and t not in (name, "training_pipeline"): found.add(t)
        for child in ast.iter_child_nodes(node): visit(child)
    visit(ast.parse(path.read_text()))
    return found


def import_graph() -> dict:
    paths = [p for p in PACKAGE.rglob("*.py") if p.name != "_modidx.py"]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def cycles(graph: dict) -> list[list[str]]:
    "Strongly connected components of more than one module (Tarjan)."
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    def strong(v):
        index[v] = low[v] = len(index); stack.append(v); on_stack.add(v)
        for w in graph[v]:
            if w not in index: strong(w); low[v] = min(low[v], low[w])
            elif w in on_stack: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop(); on_stack.discard(w); component.append(w)
                if w == v: break
            if len(component) > 1: found.append(sorted(component))
    for v in graph:
        if v not in index: strong(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_the_modules():
    graph = import_graph()
    assert "training_pipeline.run.recipe" in graph["training_pipeline.cli.commands"]  # seen although imported inside a function
    assert cycles(graph) == [], {m: sorted(d for d in graph[m] if any(m in c and d in c for c in cycles(graph))) for m in graph}


def source_notebook(path: Path) -> str:
    "The notebook a module is exported from, as nbdev writes it in the module's header."
    for line in path.read_text().splitlines()[:5]:
        if "File to edit: " in line: return line.split("nbs/")[1].rstrip(".")
    raise AssertionError(f"{path} names no source notebook")


def test_no_module_over_600_lines():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py") if p.name != "_modidx.py"}
    assert {p: n for p, n in sizes.items() if n > 600} == {}


def test_a_notebook_imports_only_lower_numbered_ones():
    "Read in order, the notebooks build the library up: each module imports only modules of notebooks that sort before its own."
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name not in ("_modidx.py", "__init__.py")}
    notebook = {m: source_notebook(p) for m, p in paths.items()}
    later = {m: sorted(d for d in deps if d in notebook and notebook[d] > notebook[m])
             for m, deps in import_graph().items() if m in notebook}
    assert {m: [f"{d} ({notebook[d]})" for d in ds] for m, ds in later.items() if ds} == {}


def folder(module:str) -> str:
    "The subpackage a module belongs to (`loop`, `track`, ...), or the top level's name for a top-level module."
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (REPO / "training_pipeline" / parts[1]).is_dir() else "core"  # core, safe_files


def test_the_subpackages_stack_without_circles():
    "Folders import each other in one direction only: core, config, data, models, loop, track, callback, run, jobs, tune, ui, cli."
    graph = {m: d for m, d in import_graph().items() if m not in ("training_pipeline", "training_pipeline.__main__")}
    folders = {}
    for m, deps in graph.items():
        for d in deps:
            if folder(m) != folder(d): folders.setdefault(folder(m), set()).add(folder(d))
    for f in {folder(m) for m in graph}: folders.setdefault(f, set())
    assert cycles(folders) == [], folders
    assert len([p for p in (REPO / "training_pipeline").iterdir() if (p / "__init__.py").exists()]) >= 6


def test_every_callback_lives_under_callback():
    found = {}
    for path in (REPO / "training_pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", getattr(b, "attr", "")).endswith("Callback") for b in node.bases):
                found[node.name] = path.relative_to(REPO / "training_pipeline").parts[0]
    assert found and {name: where for name, where in found.items() if where != "callback"} == {}, found
