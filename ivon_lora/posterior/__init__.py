"""The posterior: a diagonal Gaussian over the adapter weights, saved next to the PEFT adapter (`Posterior`).

One module per concern, all on the same key-to-parameter binding (`adapter.py`): the artifact and what is done to it
(`core.py`: `Posterior`, created from the optimizer, loaded, saved, pruned, tempered, applied to a model), its files
and format version (`files.py`), pruning scores and masks (`pruning.py`), and drawing samples into a model
(`sampler.py`: `PosteriorSampler`, `SampleStack`). The names below are the package's public surface.
"""

from .adapter import ADAPTER_KEYS, adapter_hash, adapter_name, adapter_parameters, adapter_settings
from .core import Posterior
from .files import ADAPTER_HASH_KEY, COMPATIBLE_FORMAT_VERSIONS, FORMAT_VERSION, PRIOR_RUN_KEY
from .sampler import PosteriorSampler, SampleStack

__all__ = ["ADAPTER_HASH_KEY", "ADAPTER_KEYS", "COMPATIBLE_FORMAT_VERSIONS", "FORMAT_VERSION", "PRIOR_RUN_KEY",
           "Posterior", "PosteriorSampler", "SampleStack", "adapter_hash", "adapter_name", "adapter_parameters",
           "adapter_settings"]  # fmt: skip
