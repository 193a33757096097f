"""Per-example gradients through a fresh LoRA adapter, and the seeded projection that keeps them small.

The one backward pass in tunewise outside fine-tuning: :meth:`tunewise.model.hf.HFBackend.lora_gradients`
returns a :class:`LoraGradients`, which CoS-Low (:mod:`tunewise.efficiency.coslow`, paper A) reads one
example at a time. Line references are to paper A's released code, r-three/dataefficiency
``utils/calculate_coslow.py``.

A fresh LoRA adapter (B zero-initialised, A seeded; ``:210-220``) sits on every linear projection of
the attention and MLP blocks (:func:`lora_target_modules`). With B = 0 the ``lora_B`` gradient of a
layer is its full weight gradient times the random matrix Aᵀ, i.e. a random projection of it; the
gradients of all layers are concatenated into one vector per example. Gradients are computed in the
model's own dtype (the adapter itself is float32, so every gradient accumulates in float32); each is
projected at once to ``dimension`` numbers by :func:`sketch_gradient`, so memory does not grow with
the model.

Paper A takes one example per backward pass. Here a batch of examples shares one: the ``lora_B``
gradient of example i is Σₜ gᵢₜ ⊗ aᵢₜ over its tokens t, where a is the input of ``lora_B`` (the
``lora_A`` output) and g the gradient of the loss with respect to the ``lora_B`` output, and the
gradient of a sum of per-example losses with respect to example i's activations is that of its own
loss. So the batch's loss is the sum of each example's own mean cross-entropy, hooks on every
``lora_B`` keep a and catch g during the backward pass, and one einsum per module gives every
example's gradient, projected (or moved to the CPU) before the next module's arrives. This is the
per-example gradient trick of Goodfellow (2015, "Efficient per-example gradient computations") that
Opacus and TRAK use for linear layers.

Memory of a batched pass, beyond the weights: the activations the decoder keeps for its backward
pass (:func:`activation_bytes_per_token` per token; the batch's size follows them,
:func:`default_batch_tokens`), one block of the output head's logits at a time
(:func:`_answer_loss_gradient`) and one number per adapted module for the leaf that stands in for
its output. Freed memory goes back to the system after the forward pass, after the output head and
after the backward pass (:mod:`tunewise.model.host_memory`): glibc otherwise keeps the freed
activations of one phase resident through the next.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Sequence

from tunewise.errors import TunewiseError
from tunewise.model.host_memory import release_freed_memory
from tunewise.model.chat import IGNORE_INDEX, gradient_example, pad_token_id
from tunewise.model.lengths import check_fits, context_length
from tunewise.model.load import gradients_through_4bit

# Most tokens (rows × padded width) per batched backward pass when none is given: on a CPU 512
# tokens run as fast as 2,048 with less memory (BENCHMARKS.md, "CoS-Low's gradients in batches").
# The GPU budget is not measured. Fewer for a model whose activations would outweigh the budget below.
DEFAULT_BATCH_TOKENS = {"cpu": 512, "cuda": 2048}
# The activations a pass keeps for its backward pass (activation_bytes_per_token × tokens) stay under
# the larger of these: 1/8 of the weights' bytes, or 512 MiB (as much as Python, torch and
# transformers take anyway, and what SmolLM2's 512 tokens take in fp32: its batches are unchanged).
# Llama-3.2-1B's shape (1.47 MB a token in bf16) gets 364 tokens instead of 512; an 8B Llama
# (5.5 MB a token, 16 GB of bf16 weights) 364 (BENCHMARKS.md, "A 1B model with its real vocabulary").
ACTIVATION_SHARE_OF_WEIGHTS = 1 / 8
ACTIVATION_FLOOR_BYTES = 512 * 2**20
# The fewest rows the output head runs on in a batched pass (see _batch_inputs).
MIN_HEAD_ROWS = 8


class LoraGradients:
    """Iterate, one example at a time in input order, over the concatenated ``lora_B`` gradients as
    CPU fp32 vectors: full (``dimension=None``, length ``gradient_dimension``) or projected to
    ``dimension`` numbers (:func:`sketch_gradient`); with ``blocks=True``, the full gradient as one
    CPU fp32 tensor per adapted module instead (in a fixed order, the order :func:`sketch_gradient`
    seeds by).

    A fresh LoRA adapter is attached in place to every attention and MLP projection for the
    duration and removed when the iteration finishes or :meth:`close` is called; the model's own
    weights are never updated nor copied. The loss is the mean cross-entropy over
    :func:`tunewise.model.chat.gradient_example`'s labels (answer tokens only unless
    ``include_eos``). ``gradient_dimension`` is the full gradient's length and ``norms`` the exact
    L2 norm of each full gradient so far (both filled as it goes); ``target_modules`` names the
    adapted projections.

    With ``batched`` (the default) examples run in length-sorted batches of about
    ``max_batch_tokens`` tokens (rows × padded width, :func:`tunewise.model.packed.plan_padded_chunks`:
    at most 5 % padding, each example at the same width whatever shares its batch; default
    :func:`default_batch_tokens`), one forward and backward pass each (see the
    module docstring). An example computed before its turn waits until the ones before it are
    out: d floats each when projected, its full gradient otherwise (at most all of them, which a
    caller of the full gradients keeps anyway). ``batched=False`` runs paper A's one example per
    pass; so does a model whose own forward rescales its logits (``final_logit_softcapping``,
    ``logit_scale``), which the batched loss, taken from the output head alone, would miss.
    ``per_example_reason`` says why the one-at-a-time path runs (None when batched). The two agree
    to float rounding (tests/test_gradients_batched.py).

    Raises :class:`TunewiseError` (before any gradient) for an example with no answer token, one
    longer than the model's context, or a ``max_batch_tokens`` below 1; ``sources`` name the
    examples in these errors.
    """

    def __init__(self, model, tokenizer, prompts: Sequence[Sequence[dict]], responses: Sequence[str],
                 rank: int = 64, alpha: int = 32, seed: int = 0, include_eos: bool = False,
                 dimension: int | None = None, blocks: bool = False, sources: Sequence[str] | None = None,
                 max_batch_tokens: int | None = None, batched: bool = True) -> None:
        if max_batch_tokens is not None and (isinstance(max_batch_tokens, bool)
                                             or not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
            raise TunewiseError(f"the gradient batch must hold at least 1 token, got {max_batch_tokens!r}",
                                field="max_batch_tokens", fix="give a whole number of tokens, e.g. 512, or leave it out")
        self.gradient_dimension = 0
        self.norms: list[float] = []
        self.target_modules = lora_target_modules(model)
        names = list(sources) if sources is not None else [f"example {n}" for n in range(1, len(prompts) + 1)]
        encoded = []
        for name, prompt, response in zip(names, prompts, responses):
            input_ids, labels = gradient_example(tokenizer, prompt, response, include_eos, source=name)
            if all(label == IGNORE_INDEX for label in labels):
                raise TunewiseError(f"{name} has no answer token (its response {response!r} is empty or "
                                    "only newlines)", field="responses", fix="give it a real answer")
            encoded.append((input_ids, labels))
        context = context_length(model, tokenizer)
        check_fits([len(ids) for ids, _ in encoded], context, names,
                   what="prompt + response", limit_name=f"the model's {context}-token context")
        self.per_example_reason = None if batched else "asked for (batched=False)"
        rescaled = [name for name in ("final_logit_softcapping", "logit_scale")
                    if getattr(getattr(model, "config", None), name, None) not in (None, 1, 1.0)]
        if batched and rescaled:
            self.per_example_reason = (f"the model's forward rescales its logits ({rescaled[0]}), which the "
                                       "batched loss, taken from the output head, would miss")
        budget = max_batch_tokens or default_batch_tokens(model)
        self._iterator = self._vectors(model, encoded, rank, alpha, seed, dimension, blocks, budget,
                                       pad_token_id(tokenizer))

    def __iter__(self) -> Iterator:
        return self._iterator

    def __next__(self):
        return next(self._iterator)

    def close(self) -> None:
        self._iterator.close()

    def _vectors(self, model, encoded, rank, alpha, seed, dimension, blocks, budget, pad_id):
        device = model.get_input_embeddings().weight.device
        peft_model, restore = attach_lora(model, rank, alpha, seed)
        try:
            with gradients_through_4bit(peft_model):
                if self.per_example_reason is None:
                    yield from self._batched(peft_model, encoded, device, seed, dimension, blocks, budget, pad_id)
                else:
                    yield from self._per_example(peft_model, encoded, device, seed, dimension, blocks)
        finally:
            restore(peft_model)

    def _per_example(self, peft_model, encoded, device, seed, dimension, blocks):
        import torch

        lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
        self.gradient_dimension = sum(p.numel() for p in lora_b)
        for input_ids, labels in encoded:
            output = peft_model(input_ids=torch.tensor([input_ids], device=device),
                                labels=torch.tensor([labels], device=device))
            output.loss.backward()
            gradients = [parameter.grad for parameter in lora_b]
            squares = sum(torch.linalg.vector_norm(g.float()).double() ** 2 for g in gradients)
            self.norms.append(float(squares) ** 0.5)
            if blocks:
                vector = [g.float().cpu().clone() for g in gradients]
            elif dimension is None:
                vector = torch.cat([g.reshape(-1).float().cpu() for g in gradients])
            else:
                vector = sketch_gradient(gradients, dimension, seed)
            peft_model.zero_grad(set_to_none=True)
            del output, gradients
            yield vector

    def _batched(self, peft_model, encoded, device, seed, dimension, blocks, budget, pad_id):
        import torch

        from tunewise.model.packed import plan_padded_chunks

        # One lora_B module per gradient block, in the order of the per-example path's parameters.
        modules = [peft_model.get_submodule(name.rsplit(".", 1)[0])
                   for name, _ in peft_model.named_parameters() if "lora_B" in name]
        self.gradient_dimension = sum(module.weight.numel() for module in modules)
        # The hooks' probes are the only tensors that need a gradient: no weight gradient is formed
        # (restore() gives the model's own parameters their flags back; the adapter's go with it).
        for parameter in peft_model.parameters():
            parameter.requires_grad_(False)
        capture = _PerExampleCapture(dimension, seed, keep_full=dimension is None or blocks)
        decoder, head = peft_model.get_decoder(), peft_model.get_output_embeddings()
        lengths = [len(input_ids) for input_ids, _ in encoded]
        # Batches in order of their first example, so the examples leave in input order soon.
        chunks = sorted(plan_padded_chunks(lengths, budget), key=lambda chunk: min(chunk[1]))
        waiting: dict[int, tuple[float, object]] = {}
        for width, positions in chunks:
            ids, mask, rows, predictors, targets, weights = _batch_inputs(encoded, positions, width, pad_id)
            capture.start(mask.to(device), len(modules))
            # The hooks live for this batch's passes only: never while the caller holds the model.
            handles = [module.register_forward_hook(functools.partial(capture.forward_hook, index))
                       for index, module in enumerate(modules)]
            try:
                # No attention mask: causal attention never lets a real token see the right
                # padding, and padding feeds no loss, so its gradients are zero (masked anyway).
                hidden = decoder(input_ids=ids.to(device), use_cache=False).last_hidden_state
                last = hidden.device  # the decoder's last block may sit on another device
                picked = hidden[torch.tensor(rows, device=last), torch.tensor(predictors, device=last)]
                del hidden  # the graph keeps what the backward pass needs of it
                release_freed_memory()  # the forward pass's freed intermediates (~0.3 GB for a 1B model)
                # The sum of the examples' own mean losses: its gradient splits into theirs.
                gradient = _answer_loss_gradient(head, picked.detach(), torch.tensor(targets), torch.tensor(weights))
                release_freed_memory()  # the logits blocks'
                picked.backward(gradient)
                del picked, gradient
            finally:
                for handle in handles:
                    handle.remove()
            for position, norm, vector in zip(positions, *capture.finish(blocks)):
                waiting[position] = (norm, vector)
            release_freed_memory()
            while len(self.norms) in waiting:
                norm, vector = waiting.pop(len(self.norms))
                self.norms.append(norm)
                yield vector


def activation_bytes_per_token(config, dtype_bytes: int) -> int | None:
    """Bytes a transformer decoder keeps per token for the backward pass of
    :meth:`LoraGradients._batched` (an estimate from its config; None when the config does not
    name its sizes the usual way).

    Per layer: the gated MLP's three ``intermediate_size`` tensors (its input to the activation,
    the activation's output and the up projection's), the two RMSNorms' float32 inputs and scaled
    outputs (4 × ``hidden_size`` × 4 bytes) and attention's queries, keys, values and output, in
    ``dtype_bytes`` each but the norms'. Measured for Llama-3.2-1B's shape in bf16 with
    ``torch.autograd.graph.saved_tensors_hooks``: 1.47 MB a token, as estimated. The adapter's own
    saved inputs (rank × 4 bytes per projection) are left out.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    hidden = getattr(text, "hidden_size", None)
    heads = getattr(text, "num_attention_heads", None)
    if not (layers and hidden and heads):
        return None
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return layers * (3 * intermediate * dtype_bytes + 16 * hidden + 2 * (heads + kv_heads) * head_dim * dtype_bytes)


