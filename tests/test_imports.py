"""The package's shape: no import cycle inside ivon_lora, no Hugging Face import under ivon_lora/optim/, and
`ivon-lora --help` imports neither transformers nor bitsandbytes (read from the source's AST, lazy imports too)."""

import ast
import os
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


def _graph():
    modules = _modules()
    edges, external = {name: set() for name in modules}, {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in _imports(tree):
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
                cycles.append(path[path.index(target):] + [target])
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


def test_the_optimizer_imports_no_hugging_face_package():
    _, external = _graph()
    optim = {name: sorted(imported & HUGGING_FACE) for name, imported in external.items() if name.startswith("ivon_lora.optim")}
    assert set(optim) >= {"ivon_lora.optim", "ivon_lora.optim.ivon", "ivon_lora.optim._distributed", "ivon_lora.optim._rng"}
    assert {name: found for name, found in optim.items() if found} == {}
    assert "torch" in external["ivon_lora.optim.ivon"]


def test_errors_and_artifacts_are_leaves():
    edges, _ = _graph()
    assert edges["ivon_lora.errors"] == set() and edges["ivon_lora.artifacts"] == {"ivon_lora.errors"}


def test_artifact_names_are_pefts():
    from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    from ivon_lora import artifacts

    assert (artifacts.ADAPTER_CONFIG_NAME, artifacts.ADAPTER_WEIGHTS_NAME) == (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME)


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["prune", "--help"]])
def test_help_imports_no_hugging_face_package_and_no_bitsandbytes(argv):
    """bitsandbytes (pulled in by transformers -> peft) prints kernel warnings at import on some CPUs."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ivon_lora", *argv], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: ivon-lora" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported or argv == ["--help"]  # the listing is real
    assert not {"bitsandbytes", "transformers", "peft"} & imported
    assert "gemm_4bit_forward" not in result.stderr
