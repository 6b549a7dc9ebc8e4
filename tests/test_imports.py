"""The package's shape: no import cycle inside ivon_lora, between modules or between its packages (top-level
modules and subpackages); the leaves and the config / run-dir layer import nothing above them; no Hugging Face import
under ivon_lora/optim/; and `ivon-lora --help` imports neither transformers nor bitsandbytes (read from the source's
AST, lazy imports too); and no module of the package imported by a string ("ivon_lora.x:Name") outside a registry
these tests check."""

import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ivon_lora")
HUGGING_FACE = {"transformers", "peft", "accelerate", "datasets", "huggingface_hub", "evaluate", "trl"}


def _modules() -> dict[str, str]:
    """module name -> file, for every .py file of the package (a package is its __init__)."""
    modules = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node anywhere (function bodies too), except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _module_level_imports(tree: ast.AST):
    """The imports that run at import time: module level, under if/try too, never in a def (nor TYPE_CHECKING)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _graph(eager_only: bool = False):
    """module -> the package's modules it imports, module -> the outside packages it imports. `eager_only`: only
    the imports that run when the module is imported (module level, not inside a function)."""
    modules = _modules()
    edges, external = {name: set() for name in modules}, {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in _module_level_imports(tree) if eager_only else _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module
                # `from pkg import sub` imports the submodule pkg.sub when there is one.
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
            for target in targets:
                if target.split(".")[0] == "ivon_lora":
                    while target not in modules:  # `import ivon_lora.a.b` of a name inside a module
                        target = target.rpartition(".")[0]
                    if target != name:
                        edges[name].add(target)
                else:
                    external[name].add(target.split(".")[0])
    return edges, external


def _cycles(edges: dict[str, set]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "active"
        for target in sorted(edges[node]):
            if state.get(target) == "active":
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_import_graph_has_no_cycle():
    edges, _ = _graph()
    assert len(edges) > 30 and "ivon_lora.posterior" in edges["ivon_lora.trainer.ivon_trainer"]  # the parser sees
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def _unit(module: str) -> str:
    """The package-level unit a module belongs to: ivon_lora.evaluation.metrics -> ivon_lora.evaluation."""
    return ".".join(module.split(".")[:2])


def _package_graph(edges: dict[str, set]) -> dict[str, set]:
    """The import graph between units (top-level modules and subpackages), an edge per module-level edge."""
    units = {_unit(name): set() for name in edges}
    for name, targets in edges.items():
        units[_unit(name)].update(_unit(target) for target in targets if _unit(target) != _unit(name))
    return units


def _strongly_connected(edges: dict[str, set]) -> set[frozenset]:
    """The groups of two or more nodes that all reach each other (every cycle lies inside one)."""
    reach = {}
    for start in edges:
        seen, stack = set(), [start]
        while stack:
            for target in edges.get(stack.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        reach[start] = seen
    groups = {frozenset({a} | {b for b in reach[a] if a in reach.get(b, ())}) for a in edges}
    return {group for group in groups if len(group) > 1}


# Package-level cycles of today's layout, each with why it still stands. Add an entry only with the reason, and remove
# it with the change that ends it (the test below fails on a listed cycle that is gone).
KNOWN_PACKAGE_CYCLES: set[frozenset[str]] = set()
# What reads a run dir and acts on it: config and rundir import none of it, not even inside a function.
CONSUMERS = {"ivon_lora", "ivon_lora.cli", "ivon_lora.commands", "ivon_lora.evaluation", "ivon_lora.integrations",
             "ivon_lora.generation", "ivon_lora.sensitivity", "ivon_lora.merging"}  # fmt: skip
# Imported by everything, importing nothing of the package but each other as listed: the names leaves, and the file
# I/O just above them (fileio: one file; output_dir: a whole output dir), which the posterior reads and writes through.
LEAVES = {"ivon_lora.errors": set(), "ivon_lora.registry": set(), "ivon_lora.vocabulary": set(),
          "ivon_lora._version": set(), "ivon_lora.filenames": set(), "ivon_lora.fileio": {"ivon_lora.errors"},
          "ivon_lora.output_dir": {"ivon_lora.errors", "ivon_lora.fileio", "ivon_lora.filenames"},
          "ivon_lora.objectives": {"ivon_lora.errors", "ivon_lora.registry"}, "ivon_lora.validation": set()}  # fmt: skip


def test_the_package_graph_has_no_cycle_but_the_known_ones():
    packages = _package_graph(_graph()[0])
    assert "ivon_lora.evaluation" in packages["ivon_lora.commands"]  # the units are seen
    assert _strongly_connected(packages) - KNOWN_PACKAGE_CYCLES == set()
    assert KNOWN_PACKAGE_CYCLES <= _strongly_connected(packages), "a known cycle is gone: remove it from the list"


def test_the_package_cycle_finder_finds_one_through_submodules():
    edges = {"p.config": {"p.evaluation.sweep"}, "p.evaluation.sweep": set(), "p.evaluation.run": {"p.rundir"},
             "p.rundir": {"p.config"}, "p.leaf": set()}  # fmt: skip
    assert _cycles(edges) == []  # no module-level cycle
    assert _strongly_connected(_package_graph(edges)) == {frozenset({"p.config", "p.evaluation", "p.rundir"})}


def test_the_leaves_import_nothing_above_them():
    edges, _ = _graph()
    for leaf, allowed in LEAVES.items():
        assert edges[leaf] == allowed, leaf


def test_config_and_rundir_import_nothing_above_them():
    """config validates names against tasks, models and the training arguments, lazily; at import time it reads
    only the leaves. Neither imports anything that consumes a run (evaluation, generation, commands...)."""
    packages = _package_graph(_graph()[0])
    assert packages["ivon_lora.config"] & (CONSUMERS | {"ivon_lora.rundir", "ivon_lora.modeling"}) == set()
    assert packages["ivon_lora.rundir"] & CONSUMERS == set()
    eager = _package_graph(_graph(eager_only=True)[0])
    assert eager["ivon_lora.config"] <= set(LEAVES)
    assert "ivon_lora.trainer" not in eager["ivon_lora.rundir"] | eager["ivon_lora.config"]


def test_the_optimizer_imports_no_hugging_face_package():
    _, external = _graph()
    optim = {
        name: sorted(imported & HUGGING_FACE)
        for name, imported in external.items()
        if name.startswith("ivon_lora.optim")
    }
    assert set(optim) >= {
        "ivon_lora.optim",
        "ivon_lora.optim.ivon",
        "ivon_lora.optim._distributed",
        "ivon_lora.optim._rng",
    }
    assert {name: found for name, found in optim.items() if found} == {}
    assert "torch" in external["ivon_lora.optim.ivon"]


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["prune", "--help"]])
def test_help_imports_no_hugging_face_package_and_no_bitsandbytes(argv):
    """bitsandbytes (pulled in by transformers -> peft) prints kernel warnings at import on some CPUs."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ivon_lora", *argv], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: ivon-lora" in result.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    assert "torch" in imported or argv == ["--help"]  # the listing is real
    assert not {"bitsandbytes", "transformers", "peft"} & imported
    assert "gemm_4bit_forward" not in result.stderr


