"""The fine-tune's loss, computed by tunewise: the one training forward pass outside TRL's own.

:func:`completion_loss` is what :mod:`tunewise.training.finetune`'s trainer uses on the CPU in place of
TRL 1.16's fused head, which there scores every position (prompt and padding included) and folds
entropy and top-1 statistics over the whole vocabulary into every step (BENCHMARKS.md, "Fine-tuning
on TRL", issue 15's profile). It lives in :mod:`tunewise.model`, with every other forward pass.
"""

from __future__ import annotations

from typing import Any, Mapping

from tunewise.model.chat import IGNORE_INDEX


def completion_loss(model, inputs: Mapping[str, Any], num_items_in_batch=None):
    """The completion-only loss of one micro-batch, with the head run on the completion positions only.

    ``inputs`` is a collated batch (``input_ids``, ``labels`` of shape (B, L) with ``IGNORE_INDEX``
    on prompt and padding, and ``attention_mask`` or padding-free ``position_ids``). Returns the summed
    negative log-likelihood (nats) of every label token given its prefix, divided by
    ``num_items_in_batch`` (the trainer's count of label tokens over the accumulated micro-batches) or,
    without it, by this batch's count: the loss TRL's ``SFTTrainer`` computes, to float rounding.

    The model's own forward computes the logits (so any logit scaling or soft-capping it applies
    holds) for the positions some row learns from (``logits_to_keep`` as a 1-D tensor of positions),
    in the autocast dtype; only the label rows are upcast to fp32 for the log-softmax.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    features = {key: value for key, value in inputs.items() if key != "labels"}
    logits = model(**features, use_cache=False, logits_to_keep=keep).logits
    kept = targets[:, keep]
    learned = kept != IGNORE_INDEX
    loss = F.cross_entropy(logits[learned].float(), kept[learned], reduction="sum")
    count = learned.sum() if num_items_in_batch is None else num_items_in_batch
    return loss / torch.as_tensor(count, device=loss.device).clamp(min=1)


__all__ = ["completion_loss"]
