"""The generative (SFT) objective: causal-LM finetuning on instruction and chat data with IVON, through TRL.

`IVONSFTTrainer` / `IVONSFTConfig` need TRL (`pip install "ivon-lora[sft]"`); they are imported on first use, so
`import ivon_lora.sft` works without it.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .trainer import IVONSFTConfig, IVONSFTTrainer

_LAZY = {
    "IVONSFTConfig": ".trainer",
    "IVONSFTTrainer": ".trainer",
}

__all__ = [*_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
