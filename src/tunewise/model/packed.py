"""Forward passes that waste no tokens on padding: log-probabilities of continuations.

Two layouts, one per shape of work:

- :func:`sequence_logprobs`, for many independent sequences (a response after its prompt, the
  response alone for IFD): each right-padded to a width from a fixed ladder (at most
  ``max_padding``, 5 %, of it padding) and run in chunks of one width, so a sequence is computed at
  the same shape whatever shares its batch. No attention mask is passed, so attention runs its
  causal kernel: with right padding a real token only ever attends to earlier real tokens, and the
  padding after it changes nothing it computes.
- :func:`shared_prefix_logprobs`, for a context followed by several alternative continuations
  (the choices of a multiple-choice item): the context and every continuation are laid out once in
  a row, the continuations side by side, with a block mask in which a continuation attends to the
  context and to its own earlier tokens only. The context runs once whatever the number of
  choices, and items are packed first-fit into rows, so rows carry almost no padding.

A third layout, many contexts that share one long token prefix (the in-context proxy's
demonstrations), runs that prefix once and reuses its KV cache:
:meth:`tunewise.model.hf.HFBackend.loglikelihood` with ``share="prefix"``, the prefix measured by
:func:`shared_prefix_length`.

Both functions here project onto the vocabulary only at the positions that predict a scored
token, in blocks of bounded size (:func:`target_logprobs`), and take the log-softmax in float32.
They take a causal LM from ``transformers`` (or a PEFT model around one) and return
log-probabilities in input order. The model interface
(:class:`tunewise.model.base.Backend`) is their one caller in the library.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

MAX_PADDING = 0.05


def padded_width(length: int, max_padding: float = MAX_PADDING) -> int:
    """The width a sequence of ``length`` tokens is padded to: the smallest step of a fixed ladder
    (1, 2, 3, …, then growing by a factor 1 / (1 − ``max_padding``)) that holds it, so that the
    padding is at most ``max_padding`` of the width."""
    width = 1
    while width < length:
        width = max(width + 1, int((width + 1) / (1 - max_padding)))
    return width


def plan_padded_chunks(lengths: Sequence[int], max_batch_tokens: int,
                       max_padding: float = MAX_PADDING) -> list[tuple[int, list[int]]]:
    """``(width, positions)`` chunks for right-padded forward passes, widest first.

    Every sequence is padded to :func:`padded_width` of its length whatever else is in its chunk:
    a chunk holds sequences of one width only, at most ``max_batch_tokens // width`` of them (at
    least one). A sequence is therefore always computed at the same shape, which is what makes its
    values independent of the batch in low precision (the attention kernels split their work by
    sequence length), and the padding share is at most ``max_padding``. The plan depends only on
    the lengths; within a width, longer sequences come first, ties in input order.
    """
    widths = [padded_width(max(1, length), max_padding) for length in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (-widths[i], -lengths[i]))
    chunks: list[tuple[int, list[int]]] = []
    for position in order:
        width = widths[position]
        if chunks and chunks[-1][0] == width and (len(chunks[-1][1]) + 1) * width <= max_batch_tokens:
            chunks[-1][1].append(position)
        else:
            chunks.append((width, [position]))
    return chunks


def padding_share(lengths: Sequence[int], chunks: Sequence[tuple[int, Sequence[int]]]) -> float:
    """Padded tokens over all tokens run, for the right-padded ``(width, positions)`` ``chunks``."""
    run = sum(width * len(positions) for width, positions in chunks)
    return 1.0 - sum(max(1, lengths[i]) for _, positions in chunks for i in positions) / run if run else 0.0


def _decoder_and_head(model):
    return model.get_decoder(), model.get_output_embeddings()


# Bytes of one float32 logits block: the rows of hidden states projected onto the vocabulary at once.
# Unbounded, a 4,096-token chunk of a 128,256-token vocabulary (Llama 3) would hold 2 GiB of float32
# logits and 2 GiB more of their log-softmax (8 times that at a GPU's 32,768-token chunks), more
# than a 1B model's weights. Blocks of 32 MiB are 65 rows there and 170 for SmolLM2's 49,152 tokens:
# still large enough for the projection to run at the matmul's speed.
LOGITS_BLOCK_BYTES = 32 * 2**20


def target_logprobs(head, hidden, targets, block_bytes: int = LOGITS_BLOCK_BYTES):
    """log p(target) for each row of ``hidden`` (``[n, hidden_size]`` → float32 ``[n]``).

    The vocabulary projection runs in the model's dtype and the log-softmax in float32, a block of
    rows at a time so that the float32 logits never exceed ``block_bytes`` (each row is computed
    alone, so the values do not depend on the block size).
    """
    import torch

    vocabulary = getattr(head, "out_features", None) or head.weight.shape[0]
    rows = max(1, block_bytes // (4 * vocabulary))
    # max(…, 1): an empty ``hidden`` still makes one (empty) block, of the right dtype and device.
    return torch.cat([
        torch.log_softmax(head(hidden[i:i + rows]).float(), dim=-1).gather(-1, targets[i:i + rows].unsqueeze(-1))
        .squeeze(-1)
        for i in range(0, max(len(hidden), 1), rows)
    ])


def sequence_logprobs(
    model,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    pad_token_id: int,
    max_batch_tokens: int = 4096,
    max_padding: float = MAX_PADDING,
    progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """Per sequence, log p(token t | tokens before t) for t from ``starts[i]`` to its end.

    ``starts[i]`` ≥ 1 (the first token has nothing to condition on). Sequences are run in the
    chunks of :func:`plan_padded_chunks`; returns one float32 array per sequence, in input order,
    of length ``len(sequences[i]) - starts[i]``. ``progress(sequences_done, total)`` is called after
    every chunk.
    """
    import torch

    if any(start < 1 or start > len(sequence) for sequence, start in zip(sequences, starts)):
        raise ValueError("every start must lie in 1..len(sequence)")
    decoder, head = _decoder_and_head(model)
    device = next(model.parameters()).device
    lengths = [len(s) for s in sequences]
    results: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(sequences)
    done = 0
    with torch.inference_mode():
        for width, chunk in plan_padded_chunks(lengths, max_batch_tokens, max_padding):
            ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            for row, index in enumerate(chunk):
                ids[row, : lengths[index]] = torch.tensor(sequences[index])
            # No mask: causal attention, and right padding is never attended by a real token.
            hidden = decoder(input_ids=ids.to(device), use_cache=False).last_hidden_state
            rows, predictors, targets, counts = [], [], [], []
            for row, index in enumerate(chunk):
                start, end = starts[index], lengths[index]
                rows.append(torch.full((end - start,), row, dtype=torch.long))
                predictors.append(torch.arange(start - 1, end - 1))
                targets.append(ids[row, start:end])
                counts.append(end - start)
            row_index = torch.cat(rows).to(device)
            position_index = torch.cat(predictors).to(device)
            logprobs = target_logprobs(head, hidden[row_index, position_index], torch.cat(targets).to(device))
            for index, values in zip(chunk, torch.split(logprobs, counts)):
                results[index] = values.cpu().numpy()
            done += len(chunk)
            if progress is not None:
                progress(done, len(sequences))
    return results


def plan_packed_rows(sizes: Sequence[int], max_batch_tokens: int) -> tuple[int, list[list[list[int]]]]:
    """First-fit decreasing: items of ``sizes`` tokens into rows as wide as the largest item,
    rows grouped into batches of at most ``max_batch_tokens`` (at least one row).

    Returns ``(width, batches)``, each batch a list of rows, each row a list of item positions.
    """
    width = max(sizes)
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for position in order:
        size = sizes[position]
        target = next((r for r, room in enumerate(free) if room >= size), None)
        if target is None:
            rows.append([position])
            free.append(width - size)
        else:
            rows[target].append(position)
            free[target] -= size
    per_batch = max(1, max_batch_tokens // width)
    return width, [rows[i:i + per_batch] for i in range(0, len(rows), per_batch)]


def shared_prefix_logprobs(
    model,
    items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    pad_token_id: int,
    max_batch_tokens: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[np.ndarray]]:
    """Per item ``(context, continuations)``, per continuation, log p of each of its tokens after
    the context (and its own earlier tokens); the context is run once per item.

    Every context and continuation must hold at least one token. Returns float32 arrays in input
    order; ``progress(items_done, items_total)`` is called after every batch.
    """
    import torch

    if any(not context or not continuations or any(not c for c in continuations) for context, continuations in items):
        raise ValueError("every context, and every continuation, needs at least one token")
    decoder, head = _decoder_and_head(model)
    device = next(model.parameters()).device
    sizes = [len(context) + sum(len(c) for c in continuations) for context, continuations in items]
    results: list[list[np.ndarray]] = [[] for _ in items]
    if not items:
        return results
    width, batches = plan_packed_rows(sizes, max_batch_tokens)
    done = 0
    with torch.inference_mode():
        for batch in batches:
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            positions = torch.zeros((len(batch), width), dtype=torch.long)
            # Per token: which item it belongs to (padding: a unique negative id of its own) and
            # which branch (0 for the context, j + 1 for continuation j).
            owner = -1 - torch.arange(width).repeat(len(batch), 1)
            branch = torch.zeros((len(batch), width), dtype=torch.long)
            scored = []  # (item, continuation, row, predictor positions, target positions)
            for row, members in enumerate(batch):
                offset = 0
                for item in members:
                    context, continuations = items[item]
                    length = len(context)
                    span = slice(offset, offset + length)
                    ids[row, span] = torch.tensor(context)
                    positions[row, span] = torch.arange(length)
                    owner[row, span] = item
                    last_context = offset + length - 1
                    offset += length
                    for j, continuation in enumerate(continuations):
                        span = slice(offset, offset + len(continuation))
                        ids[row, span] = torch.tensor(continuation)
                        positions[row, span] = torch.arange(length, length + len(continuation))
                        owner[row, span] = item
                        branch[row, span] = j + 1
                        # Token 0 of a continuation is predicted by the last context token.
                        predictors = torch.cat([torch.tensor([last_context]), torch.arange(offset, span.stop - 1)])
                        scored.append((item, j, row, predictors, torch.arange(offset, span.stop)))
                        offset = span.stop
            index = torch.arange(width)
            mask = ((owner[:, :, None] == owner[:, None, :]) & (index[None, :] <= index[:, None])
                    & ((branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])))
            hidden = decoder(input_ids=ids.to(device), position_ids=positions.to(device),
                             attention_mask=_attention_mask(model, mask).to(device), use_cache=False).last_hidden_state
            rows = torch.cat([torch.full((len(p),), row, dtype=torch.long) for _, _, row, p, _ in scored])
            predictor_index = torch.cat([p for *_, p, _ in scored])
            target_index = torch.cat([t for *_, t in scored])
            logprobs = target_logprobs(head, hidden[rows.to(device), predictor_index.to(device)],
                                       ids[rows, target_index].to(device))
            for (item, j, *_), values in zip(scored, torch.split(logprobs, [len(t) for *_, t in scored])):
                results[item].append(values.cpu().numpy())
            done += sum(len(members) for members in batch)
            if progress is not None:
                progress(done, len(items))
    return results


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving every sequence at least one own token.

    The last context token of each sequence must run in its own row, since its hidden state
    predicts the first continuation token. 0 for no sequences.
    """
    if not sequences:
        return 0
    limit = min(len(sequence) for sequence in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(sequence[length] == first[length] for sequence in sequences):
        length += 1
    return max(length, 0)


def _attention_mask(model, allowed):
    """``allowed`` (rows × query × key, bool) as the 4-D mask the model's attention takes as is:
    boolean for SDPA, additive float (0 or the dtype's minimum) for the eager implementation."""
    import torch

    mask = allowed[:, None, :, :]
    implementation = getattr(model.config, "_attn_implementation", "sdpa")
    if implementation == "sdpa":
        return mask
    dtype = next(model.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


__all__ = ["MAX_PADDING", "padded_width", "padding_share", "plan_packed_rows", "plan_padded_chunks", "sequence_logprobs",
           "shared_prefix_length", "shared_prefix_logprobs"]
