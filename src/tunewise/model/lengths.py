"""Does an example fit? The model's context, the training cap, and what happens to those that do not.

A sequence longer than the model's context is not an error transformers reports reliably: a
rotary model scores it (with positions it never saw), a learned-position model (GPT-2) crashes
with an index error. Fine-tuning with a sequence cap used to cut silently, and an example cut
before its response trained on nothing. Every command that runs the model therefore measures
its sequences here first: an example that does not fit is refused with its file and line, or,
only when the user asked for it (``--truncate``), cut and counted in the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from tunewise.errors import TunewiseError

# Tokenizers without a real limit report a huge sentinel (int(1e30)) as model_max_length.
_NO_LIMIT = 10**9
# Lines listed in an error or note before "and N more".
_LISTED = 5


def context_length(model, tokenizer=None) -> int | None:
    """The longest sequence (prompt + answer, in tokens) the model takes, or None when unknown.

    The smaller of the config's ``max_position_embeddings`` (``n_positions`` for GPT-2, via its
    attribute map) and the tokenizer's ``model_max_length`` when that is a real limit.
    """
    model = getattr(model, "model", model)  # a LoadedModel or the torch module
    limits = []
    configured = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(configured, int) and configured > 0:
        limits.append(configured)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < _NO_LIMIT:
        limits.append(declared)
    return min(limits) if limits else None


def describe(source) -> str:
    """``file:line`` of an example read from a file (else ``example <id>``), for messages."""
    location = getattr(source, "location", None)
    if location:
        return f"{location[0]}:{location[1]}"
    example_id = getattr(source, "id", None)
    return f"example {example_id}" if example_id is not None else str(source)


def listing(sources: Sequence) -> str:
    """The first few sources, described, then how many more."""
    shown = ", ".join(describe(source) for source in sources[:_LISTED])
    return shown + (f" and {len(sources) - _LISTED} more" if len(sources) > _LISTED else "")


def check_fits(lengths: Sequence[int], limit: int | None, sources: Sequence, *, what: str, limit_name: str,
               truncate: bool = False, flag: str = "--truncate") -> list[int]:
    """Positions of the sequences longer than ``limit`` tokens; an error unless ``truncate``.

    Parameters
    ----------
    lengths:
        Token count of each sequence (what ``what`` describes, e.g. "prompt + response").
    limit:
        The most tokens allowed; None (unknown) lets everything through.
    sources:
        The example of each sequence (named in the error by file and line).
    limit_name:
        What the limit is, for the message ("the model's 2048-token context").
    truncate:
        Return the positions instead of refusing; the caller cuts and marks them.

    Raises
    ------
    TunewiseError
        Naming the first too-long example's file and line (and listing a few more) with the fix.
    """
    if limit is None:
        return []
    over = [position for position, length in enumerate(lengths) if length > limit]
    if over and not truncate:
        first = sources[over[0]]
        location = getattr(first, "location", None) or (None, None)
        raise TunewiseError(
            f"{len(over)} of {len(lengths)} examples do not fit {limit_name} ({what}): "
            f"{listing([sources[p] for p in over])}; the first is {lengths[over[0]]} tokens",
            file=location[0], line=location[1],
            fix=f"shorten or remove these examples, or pass {flag} to cut them (they are then counted in the output)",
        )
    return over


@dataclass
class TrainingLengths:
    """What fitting a training set to its cap did: the examples cut, and those left with no
    response token (which train nothing and are left out)."""

    limit: int
    truncated: list = field(default_factory=list)
    without_response: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "max_tokens": self.limit,
            "truncated": [describe(source) for source in self.truncated],
            "without_response": [describe(source) for source in self.without_response],
        }


def check_training_lengths(lengths: Sequence[int], response_tokens_kept: Sequence[int], sources: Sequence,
                           limit: int, limit_name: str, truncate: bool) -> TrainingLengths:
    """Check a tokenised training set against its cap.

    ``lengths`` are the full (uncut) sequence lengths, ``response_tokens_kept`` the response
    tokens each keeps once cut to ``limit``. Refuses any too-long example unless ``truncate``;
    with it, refuses a set where *no* example keeps a response token (training would do nothing
    and save an untrained adapter), and reports those that keep none.
    """
    over = check_fits(lengths, limit, sources, what="prompt + response + end-of-sequence token",
                      limit_name=limit_name, truncate=truncate)
    report = TrainingLengths(limit=limit, truncated=[sources[p] for p in over])
    report.without_response = [source for source, kept in zip(sources, response_tokens_kept) if kept == 0]
    if report.without_response and len(report.without_response) == len(sources):
        first = report.without_response[0]
        location = getattr(first, "location", None) or (None, None)
        raise TunewiseError(
            f"no example keeps a response token within {limit_name}: every prompt fills the whole "
            f"sequence, so fine-tuning would learn nothing ({listing(report.without_response)})",
            file=location[0], line=location[1],
            fix="raise --max-seq-length, or shorten the prompts",
        )
    return report


__all__ = ["TrainingLengths", "check_fits", "check_training_lengths", "context_length", "describe", "listing"]


def fit_prompts(prompts: list[list[int]], answer_room: Sequence[int], examples: Sequence, context: int | None,
                truncate: bool) -> set[int]:
    """Check every prompt plus its answer room against the model's ``context``.

    Refuses a prompt that does not fit (file and line named), or with ``truncate`` cuts its
    beginning in place, as lm-evaluation-harness cuts a long context from the left. Returns the
    positions cut.
    """
    over = check_fits([len(p) + room for p, room in zip(prompts, answer_room)], context, examples,
                      what="prompt + answer room of --max-new-tokens", truncate=truncate,
                      limit_name=f"the model's {context}-token context")
    for position in over:
        keep = context - answer_room[position]
        if keep < 1:
            raise TunewiseError(f"the answer room alone ({answer_room[position]} tokens) fills the model's "
                                f"{context}-token context", field="max_new_tokens",
                                fix="pass a smaller --max-new-tokens")
        prompts[position] = prompts[position][-keep:]
    return set(over)


def fit_sequences(encoded: list, context: int | None, examples: Sequence, truncate: bool) -> set[int]:
    """Check every encoded prompt + gold answer (:class:`tunewise.model.chat.EncodedExample`:
    ``input_ids``, ``labels``) against the model's ``context``.

    Refuses one that does not fit (file and line named), or with ``truncate`` replaces it in place
    by its last ``context`` tokens, marked ``truncated``: the prompt loses its beginning, as
    lm-evaluation-harness cuts a long context. Returns the positions cut.
    """
    from dataclasses import replace

    over = check_fits([len(e.input_ids) for e in encoded], context, examples, what="prompt + gold answer",
                      limit_name=f"the model's {context}-token context", truncate=truncate)
    for position in over:
        cut = encoded[position]
        encoded[position] = replace(cut, input_ids=cut.input_ids[-context:], labels=cut.labels[-context:],
                                    truncated=True)
    return set(over)
