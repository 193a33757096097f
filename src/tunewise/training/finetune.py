"""Fine-tuning on TRL's ``SFTTrainer``: LoRA (or full) with a completion-only loss, on the loaded model.

The prompt is rendered with the model's chat template (generation prompt included) and masked out
of the loss; the response, followed by the end-of-turn token, is what the model learns. The
examples are tokenised by :func:`tunewise.model.chat.encode_example` (the tokens scoring, CoS-Low
and evaluation see) and handed to the trainer as ``input_ids`` plus a ``completion_mask``, so the trainer users already run does the training:
``SFTTrainer`` with a PEFT ``LoraConfig``, AdamW, warmup and decay, gradient accumulation over
completion tokens, clipping, mixed precision, gradient checkpointing, evaluation and early stopping.

- **No copy of the base model.** The adapter is attached to the loaded model in place and removed
  again by :meth:`FinetuneResult.release` (``with finetune(...) as result:`` does it on exit);
  the base weights are never written (full fine-tuning keeps a CPU snapshot and restores it).
- **Seeded end to end** (adapter initialisation, dropout, data order), while the caller's global
  random state (torch, numpy, ``random``) is left as it was.
- **Precision**: ``dtype="auto"`` trains in bf16 mixed precision wherever the hardware runs bf16
  (see :mod:`tunewise.model.precision`), fp32 otherwise or when asked.
- **The loss on the CPU** is TRL's completion-only loss computed with the head on the completion
  positions only (:func:`tunewise.model.training_loss.completion_loss`): TRL's fused head scores every position there.
- **Refusals**: an example whose response is cut away entirely by ``max_seq_length`` is refused
  (it would train on nothing and report loss 0); a loss that turns non-finite stops training with
  a :class:`~tunewise.errors.TunewiseError`, and nothing is saved.
- **Profiles**: ``FinetuneConfig.from_profile("paper-a")`` is the recipe paper A measured its
  learning curves with (see :data:`PROFILES`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tunewise.errors import TunewiseError, did_you_mean
from tunewise.io import atomic_directory, check_output_folder, encode_json
from tunewise.model.chat import IGNORE_INDEX, encode_example, encode_prompts

ADAPTER_INFO_FILE = "tunewise_adapter.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# What save_adapter writes (PEFT's save_pretrained adds a model card; a full fine-tune writes the
# model and its tokenizer): all a folder it replaces may hold.
ADAPTER_FOLDER_FILES = {ADAPTER_INFO_FILE, ADAPTER_WEIGHTS_FILE, "adapter_config.json", "README.md",
                        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                        "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}
# torch, numpy and Optuna all take seeds below 2**32.
MAX_SEED = 2**32 - 1
METHODS = ("lora", "full")
SCHEDULERS = ("linear", "cosine")
# How the examples of a micro-batch are laid out (bench/train_throughput.py measures them):
# "random" pads each random batch to its longest member; "group_by_length" draws batches of
# similar length (transformers' LengthGroupedSampler); "padding_free" concatenates a batch into
# one row with per-example position ids, so no position is padding.
BATCHING = ("random", "group_by_length", "padding_free")

# Paper A's learning-curve recipe (Je & Raffel, released code github.com/r-three/dataefficiency,
# commit 2430231): README.md:64-80 launches scripts/finetune_ds.py with --step 500 (max_steps at every
# budget), --lr 1e-5, --warmup_ratio 0.1, --batch_size 2 × --grad_accumulation_step 8 × 2 GPUs
# (= 32 per step; 2 × 16 on one device here), --log_and_save_step 4 (evaluate and save every 4
# steps); finetune_ds.py:175-206 sets lr_scheduler_type="cosine", eval/save by steps and
# load_best_model_at_end=True (best validation loss restored), finetune_ds.py:280 adds
# EarlyStoppingCallback(early_stopping_patience=10); full fine-tuning, since the README passes no
# --use_peft (finetune_ds.py:288). The validation split is capped at 20 % of the training examples
# (scripts/base_model.py:171-173).
PROFILES: dict[str, dict[str, Any]] = {
    "paper-a": {
        "method": "full",
        "learning_rate": 1e-5,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.1,
        "max_steps": 500,
        "batch_size": 2,
        "gradient_accumulation_steps": 16,
        "eval_steps": 4,
        "early_stopping_patience": 10,
        "validation_fraction": 0.2,
    },
}


@dataclass
class FinetuneConfig:
    """Hyperparameters of one fine-tune; every field is also a ``tunewise finetune`` flag.

    The defaults suit the small budgets tunewise plans (tens to a few thousand examples) on a
    135M model on CPU: LoRA, an effective batch of 4 so small budgets get enough optimizer steps,
    in micro-batches of 2 because training memory grows with the tokens in a micro-batch; the
    sequence cap covers GSM8K- and BBH-length examples. On a GPU, raise ``batch_size``.
    :meth:`to_sft_config` maps the fields onto TRL's ``SFTConfig``.
    """

    method: str = field(default="lora", metadata={"help": "lora (a LoRA adapter) or full (every weight)."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: str = field(
        default="all-linear",
        metadata={"help": "Modules that get an adapter: 'all-linear' (every attention and MLP "
                          "projection) or a comma-separated list such as q_proj,v_proj."},
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate."})
    lr_scheduler: str = field(default="linear", metadata={"help": "Decay after warmup: linear or cosine."})
    epochs: int = field(default=3, metadata={"help": "Passes over the training examples."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (overrides epochs)."}
    )
    batch_size: int = field(default=2, metadata={"help": "Examples per forward pass (memory grows with it)."})
    gradient_accumulation_steps: int = field(
        default=2, metadata={"help": "Forward passes per optimizer step (effective batch = product)."}
    )
    max_seq_length: int = field(
        default=512, metadata={"help": "Tokens per example (prompt + response); a longer one is refused "
                                       "(its line named) unless --truncate is given."}
    )
    truncate: bool = field(
        default=False, metadata={"help": "Cut examples longer than --max-seq-length (or the model's context) "
                                         "at the end instead of refusing them; they are counted in the log."}
    )
    batching: str = field(
        default="group_by_length",
        metadata={"help": "random (pad each batch), group_by_length (batches of similar length) or "
                          "padding_free (one row per batch, per-example positions)."},
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps with linear warmup."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this before each step."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass (less memory, ~30 % slower)."}
    )
    eval_steps: int | None = field(
        default=None,
        metadata={"help": "Evaluate the loss on a held-out split every this many steps and keep the best "
                          "checkpoint (off by default)."},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without a better loss (needs --eval-steps)."}
    )
    validation_fraction: float = field(
        default=0.2, metadata={"help": "Held-out split as a fraction of the training examples (with --eval-steps)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for adapter initialisation, dropout and data order."})

    def __post_init__(self) -> None:
        positive_ints = ("lora_rank", "epochs", "batch_size", "gradient_accumulation_steps", "max_seq_length")
        for name in positive_ints:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TunewiseError(f"must be a positive integer, got {getattr(self, name)!r}", field=name,
                                    fix=f"pass --{name.replace('_', '-')} 1 or more")
        for name in ("max_steps", "eval_steps", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise TunewiseError(f"must be a positive integer, got {value!r}", field=name,
                                    fix=f"pass --{name.replace('_', '-')} 1 or more, or leave it out")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise TunewiseError(f"must be a whole number in [0, {MAX_SEED}], got {self.seed!r}", field="seed",
                                fix="pass e.g. --seed 0")
        for name in ("lora_alpha", "learning_rate", "lora_dropout", "warmup_ratio", "weight_decay", "max_grad_norm",
                     "validation_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TunewiseError(f"must be a finite number, got {value!r}", field=name,
                                    fix=f"pass --{name.replace('_', '-')} a finite number")
        for name, choices in (("method", METHODS), ("lr_scheduler", SCHEDULERS), ("batching", BATCHING)):
            if getattr(self, name) not in choices:
                raise TunewiseError(f"unknown {name} '{getattr(self, name)}'", field=name,
                                    fix=did_you_mean(str(getattr(self, name)), choices))
        checks = (
            ("lora_alpha", self.lora_alpha > 0, "a positive number"),
            ("learning_rate", self.learning_rate > 0, "a positive number"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "zero or more"),
            ("max_grad_norm", self.max_grad_norm > 0, "a positive number"),
            ("validation_fraction", 0 < self.validation_fraction < 1, "in (0, 1)"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise TunewiseError(f"must be {expected}, got {getattr(self, name)!r}", field=name,
                                    fix=f"pass --{name.replace('_', '-')} {expected}")
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise TunewiseError("early stopping needs evaluations", field="early_stopping_patience",
                                fix="pass --eval-steps K as well, or leave --early-stopping-patience out")
        if not self.target_modules_list():
            raise TunewiseError("names no module", field="target_modules",
                                fix="pass --target-modules all-linear or names such as q_proj,v_proj")

    @classmethod
    def from_profile(cls, name: str, **overrides) -> "FinetuneConfig":
        """The named profile's settings (:data:`PROFILES`), then ``overrides`` on top."""
        if name not in PROFILES:
            raise TunewiseError(f"unknown fine-tuning profile '{name}'", field="profile",
                                fix=did_you_mean(name, PROFILES))
        return cls(**{**PROFILES[name], **overrides})

    def target_modules_list(self) -> str | list[str]:
        """The PEFT ``target_modules`` value: ``"all-linear"`` or a list of module names."""
        if self.target_modules.strip() == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.target_modules.split(",") if name.strip()]

    def to_sft_config(self, output_dir: str, bf16: bool, use_cpu: bool, overrides: Mapping[str, Any] | None = None):
        """TRL ``SFTConfig`` for this fine-tune: the fields above, then the user's ``overrides``.

        tunewise hands the trainer tokenised examples already cut to ``max_seq_length``, so the
        trainer's own ``max_length`` is off; ``overrides`` (e.g. from ``--sft-config FILE``) may set
        any other ``SFTConfig`` field, and win.
        """
        from trl import SFTConfig

        evaluating = self.eval_steps is not None
        settings = dict(
            output_dir=output_dir,
            seed=self.seed,
            data_seed=self.seed,
            num_train_epochs=self.epochs,
            max_steps=self.max_steps or -1,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup_ratio,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            optim="adamw_torch",
            bf16=bf16,
            fp16=False,
            use_cpu=use_cpu,
            gradient_checkpointing=self.gradient_checkpointing,
            completion_only_loss=True,
            max_length=None,
            padding_free=self.batching == "padding_free",
            train_sampling_strategy="group_by_length" if self.batching == "group_by_length" else "random",
            logging_strategy="steps",
            logging_steps=1,
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            eval_strategy="steps" if evaluating else "no",
            eval_steps=self.eval_steps,
            save_strategy="steps" if evaluating else "no",
            save_steps=self.eval_steps if evaluating else 500,
            save_total_limit=1 if evaluating else None,
            load_best_model_at_end=evaluating,
            metric_for_best_model="eval_loss" if evaluating else None,
            greater_is_better=False if evaluating else None,
        )
        settings.update(overrides or {})
        with warnings.catch_warnings():
            # transformers 5 renames gradient_checkpointing; TRL's SFTConfig still declares it.
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*", category=FutureWarning)
            return SFTConfig(**settings)


