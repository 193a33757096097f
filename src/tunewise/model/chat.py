"""Rendering conversations with the model's chat template, the one place tunewise does it.

Every path that turns messages into the model's text (scoring, fine-tuning, evaluation, CoS-Low,
the in-context proxy) calls :func:`render_chat`, so an error the template raises on a record
(Jinja's ``raise_exception`` for two user turns in a row, a system turn a template forbids, a
missing field) becomes a :class:`~tunewise.errors.TunewiseError` naming the record and the
template's own message, with a fix, instead of a traceback.
"""

from __future__ import annotations

from typing import Sequence

from tunewise.errors import TunewiseError


def render_chat(
    tokenizer,
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool,
    source=None,
    tokenize: bool = False,
):
    """``messages`` rendered by ``tokenizer.apply_chat_template``: text, or token ids with ``tokenize``.

    Parameters
    ----------
    messages:
        The conversation, OpenAI ``messages`` form (``{"role", "content"}`` dicts).
    add_generation_prompt:
        End with the assistant's turn header (for answering or scoring an answer).
    source:
        Where the record came from, named in the error: an :class:`~tunewise.data.pool.Example`
        (its file and line when the pool reader recorded them, else its id), a ``(file, line)``
        pair, or a description string.
    tokenize:
        Return ``list[int]`` token ids instead of the text.

    Raises
    ------
    TunewiseError
        When the tokenizer has no chat template, or the template raises while rendering
        (``jinja2.TemplateError``, ``ValueError``, ``TypeError``, ``KeyError``...): the message
        names ``source``, quotes the template's own message and suggests a fix.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        file, line, where = _where(source)
        raise TunewiseError(f"{where}the model's tokenizer has no chat template", file=file, line=line,
                            fix="use an instruction-tuned model folder whose tokenizer_config.json has a "
                                "chat_template, or set tokenizer.chat_template")
    turns = [dict(turn) for turn in messages]
    try:
        if tokenize:
            encoded = tokenizer.apply_chat_template(turns, add_generation_prompt=add_generation_prompt,
                                                    tokenize=True, return_dict=True)
            return list(encoded["input_ids"])
        return tokenizer.apply_chat_template(turns, add_generation_prompt=add_generation_prompt, tokenize=False)
    except Exception as error:  # noqa: BLE001 - any template failure is the record's, reported with it
        if isinstance(error, TunewiseError):
            raise
        file, line, where = _where(source)
        raise TunewiseError(
            f"{where}the chat template cannot render this conversation "
            f"({_roles(turns)}): {type(error).__name__}: {error}",
            file=file, line=line, field="messages", fix=_fix_for(turns, str(error)),
        ) from None


def _where(source) -> tuple[str | None, int | None, str]:
    """(file, line, text prefix) for the error from whatever ``source`` was given."""
    if source is None:
        return None, None, ""
    if isinstance(source, str):
        return None, None, f"{source}: "
    if isinstance(source, tuple) and len(source) == 2:
        return str(source[0]), source[1], ""
    location = getattr(source, "location", None)
    example_id = getattr(source, "id", None)
    if location:
        return str(location[0]), location[1], ""
    return None, None, f"example {example_id}: " if example_id else f"{source}: "


def _roles(turns: Sequence[dict]) -> str:
    return "roles " + " → ".join(str(turn.get("role")) for turn in turns)


def _fix_for(turns: Sequence[dict], message: str) -> str:
    """The likely fix: read from the conversation's shape, then from the template's message."""
    roles = [turn.get("role") for turn in turns]
    repeated = next((role for first, role in zip(roles, roles[1:]) if first == role), None)
    lowered = message.lower()
    if repeated is not None or "alternate" in lowered:
        return (f"merge consecutive '{repeated or 'same-role'}' turns into one (this template requires "
                "user and assistant turns to alternate), or use a model whose template allows it")
    if "system" in roles and "system" in lowered:
        return "fold the system message into the first user turn, or use a model whose template accepts system turns"
    if roles and roles[0] != "user" and ("user" in lowered or "start" in lowered or "first" in lowered):
        return "start the conversation with a user turn"
    return "fix the record's turns so that the chat template accepts them, or use a model with another template"


__all__ = ["render_chat"]
