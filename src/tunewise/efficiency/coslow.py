"""CoS-Low: how alike the gradients of a task's least confident examples are (paper A, DESIGN.md §2).

Line references are to paper A's released code, r-three/dataefficiency ``utils/calculate_coslow.py``.

1. The model answers every prompt of an unlabelled pool greedily; its confidence on a prompt is
   the mean probability of the answer tokens it chose (the backend; ``:163-195``).
2. :func:`lowest_confidence_prompts` samples k = 32 prompts from the least confident 10 % (``:72-88``):
   the only examples a person has to label. :func:`random_prompts` draws the comparison sample
   for CoS-Rand.
3. :func:`coslow` takes the gradient of each labelled example's answer loss through a fresh LoRA
   adapter (B zero-initialised, A seeded; ``:210-220``) on every linear projection of the
   attention and MLP blocks (:func:`lora_target_modules`). The loss covers the answer tokens only:
   no end, padding, end-of-turn or bare-newline ids (``:226-232``; :func:`gradient_example`).
   With B = 0 the ``lora_B`` gradient of a layer is its full weight gradient times the random
   matrix Aᵀ, i.e. a random projection of it; the gradients of all layers are concatenated into
   one vector per example (the global cosine of ``:91-115``).
4. CoS-Low is the median cosine similarity over the k(k − 1)/2 pairs (``:118-138``). Beside it
   :func:`coslow` reports the mean gradient norm, one of the predictors paper A compares with.

Gradients are computed one example at a time in fp32 and moved to CPU at once, so device memory
stays that of a single example whatever k is.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

from tunewise.errors import TunewiseError
from tunewise.model.chat import IGNORE_INDEX
from tunewise.model.lengths import check_fits, context_length

DEFAULT_K = 32
DEFAULT_FRACTION = 0.1
CONFIDENCE_METRICS = ("confidence", "confidence_ppl")


def minimum_pool_size(k: int = DEFAULT_K, fraction: float = DEFAULT_FRACTION) -> int:
    """The smallest pool whose lowest-confidence ``fraction`` holds ``k`` prompts (320 by default)."""
    return math.ceil(k / fraction - 1e-9)


def lowest_confidence_prompts(
    confidences: Sequence[float],
    k: int = DEFAULT_K,
    fraction: float = DEFAULT_FRACTION,
    seed: int = 0,
    allow_small_pool: bool = False,
    metric: str = "confidence",
) -> list[int]:
    """Positions of ``k`` prompts sampled (seeded, without replacement) from the least confident
    ``fraction`` of the pool, least confident first.

    ``metric="confidence"`` (paper A's ``avg_confidence``) ranks the lowest values first;
    ``"confidence_ppl"`` (its ``ppl``) the highest (``calculate_coslow.py:79-82``). A prompt the model
    answered with no answer token (confidence 0, perplexity NaN; see
    :func:`tunewise.model.base.answer_confidence`) is left out, as paper A's NaN is left out of every
    decile by ``pandas.qcut``.
    The pool must hold at least k / fraction scored prompts (320 by default). With
    ``allow_small_pool`` a smaller pool is accepted and the sample is drawn from its k least
    confident prompts, which departs from the paper's protocol.
    """
    import numpy as np

    if metric not in CONFIDENCE_METRICS:
        raise TunewiseError(f"unknown confidence metric '{metric}'", field="confidence_metric",
                            fix=f"use one of {', '.join(CONFIDENCE_METRICS)}")
    values = np.asarray(confidences, dtype=float)
    if values.ndim != 1 or np.isinf(values).any():
        raise TunewiseError("confidences must be one number per prompt", field="confidence",
                            fix="score the pool again")
    answered = np.isfinite(values) & (values > 0) if metric == "confidence" else np.isfinite(values)
    scored = np.flatnonzero(answered)
    scores = values[scored] if metric == "confidence" else -values[scored]
    if not 0 < fraction <= 1:
        raise TunewiseError(f"the fraction {fraction} is not in (0, 1]", field="fraction", fix="use e.g. 0.1")
    if k < 2:
        raise TunewiseError(f"CoS-Low compares pairs, so it needs k >= 2 examples, got {k}", field="k",
                            fix="use the default k = 32")
    needed = minimum_pool_size(k, fraction)
    unscored = len(values) - len(scores)
    available = f"{len(scores)} prompts available" + (
        f" ({unscored} more were answered with no answer token)" if unscored else "")
    if len(scores) < needed and not allow_small_pool:
        raise TunewiseError(
            f"{available}, {needed} needed: CoS-Low samples {k} prompts from the "
            f"least confident {fraction:.0%} of the pool",
            field="pool",
            fix=f"add unlabelled prompts of this task (at least {needed}), or accept a smaller pool "
            f"(--allow-small-pool) and sample from its {k} least confident prompts",
        )
    if len(scores) < k:
        raise TunewiseError(f"{available}, {k} requested", field="pool",
                            fix=f"give at least {k} prompts")
    segment_size = max(k, math.floor(fraction * len(scores) + 1e-9))
    least_confident = np.argsort(scores, kind="mergesort")[:segment_size]
    chosen = np.random.default_rng(seed).choice(segment_size, size=k, replace=False)
    return [int(scored[least_confident[i]]) for i in sorted(chosen)]


def random_prompts(count: int, k: int = DEFAULT_K, seed: int = 0) -> list[int]:
    """Positions of ``k`` prompts drawn uniformly (seeded, without replacement) from ``count``, in
    pool order: the sample CoS-Rand is measured on, paper A's control for CoS-Low (README:
    "this relationship holds specifically for low-confidence examples, not random examples")."""
    import numpy as np

    if k < 2:
        raise TunewiseError(f"CoS-Rand compares pairs, so it needs k >= 2 examples, got {k}", field="k",
                            fix="use the default k = 32")
    if count < k:
        raise TunewiseError(f"{count} prompts available, {k} requested", field="pool", fix=f"give at least {k} prompts")
    # A generator separate from the low-confidence sample's, so the two samples are independent.
    return sorted(int(i) for i in np.random.default_rng([seed, 1]).choice(count, size=k, replace=False))


def coslow(
    model,
    tokenizer,
    prompts: Sequence[Sequence[dict]],
    responses: Sequence[str],
    rank: int = 64,
    alpha: int = 32,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    include_eos: bool = False,
) -> dict:
    """CoS-Low of labelled examples: the median pairwise cosine of their LoRA-B gradients.

    Parameters
    ----------
    model, tokenizer:
        A transformers causal LM in float32 (any device) and its tokenizer, which needs a chat
        template. The model is left as it was found: the adapter is removed afterwards.
    prompts, responses:
        The k labelled examples: chat messages (``[{role, content}]``) and the answer to each.
    rank, alpha, seed:
        The LoRA adapter: rank 64 and alpha 32 as in the paper; ``seed`` draws its A matrices.
    progress:
        Called with the number of examples done after each one.
    include_eos:
        Keep the end-of-turn token in the loss. Off by default, as in paper A, whose loss covers
        the answer tokens only (``calculate_coslow.py:226-232``); on, every example shares one
        more, nearly identical, loss term, which raises all cosines.

    Returns
    -------
    dict
        ``coslow`` (the median), ``cosines`` (the k(k − 1)/2 pairwise values, pair (i, j) with
        i < j in row order), ``grad_norm`` (mean L2 norm of the per-example gradient vectors),
        ``n`` (k), ``rank``, ``alpha``, ``include_eos``, ``target_modules`` (the adapted module
        names), ``dimension`` (length of a gradient vector), ``seconds``, ``peak_memory`` (bytes)
        and ``peak_memory_kind`` (``cuda_max_allocated`` on a GPU, else the process's peak
        resident memory).
    """
    import numpy as np
    import torch

    if len(prompts) != len(responses):
        raise TunewiseError(f"{len(prompts)} prompts but {len(responses)} responses", field="responses",
                            fix="give one response per prompt")
    if len(prompts) < 2:
        raise TunewiseError(f"CoS-Low compares pairs, so it needs at least 2 labelled examples, got {len(prompts)}",
                            field="responses", fix="label the examples in to_label.jsonl")
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    count = len(prompts)
    unit_vectors = None
    gram = np.zeros((count, count))
    norms = []
    vectors = lora_gradient_vectors(model, tokenizer, prompts, responses, rank, alpha, seed, include_eos=include_eos)
    for index, vector in enumerate(vectors):
        norm = torch.linalg.vector_norm(vector)
        if norm == 0:
            raise TunewiseError(f"example {index + 1} has a zero gradient", field="responses",
                                fix="check that its response is not empty")
        norms.append(float(norm))
        vector /= norm
        if unit_vectors is None:
            unit_vectors = torch.empty((count, vector.numel()), dtype=torch.float32)
        gram[:index, index] = (unit_vectors[:index] @ vector).double().numpy()
        unit_vectors[index] = vector
        if progress is not None:
            progress(index + 1)
    cosines = gram[np.triu_indices(count, k=1)]
    return {
        "coslow": float(np.median(cosines)),
        "cosines": [float(c) for c in cosines],
        "grad_norm": float(np.mean(norms)),
        "n": count,
        "rank": rank,
        "alpha": alpha,
        "include_eos": include_eos,
        "target_modules": lora_target_modules(model),
        "dimension": int(unit_vectors.shape[1]),
        "seconds": time.perf_counter() - started,
        **_peak_memory(device),
    }


def lora_gradient_vectors(
    model,
    tokenizer,
    prompts: Sequence[Sequence[dict]],
    responses: Sequence[str],
    rank: int = 64,
    alpha: int = 32,
    seed: int = 0,
    include_eos: bool = False,
) -> Iterator:
    """Yield, one example at a time, the concatenated ``lora_B`` gradient as a CPU fp32 vector.

    A fresh LoRA adapter is attached to every attention and MLP projection for the duration and
    removed when the generator finishes or is closed; the model's own weights are never updated.
    The loss is over :func:`gradient_example`'s labels (answer tokens only unless ``include_eos``).
    """
    import torch

    if next(model.parameters()).dtype != torch.float32:
        raise TunewiseError(
            f"CoS-Low gradients are taken in float32, but the model is {next(model.parameters()).dtype}",
            field="dtype",
            fix="load the model with dtype='fp32'",
        )
    device = next(model.parameters()).device
    encoded = []
    for number, (prompt, response) in enumerate(zip(prompts, responses), start=1):
        input_ids, labels = gradient_example(tokenizer, prompt, response, include_eos,
                                             source=f"CoS-Low example {number}")
        if all(label == IGNORE_INDEX for label in labels):
            raise TunewiseError(f"example {number} has no answer token (its response {response!r} is empty or only "
                                "newlines)", field="responses", fix="give it a real answer")
        encoded.append((torch.tensor([input_ids]), torch.tensor([labels])))
    context = context_length(model, tokenizer)
    check_fits([ids.shape[1] for ids, _ in encoded], context, [f"CoS-Low example {i + 1}" for i in range(len(encoded))],
               what="prompt + response", limit_name=f"the model's {context}-token context")
    peft_model, restore = _attach_lora(model, rank, alpha, seed)
    try:
        lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
        dimension = sum(p.numel() for p in lora_b)
        for input_ids, labels in encoded:
            output = peft_model(input_ids=input_ids.to(device), labels=labels.to(device))
            output.loss.backward()
            vector = torch.empty(dimension, dtype=torch.float32)
            offset = 0
            for parameter in lora_b:
                size = parameter.numel()
                vector[offset:offset + size] = parameter.grad.reshape(-1).cpu()
                offset += size
            peft_model.zero_grad(set_to_none=True)
            del output
            yield vector
    finally:
        restore(peft_model)


def gradient_example(tokenizer, prompt: Sequence[dict], response: str,
                     include_eos: bool = False, source=None) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one example's CoS-Low loss.

    The tokens are the fine-tune's (:func:`tunewise.model.chat.encode_example`: prompt, response,
    end-of-turn token); the labels keep the answer tokens only, masking every id of
    :func:`tunewise.model.chat.answer_mask_ids` (end, padding, end-of-turn, bare newline), as paper
    A's ``mask_non_answer_tokens`` does before the backward pass (``calculate_coslow.py:229-232``).
    ``include_eos`` keeps the end-of-turn token. Paper A feeds no end token at all; one that is fed
    but masked changes nothing, as no earlier position attends to it.
    """
    from tunewise.model.chat import answer_labels, answer_mask_ids, encode_example, end_of_turn_id

    encoded = encode_example(tokenizer, prompt, response, source=source)
    keep = (end_of_turn_id(tokenizer),) if include_eos else ()
    return encoded.input_ids, answer_labels(encoded.labels, answer_mask_ids(tokenizer), keep=keep)