def read_sft_overrides(path: str | os.PathLike) -> dict[str, Any]:
    """``SFTConfig`` fields from a YAML (or JSON) file, checked against TRL's field names.

    ``output_dir`` is refused: tunewise manages the trainer's checkpoints (``-o`` names where the
    adapter goes).
    """
    import yaml
    from trl import SFTConfig

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunewiseError("no such file", file=str(path), fix="pass an existing YAML file to --sft-config") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise TunewiseError(f"not valid YAML ({getattr(error, 'problem', error)})", file=str(path),
                            line=None if mark is None else mark.line + 1,
                            fix="write one `field: value` per line, SFTConfig's field names") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TunewiseError("must hold a mapping of SFTConfig fields", file=str(path),
                            fix="write one `field: value` per line, e.g. `lr_scheduler_type: cosine`")
    known = {f.name for f in fields(SFTConfig)}
    for key in data:
        if key == "output_dir":
            raise TunewiseError("output_dir is managed by tunewise", file=str(path), field=key,
                                fix="remove it; pass the adapter folder with -o")
        if key not in known:
            raise TunewiseError("is not an SFTConfig field", file=str(path), field=str(key),
                                fix=did_you_mean(str(key), known))
    return dict(data)


@dataclass
class TrainingLog:
    """What happened during one fine-tune: one entry per optimizer step, evaluations, and totals."""

    steps: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    examples: int = 0
    validation_examples: int = 0
    examples_seen: int = 0
    tokens_seen: int = 0
    positions_seen: int = 0
    truncated_examples: int = 0
    precision: str = "float32"
    best_step: int | None = None
    # What fitting the examples to the sequence cap did (tunewise.model.lengths.TrainingLengths).
    lengths: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float | None:
        return self.steps[-1]["loss"] if self.steps else None

    def to_dict(self) -> dict:
        """JSON-ready form, with throughput. ``positions_seen`` counts padding too."""
        seconds = max(self.seconds, 1e-9)
        return {
            "steps": self.steps,
            "evaluations": self.evaluations,
            "best_step": self.best_step,
            "seconds": round(self.seconds, 3),
            "precision": self.precision,
            "examples": self.examples,
            "validation_examples": self.validation_examples,
            "examples_seen": self.examples_seen,
            "tokens_seen": self.tokens_seen,
            "positions_seen": self.positions_seen,
            "truncated_examples": self.truncated_examples,
            "lengths": self.lengths,
            "final_loss": self.final_loss,
            "steps_per_second": round(len(self.steps) / seconds, 4),
            "examples_per_second": round(self.examples_seen / seconds, 4),
            "tokens_per_second": round(self.tokens_seen / seconds, 2),
        }


