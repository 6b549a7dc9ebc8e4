"""The train steps of each objective, driven by `commands/train.py`'s one pipeline: `TrainSteps` (steps.py) is what
an objective provides; `choice.py` and `sft.py` are the two objectives'. Importing this package provides them to their
records in `ivon_lora.objectives` (a leaf below the commands, which cannot import them), with real imports: the
steps evaluate and write reports, so they live here, and the data flows one way, from this layer into the leaf.
"""

from __future__ import annotations

from ...objectives import get_objective
from .choice import ChoiceSteps
from .sft import SFTSteps

get_objective("choice").provide("steps", lambda: ChoiceSteps)
get_objective("sft").provide("steps", lambda: SFTSteps)
