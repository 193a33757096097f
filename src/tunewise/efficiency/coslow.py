"""CoS-Low: how alike the gradients of a task's least confident examples are (paper A, DESIGN.md §2).

1. The model answers every prompt of an unlabelled pool greedily; its confidence on a prompt is
   the mean probability of the tokens it chose (computed by the backend).
2. :func:`lowest_confidence_prompts` samples k = 32 prompts from the least confident 10 %: the
   only examples a person has to label.
3. :func:`coslow` takes the gradient of each labelled example's response loss through a fresh LoRA
   adapter (B zero-initialised, A seeded). With B = 0 the ``lora_B`` gradient of a layer is its
   full weight gradient times the random matrix Aᵀ, i.e. a random projection of it; the
   gradients of all layers are concatenated into one vector per example.
4. CoS-Low is the median cosine similarity over the k(k − 1)/2 pairs.

Gradients are computed one example at a time in fp32 and moved to CPU at once, so device memory
stays that of a single example whatever k is.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

from tunewise.errors import TunewiseError
from tunewise.model.chat import render_chat
from tunewise.model.lengths import check_fits, context_length

DEFAULT_K = 32
DEFAULT_FRACTION = 0.1
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def minimum_pool_size(k: int = DEFAULT_K, fraction: float = DEFAULT_FRACTION) -> int:
    """The smallest pool whose lowest-confidence ``fraction`` holds ``k`` prompts (320 by default)."""
    return math.ceil(k / fraction - 1e-9)


def lowest_confidence_prompts(
    confidences: Sequence[float],
    k: int = DEFAULT_K,
    fraction: float = DEFAULT_FRACTION,
    seed: int = 0,
    allow_small_pool: bool = False,
) -> list[int]:
    """Positions of ``k`` prompts sampled (seeded, without replacement) from the least confident
    ``fraction`` of the pool, least confident first.

    The pool must hold at least k / fraction prompts (320 by default). With ``allow_small_pool``
    a smaller pool is accepted and the sample is drawn from its k least confident prompts, which
    departs from the paper's protocol.
    """
    import numpy as np

    scores = np.asarray(confidences, dtype=float)
    if scores.ndim != 1 or not np.all(np.isfinite(scores)):
        raise TunewiseError("confidences must be one finite number per prompt", field="confidence",
                            fix="score the pool again")
    if not 0 < fraction <= 1:
        raise TunewiseError(f"the fraction {fraction} is not in (0, 1]", field="fraction", fix="use e.g. 0.1")
    if k < 2:
        raise TunewiseError(f"CoS-Low compares pairs, so it needs k >= 2 examples, got {k}", field="k",
                            fix="use the default k = 32")
    needed = minimum_pool_size(k, fraction)
    if len(scores) < needed and not allow_small_pool:
        raise TunewiseError(
            f"{len(scores)} prompts available, {needed} needed: CoS-Low samples {k} prompts from the "
            f"least confident {fraction:.0%} of the pool",
            field="pool",
            fix=f"add unlabelled prompts of this task (at least {needed}), or accept a smaller pool "
            f"(--allow-small-pool) and sample from its {k} least confident prompts",
        )
    if len(scores) < k:
        raise TunewiseError(f"{len(scores)} prompts available, {k} requested", field="pool",
                            fix=f"give at least {k} prompts")
    segment_size = max(k, math.floor(fraction * len(scores) + 1e-9))
    least_confident = np.argsort(scores, kind="mergesort")[:segment_size]
    chosen = np.random.default_rng(seed).choice(segment_size, size=k, replace=False)
    return [int(least_confident[i]) for i in sorted(chosen)]


def coslow(
    model,
    tokenizer,
    prompts: Sequence[Sequence[dict]],
    responses: Sequence[str],
    rank: int = 64,
    alpha: int = 32,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
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

    Returns
    -------
    dict
        ``coslow`` (the median), ``cosines`` (the k(k − 1)/2 pairwise values, pair (i, j) with
        i < j in row order), ``n`` (k), ``rank``, ``alpha``, ``dimension`` (length of a gradient
        vector), ``seconds``, ``peak_memory`` (bytes) and ``peak_memory_kind``
        (``cuda_max_allocated`` on a GPU, else the process's peak resident memory).
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
    for index, vector in enumerate(lora_gradient_vectors(model, tokenizer, prompts, responses, rank, alpha, seed)):
        norm = torch.linalg.vector_norm(vector)
        if norm == 0:
            raise TunewiseError(f"example {index + 1} has a zero gradient", field="responses",
                                fix="check that its response is not empty")
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
        "n": count,
        "rank": rank,
        "alpha": alpha,
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
) -> Iterator:
    """Yield, one example at a time, the concatenated ``lora_B`` gradient as a CPU fp32 vector.

    A fresh LoRA adapter is attached to every attention and MLP projection for the duration and
    removed when the generator finishes or is closed; the model's own weights are never updated.
    """
    import torch

    if next(model.parameters()).dtype != torch.float32:
        raise TunewiseError(
            f"CoS-Low gradients are taken in float32, but the model is {next(model.parameters()).dtype}",
            field="dtype",
            fix="load the model with dtype='fp32'",
        )
    device = next(model.parameters()).device
    encoded = [_encode(tokenizer, prompt, response, f"CoS-Low example {index + 1}")
               for index, (prompt, response) in enumerate(zip(prompts, responses))]
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


def _encode(tokenizer, prompt: Sequence[dict], response: str, source=None):
    """Token ids of chat-templated prompt + response + end-of-sequence; labels mask the prompt."""
    import torch

    if tokenizer.eos_token_id is None:
        raise TunewiseError("the tokenizer has no end-of-sequence token", field="model",
                            fix="use a tokenizer that defines eos_token")
    prompt_text = render_chat(tokenizer, prompt, add_generation_prompt=True, source=source)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = torch.tensor([prompt_ids + response_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + response_ids])
    return input_ids, labels


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
        target_modules=list(LORA_TARGET_MODULES),
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
                                fix="use a model with q/k/v/o and gate/up/down projections (Llama-style)") from None
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


__all__ = ["DEFAULT_FRACTION", "DEFAULT_K", "coslow", "lora_gradient_vectors", "lowest_confidence_prompts",
           "minimum_pool_size"]
