"""ivon_lora.filenames: a leaf, the adapter's names equal to PEFT's, task and run names made file names."""

import ast

from ivon_lora import filenames
from ivon_lora.filenames import predictions_file_name, reliability_plot_name, selective_plot_name


def test_the_adapter_file_names_are_pefts():
    from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    assert (filenames.ADAPTER_CONFIG_NAME, filenames.ADAPTER_WEIGHTS_NAME) == (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME)


def test_task_and_run_names_become_file_names():
    assert predictions_file_name("mmlu:college_physics", "ivon") == "predictions-mmlu-college_physics-ivon.jsonl"
    assert predictions_file_name("x", "org/run") == "predictions-x-org-run.jsonl"
    assert reliability_plot_name("mmlu:anatomy") == "reliability-mmlu-anatomy.png"
    assert selective_plot_name("wordqa") == "selective-wordqa.png"


def test_the_names_leaf_imports_nothing():
    """Names only, like PEFT's constants.py: any module of the package may import it, at any layer."""
    with open(filenames.__file__) as f:
        tree = ast.parse(f.read())
    assert [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))] == []
