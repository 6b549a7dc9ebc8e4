"""Merging LoRA adapters of separate runs by their posteriors (uncertainty-based gradient matching, product of
posteriors) or by PEFT's own combination types; the preview sweep over the merge weights.

    gaussian.py     the formulas on tensors: gradient matching, product of Gaussians, ΔW moments, truncated SVD
    peft_types.py   PEFT's add_weighted_adapter on a stand-in model (no base weights)
    runs.py         inputs read and checked, `merge_runs` -> a merged run dir with its provenance
    sweep.py        merge weights swept, each merged adapter evaluated on every input's task; table and plot
"""

from .runs import METHODS, POSTERIOR_METHODS, SPACES, merge_adapters, merge_runs, read_input

__all__ = ["METHODS", "POSTERIOR_METHODS", "SPACES", "merge_adapters", "merge_runs", "read_input"]
