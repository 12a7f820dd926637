"""The floor plan, bottom-up: imports only go down.

    editing.core  <-  inversion, attention  <-  the methods in editing  <-  the interfaces  <-  benchmarks
    (toyworld, the world of the default model and its trainer, sits on editing.core and attention: the
    trainer records cross-attention through the project's attention processors)

Two checks per module. At run time: in a fresh interpreter every module is imported on its own (our modules
are dropped from sys.modules before each, third-party ones stay loaded), a sys.meta_path finder records every
module of ours that the import pulls in, and whoever imported it. In the source: every import statement,
function-local ones included (they run later, so the run-time check cannot see them). And no two modules
reach each other, not even through a function-local import (the usual way to hide a cycle).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("editing", "inversion", "attention", "benchmarks", "toyworld")
# The interfaces of editing/: command lines and the web page. Every other module of editing/ outside
# editing/core/ is a method (or a helper of the methods) and may not import these.
INTERFACES = ("editing.run", "editing.batch", "editing.cli", "editing.multires", "editing.app", "editing.scripts")


def modules(folder: str) -> list[str]:
    root = REPO / folder
    names = [".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in root.glob("*.py")]
    return sorted(names)


def floor(module: str) -> str:
    if module in ("editing", "editing.core") or module.startswith("editing.core."):
        return "core"  # editing/__init__.py runs before editing.core: it is part of the bottom floor's import
    if module.split(".")[0] in ("inversion", "attention"):
        return "inversion/attention"
    if module in INTERFACES:
        return "interfaces"
    if module.startswith("editing."):
        return "methods"
    return module.split(".")[0]  # benchmarks, toyworld


# What each floor may import of ours (its own floor included).
ALLOWED = {
    "core": {"core"},
    "inversion/attention": {"core", "inversion/attention"},
    "toyworld": {"core", "inversion/attention", "toyworld"},
    "methods": {"core", "inversion/attention", "methods"},
    "interfaces": {"core", "inversion/attention", "methods", "interfaces"},
}
CHECKED = [m for folder in ("editing/core", "inversion", "attention", "toyworld", "editing") for m in modules(folder)]

# Run in a fresh interpreter: {module: [[importer, imported], ...]} for every module of ours each import pulls in.
PROBE = r"""
import importlib, json, sys

OURS = tuple(sys.argv[1].split(","))


def ours(name):
    return name.split(".")[0] in OURS


class Recorder:
    def __init__(self):
        self.seen = []

    def find_spec(self, name, path=None, target=None):
        if ours(name):
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
                frame = frame.f_back
            importer = frame.f_globals.get("__name__", "?") if frame is not None else "?"
            self.seen.append([importer, name])
        return None  # only watch: the normal finders load it


recorder = Recorder()
sys.meta_path.insert(0, recorder)
report = {}
for module in sys.argv[2:]:
    for name in [n for n in sys.modules if ours(n)]:
        del sys.modules[name]
    recorder.seen = []
    importlib.import_module(module)
    report[module] = recorder.seen
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def imported() -> dict[str, list[list[str]]]:
    done = subprocess.run([sys.executable, "-c", PROBE, ",".join(OURS), *CHECKED], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def upward(module: str, edges) -> list[str]:
    allowed = ALLOWED[floor(module)]
    return [f"{importer} imports {name} ({floor(name)})" for importer, name in edges if floor(name) not in allowed]


def test_every_floor_is_checked():
    for folder in ("editing/core", "inversion", "attention"):
        assert modules(folder), folder  # a renamed folder must not leave the check with nothing to look at
    for method in ("p2p", "null_finetune", "learned_embedding", "imagic", "embedding", "request", "methods", "finetune_embedding",
                   "multires_prompt", "multires_ti"):
        assert f"editing.{method}" in CHECKED and floor(f"editing.{method}") == "methods", method
    assert "editing.multires" in CHECKED and floor("editing.multires") == "interfaces"
    assert floor("editing.core.model") == "core" and floor("inversion.record") == "inversion/attention"


@pytest.mark.parametrize("module", [m for m in CHECKED if floor(m) in ALLOWED])
def test_importing_a_module_pulls_in_nothing_above_its_floor(module, imported):
    edges = imported[module]
    assert [name for _, name in edges if name == module], f"the probe did not see {module} being imported"
    bad = upward(module, edges)
    assert not bad, f"{module} ({floor(module)}) reaches up: " + "; ".join(bad)


def import_names(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module name) of every import statement of ours in a file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            # `from editing import multires` imports a module: count the names as modules where they are ones
            found += [(node.lineno, f"{base}.{a.name}") if (REPO / base.replace(".", "/") / f"{a.name}.py").exists()
                      else (node.lineno, base) for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in OURS]


@pytest.mark.parametrize("module", [m for m in CHECKED if floor(m) in ALLOWED])
def test_no_import_statement_points_above_its_floor(module):
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = REPO / module.replace(".", "/") / "__init__.py"
    allowed = ALLOWED[floor(module)]
    bad = [f"{path.relative_to(REPO)}:{line} imports {name} ({floor(name)})"
           for line, name in import_names(path, module) if floor(name) not in allowed]
    assert not bad, "; ".join(bad)


def test_the_probe_sees_an_upward_import(tmp_path):
    """The check has teeth: a bottom-floor module that imports a method is reported, with its importer."""
    package = tmp_path / "editing"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "leaky.py").write_text("import editing.p2p_fake\n")
    (package / "p2p_fake.py").write_text("")
    done = subprocess.run([sys.executable, "-c", PROBE, ",".join(OURS), "editing.core.leaky"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    edges = json.loads(done.stdout.strip().splitlines()[-1])["editing.core.leaky"]
    assert upward("editing.core.leaky", edges) == ["editing.core.leaky imports editing.p2p_fake (methods)"]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_even_through_function_local_imports():
    every = [m for folder in ("editing/core", "inversion", "attention", "toyworld", "editing", "benchmarks")
             for m in modules(folder)]
    known = set(every)

    def target(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module in every:
        path = REPO / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = REPO / module.replace(".", "/") / "__init__.py"
        graph[module] = {t for _, name in import_names(path, module)
                         if (t := target(name)) and t != module and not module.startswith(t + ".")}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the finder works
    assert cycles(graph) == []
