"""CoS-Low: how alike the gradients of a task's least confident examples are (paper A, DESIGN.md §2).

Line references are to paper A's released code, r-three/dataefficiency ``utils/calculate_coslow.py``.

1. The model answers every prompt of an unlabelled pool greedily; its confidence on a prompt is
   the mean probability of the answer tokens it chose (the backend; ``:163-195``).
2. :func:`lowest_confidence_prompts` samples k = 32 prompts from the least confident 10 % (``:72-88``):
   the only examples a person has to label. :func:`random_prompts` draws the comparison sample
   for CoS-Rand.
3. :func:`coslow` takes the gradient of each labelled example's answer loss through a fresh LoRA
   adapter (B zero-initialised, A seeded; ``:210-220``) on every linear projection of the
   attention and MLP blocks (:func:`tunewise.model.gradients.lora_target_modules`), through the
   model interface's :meth:`~tunewise.model.base.Backend.lora_gradients`. The loss covers the
   answer tokens only: no end, padding, end-of-turn or bare-newline ids (``:226-232``;
   :func:`tunewise.model.chat.gradient_example`).
   With B = 0 the ``lora_B`` gradient of a layer is its full weight gradient times the random
   matrix Aᵀ, i.e. a random projection of it; the gradients of all layers are concatenated into
   one vector per example (the global cosine of ``:91-115``).
4. CoS-Low is the median cosine similarity over the k(k − 1)/2 pairs (``:118-138``). Beside it
   :func:`coslow` reports the mean gradient norm, one of the predictors paper A compares with.

Gradients are computed in the model's own dtype (the LoRA adapter itself is float32, so every
gradient accumulates in float32), several examples per forward and backward pass, each example
with its own loss and gradient all the same (:class:`tunewise.model.gradients.LoraGradients`).
Each is projected at once to ``dimension`` numbers by a seeded random projection (:func:`tunewise.model.gradients.sketch_gradient`; LESS and
TRAK project gradients the same way), so memory does not grow with the model: 32 × 16,384 floats
(2 MiB) where the full ``lora_B`` gradients of an 8B Llama would take about 11 GB. ``dimension=None`` keeps the exact
vectors; bench/coslow_projection.py measures what the projection changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from tunewise.errors import TunewiseError

DEFAULT_K = 32
DEFAULT_FRACTION = 0.1
DEFAULT_DIMENSION = 16384
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
            fix=_unanswered_fix(len(values), unscored, needed) if len(values) >= needed else
            f"add unlabelled prompts of this task (at least {needed}), or accept a smaller pool "
            f"(--allow-small-pool) and sample from its {k} least confident prompts",
        )
    if len(scores) < k:
        raise TunewiseError(f"{available}, {k} requested", field="pool",
                            fix=_unanswered_fix(len(values), unscored, k) if len(values) >= k
                            else f"give at least {k} prompts")
    segment_size = max(k, math.floor(fraction * len(scores) + 1e-9))
    least_confident = np.argsort(scores, kind="mergesort")[:segment_size]
    chosen = np.random.default_rng(seed).choice(segment_size, size=k, replace=False)
    return [int(scored[least_confident[i]]) for i in sorted(chosen)]


def _unanswered_fix(given: int, unanswered: int, needed: int) -> str:
    """The fix when enough prompts were given but too many got no answer token: more prompts of the
    same kind would not help, a model that answers would."""
    return (f"{given} prompts were given, but the model gave no answer token (only whitespace or end of "
            f"text) for {unanswered} of them, and CoS-Low needs {needed} it answered: use a model that "
            f"answers (e.g. smollm2 or your own; tiny-random does not)")


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
    dimension: int | None = DEFAULT_DIMENSION,
    max_batch_tokens: int | None = None,
) -> dict:
    """CoS-Low of labelled examples: the median pairwise cosine of their LoRA-B gradients.

    Parameters
    ----------
    model, tokenizer:
        A transformers causal LM in any dtype, quantised or not, on any device(s), and its
        tokenizer, which needs a chat template (or the model interface itself,
        :func:`tunewise.model.as_backend`, with no tokenizer). The adapter is attached in place and
        removed afterwards: the model is left as it was found, and never copied.
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
    dimension:
        Project each gradient to this many numbers (:func:`~tunewise.model.gradients.sketch_gradient`,
        seeded by ``seed``);
        ``None`` keeps the full ``lora_B`` gradient (exact, but k × its length in memory).
    max_batch_tokens:
        Tokens per shared forward and backward pass (None: the device's default, fewer for a model
        whose activations would outweigh an eighth of its weights;
        :func:`tunewise.model.gradients.default_batch_tokens`); memory grows with it, the values
        do not change beyond float rounding.

    Returns
    -------
    dict
        ``coslow`` (the median), ``cosines`` (the k(k − 1)/2 pairwise values, pair (i, j) with
        i < j in row order), ``grad_norm`` (mean L2 norm of the per-example full gradients, exact
        even when projected), ``n`` (k), ``rank``, ``alpha``, ``include_eos``, ``target_modules``
        (the adapted module names), ``dimension`` (length of a stored gradient vector),
        ``gradient_dimension`` (length of the full ``lora_B`` gradient), ``projected`` (bool),
        ``projection_std`` (the expected standard deviation of one projected cosine around its
        exact value, √((1 + c²)/d) at c = the median; 0 when exact), ``seconds``, ``peak_memory``
        (bytes) and ``peak_memory_kind`` (``cuda_max_allocated`` on a GPU, else the process's peak
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
    if dimension is not None and dimension < 1:
        raise TunewiseError(f"the projection dimension must be a whole number >= 1, got {dimension}",
                            field="dimension", fix=f"use e.g. {DEFAULT_DIMENSION}, or no projection")
    from tunewise.model import as_backend

    backend = as_backend(model, tokenizer)
    device = backend.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    count = len(prompts)
    unit_vectors = None
    gram = np.zeros((count, count))
    vectors = lora_gradient_vectors(backend, None, prompts, responses, rank, alpha, seed,
                                    include_eos=include_eos, dimension=dimension, max_batch_tokens=max_batch_tokens)
    try:
        for index, vector in enumerate(vectors):
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
    finally:
        vectors.close()  # removes the adapter even when an example is refused half-way
    norms = vectors.norms
    cosines = gram[np.triu_indices(count, k=1)]
    median = float(np.median(cosines))
    stored = int(unit_vectors.shape[1])
    return {
        "coslow": median,
        "cosines": [float(c) for c in cosines],
        "grad_norm": float(np.mean(norms)),
        "n": count,
        "rank": rank,
        "alpha": alpha,
        "include_eos": include_eos,
        "target_modules": vectors.target_modules,
        "dimension": stored,
        "gradient_dimension": vectors.gradient_dimension,
        "projected": dimension is not None,
        "projection_std": math.sqrt((1 + median ** 2) / stored) if dimension is not None else 0.0,
        "seconds": time.perf_counter() - started,
        **_peak_memory(device),
    }


def lora_gradient_vectors(model, tokenizer, prompts: Sequence[Sequence[dict]], responses: Sequence[str],
                          rank: int = 64, alpha: int = 32, seed: int = 0, include_eos: bool = False,
                          dimension: int | None = None, max_batch_tokens: int | None = None):
    """The examples' ``lora_B`` gradients, one at a time, from the model interface's
    :meth:`~tunewise.model.base.Backend.lora_gradients` (``model`` and ``tokenizer`` as
    :func:`tunewise.model.as_backend` takes them): see :class:`tunewise.model.gradients.LoraGradients`."""
    from tunewise.model import as_backend

    return as_backend(model, tokenizer).lora_gradients(
        prompts, responses, rank=rank, alpha=alpha, seed=seed, include_eos=include_eos, dimension=dimension,
        max_batch_tokens=max_batch_tokens,
        sources=[f"CoS-Low example {number}" for number in range(1, len(prompts) + 1)])


def _peak_memory(device) -> dict:
    import resource

    import torch

    if device.type == "cuda":
        return {"peak_memory": int(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda_max_allocated"}
    # ru_maxrss is in kilobytes on Linux.
    return {"peak_memory": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "process_max_rss"}


__all__ = ["CONFIDENCE_METRICS", "DEFAULT_DIMENSION", "DEFAULT_FRACTION", "DEFAULT_K", "coslow",
           "lora_gradient_vectors", "lowest_confidence_prompts", "minimum_pool_size", "random_prompts"]