def lora_target_modules(model) -> list[str]:
    """Names of the linear projections inside the model's transformer blocks, whatever the
    architecture calls them: every ``torch.nn.Linear`` (or GPT-2's ``Conv1D``) except the output
    head. For Llama-style models these are exactly paper A's seven, ``q/k/v/o_proj`` and
    ``gate/up/down_proj`` (``calculate_coslow.py:216``); GPT-2 gives ``c_attn, c_proj, c_fc``,
    GPT-NeoX ``query_key_value, dense, dense_h_to_4h, dense_4h_to_h``.
    """
    import torch

    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        linear_types += (Conv1D,)
    except ImportError:  # pragma: no cover - every supported transformers has it
        pass
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, linear_types) and module is not head and "lora_" not in name}
    return sorted(names)


def _attach_lora(model, rank: int, alpha: int, seed: int):
    """Wrap ``model`` in a fresh LoRA adapter; return it and a function that undoes everything."""
    import torch
    from peft import LoraConfig, get_peft_model

    was_training = model.training
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=lora_target_modules(model),
        task_type="CAUSAL_LM",
    )
    device = next(model.parameters()).device
    # Seed A without touching the caller's global random state.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        torch.manual_seed(seed)
        # peft probes a transformers attribute that transformers 5 deprecates; nothing to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as error:
            raise TunewiseError(f"cannot attach a LoRA adapter to this model ({error})", field="model",
                                fix="use a causal language model whose blocks are built of linear layers") from None
    peft_model.eval()

    def restore(wrapped) -> None:
        wrapped.zero_grad(set_to_none=True)
        base = wrapped.unload()
        for name, parameter in base.named_parameters():
            parameter.requires_grad_(requires_grad[name])
        base.train(was_training)

    return peft_model, restore


def _peak_memory(device) -> dict:
    import resource

    import torch

    if device.type == "cuda":
        return {"peak_memory": int(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda_max_allocated"}
    # ru_maxrss is in kilobytes on Linux.
    return {"peak_memory": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "process_max_rss"}


__all__ = ["CONFIDENCE_METRICS", "DEFAULT_FRACTION", "DEFAULT_K", "coslow", "gradient_example",
           "lora_gradient_vectors", "lora_target_modules", "lowest_confidence_prompts", "minimum_pool_size",
           "random_prompts"]