# ------------------------------------------------------------------ imports named by strings

MODULE_NAME_STRING = re.compile(r"ivon_lora(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?")
# The package's string-named imports, each from a registry the tests below check (and nowhere else):
# - `_LAZY` tables (PEP 562 module __getattr__: `from ivon_lora import IVON` without importing transformers): each
#   name maps to a submodule of its package that defines it, and is imported from there under TYPE_CHECKING too;
# - the command table (cli.py imports `.commands.<module_name(command)>` for each of `ivon_lora.commands.COMMANDS`).
STRING_IMPORT_REGISTRIES = {"ivon_lora/__init__.py": "_LAZY", "ivon_lora/choice/__init__.py": "_LAZY",
                            "ivon_lora/sft/__init__.py": "_LAZY", "ivon_lora/cli.py": "COMMANDS"}  # fmt: skip


def _python_files(*tops: str):
    for top in tops:
        for directory, _, files in os.walk(os.path.join(ROOT, top)):
            yield from (os.path.join(directory, name) for name in sorted(files) if name.endswith(".py"))


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return {id(n.body[0].value) for n in nodes if n.body and isinstance(n.body[0], ast.Expr)}


def test_no_module_of_the_package_is_named_by_a_string_to_import_it():
    """A "ivon_lora.x.y" or "ivon_lora.x:Name" string is an import neither the graph above nor a reader sees (it
    may run back up a layer): the package and the scripts hold none; a string-named import goes through one of
    STRING_IMPORT_REGISTRIES, which name modules relative to their package and are checked below."""
    found, calls = [], []
    for path in _python_files("ivon_lora", "scripts"):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        relative = os.path.relpath(path, ROOT)
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if MODULE_NAME_STRING.fullmatch(node.value):
                    found.append(f"{relative}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in ("import_module", "__import__"):
                calls.append(relative)
    assert found == []
    assert set(calls) <= set(STRING_IMPORT_REGISTRIES), "import_module outside a checked registry"


def _top_level_names(path: str) -> set[str]:
    """What a module defines or imports at its top level, and the names of its own `_LAZY` table."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
            if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets):
                names.update(ast.literal_eval(node.value))
    return names


def test_the_string_import_registries_name_real_modules_and_names():
    modules = _modules()
    for relative, table in STRING_IMPORT_REGISTRIES.items():
        path = os.path.join(ROOT, relative)
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        if table == "COMMANDS":  # the table is ivon_lora.commands'
            from ivon_lora.commands import COMMANDS, module_name

            assert "import_module(f'.commands.{module_name(name)}', __package__)" in ast.unparse(tree)
            assert {f"ivon_lora.commands.{module_name(c)}" for c in COMMANDS} <= set(modules)
            continue
        assigned = [n.value for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == table]
        assert len(assigned) == 1, (relative, table)
        package = os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, ".")
        lazy = ast.literal_eval(assigned[0])
        checked = {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.If) and _is_type_checking(node)
            for statement in node.body
            for alias in statement.names
        }
        assert set(lazy) == checked, relative  # each lazy name is imported under TYPE_CHECKING for readers
        for name, target in lazy.items():
            module = package + target
            assert target.startswith(".") and module in modules, (relative, name, target)
            defined = _top_level_names(modules[module])
            assert name in defined, (relative, name, module)


def test_the_string_scan_finds_a_string_named_import():
    tree = ast.parse('PARTS = {"steps": "ivon_lora.commands.training.choice:ChoiceSteps", "doc": "see ivon_lora.x"}')
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert [s for s in strings if MODULE_NAME_STRING.fullmatch(s)] == ["ivon_lora.commands.training.choice:ChoiceSteps"]
