"""The model interface (:class:`~tunewise.model.base.Backend`) and its implementations, loaded
lazily by name so that importing tunewise never imports torch."""

from __future__ import annotations

from tunewise.model.base import CONFIDENCE_NEW_TOKENS, Backend, EncodedExample, Generation, plan_batches


def load_backend(
    model: str = "smollm2",
    device: str | None = None,
    dtype: str | None = None,
    max_new_tokens: int = CONFIDENCE_NEW_TOKENS,
    max_batch_tokens: int | None = None,
) -> Backend:
    """The backend for a model name: ``fake`` (tests, no torch), or any name ``load_model`` knows."""
    if model == "fake":
        from tunewise.model.fake import FakeBackend

        return FakeBackend(max_new_tokens=max_new_tokens)
    from tunewise.model.hf import HFBackend
    from tunewise.model.load import load_model

    _check_device(device)
    return HFBackend(load_model(model, device=device, dtype=dtype), max_new_tokens, max_batch_tokens)


def as_backend(model, tokenizer=None) -> Backend:
    """The model interface for ``model``: itself when it already is one (an ``HFBackend``, a
    ``FakeBackend``), an :class:`~tunewise.model.hf.HFBackend` around a
    :class:`~tunewise.model.load.LoadedModel`, or around a transformers causal LM in memory (a
    fine-tuned or PEFT model) with its ``tokenizer``."""
    if hasattr(model, "loglikelihood") and hasattr(model, "generate_tokens"):
        return model
    from tunewise.model.hf import HFBackend
    from tunewise.model.load import LoadedModel

    if isinstance(model, LoadedModel):
        return HFBackend(model)
    return HFBackend.from_model(model, tokenizer)


def _check_device(device: str | None) -> None:
    """Refuse a device this machine does not have before any model is loaded onto it."""
    if device is None or device == "auto":
        return
    import torch

    from tunewise.errors import TunewiseError

    fix = "use --device auto, cpu, cuda or cuda:N"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise TunewiseError(f"unknown device '{device}'", field="device", fix=fix) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise TunewiseError(f"device '{device}' asked for, but this machine has no usable CUDA GPU",
                                field="device", fix="use --device cpu (or auto)")
        if parsed.index is not None and parsed.index >= count:
            raise TunewiseError(f"device '{device}' asked for, but this machine has {count} CUDA GPU(s)",
                                field="device", fix=f"use cuda:0 … cuda:{count - 1}")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise TunewiseError(f"device '{device}' asked for, but MPS is not available here",
                                field="device", fix="use --device cpu (or auto)")
    elif parsed.type != "cpu":
        raise TunewiseError(f"unsupported device '{device}'", field="device", fix=fix)


__all__ = ["Backend", "EncodedExample", "Generation", "as_backend", "load_backend", "plan_batches"]