def default_batch_tokens(model) -> int:
    """Tokens per batched pass when none is given: :data:`DEFAULT_BATCH_TOKENS` for the model's
    device, fewer where :func:`activation_bytes_per_token` times that would exceed the larger of
    :data:`ACTIVATION_SHARE_OF_WEIGHTS` of the weights' bytes and :data:`ACTIVATION_FLOOR_BYTES`
    (at least 1: a batch never splits an example, so that is one example per pass)."""
    device = model.get_input_embeddings().weight.device
    most = DEFAULT_BATCH_TOKENS.get(device.type, DEFAULT_BATCH_TOKENS["cpu"])
    dtype = getattr(model, "dtype", None)
    per_token = activation_bytes_per_token(model.config, dtype.itemsize) if dtype is not None else None
    if not per_token:
        return most
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = max(ACTIVATION_FLOOR_BYTES, weights * ACTIVATION_SHARE_OF_WEIGHTS)
    return max(1, min(most, int(budget // per_token)))


def _answer_loss_gradient(head, picked, targets, weights):
    """The gradient of −Σ weight · log p(target) with respect to ``picked`` (the hidden states
    that predict the answer tokens, ``[n, hidden_size]``), for the backward pass into the decoder.

    The vocabulary projection and its own backward pass run a block of rows at a time, at most
    :data:`tunewise.model.packed.LOGITS_BLOCK_BYTES` of float32 logits (and at least
    :data:`MIN_HEAD_ROWS` rows) per block, so no more than one block's logits, log-softmax and
    their gradients exist at once: for a 128k vocabulary all of them, for 400 answer tokens, would
    take about 0.8 GB. Each row's value and gradient are computed by the same operations as in one
    pass over all rows (the ones a loss over ``head(picked)`` would run). ``targets`` (ids) and
    ``weights`` are CPU tensors of ``n`` values; the gradient is on ``picked``'s device.
    """
    import torch

    from tunewise.model.packed import LOGITS_BLOCK_BYTES

    vocabulary = getattr(head, "out_features", None) or head.weight.shape[0]
    step = max(MIN_HEAD_ROWS, LOGITS_BLOCK_BYTES // (4 * vocabulary))
    starts = list(range(0, len(picked), step))
    if len(starts) > 1 and len(picked) - starts[-1] < MIN_HEAD_ROWS:
        starts.pop()  # the last block joins the one before: no block runs on fewer rows (see _batch_inputs)
    gradient = torch.empty_like(picked)
    with torch.enable_grad():
        for start, end in zip(starts, starts[1:] + [len(picked)]):
            block = picked[start:end].requires_grad_(True)
            logits = head(block).float()  # on the head's device, which may not be the decoder's last
            logprobs = torch.log_softmax(logits, dim=-1).gather(
                -1, targets[start:end].to(logits.device).unsqueeze(-1)).squeeze(-1)
            loss = -(logprobs * weights[start:end].to(logits.device)).sum()
            del logits
            gradient[start:end] = torch.autograd.grad(loss, block)[0]
    return gradient


def _batch_inputs(encoded, positions, width, pad_id):
    """One batch of :meth:`LoraGradients._batched`: the right-padded ``ids`` and real-token
    ``mask`` (rows × ``width``), and per answer token its row, the position that predicts it, its
    id and its loss weight (1 / the example's answer tokens)."""
    import torch

    ids = torch.full((len(positions), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(positions), width), dtype=torch.bool)
    rows, predictors, targets, weights = [], [], [], []
    for row, position in enumerate(positions):
        input_ids, labels = encoded[position]
        ids[row, :len(input_ids)] = torch.tensor(input_ids)
        mask[row, :len(input_ids)] = True
        # Token t's label is predicted at t - 1 (transformers shifts the same way).
        answer = [t for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX]
        rows += [row] * len(answer)
        predictors += [t - 1 for t in answer]
        targets += [labels[t] for t in answer]
        weights += [1.0 / len(answer)] * len(answer)
    # A product of fewer than 4 rows goes to BLAS's matrix-vector kernel, which rounds the head's
    # input gradient differently from the per-example path's whole-sequence head: 9e-5 relative
    # error of a SmolLM2 gradient against fp64 instead of 1.4e-5. Zero-weight copies of a row keep
    # the matrix kernel, and the rows agree with the per-example path to the bit.
    padding = max(0, MIN_HEAD_ROWS - len(rows))
    rows, predictors = rows + rows[:1] * padding, predictors + predictors[:1] * padding
    targets, weights = targets + targets[:1] * padding, weights + [0.0] * padding
    return ids, mask, rows, predictors, targets, weights


class _PerExampleCapture:
    """The hooks of :meth:`LoraGradients._batched`: for one batch, every ``lora_B`` module's input
    (masked to the real tokens) from the forward pass, and from the backward pass the gradient
    with respect to its output, turned at once into per-example gradients that are projected
    (``dimension``) or kept on the CPU (``keep_full``)."""

    def __init__(self, dimension: int | None, seed: int, keep_full: bool) -> None:
        self.dimension = dimension
        self.seed = seed
        self.keep_full = keep_full
        self.mask = None  # batch rows × width, True on real tokens
        self.squares = None  # per example, the squared norm so far (float64, CPU)
        self.sketch = None  # rows × dimension, when projecting
        self.blocks: list = []  # per module, rows × out × r on the CPU, when keeping the full gradient

    def start(self, mask, modules: int) -> None:
        import torch

        self.mask = mask
        self.squares = torch.zeros(mask.shape[0], dtype=torch.float64)
        self.sketch = None
        self.blocks = [None] * modules

    def forward_hook(self, index, module, args, output):
        # lora_B's output (zero, B = 0) is replaced by a leaf of the same value: the backward pass
        # stops there, so neither the adapter's weights nor lora_A's input need a gradient. The leaf
        # is one zero expanded to the output's shape, not the output itself: the autograd graph
        # holds every leaf until the backward pass, and 112 float32 outputs of Llama-3.2-1B's shape
        # (23,552 numbers per token and layer) would hold 1.5 MB per token of the batch.
        inputs = args[0].detach() * self.mask.to(args[0].device).unsqueeze(-1).to(args[0].dtype)
        probe = output.new_zeros(()).expand(output.shape).requires_grad_(True)
        probe.register_post_accumulate_grad_hook(functools.partial(self._gradient, index, inputs))
        return probe

    def _gradient(self, index, inputs, probe) -> None:
        import torch

        # Per example, Σ over its tokens of (dL/d output) ⊗ input: lora_B.weight's gradient, out × r.
        per_example = torch.einsum("nto,ntr->nor", probe.grad.float(), inputs.float())
        probe.grad = None
        self.squares += torch.linalg.vector_norm(per_example, dim=(1, 2)).double().cpu() ** 2
        if self.keep_full:
            self.blocks[index] = per_example.cpu()
            return
        device = per_example.device
        if self.sketch is None or self.sketch.device != device:
            self.sketch = (torch.zeros((per_example.shape[0], self.dimension), dtype=torch.float32, device=device)
                           if self.sketch is None else self.sketch.to(device))
        buckets, signs = _block_projection(per_example[0].numel(), self.dimension, self.seed, index, device)
        self.sketch.index_add_(1, buckets, per_example.reshape(per_example.shape[0], -1) * signs)

    def finish(self, blocks: bool):
        """Per example of the batch, in row order: its exact norm and what the caller asked for."""
        import torch

        norms = [float(square) ** 0.5 for square in self.squares]
        if not self.keep_full:
            vectors = list(self.sketch.cpu())
        elif blocks:
            vectors = [list(example) for example in zip(*(block.unbind(0) for block in self.blocks))]
        else:
            vectors = list(torch.cat([block.reshape(block.shape[0], -1) for block in self.blocks], dim=1))
        self.blocks, self.sketch, self.mask = [], None, None
        return norms, vectors


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
        buckets, signs = _block_projection(block.numel(), dimension, seed, index, device)
        sketch.index_add_(0, buckets, block.reshape(-1).to(torch.float32) * signs)
        del buckets, signs
    if sketch is None:
        raise TunewiseError("the gradient has no blocks to project", field="model",
                            fix="check that the LoRA adapter reached the model's projections")
    return sketch.cpu()


def _block_projection(numel: int, dimension: int, seed: int, index: int, device):
    """Bucket (long) and sign (float32 ±1) of each of block ``index``'s ``numel`` coordinates,
    drawn on ``device`` from a generator seeded by (``seed``, ``index``): the one definition of the
    projection, shared by :func:`sketch_gradient` and the batched gradients."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(_block_seed(seed, index))
    draws = torch.randint(0, 2 * dimension, (numel,), generator=generator, device=device)
    # draws >> 1 and draws & 1 are draws // 2 and draws % 2 (draws ≥ 0), in half the time.
    return draws >> 1, (draws & 1).to(torch.float32).mul_(2).sub_(1)


def _block_seed(seed: int, index: int) -> int:
    """One generator seed per (seed, block), spread so that nearby pairs give unrelated streams."""
    return (seed * 1_000_003 + index * 7_919 + 0x5EED) % (2**63 - 1)


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


def attach_lora(model, rank: int, alpha: int, seed: int):
    """Wrap ``model`` in a fresh LoRA adapter; return it and a function that undoes everything
    (adapter removed, ``requires_grad`` and train/eval mode restored, the caller's random state untouched)."""
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


__all__ = ["ACTIVATION_FLOOR_BYTES", "ACTIVATION_SHARE_OF_WEIGHTS", "DEFAULT_BATCH_TOKENS", "LoraGradients",
           "activation_bytes_per_token", "default_batch_tokens", "attach_lora", "lora_target_modules", "sketch_gradient"]
