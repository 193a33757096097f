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

Gradients are computed one example at a time in the model's own dtype (the LoRA adapter itself
is float32, so every gradient accumulates in float32). Each is projected at once to ``dimension``
numbers by a seeded random projection (:func:`sketch_gradient`; LESS and TRAK project gradients the
same way), so memory does not grow with the model: 32 × 16,384 floats (2 MiB) where the full
``lora_B`` gradients of an 8B Llama would take about 11 GB. ``dimension=None`` keeps the exact
vectors; bench/coslow_projection.py measures what the projection changes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

from tunewise.errors import TunewiseError
from tunewise.model.chat import IGNORE_INDEX
from tunewise.model.lengths import check_fits, context_length
from tunewise.model.load import gradients_through_4bit

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
    dimension: int | None = DEFAULT_DIMENSION,
) -> dict:
    """CoS-Low of labelled examples: the median pairwise cosine of their LoRA-B gradients.

    Parameters
    ----------
    model, tokenizer:
        A transformers causal LM in any dtype, quantised or not, on any device(s), and its
        tokenizer, which needs a chat template. The adapter is attached in place and removed
        afterwards: the model is left as it was found, and never copied.
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
        Project each gradient to this many numbers (:func:`sketch_gradient`, seeded by ``seed``);
        ``None`` keeps the full ``lora_B`` gradient (exact, but k × its length in memory).

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
    device = model.get_input_embeddings().weight.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    count = len(prompts)
    unit_vectors = None
    gram = np.zeros((count, count))
    vectors = lora_gradient_vectors(model, tokenizer, prompts, responses, rank, alpha, seed,
                                    include_eos=include_eos, dimension=dimension)
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
        "target_modules": lora_target_modules(model),
        "dimension": stored,
        "gradient_dimension": vectors.gradient_dimension,
        "projected": dimension is not None,
        "projection_std": math.sqrt((1 + median ** 2) / stored) if dimension is not None else 0.0,
        "seconds": time.perf_counter() - started,
        **_peak_memory(device),
    }


def lora_gradient_vectors(model, tokenizer, prompts: Sequence[Sequence[dict]], responses: Sequence[str],
                          rank: int = 64, alpha: int = 32, seed: int = 0, include_eos: bool = False,
                          dimension: int | None = None) -> "LoraGradients":
    """The examples' ``lora_B`` gradients, one at a time: see :class:`LoraGradients`."""
    return LoraGradients(model, tokenizer, prompts, responses, rank, alpha, seed, include_eos, dimension)


class LoraGradients:
    """Iterate, one example at a time, over the concatenated ``lora_B`` gradients as CPU fp32
    vectors: full (``dimension=None``) or projected to ``dimension`` numbers (:func:`sketch_gradient`).

    A fresh LoRA adapter is attached in place to every attention and MLP projection for the
    duration and removed when the iteration finishes or :meth:`close` is called; the model's own
    weights are never updated nor copied. The loss is over :func:`gradient_example`'s labels
    (answer tokens only unless ``include_eos``). ``gradient_dimension`` is the full gradient's
    length and ``norms`` the exact L2 norm of each full gradient so far (both filled as it goes).
    """

    def __init__(self, model, tokenizer, prompts: Sequence[Sequence[dict]], responses: Sequence[str],
                 rank: int = 64, alpha: int = 32, seed: int = 0, include_eos: bool = False,
                 dimension: int | None = None) -> None:
        import torch

        self.gradient_dimension = 0
        self.norms: list[float] = []
        encoded = []
        for number, (prompt, response) in enumerate(zip(prompts, responses), start=1):
            input_ids, labels = gradient_example(tokenizer, prompt, response, include_eos,
                                                 source=f"CoS-Low example {number}")
            if all(label == IGNORE_INDEX for label in labels):
                raise TunewiseError(f"example {number} has no answer token (its response {response!r} is empty or "
                                    "only newlines)", field="responses", fix="give it a real answer")
            encoded.append((torch.tensor([input_ids]), torch.tensor([labels])))
        context = context_length(model, tokenizer)
        check_fits([ids.shape[1] for ids, _ in encoded], context,
                   [f"CoS-Low example {i + 1}" for i in range(len(encoded))],
                   what="prompt + response", limit_name=f"the model's {context}-token context")
        self._iterator = self._vectors(model, encoded, rank, alpha, seed, dimension)

    def __iter__(self) -> Iterator:
        return self._iterator

    def __next__(self):
        return next(self._iterator)

    def close(self) -> None:
        self._iterator.close()

    def _vectors(self, model, encoded, rank, alpha, seed, dimension):
        device = model.get_input_embeddings().weight.device
        peft_model, restore = _attach_lora(model, rank, alpha, seed)
        try:
            with gradients_through_4bit(peft_model):
                yield from self._per_example(peft_model, encoded, device, seed, dimension)
        finally:
            restore(peft_model)

    def _per_example(self, peft_model, encoded, device, seed, dimension):
        import torch

        lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
        self.gradient_dimension = sum(p.numel() for p in lora_b)
        for input_ids, labels in encoded:
            output = peft_model(input_ids=input_ids.to(device), labels=labels.to(device))
            output.loss.backward()
            gradients = [parameter.grad for parameter in lora_b]
            squares = sum(torch.linalg.vector_norm(g.float()).double() ** 2 for g in gradients)
            self.norms.append(float(squares) ** 0.5)
            if dimension is None:
                vector = torch.cat([g.reshape(-1).float().cpu() for g in gradients])
            else:
                vector = sketch_gradient(gradients, dimension, seed)
            peft_model.zero_grad(set_to_none=True)
            del output, gradients
            yield vector


