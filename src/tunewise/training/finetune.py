"""LoRA fine-tuning with a completion-only loss, in one readable training loop.

The prompt is rendered with the model's chat template (generation prompt included) and masked out
of the loss; the response, followed by the end-of-turn token, is what the model learns (the
encoding is :func:`tunewise.model.chat.encode_example`, shared with scoring and CoS-Low). The
loop is plain torch, top to bottom: no Trainer, no callbacks. It is seeded end to end (LoRA
initialisation, dropout, data order), runs in fp32 on CPU and under bf16 autocast on GPU, and
leaves the loaded base model untouched: the adapter goes on a copy, so one loaded model serves
many fine-tunes (a sweep).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tunewise.errors import TunewiseError
from tunewise.io import atomic_directory, check_output_folder, encode_json
from tunewise.model.chat import IGNORE_INDEX, encode_example, encode_prompts, pad_examples, pad_token_id

ADAPTER_INFO_FILE = "tunewise_adapter.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# What save_adapter writes (PEFT's save_pretrained adds a model card): all a folder it replaces may hold.
ADAPTER_FOLDER_FILES = {ADAPTER_INFO_FILE, ADAPTER_WEIGHTS_FILE, "adapter_config.json", "README.md"}
# torch, numpy and Optuna all take seeds below 2**32.
MAX_SEED = 2**32 - 1
# Examples per length-sorting window: long enough to cut padding, short enough to keep batches mixed.
_LENGTH_GROUP_BATCHES = 16


@dataclass
class FinetuneConfig:
    """Hyperparameters of one LoRA fine-tune; every field is also a ``tunewise finetune`` flag.

    The defaults suit the small budgets tunewise plans (tens to a few thousand examples) on a
    135M model on CPU: an effective batch of 4 gives small budgets enough optimizer steps, split
    into micro-batches of 2 because training memory grows with the tokens in a micro-batch
    (about 4 MB per token for SmolLM2 in fp32); the sequence cap covers GSM8K- and BBH-length
    examples. On a GPU, raise ``batch_size``.
    """

    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: str = field(
        default="all-linear",
        metadata={"help": "Modules that get an adapter: 'all-linear' (every attention and MLP "
                          "projection) or a comma-separated list such as q_proj,v_proj."},
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate."})
    epochs: int = field(default=3, metadata={"help": "Passes over the training examples."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (overrides epochs)."}
    )
    batch_size: int = field(default=2, metadata={"help": "Examples per forward pass (memory grows with it)."})
    gradient_accumulation_steps: int = field(
        default=2, metadata={"help": "Forward passes per optimizer step (effective batch = product)."}
    )
    max_seq_length: int = field(
        default=512, metadata={"help": "Tokens per example (prompt + response); longer ones are cut at the end."}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps with linear warmup."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this before each step."})
    seed: int = field(default=0, metadata={"help": "Seed for LoRA initialisation, dropout and data order."})

    def __post_init__(self) -> None:
        positive_ints = ("lora_rank", "epochs", "batch_size", "gradient_accumulation_steps", "max_seq_length")
        for name in positive_ints:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TunewiseError(f"must be a positive integer, got {getattr(self, name)!r}", field=name,
                                    fix=f"pass --{name.replace('_', '-')} 1 or more")
        if self.max_steps is not None and self.max_steps < 1:
            raise TunewiseError(f"must be a positive integer, got {self.max_steps!r}", field="max_steps",
                                fix="pass --max-steps 1 or more, or leave it out to train by epochs")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise TunewiseError(f"must be a whole number in [0, {MAX_SEED}], got {self.seed!r}", field="seed",
                                fix="pass e.g. --seed 0")
        for name in ("lora_alpha", "learning_rate", "lora_dropout", "warmup_ratio", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TunewiseError(f"must be a finite number, got {value!r}", field=name,
                                    fix=f"pass --{name.replace('_', '-')} a finite number")
        checks = (
            ("lora_alpha", self.lora_alpha > 0, "a positive number"),
            ("learning_rate", self.learning_rate > 0, "a positive number"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "zero or more"),
            ("max_grad_norm", self.max_grad_norm > 0, "a positive number"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise TunewiseError(f"must be {expected}, got {getattr(self, name)!r}", field=name,
                                    fix=f"pass --{name.replace('_', '-')} {expected}")
        if not self.target_modules_list():
            raise TunewiseError("names no module", field="target_modules",
                                fix="pass --target-modules all-linear or names such as q_proj,v_proj")

    def target_modules_list(self) -> str | list[str]:
        """The PEFT ``target_modules`` value: ``"all-linear"`` or a list of module names."""
        if self.target_modules.strip() == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.target_modules.split(",") if name.strip()]


@dataclass
class TrainingLog:
    """What happened during one fine-tune: one entry per optimizer step, and totals."""

    steps: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    examples: int = 0
    examples_seen: int = 0
    tokens_seen: int = 0
    truncated_examples: int = 0

    @property
    def final_loss(self) -> float | None:
        return self.steps[-1]["loss"] if self.steps else None

    def to_dict(self) -> dict:
        """JSON-ready form, with throughput."""
        seconds = max(self.seconds, 1e-9)
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "examples": self.examples,
            "examples_seen": self.examples_seen,
            "tokens_seen": self.tokens_seen,
            "truncated_examples": self.truncated_examples,
            "final_loss": self.final_loss,
            "steps_per_second": round(len(self.steps) / seconds, 4),
            "examples_per_second": round(self.examples_seen / seconds, 4),
            "tokens_per_second": round(self.tokens_seen / seconds, 2),
        }


@dataclass
class FinetuneResult:
    """The adapted model (LoRA merged into a copy of the base weights, eval mode), its log, and
    where the adapter was saved (None when it was not)."""

    model: Any
    log: TrainingLog
    config: FinetuneConfig
    adapter_dir: Path | None = None


def finetune(
    loaded_model,
    examples: Sequence,
    config: FinetuneConfig | None = None,
    output_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a fresh LoRA adapter on ``examples`` (labelled :class:`~tunewise.data.pool.Example` s).

    Parameters
    ----------
    loaded_model:
        A :class:`~tunewise.model.load.LoadedModel`; it is not modified.
    config:
        Hyperparameters (defaults: :class:`FinetuneConfig`).
    output_dir:
        When given, the adapter, the config and the training log are saved there (atomically:
        the folder appears complete or not at all).
    progress:
        Called after every optimizer step with ``(step, total_steps, loss)``.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    config = config or FinetuneConfig()
    if output_dir is not None:
        check_adapter_output(output_dir)
    if not examples:
        raise TunewiseError("there are no examples to fine-tune on", fix="pass a non-empty pool or selection")
    unlabelled = [example.id for example in examples if example.response is None]
    if unlabelled:
        raise TunewiseError(f"{len(unlabelled)} of {len(examples)} examples have no response (first: {unlabelled[0]})",
                            field="response", fix="fine-tune on a labelled pool")

    tokenizer = loaded_model.tokenizer
    device = loaded_model.device
    prompts = encode_prompts(tokenizer, [e.prompt for e in examples])
    encoded = [encode_example(tokenizer, e.prompt, e.response, config.max_seq_length, prompt_ids=p)
               for e, p in zip(examples, prompts)]
    log = TrainingLog(examples=len(examples), truncated_examples=sum(e.truncated for e in encoded))

    micro_batches_per_epoch = math.ceil(len(encoded) / config.batch_size)
    steps_per_epoch = math.ceil(micro_batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    warmup_steps = int(config.warmup_ratio * total_steps)

    def learning_rate_factor(step: int) -> float:
        """Linear warmup, then linear decay to zero at the last step."""
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    # fork_rng keeps the caller's global RNG untouched while LoRA init and dropout draw from it.
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        data_order = torch.Generator().manual_seed(config.seed)
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules_list(),
            task_type="CAUSAL_LM",
        )
        try:
            with _peft_deprecation_silenced():
                model = get_peft_model(copy.deepcopy(loaded_model.model), lora)
        except ValueError as error:
            raise TunewiseError(f"cannot attach LoRA adapters ({error})", field="target_modules",
                                fix="use --target-modules all-linear or names of the model's linear layers") from None
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
        lengths = [len(e.input_ids) for e in encoded]

        started = time.perf_counter()
        step = 0
        epoch = 0
        while step < total_steps:
            micro_batches = length_grouped_batches(lengths, config.batch_size, data_order)
            for first in range(0, len(micro_batches), config.gradient_accumulation_steps):
                if step >= total_steps:
                    break
                step_batches = micro_batches[first:first + config.gradient_accumulation_steps]
                # Normalise by the step's completion tokens, so accumulation equals one big batch.
                step_tokens = sum(encoded[i].completion_tokens for batch in step_batches for i in batch)
                step_loss = 0.0
                learning_rate = optimizer.param_groups[0]["lr"]
                for batch in step_batches:
                    batch_examples = [encoded[i] for i in batch]
                    input_ids, attention_mask, labels = pad_examples(batch_examples, pad_token_id(tokenizer), device)
                    # Position t predicts token t + 1: project to the vocabulary only where that
                    # token is a response token (the prompt's logits would be thrown away).
                    targets = labels[:, 1:]
                    predicts_response = torch.nn.functional.pad(targets != IGNORE_INDEX, (0, 1))
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                       logits_to_keep=predicts_response).logits
                    loss = torch.nn.functional.cross_entropy(
                        logits.float(), targets[targets != IGNORE_INDEX], reduction="sum"
                    ) / max(step_tokens, 1)
                    loss.backward()
                    step_loss += loss.item()
                    log.examples_seen += len(batch)
                    log.tokens_seen += sum(len(e.input_ids) for e in batch_examples)
                if not math.isfinite(step_loss):
                    raise TunewiseError(
                        f"the training loss became {step_loss} at step {step + 1} of {total_steps}; no adapter "
                        "was saved", field="learning_rate",
                        fix=f"lower --learning-rate (it was {config.learning_rate:g}) or --lora-alpha, or check "
                            "the examples")
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                log.steps.append({
                    "step": step,
                    "epoch": epoch,
                    "loss": round(step_loss, 6),
                    "learning_rate": learning_rate,
                    "completion_tokens": int(step_tokens),
                    "seconds": round(time.perf_counter() - started, 3),
                })
                if progress is not None:
                    progress(step, total_steps, step_loss)
            epoch += 1
        log.seconds = time.perf_counter() - started

    model.eval()
    adapter_dir = None
    if output_dir is not None:
        adapter_dir = save_adapter(model, output_dir, loaded_model, config, log)
    merged = model.merge_and_unload()
    merged.eval()
    return FinetuneResult(model=merged, log=log, config=config, adapter_dir=adapter_dir)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator) -> list[list[int]]:
    """One epoch's micro-batches: shuffled, then sorted by length within windows to cut padding,
    then the batches shuffled again so that length does not become a curriculum."""
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * _LENGTH_GROUP_BATCHES
    batches = []
    for start in range(0, len(order), window):
        grouped = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches.extend(grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def check_adapter_output(output_dir: str | os.PathLike) -> None:
    """Refuse an adapter destination that would overwrite anything but an earlier adapter, or that
    cannot be written."""
    target = Path(output_dir)
    check_output_folder(target)
    if not target.exists():
        return
    entries = {entry.name for entry in target.iterdir()}
    if entries and ADAPTER_INFO_FILE not in entries:
        raise TunewiseError("the output path exists and is not an adapter folder written by tunewise",
                            file=str(target), fix="pass a new folder with -o (an earlier adapter folder is replaced)")
    foreign = sorted(entries - ADAPTER_FOLDER_FILES)
    if foreign:
        # The whole folder is replaced: anything else in it would be deleted with the old adapter.
        raise TunewiseError(f"the earlier adapter folder also holds {', '.join(foreign[:5])}, which replacing it "
                            "would delete", file=str(target),
                            fix="move those files out of the folder, or pass a new folder with -o")


def save_adapter(
    peft_model, output_dir: str | os.PathLike, loaded_model, config: FinetuneConfig, log: TrainingLog
) -> Path:
    """Write the adapter with its provenance into ``output_dir``, replacing it whole or not at all."""
    from tunewise import __version__
    from tunewise.model.load import model_summary

    check_adapter_output(output_dir)
    info = {
        "tunewise_version": __version__,
        **model_summary(loaded_model),
        "finetune_config": asdict(config),
        "training": log.to_dict(),
    }
    with atomic_directory(output_dir) as staging:
        with _peft_deprecation_silenced():
            peft_model.save_pretrained(staging)
        (staging / ADAPTER_INFO_FILE).write_bytes(encode_json(info))
    return Path(output_dir)


def read_adapter_info(adapter_dir: str | os.PathLike) -> dict:
    """The provenance of an adapter folder written by :func:`save_adapter`, checked before any model loads.

    The folder must hold ``adapter_config.json`` and the weights as ``adapter_model.safetensors``
    (a pickled ``.bin`` could run code when loaded, so it is refused), and a readable
    ``tunewise_adapter.json`` naming the base model.
    """
    adapter_dir = Path(adapter_dir)
    fix = "pass the folder given to `tunewise finetune -o` (train it again if it was damaged)"
    info_path = adapter_dir / ADAPTER_INFO_FILE
    config_path = adapter_dir / "adapter_config.json"
    if not adapter_dir.is_dir() or not config_path.exists() or not info_path.exists():
        raise TunewiseError("not an adapter folder written by `tunewise finetune`", file=str(adapter_dir), fix=fix)
    if not (adapter_dir / ADAPTER_WEIGHTS_FILE).is_file():
        raise TunewiseError(f"the adapter has no {ADAPTER_WEIGHTS_FILE}; tunewise loads adapter weights only from "
                            "safetensors, never from pickle files that can run code", file=str(adapter_dir),
                            fix=fix)
    documents = {}
    for path in (info_path, config_path):
        try:
            documents[path] = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise TunewiseError(f"not valid UTF-8 ({error.reason} at byte {error.start})", file=str(path),
                                fix=fix) from None
        except json.JSONDecodeError as error:
            raise TunewiseError(f"malformed JSON ({error.msg})", file=str(path), line=error.lineno, fix=fix) from None
        if not isinstance(documents[path], dict):
            raise TunewiseError(f"expected a JSON object, got {type(documents[path]).__name__}", file=str(path),
                                fix=fix)
    info = documents[info_path]
    if not isinstance(info.get("model_fingerprint"), str) or not info["model_fingerprint"]:
        raise TunewiseError("no base-model fingerprint", file=str(info_path), field="model_fingerprint", fix=fix)
    return info


def load_adapter(loaded_model, adapter_dir: str | os.PathLike):
    """A copy of the base model with the saved adapter merged in (eval mode).

    Refuses an adapter trained on a different base model than ``loaded_model``.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    info = read_adapter_info(adapter_dir)
    trained_on = _base_fingerprint(info.get("model_fingerprint", ""))
    if trained_on != _base_fingerprint(loaded_model.fingerprint):
        raise TunewiseError(
            f"the adapter was trained on model '{info.get('model')}' ({trained_on}), "
            f"not on '{loaded_model.name}' ({_base_fingerprint(loaded_model.fingerprint)})",
            file=adapter_dir, field="model", fix=f"pass --model {info.get('model')}",
        )
    try:
        with _peft_deprecation_silenced():
            model = PeftModel.from_pretrained(copy.deepcopy(loaded_model.model), adapter_dir)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise TunewiseError(f"cannot load the adapter ({type(error).__name__}: {error})", file=str(adapter_dir),
                            fix="train it again with `tunewise finetune -o`") from None
    merged = model.merge_and_unload()
    merged.eval()
    return merged


@contextlib.contextmanager
def _peft_deprecation_silenced():
    """PEFT reads a transformers property deprecated for v6: a warning no user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _base_fingerprint(fingerprint: str) -> str:
    """The fingerprint without its dtype suffix: an adapter trained in bf16 applies in fp32 too."""
    return fingerprint.rsplit(":", 1)[0]


__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "TrainingLog",
    "check_adapter_output",
    "finetune",
    "load_adapter",
    "read_adapter_info",
    "save_adapter",
]
