"""The layering of the code: dependencies point one way and no module imports itself in a circle.

    train.py / eval.py / publish.py, pipeline.py    entries and the train -> eval -> publish pipeline
    publish/  eval/  report/                        may import train/
    train/                                          imports neither eval/ nor publish/

Read from the source with `ast`, lazy imports inside functions included: a cycle hidden in a
function body still ties two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("train", "eval", "publish", "report")
TOP_LEVEL_MODULES = ("pipeline",)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of Scion's packages and the pipeline."""
    modules = {name: REPO_ROOT / f"{name}.py" for name in TOP_LEVEL_MODULES}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Scion modules that `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from train import attention` imports the submodule train.attention when it exists
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the stack, "done" after
    for root in sorted(graph):
        if root in state:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = "open"
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = "done"
                stack.pop()
                path.pop()
            elif state.get(child) == "open":
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = "open"
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_no_module_imports_itself_in_a_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_package_cycle_and_train_stands_on_its_own():
    packages: dict[str, set[str]] = {}
    for module, imports in import_graph().items():
        top = module.split(".")[0]
        packages.setdefault(top, set()).update(name.split(".")[0] for name in imports)
    for top in packages:
        packages[top].discard(top)
    assert packages["train"] == set(), f"train/ imports {sorted(packages['train'])}"
    cycle = find_cycle(packages)
    assert cycle is None, "package cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    # The checks above pass on an empty result, so the finder itself must be seen to work.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"x": {"x"}}) == ["x", "x"]


def test_the_graph_sees_lazy_imports_inside_functions():
    graph = import_graph()
    assert "train.run" in graph["pipeline"] and "eval.run" in graph["pipeline"]
    # eval/run.py loads the model inside a function: that edge must be seen too.
    assert "train.model" in graph["eval.run"]