def sketch_gradient(blocks: Sequence, dimension: int, seed: int = 0):
    """Project a gradient given as blocks (one tensor per module, in a fixed order) to ``dimension``
    numbers with a seeded CountSketch; returns a CPU float32 vector of that length.

    The projection is the sparse form of a Rademacher (Johnson–Lindenstrauss) matrix: each
    coordinate of block b goes to one of ``dimension`` buckets with a random sign, both drawn from
    a generator seeded by (``seed``, b), so every example of a run meets the same projection and
    the d × P matrix is never formed (Charikar, Chen & Farach-Colton 2002; Clarkson & Woodruff
    2013). For two vectors x, y the projected inner product is unbiased with variance
    (‖x‖²‖y‖² + ⟨x, y⟩² − 2 Σᵢ xᵢ²yᵢ²)/d, no more than a dense Gaussian projection's
    (‖x‖²‖y‖² + ⟨x, y⟩²)/d, at O(P) work per example instead of O(dP). LESS and TRAK project
    their gradients to d = 8192 with a dense Rademacher matrix on a GPU (``fast_jl``); the
    sparse form keeps CPU cost linear in the model. Buckets and signs are drawn on each block's
    device, so the projection is the same for a seed on one kind of device.
    """
    import torch

    sketch = None
    for index, block in enumerate(blocks):
        device = block.device
        if sketch is None or sketch.device != device:
            sketch = (torch.zeros(dimension, dtype=torch.float32, device=device) if sketch is None
                      else sketch.to(device))
        generator = torch.Generator(device=device)
        generator.manual_seed(_block_seed(seed, index))
        draws = torch.randint(0, 2 * dimension, (block.numel(),), generator=generator, device=device)
        signs = (draws % 2).to(torch.float32).mul_(2).sub_(1)
        sketch.index_add_(0, draws // 2, block.reshape(-1).to(torch.float32) * signs)
        del draws, signs
    if sketch is None:
        raise TunewiseError("the gradient has no blocks to project", field="model",
                            fix="check that the LoRA adapter reached the model's projections")
    return sketch.cpu()


def _block_seed(seed: int, index: int) -> int:
    """One generator seed per (seed, block), spread so that nearby pairs give unrelated streams."""
    return (seed * 1_000_003 + index * 7_919 + 0x5EED) % (2**63 - 1)


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
    device = model.get_input_embeddings().weight.device
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


__all__ = ["CONFIDENCE_METRICS", "DEFAULT_DIMENSION", "DEFAULT_FRACTION", "DEFAULT_K", "LoraGradients", "coslow",
           "gradient_example", "lora_gradient_vectors", "lora_target_modules", "lowest_confidence_prompts",
           "minimum_pool_size", "random_prompts", "sketch_gradient"]
