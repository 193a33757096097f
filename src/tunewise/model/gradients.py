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
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

from tunewise.errors import TunewiseError
from tunewise.model.chat import IGNORE_INDEX, gradient_example
from tunewise.model.lengths import check_fits, context_length
from tunewise.model.load import gradients_through_4bit


class LoraGradients:
    """Iterate, one example at a time, over the concatenated ``lora_B`` gradients as CPU fp32
    vectors: full (``dimension=None``, length ``gradient_dimension``) or projected to ``dimension``
    numbers (:func:`sketch_gradient`); with ``blocks=True``, the full gradient as one CPU fp32
    tensor per adapted module instead (in a fixed order, the order :func:`sketch_gradient` seeds by).

    A fresh LoRA adapter is attached in place to every attention and MLP projection for the
    duration and removed when the iteration finishes or :meth:`close` is called; the model's own
    weights are never updated nor copied. The loss is the mean cross-entropy over
    :func:`tunewise.model.chat.gradient_example`'s labels (answer tokens only unless
    ``include_eos``). ``gradient_dimension`` is the full gradient's length and ``norms`` the exact
    L2 norm of each full gradient so far (both filled as it goes); ``target_modules`` names the
    adapted projections.

    Raises :class:`TunewiseError` (before any gradient) for an example with no answer token or one
    longer than the model's context; ``sources`` name the examples in these errors.
    """

    def __init__(self, model, tokenizer, prompts: Sequence[Sequence[dict]], responses: Sequence[str],
                 rank: int = 64, alpha: int = 32, seed: int = 0, include_eos: bool = False,
                 dimension: int | None = None, blocks: bool = False, sources: Sequence[str] | None = None) -> None:
        import torch

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
            encoded.append((torch.tensor([input_ids]), torch.tensor([labels])))
        context = context_length(model, tokenizer)
        check_fits([ids.shape[1] for ids, _ in encoded], context, names,
                   what="prompt + response", limit_name=f"the model's {context}-token context")
        self._iterator = self._vectors(model, encoded, rank, alpha, seed, dimension, blocks)

    def __iter__(self) -> Iterator:
        return self._iterator

    def __next__(self):
        return next(self._iterator)

    def close(self) -> None:
        self._iterator.close()

    def _vectors(self, model, encoded, rank, alpha, seed, dimension, blocks):
        device = model.get_input_embeddings().weight.device
        peft_model, restore = attach_lora(model, rank, alpha, seed)
        try:
            with gradients_through_4bit(peft_model):
                yield from self._per_example(peft_model, encoded, device, seed, dimension, blocks)
        finally:
            restore(peft_model)

    def _per_example(self, peft_model, encoded, device, seed, dimension, blocks):
        import torch

        lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
        self.gradient_dimension = sum(p.numel() for p in lora_b)
        for input_ids, labels in encoded:
            output = peft_model(input_ids=input_ids.to(device), labels=labels.to(device))
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


__all__ = ["LoraGradients", "attach_lora", "lora_target_modules", "sketch_gradient"]