@dataclass
class FinetuneResult:
    """The fine-tuned model, its log, and where the adapter was saved (None when it was not).

    ``model`` is the loaded model itself with the adapter attached (eval mode): use it, then call
    :meth:`release` (or use the result as a context manager) to remove the adapter and give the
    loaded model back unchanged. A second fine-tune of the same model refuses to start before that.
    """

    model: Any
    log: TrainingLog
    config: FinetuneConfig
    adapter_dir: Path | None = None
    _restore: Callable[[], None] | None = None

    def release(self) -> None:
        """Remove the adapter (or restore the base weights) from the loaded model; idempotent."""
        if self._restore is not None:
            restore, self._restore = self._restore, None
            restore()
            self.model = None

    def __enter__(self) -> "FinetuneResult":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def split_validation(examples: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """(training, validation): a seeded ``int(fraction · n)`` of ``examples`` (at least one) held out.

    Paper A's runs take the validation split from the dataset's own split and cap it at 20 % of the
    training examples (scripts/base_model.py:171-173); a tunewise pool usually has no such split, so
    it is held out of the examples given. Pass ``validation=`` to :func:`finetune` to use your own.
    """
    if len(examples) < 2:
        raise TunewiseError(f"{len(examples)} example cannot be split into training and validation",
                            field="eval_steps", fix="fine-tune on 2 or more examples, or leave --eval-steps out")
    order = random.Random(seed).sample(range(len(examples)), len(examples))
    held = max(1, int(fraction * len(examples)))
    return [examples[i] for i in sorted(order[held:])], [examples[i] for i in sorted(order[:held])]


def encode_training_set(tokenizer, examples: Sequence, config: FinetuneConfig, context: int | None):
    """Tokenise labelled examples for fine-tuning, fitted to ``config.max_seq_length`` and the
    model's ``context``: a too-long example is refused unless ``config.truncate``; with it, the
    examples cut before their response are left out and reported, and a set where none keeps a
    response token is refused (:func:`tunewise.model.lengths.check_training_lengths`).

    Returns ``(encoded, lengths)``: the examples that train, and the
    :class:`~tunewise.model.lengths.TrainingLengths` report.
    """
    from tunewise.model.lengths import check_training_lengths

    limit = config.max_seq_length if context is None else min(config.max_seq_length, context)
    limit_name = (f"--max-seq-length {config.max_seq_length}" if limit == config.max_seq_length
                  else f"the model's {context}-token context")
    prompts = encode_prompts(tokenizer, [e.prompt for e in examples], examples)
    encoded = [encode_example(tokenizer, e.prompt, e.response, limit, prompt_ids=p)
               for e, p in zip(examples, prompts)]
    lengths = check_training_lengths([e.full_length for e in encoded], [e.completion_tokens for e in encoded],
                                     list(examples), limit, limit_name, config.truncate)
    return [e for e in encoded if e.completion_tokens], lengths


def finetune(
    loaded_model,
    examples: Sequence,
    config: FinetuneConfig | None = None,
    output_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    *,
    validation: Sequence | None = None,
    dtype: str | None = "auto",
    sft_overrides: Mapping[str, Any] | None = None,
    quantization_hook: Callable[[Any], Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune ``loaded_model`` on ``examples`` (labelled :class:`~tunewise.data.pool.Example` s) with TRL.

    Parameters
    ----------
    loaded_model:
        A :class:`~tunewise.model.load.LoadedModel`. The adapter goes onto its model in place;
        the result's :meth:`~FinetuneResult.release` takes it off again.
    config:
        Hyperparameters (defaults: :class:`FinetuneConfig`).
    output_dir:
        When given, the adapter (the whole model for ``method="full"``), the config and the
        training log are saved there (atomically: the folder appears complete or not at all).
    progress:
        Called after every optimizer step with ``(step, total_steps, loss)``.
    validation:
        Held-out examples for ``config.eval_steps`` (capped at ``validation_fraction`` of the
        training examples, seeded, as paper A does); without them a split of ``examples`` is held out.
    dtype:
        ``auto``, ``float32`` or ``bfloat16``: the compute type (:func:`tunewise.model.precision.resolve_dtype`);
        bf16 runs as mixed precision (autocast) over the model's own weights.
    sft_overrides:
        ``SFTConfig`` fields that win over the ones tunewise derives (:func:`read_sft_overrides`).
    quantization_hook:
        Called with the model before the adapter is attached (e.g. PEFT's
        ``prepare_model_for_kbit_training`` for a 4-bit model); returns the model to train.
    provenance:
        Facts about the inputs written as given into the saved ``tunewise_adapter.json`` (e.g.
        the pool file and ``{"columns": ...}``, its field mapping).

    Raises :class:`~tunewise.errors.TunewiseError` for no examples, unlabelled examples, an example
    with no response token left after truncation, adapters that cannot attach, a model that already
    carries a tunewise adapter, and a loss that turns non-finite (nothing is saved then).
    """
    from tunewise.model.precision import resolve_dtype

    config = config or FinetuneConfig()
    if output_dir is not None:
        check_adapter_output(output_dir)
    _check_labelled(examples, "examples")
    if validation is not None:
        _check_labelled(validation, "validation")
    model = loaded_model.model
    if getattr(model, "_tunewise_fine_tune_attached", False):
        raise TunewiseError("this model already carries a fine-tune that was not released",
                            fix="call .release() on the earlier FinetuneResult (or use `with finetune(...)`)")
    precision = resolve_dtype(dtype, loaded_model.device)
    tokenizer = loaded_model.tokenizer

    train_examples, valid_examples = list(examples), []
    if config.eval_steps is not None:
        if validation is None:
            train_examples, valid_examples = split_validation(train_examples, config.validation_fraction, config.seed)
        else:
            cap = max(1, int(config.validation_fraction * len(train_examples)))
            order = random.Random(config.seed).sample(range(len(validation)), len(validation))
            valid_examples = [validation[i] for i in sorted(order[:cap])]
    from tunewise.model.lengths import context_length

    context = context_length(model, tokenizer)
    encoded, fitted = encode_training_set(tokenizer, train_examples, config, context)
    valid_encoded = encode_training_set(tokenizer, valid_examples, config, context)[0] if valid_examples else []
    log = TrainingLog(examples=len(train_examples), validation_examples=len(valid_examples),
                      truncated_examples=len(fitted.truncated), precision=precision, lengths=fitted.to_dict())

    with _caller_random_state_kept(loaded_model.device), tempfile.TemporaryDirectory(prefix="tunewise-sft-") as work:
        restore = _attach_point(model)
        if config.method == "full":
            restore.snapshot_weights()
            for parameter in model.parameters():
                parameter.requires_grad_(True)
        trained = None
        try:
            if quantization_hook is not None:
                model = quantization_hook(model)
            trainer = _build_trainer(model, tokenizer, encoded, valid_encoded, config, precision, work,
                                     sft_overrides, log, progress, loaded_model.device)
            trained = trainer.model
            started = time.perf_counter()
            with _peft_deprecation_silenced(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                trainer.train()
            log.seconds = time.perf_counter() - started
            if config.eval_steps is not None:
                log.best_step = _checkpoint_step(trainer.state.best_model_checkpoint)
            # Under mixed precision accelerate wraps forward in autocast; the result computes in the
            # loaded model's own dtype, like the base model it is compared with.
            trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
            trained.eval()
            del trainer
            adapter_dir = None
            if output_dir is not None:
                adapter_dir = save_adapter(trained, output_dir, loaded_model, config, log, provenance)
        except BaseException:
            restore(trained)
            raise
    result = FinetuneResult(model=trained, log=log, config=config, adapter_dir=adapter_dir)
    result._restore = lambda: restore(trained)
    model._tunewise_fine_tune_attached = True
    return result


def _check_labelled(examples: Sequence, name: str) -> None:
    if not examples:
        raise TunewiseError(f"there are no {name} to fine-tune on", field=name,
                            fix="pass a non-empty pool or selection")
    unlabelled = [example.id for example in examples if example.response is None]
    if unlabelled:
        raise TunewiseError(f"{len(unlabelled)} of {len(examples)} {name} have no response (first: {unlabelled[0]})",
                            field="response", fix="fine-tune on a labelled pool")



def _build_trainer(model, tokenizer, encoded, valid_encoded, config, precision, work, sft_overrides, log,
                   progress, device):
    """An ``SFTTrainer`` over pre-tokenised examples, with tunewise's step log and loss check."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    def dataset(rows):
        return Dataset.from_dict({
            "input_ids": [row.input_ids for row in rows],
            "completion_mask": [[int(label != IGNORE_INDEX) for label in row.labels] for row in rows],
        })

    args = config.to_sft_config(work, bf16=precision == "bfloat16", use_cpu=device.type == "cpu",
                                overrides=sft_overrides)
    peft_config = None
    if config.method == "lora":
        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=config.target_modules_list(), task_type="CAUSAL_LM")
    step_log = _step_log(log, progress)
    callbacks = [step_log]
    if config.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer_class = _counting_trainer_class(SFTTrainer)
    try:
        with _peft_deprecation_silenced(), _quiet_datasets():
            trainer = trainer_class(model=model, args=args, train_dataset=dataset(encoded),
                                    eval_dataset=dataset(valid_encoded) if valid_encoded else None,
                                    processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    except ValueError as error:
        if "target modules" in str(error).lower() or "target_modules" in str(error):
            raise TunewiseError(f"cannot attach LoRA adapters ({error})", field="target_modules",
                                fix="use --target-modules all-linear or names of the model's linear layers") from None
        raise
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    # The library never prints: progress reaches the caller through ``progress`` only.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.tunewise_log = log
    step_log.trainer = trainer
    return trainer


def _counting_trainer_class(base):
    """``SFTTrainer`` that also counts what each optimizer step saw: examples, tokens, padding, loss."""

    class CountingSFTTrainer(base):
        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            log = self.tunewise_log
            for batch in batches:
                if "attention_mask" in batch:
                    log.examples_seen += int(batch["input_ids"].shape[0])
                    log.tokens_seen += int(batch["attention_mask"].sum())
                else:  # padding-free: one row, each example starting at position 0
                    log.examples_seen += int((batch["position_ids"] == 0).sum())
                    log.tokens_seen += int(batch["input_ids"].numel())
                log.positions_seen += int(batch["input_ids"].numel())
            self._tunewise_step_tokens = int(sum((b["labels"] != IGNORE_INDEX).sum() for b in batches))
            self._tunewise_step_loss = 0.0
            self._tunewise_step_lr = self.lr_scheduler.get_last_lr()[0]
            return batches, num_items

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            self._tunewise_step_loss += float(loss)
            return loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not _completion_loss_applies(self):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            from tunewise.model.training_loss import completion_loss

            return completion_loss(model, inputs, num_items_in_batch)

    return CountingSFTTrainer


def _completion_loss_applies(trainer) -> bool:
    """Whether :func:`tunewise.model.training_loss.completion_loss` replaces TRL's loss: on the CPU in one process, for the plain
    negative log-likelihood (no ``compute_loss_func``, label smoothing, DFT or MoE auxiliary loss).

    TRL 1.16's fused head scores only the completion positions where Triton runs (CUDA, XPU); elsewhere it
    scores every position, prompt and padding included, and folds entropy and top-1 statistics over the
    whole vocabulary into each step in fp32 (``trl/trainer/utils.py``, ``add_fused_lm_head``). On
    this CPU that was 25–31 % of a bf16 step's time, and bf16 training ran 1.45× fp32 where it now runs
    1.70× (BENCHMARKS.md, "Fine-tuning on TRL", issue 15's profile).
    """
    args = trainer.args
    # Several processes would need TRL's scaling of the loss across ranks; leave those to TRL.
    return (args.device.type == "cpu" and trainer.accelerator.num_processes == 1
            and trainer.compute_loss_func is None and trainer.label_smoother is None
            and args.loss_type == "nll" and not getattr(trainer, "aux_loss_enabled", False))


def _step_log(log: TrainingLog, progress):
    """The step-log callback, its class built on first use (importing this module imports no transformers)."""
    global _STEP_LOG_CLASS
    if _STEP_LOG_CLASS is None:
        _STEP_LOG_CLASS = _make_step_log()
    return _STEP_LOG_CLASS(log, progress)


_STEP_LOG_CLASS = None


def _make_step_log():
    from transformers import TrainerCallback

    from tunewise.model.host_memory import release_freed_memory

    class StepLog(TrainerCallback):
        """Records each optimizer step (exact loss, learning rate, completion tokens) and each
        evaluation; raises on a non-finite loss, so training stops and nothing is saved."""

        def __init__(self, log: TrainingLog, progress) -> None:
            self.log, self.progress, self.started, self.trainer = log, progress, time.perf_counter(), None

        def on_step_end(self, args, state, control, **kwargs):
            trainer = self.trainer
            loss = trainer._tunewise_step_loss
            _refuse_non_finite(loss, "training loss", state.global_step)
            self.log.steps.append({
                "step": state.global_step,
                "epoch": int(state.epoch - 1e-9) if state.epoch else 0,
                "loss": round(loss, 6),
                "learning_rate": trainer._tunewise_step_lr,
                "completion_tokens": trainer._tunewise_step_tokens,
                "seconds": round(time.perf_counter() - self.started, 3),
            })
            if self.progress is not None:
                self.progress(state.global_step, state.max_steps, loss)
            # Each step's activations are freed by now; glibc would keep their pages (host_memory).
            release_freed_memory()
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "eval_loss" in logs:
                _refuse_non_finite(float(logs["eval_loss"]), "validation loss", state.global_step)
                self.log.evaluations.append({"step": state.global_step, "eval_loss": float(logs["eval_loss"])})
            return control

    return StepLog


def _refuse_non_finite(value: float, what: str, step: int) -> None:
    if not math.isfinite(value):
        raise TunewiseError(f"the {what} became {value} at step {step}; training stopped and no adapter was saved",
                            field="learning_rate",
                            fix="lower --learning-rate (or --lora-alpha), train with --dtype float32, or check the examples")


def _checkpoint_step(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    return int(Path(checkpoint).name.rpartition("-")[2])


def _attach_point(model) -> Callable[[Any], None]:
    """Record what training changes on ``model``; the returned function undoes it.

    Called with the trained model (a ``PeftModel`` for LoRA) it removes the adapter layers
    (``unload``: nothing is merged into the base weights); for full fine-tuning it restores the
    weights from a CPU snapshot. Either way it also undoes what the trainer set on the model:
    TRL's fused-head ``forward``, gradient checkpointing and its input hook, ``requires_grad``,
    train mode.
    """
    patched_forward = "forward" in vars(model)
    checkpointing = _checkpointing(model)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    snapshot: dict | None = None

    def snapshot_weights() -> None:
        nonlocal snapshot
        snapshot = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}

    def restore(trained) -> None:
        from peft import PeftModel

        if isinstance(trained, PeftModel):
            with _peft_deprecation_silenced():
                trained.unload()
        if snapshot is not None:
            model.load_state_dict(snapshot)
        if "forward" in vars(model) and not patched_forward:
            del model.forward
        if not checkpointing and _checkpointing(model):
            model.gradient_checkpointing_disable()
            if hasattr(model, "disable_input_require_grads"):
                model.disable_input_require_grads()
        for name, p in model.named_parameters():
            if name in requires_grad:
                p.requires_grad_(requires_grad[name])
        model.eval()
        with contextlib.suppress(AttributeError):
            del model._tunewise_fine_tune_attached

    restore.snapshot_weights = snapshot_weights
    return restore


def _checkpointing(model) -> bool:
    # transformers 5 renamed the property (the old name warns); read whichever exists.
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if name in dir(type(model)):
            return bool(getattr(model, name))
    return False


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars from ``datasets`` while the trainer prepares the examples."""
    from datasets.utils import logging as datasets_logging

    enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            datasets_logging.enable_progress_bar()


@contextlib.contextmanager
def _caller_random_state_kept(device):
    """Training seeds torch, numpy and ``random`` globally (transformers' ``set_seed``); give the
    caller's states back afterwards."""
    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


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


def save_adapter(trained, output_dir: str | os.PathLike, loaded_model, config: FinetuneConfig, log: TrainingLog,
                 provenance: Mapping[str, Any] | None = None) -> Path:
    """Write the adapter (the whole model and its tokenizer for full fine-tuning) with its provenance
    (``provenance`` added as given) into ``output_dir``, replacing it whole or not at all."""
    from tunewise import __version__
    from tunewise.model.load import model_summary

    check_adapter_output(output_dir)
    info = {
        "tunewise_version": __version__,
        **model_summary(loaded_model),
        "finetune_config": asdict(config),
        "training": log.to_dict(),
        **(provenance or {}),
    }
    with atomic_directory(output_dir) as staging:
        with _peft_deprecation_silenced():
            trained.save_pretrained(staging)
        if config.method == "full":
            loaded_model.tokenizer.save_pretrained(staging)
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
    if not adapter_dir.exists():
        raise TunewiseError("no such folder", file=str(adapter_dir), field="adapter", fix=fix)
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
    """The loaded model with the saved LoRA adapter attached in place (eval mode), as a ``PeftModel``.

    No copy of the base model is made; ``.unload()`` on the result takes the adapter off again.
    Refuses an adapter trained on a different base model than ``loaded_model``, a damaged folder
    (:func:`read_adapter_info`), and the folder of a full fine-tune (load that with ``--model FOLDER``).
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    info_path = adapter_dir / ADAPTER_INFO_FILE
    if info_path.is_file() and not (adapter_dir / "adapter_config.json").exists() \
            and (adapter_dir / "model.safetensors").exists():
        raise TunewiseError("this folder holds a fully fine-tuned model, not an adapter", file=str(adapter_dir),
                            fix=f"pass it as the model: --model {adapter_dir}")
    info = read_adapter_info(adapter_dir)
    trained_on = _base_fingerprint(info.get("model_fingerprint", ""))
    if trained_on != _base_fingerprint(loaded_model.fingerprint):
        raise TunewiseError(
            f"the adapter was trained on model '{info.get('model')}' ({trained_on}), "
            f"not on '{loaded_model.name}' ({_base_fingerprint(loaded_model.fingerprint)})",
            file=adapter_dir, field="model",
            fix=f"drop --model (the adapter's recorded base model is then used), or pass --model {info.get('model')}",
        )
    try:
        with _peft_deprecation_silenced():
            model = PeftModel.from_pretrained(loaded_model.model, adapter_dir)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise TunewiseError(f"cannot load the adapter ({type(error).__name__}: {error})", file=str(adapter_dir),
                            fix="train it again with `tunewise finetune -o`") from None
    model.eval()
    return model


@contextlib.contextmanager
def _peft_deprecation_silenced():
    """PEFT reads a transformers property deprecated for v6: a warning no user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*", category=FutureWarning)
        yield


def _base_fingerprint(fingerprint: str) -> str:
    """The fingerprint without its dtype suffix: an adapter trained in bf16 applies in fp32 too."""
    return fingerprint.rsplit(":", 1)[0]


__all__ = [
    "BATCHING",
    "MAX_SEED",
    "FinetuneConfig",
    "FinetuneResult",
    "PROFILES",
    "TrainingLog",
    "check_adapter_output",
    "encode_training_set",
    "finetune",
    "load_adapter",
    "read_adapter_info",
    "read_sft_overrides",
    "save_adapter",
    "split_validation",
]
